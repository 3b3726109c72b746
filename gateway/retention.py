"""Retention: message bodies and lineage events removed when their time is up, provably so.

``lineage.retention`` names how long bodies are kept per protocol (``'*'``
for the rest) and how long lineage events are kept. :func:`prune`:

1. removes bodies older than their protocol's retention (the message rows,
   headers, digests and lineage stay; a body a delivery still needs, pending or
   dead-lettered for replay, is kept);
2. for events, first signs a checkpoint of the newest event to be removed and
   writes it to every checkpoint destination outside the database (file,
   endpoint); only when every destination took it are the events up to it
   removed from the head of the chain. ``gateway lineage verify`` then starts
   the chain at that signed checkpoint: pruning, not tampering. Events removed
   without such a checkpoint are reported as a missing head.

Each step is itself a lineage event (``BodiesPruned``, ``LineagePruned``).
The running gateway prunes every ``every_s``; ``gateway lineage prune`` does
it once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.checkpoints import CheckpointSink, CheckpointSinkError, sign
from gateway.config import RetentionConfig
from gateway.envelope import utcnow
from gateway.store.sqlite import SQLiteStore

log = logging.getLogger("gateway.retention")


async def prune_forever(
    store: SQLiteStore, policy: RetentionConfig, key: Ed25519PrivateKey, sinks: Sequence[CheckpointSink]
) -> None:
    """The running gateway's pruner: once at start, then every ``policy.every_s``."""
    while True:
        try:
            done = await prune(store, policy, key, sinks, utcnow())
            if done.bodies or done.events:
                log.info("retention pruned", extra={"bodies": done.bodies, "events": done.events})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention pruning failed")
        await asyncio.sleep(policy.every_s)


@dataclass(frozen=True, slots=True)
class Pruned:
    bodies: int
    events: int
    through_seq: int | None


async def prune(
    store: SQLiteStore,
    policy: RetentionConfig,
    key: Ed25519PrivateKey,
    sinks: Sequence[CheckpointSink],
    now: datetime,
    actor: str = "retention",
) -> Pruned:
    bodies = 0
    named = [p for p in policy.bodies_days if p != "*"]
    for protocol, days in policy.bodies_days.items():
        before = (now - timedelta(days=days)).isoformat()
        if protocol == "*":
            bodies += await store.prune_bodies(before, actor, besides=named)
        else:
            bodies += await store.prune_bodies(before, actor, only=[protocol])
    if policy.events_days is None:
        return Pruned(bodies, 0, None)
    last = store.last_event_before((now - timedelta(days=policy.events_days)).isoformat())
    if last is None:
        return Pruned(bodies, 0, None)
    seq, chain_hash = last
    if not sinks:  # never remove events without a signed checkpoint held outside the database
        return Pruned(bodies, 0, None)
    checkpoint = sign(key, seq, chain_hash, kind="prune")
    for sink in sinks:
        try:
            await asyncio.to_thread(sink.append, checkpoint)
        except CheckpointSinkError as exc:
            log.warning(
                "lineage not pruned: a checkpoint destination refused",
                extra={"sink": sink.name, "error": str(exc)},
            )
            return Pruned(bodies, 0, None)
    events = await store.prune_events(seq, actor)
    return Pruned(bodies, events, seq)
