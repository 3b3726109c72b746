"""Lineage events and their hash chain.

Every event carries ``prev_hash`` and ``hash``: the SHA-256 of the previous
event's hash joined to this event's canonical form (sorted-key compact JSON of
every other field, UTF-8, as orjson writes it with sorted keys). Changing a byte, deleting, inserting or reordering an event
breaks the chain at that event, which :func:`verify_chain` reports. Events hold
identifiers, digests and outcome codes, never payload values; a value that may identify a person
(a business key, a FHIR resource id) only as its keyed pseudonym (:func:`pseudonym`, :class:`Keyed`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

GENESIS_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class EventDraft:
    """An event before the store gives it a place in the chain."""

    event: str
    envelope_id: str | None
    actor: str
    outcome: str = ""
    error_code: str = ""
    raw_sha256: str = ""
    parent_id: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LineageEvent:
    """An event as stored: gapless ``seq``, time, and its place in the hash chain."""

    seq: int
    at: str
    event: str
    envelope_id: str | None
    parent_id: str | None
    actor: str
    outcome: str
    error_code: str
    raw_sha256: str
    details: Mapping[str, Any]
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "event": self.event,
            "envelope_id": self.envelope_id,
            "parent_id": self.parent_id,
            "actor": self.actor,
            "outcome": self.outcome,
            "error_code": self.error_code,
            "raw_sha256": self.raw_sha256,
            "details": dict(self.details),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def canonical(seq: int, at: str, draft: EventDraft) -> bytes:
    """The bytes an event's hash covers (everything but ``prev_hash`` and ``hash``)."""
    body = {
        "seq": seq,
        "at": at,
        "event": draft.event,
        "envelope_id": draft.envelope_id,
        "parent_id": draft.parent_id,
        "actor": draft.actor,
        "outcome": draft.outcome,
        "error_code": draft.error_code,
        "raw_sha256": draft.raw_sha256,
        "details": draft.details,
    }
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev_hash: str, canonical_bytes: bytes) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical_bytes).hexdigest()


def event_hash(seq: int, at: str, draft: EventDraft, prev_hash: str) -> str:
    """The hash of ``draft`` at ``seq`` and ``at``, chained to ``prev_hash``."""
    return chain_hash(prev_hash, canonical(seq, at, draft))


def seal(seq: int, at: str, draft: EventDraft, prev_hash: str) -> LineageEvent:
    """Give a draft its sequence number, time and hashes."""
    digest = event_hash(seq, at, draft, prev_hash)
    return LineageEvent(
        seq=seq,
        at=at,
        event=draft.event,
        envelope_id=draft.envelope_id,
        parent_id=draft.parent_id,
        actor=draft.actor,
        outcome=draft.outcome,
        error_code=draft.error_code,
        raw_sha256=draft.raw_sha256,
        details=draft.details,
        prev_hash=prev_hash,
        hash=digest,
    )


@dataclass(frozen=True, slots=True)
class Verification:
    """Result of recomputing the chain: ``first_bad_seq`` is the first event that fails, if any."""

    ok: bool
    events: int
    last_seq: int
    first_bad_seq: int | None = None
    reason: str = ""
    checkpoints: int = 0
    """Signed checkpoints the chain was held against."""
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "last_seq": self.last_seq,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "checkpoints": self.checkpoints,
            "warnings": list(self.warnings),
        }


