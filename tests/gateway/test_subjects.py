"""Encrypted bodies on a real store: sealed whatever the outcome, unreadable once their subject is erased."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace

import pytest

from gateway.store import MessageFilter, PlannedDelivery
from gateway.store.sqlite import SQLiteStore
from gateway.store.subjects import BodyErased
from tests.gateway.test_store import record


def sealed(control_id: str, body: bytes, subject: str = "P1") -> object:
    return replace(record(control_id, body), storage="encrypted", subject=subject)


def test_bodies_are_sealed_even_for_conflicts_and_erasure_outlives_a_new_key(store: SQLiteStore) -> None:
    async def go() -> None:
        await store.record_intake([sealed("S-1", b"MSH|SECRET-ONE")])  # type: ignore[list-item]
        await store.record_intake([sealed("S-1", b"MSH|SECRET-CONFLICT")])  # type: ignore[list-item]
        await store.erase_subject("P1", "user:test")
        await store.record_intake([sealed("S-2", b"MSH|SECRET-AFTER")])  # type: ignore[list-item]

    asyncio.run(go())
    with sqlite3.connect(store.path) as db:
        raw = b"".join(r[0] for r in db.execute("SELECT raw FROM messages"))
    assert b"SECRET" not in raw
    rows = {r.status: r for r in store.list_messages(MessageFilter(control_id="S-1"))}
    for row in rows.values():  # the accepted one and the conflicting one, both erased with P1
        with pytest.raises(BodyErased):
            store.get_raw(row.id)
    (after,) = store.list_messages(MessageFilter(control_id="S-2"))
    assert store.get_raw(after.id) == b"MSH|SECRET-AFTER"  # a new message of P1 has a new key


def test_replay_never_brings_back_an_erased_subjects_delivery(store: SQLiteStore) -> None:
    routed = replace(
        sealed("S-3", b"MSH|x"),  # type: ignore[type-var]
        route="r",
        deliveries=(PlannedDelivery("ehr", "r", None, None),),
    )

    async def go() -> int:
        await store.record_intake([routed])  # type: ignore[list-item]
        await store.erase_subject("P1", "user:test")
        return await store.replay(None, "ehr", "user:test")

    assert asyncio.run(go()) == 0
    (row,) = store.list_messages(MessageFilter(control_id="S-3"))
    (delivery,) = store.deliveries_of(row.id)
    assert (delivery.status, delivery.last_error_code) == ("dead", "subject_erased")


def test_expungers_run_in_the_erasure_and_a_failing_one_erases_nothing(store: SQLiteStore) -> None:
    seen: list[tuple[str, str]] = []

    def failing(conn: sqlite3.Connection, value: str, subject: str) -> int:
        conn.execute("DELETE FROM messages")  # undone with the rest
        raise RuntimeError("cannot")

    def counting(conn: sqlite3.Connection, value: str, subject: str) -> int:
        seen.append((value, subject))
        return 2

    async def go() -> None:
        await store.record_intake([sealed("S-4", b"MSH|SECRET-FOUR")])  # type: ignore[list-item]
        with pytest.raises(RuntimeError):
            await store.erase_subject("P1", "user:test", [failing])

    asyncio.run(go())
    (row,) = store.list_messages(MessageFilter(control_id="S-4"))
    assert store.get_raw(row.id) == b"MSH|SECRET-FOUR"  # the key is still there, the message too
    assert not [e for e in store.lineage_of(row.id) if e.event == "SubjectErased"]

    done = asyncio.run(store.erase_subject("P1", "user:test", [counting]))
    assert (done.bodies, done.records) == (1, 2)
    ((value, subject),) = seen
    assert value == "P1" and subject != "P1"  # expungers get the pseudonym beside the value
    with pytest.raises(BodyErased):
        store.get_raw(row.id)
    erased = [e for e in store.events_between(None, None) if e.event == "SubjectErased"]
    assert [(e.details["messages"], e.details["records"]) for e in erased] == [(1, 2)]
