"""Retention on a real store: bodies and the chain's head pruned, and verify tells pruning from tampering."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from datetime import timedelta
from pathlib import Path

import orjson

from gateway.checkpoints import (
    FileCheckpoints,
    HTTPCheckpoints,
    load_or_create_key,
    public_path,
    verify_store,
)
from gateway.config import RetentionConfig
from gateway.envelope import utcnow
from gateway.retention import prune
from gateway.store import MessageFilter, PlannedDelivery
from gateway.store.sqlite import SQLiteStore
from tests.gateway.test_store import record
from tests.support import free_port


def body_of(store: SQLiteStore, control_id: str) -> bytes | None:
    (row,) = store.list_messages(MessageFilter(control_id=control_id))
    return store.get_raw(row.id)


def test_bodies_and_the_chains_head_go_and_the_chain_still_verifies(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "gw.db", b"k" * 32)  # not the fixture: its check holds no checkpoints
    store.open()
    key_path, cp_path = tmp_path / "keys" / "signing.key", tmp_path / "elsewhere" / "checkpoints.jsonl"
    key = load_or_create_key(key_path)
    pending = dataclasses.replace(
        record("RT-PENDING", b"MSH|still-needed"),
        route="r",
        deliveries=(PlannedDelivery("ehr", "r", None, None),),
    )

    async def go() -> int | None:
        for n in range(4):
            await store.record_intake([record(f"RT-{n}", f"MSH|body{n}".encode())])
        await store.record_intake([pending])
        later = utcnow() + timedelta(days=3)
        policy = RetentionConfig(bodies_days={"hl7v2": 1, "*": 30}, events_days=1)
        done = await prune(store, policy, key, [FileCheckpoints(cp_path)], later)
        assert done.bodies == 4 and done.through_seq is not None and done.events == done.through_seq
        await store.record_intake([record("RT-AFTER", b"MSH|later")])
        return done.through_seq

    through = asyncio.run(go())
    assert body_of(store, "RT-0") == b""
    assert body_of(store, "RT-PENDING") == b"MSH|still-needed"  # a delivery still needs it
    result = verify_store(store, cp_path, public_path(key_path))
    assert result.ok, result
    events = list(store.events_between(None, None))
    assert through is not None and events[0].seq == through + 1 and events[0].event == "LineagePruned"

    # removing more of the head than the signed checkpoint covers is tampering, and is named
    conn = sqlite3.connect(store.path)
    conn.execute("DELETE FROM lineage WHERE seq = (SELECT min(seq) FROM lineage)")
    conn.commit()
    conn.close()
    tampered = verify_store(store, cp_path, public_path(key_path))
    store.close()
    assert not tampered.ok and "head is missing" in tampered.reason


def test_without_a_checkpoint_held_outside_no_event_is_removed(store: SQLiteStore, tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "signing.key")
    nowhere = HTTPCheckpoints(f"http://127.0.0.1:{free_port()}/checkpoints", timeout_s=1)

    async def go() -> None:
        await store.record_intake([record("RT-X", b"MSH|x")])
        done = await prune(
            store, RetentionConfig(events_days=1), key, [nowhere], utcnow() + timedelta(days=3)
        )
        assert (done.events, done.through_seq) == (0, None)

    asyncio.run(go())
    assert min(e.seq for e in store.events_between(None, None)) == 1


def test_a_head_deleted_through_an_ordinary_checkpoint_is_not_taken_for_pruning(tmp_path: Path) -> None:
    from gateway.checkpoints import Checkpointer

    store = SQLiteStore(tmp_path / "gw.db", b"k" * 32)
    store.open()
    key_path, cp_path = tmp_path / "signing.key", tmp_path / "checkpoints.jsonl"
    checkpointer = Checkpointer(store, load_or_create_key(key_path), cp_path, every_events=1, every_s=3600)

    async def go() -> None:
        for n in range(4):
            await store.record_intake([record(f"HD-{n}", f"MSH|{n}".encode())])
            checkpointer.checkpoint()

    asyncio.run(go())
    periodic = [orjson.loads(line)["seq"] for line in cp_path.read_text().splitlines()]
    pinned_seq = periodic[1]  # an ordinary checkpoint, well inside the chain
    assert verify_store(store, cp_path, public_path(key_path)).ok
    conn = sqlite3.connect(store.path)
    conn.execute("DELETE FROM lineage WHERE seq <= ?", (pinned_seq,))
    conn.commit()
    conn.close()
    result = verify_store(store, cp_path, public_path(key_path))
    store.close()
    assert not result.ok and "head is missing" in result.reason