def verify_chain(
    events: Iterable[LineageEvent],
    checkpoints: Sequence[tuple[int, str]] = (),
    prune_anchors: Sequence[tuple[int, str]] = (),
) -> Verification:
    """Recompute every hash in order; report the first gap, broken link or altered event.

    ``checkpoints`` are signed (seq, hash) pairs kept outside the database. An
    event whose hash differs from its checkpoint means the chain was rewritten
    and hashed again after the last checkpoint that still matches; a checkpoint
    beyond the last event means the tail was cut off.

    A chain whose head was pruned (retention) starts after seq 1: that is pruning, not tampering,
    only when a signed *prune* checkpoint (``prune_anchors``, signed with that purpose) pins the last
    removed event (its seq and hash, which the first remaining event names as ``prev_hash``). A head
    removed through an ordinary checkpoint, or through none, is reported as missing.
    """
    pinned = dict(checkpoints)
    anchors = dict(prune_anchors)
    good_until = 0
    prev = GENESIS_HASH
    expected_seq = 1
    count = 0
    for ev in events:
        if count == 0 and ev.seq > 1:
            anchor = anchors.get(ev.seq - 1)
            if anchor is None or not hmac.compare_digest(anchor, ev.prev_hash):
                return Verification(
                    False,
                    1,
                    ev.seq,
                    1,
                    f"the chain's head is missing: events before seq {ev.seq} were removed and no signed "
                    "checkpoint covers them",
                    len(pinned),
                )
            prev, expected_seq, good_until = ev.prev_hash, ev.seq, ev.seq - 1
        count += 1
        if ev.seq != expected_seq:
            return Verification(
                False, count, ev.seq, expected_seq, f"sequence gap: expected {expected_seq}, found {ev.seq}"
            )
        if ev.prev_hash != prev:
            return Verification(
                False, count, ev.seq, ev.seq, "prev_hash does not match the previous event's hash"
            )
        draft = EventDraft(
            event=ev.event,
            envelope_id=ev.envelope_id,
            actor=ev.actor,
            outcome=ev.outcome,
            error_code=ev.error_code,
            raw_sha256=ev.raw_sha256,
            parent_id=ev.parent_id,
            details=ev.details,
        )
        if not hmac.compare_digest(chain_hash(prev, canonical(ev.seq, ev.at, draft)), ev.hash):
            return Verification(False, count, ev.seq, ev.seq, "event content does not match its hash")
        if ev.seq in pinned:
            if not hmac.compare_digest(pinned[ev.seq], ev.hash):
                return Verification(
                    False,
                    count,
                    ev.seq,
                    good_until + 1,
                    f"the chain was rewritten: event {ev.seq} differs from its signed checkpoint"
                    f" (the last checkpoint that matches is at seq {good_until})",
                    len(pinned),
                )
            good_until = ev.seq
        prev = ev.hash
        expected_seq += 1
    last = expected_seq - 1
    beyond = [seq for seq in pinned if seq > last]
    if beyond:
        return Verification(
            False,
            count,
            last,
            last + 1,
            f"the chain was cut: a signed checkpoint names seq {max(beyond)}, the last event is {last}",
            len(pinned),
        )
    return Verification(True, count, last, checkpoints=len(pinned))


def pseudonym(key: bytes, value: str) -> str:
    """A stable keyed pseudonym for a business key, so lineage can be searched without holding the value."""
    return "hk:" + hmac.digest(key, value.encode(), "sha256").hex()[:32]


class Keyed:
    """A value an event names that may identify a person (a FHIR resource reference ``Patient/<id>``),
    given in a draft's ``details``: the store writes its keyed pseudonym (:func:`pseudonym`, the same as
    a business key's, so a key search finds it) in its place, so the value never enters the chain.

    Only the store, which holds the key, can turn it into text: it is not serialisable as it is (orjson
    refuses it, so a draft that escaped the store fails loudly) and its ``repr`` hides the value."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "Keyed(***)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Keyed) and other.value == self.value

    def __hash__(self) -> int:
        return hash((Keyed, self.value))


def keyed(draft: EventDraft, key: bytes) -> EventDraft:
    """``draft`` with every :class:`Keyed` value among its details replaced by its pseudonym under ``key``
    (the same draft when it has none)."""
    if not any(isinstance(v, Keyed) for v in draft.details.values()):
        return draft
    details = {k: pseudonym(key, v.value) if isinstance(v, Keyed) else v for k, v in draft.details.items()}
    return replace(draft, details=details)
