"""Retention on a real store: bodies and the chain's head pruned, and verify tells pruning from tampering."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from datetime import datetime, timedelta
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
from gateway.retention import Pruned, prune
from gateway.store import IntakeRecord, MessageFilter, PlannedDelivery
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


def test_what_is_within_its_period_stays_and_other_protocols_fall_under_the_default(tmp_path: Path) -> None:
    """Only bodies and events older than their period go: hl7v2 bodies after a day, bodies of any other
    protocol after the ``'*'`` thirty days, events after a day; newer ones stay, and the chain verifies."""
    store = SQLiteStore(tmp_path / "gw.db", b"k" * 32)
    store.open()
    key_path, cp_path = tmp_path / "keys" / "signing.key", tmp_path / "elsewhere" / "checkpoints.jsonl"
    key = load_or_create_key(key_path)
    policy = RetentionConfig(bodies_days={"hl7v2": 1, "*": 30}, events_days=1)

    def received(control_id: str, protocol: str, age: timedelta, cutoff: datetime) -> IntakeRecord:
        rec = record(control_id, f"body of {control_id}".encode())
        return dataclasses.replace(rec, protocol=protocol, received_at=(cutoff - age).isoformat())

    async def go() -> tuple[Pruned, int]:
        await store.record_intake([record("OLD-0", b"MSH|old0")])
        await store.record_intake([record("OLD-1", b"MSH|old1")])
        (old,) = store.list_messages(MessageFilter(control_id="OLD-1"))
        last_old_seq = store.lineage_of(old.id)[-1].seq
        await asyncio.sleep(0.01)
        cutoff = utcnow()  # a day before the pruning: hl7v2 bodies and events older than this go
        await asyncio.sleep(0.01)
        await store.record_intake([record("NEW-HL7", b"MSH|new")])
        await store.record_intake([received("HL7-10D", "hl7v2", timedelta(days=10), cutoff)])
        await store.record_intake([received("ISO-10D", "iso20022", timedelta(days=10), cutoff)])
        await store.record_intake([received("ISO-40D", "iso20022", timedelta(days=40), cutoff)])
        done = await prune(store, policy, key, [FileCheckpoints(cp_path)], cutoff + timedelta(days=1))
        return done, last_old_seq

    done, last_old_seq = asyncio.run(go())
    kept = {c: body_of(store, c) for c in ("OLD-0", "OLD-1", "NEW-HL7", "HL7-10D", "ISO-10D", "ISO-40D")}
    assert kept == {
        "OLD-0": b"",
        "OLD-1": b"",
        "NEW-HL7": b"MSH|new",  # hl7v2, within its day
        "HL7-10D": b"",  # hl7v2, past its day
        "ISO-10D": b"body of ISO-10D",  # no period of its own: within the thirty days of '*'
        "ISO-40D": b"",  # past the thirty days of '*'
    }
    assert done.bodies == 4
    assert done.through_seq == last_old_seq and done.events == last_old_seq
    events = list(store.events_between(None, None))
    assert events[0].seq == last_old_seq + 1
    for control_id in ("NEW-HL7", "HL7-10D", "ISO-10D", "ISO-40D"):  # written after the cutoff: kept
        (row,) = store.list_messages(MessageFilter(control_id=control_id))
        assert [e.event for e in store.lineage_of(row.id)] == ["MessageReceived", "MessageAccepted"]
    for control_id in ("OLD-0", "OLD-1"):
        (row,) = store.list_messages(MessageFilter(control_id=control_id))
        assert store.lineage_of(row.id) == []
    result = verify_store(store, cp_path, public_path(key_path))
    store.close()
    assert result.ok, result


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
