"""Encrypted bodies on a real store: sealed whatever the outcome, unreadable once their subject is erased;
an erasure stopped at any point is finished, never left half done."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.lineage import pseudonym
from gateway.sink import Delivery, DeliveryRetryable
from gateway.sinks.memory import MemorySink
from gateway.store import IntakeRecord, MessageFilter, PlannedDelivery
from gateway.store.sqlite import SQLiteStore
from gateway.store.subjects import KEYS_FILE, BodyErased
from tests.conftest import REPO
from tests.gateway.test_delivery import start, until
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


# -- crash safety: the erasure commits first, then its key goes ------------------------------------

PATIENT = "MRN-SECRET-1^^^HOSP"
"""The business key ``record`` files every message under; the sealed messages below are this subject's."""
KEY = b"k" * 32


def routed_for(
    control_id: str, body: bytes, subject: str = PATIENT, order_key: str | None = None
) -> IntakeRecord:
    return replace(
        sealed(control_id, body, subject),  # type: ignore[type-var]
        route="r",
        deliveries=(PlannedDelivery("ehr", "r", None, order_key),),
    )


def keys_held(tmp_path: Path) -> int:
    with contextlib.closing(sqlite3.connect(tmp_path / KEYS_FILE)) as db:
        return int(db.execute("SELECT count(*) FROM subject_keys").fetchone()[0])


def marks(store: SQLiteStore) -> int:
    return int(store.read(lambda db: db.execute("SELECT count(*) FROM pending_erasures").fetchone()[0]))


def assert_erased_in_full(tmp_path: Path, message_id: str) -> None:
    """Reopen the store as a restarted process does; the erasure must be whole: ``SubjectErased`` once,
    the delivery dead-lettered with its event, the value scrubbed, no key and no mark left, lineage
    intact."""
    store = SQLiteStore(tmp_path / "gw.db", KEY)
    store.open()
    try:
        erased = [e for e in store.events_between(None, None) if e.event == "SubjectErased"]
        assert [(e.outcome, e.details["messages"]) for e in erased] == [("erased", 1)]
        (delivery,) = store.deliveries_of(message_id)
        assert (delivery.status, delivery.last_error_code) == ("dead", "subject_erased")
        dead = [e for e in store.lineage_of(message_id) if e.event == "DeadLettered"]
        assert [(e.actor, e.error_code, e.details["sink"]) for e in dead] == [
            ("user:test", "subject_erased", "ehr")
        ]
        kept = store.read(
            lambda db: db.execute(
                "SELECT headers || business_keys FROM messages WHERE id = ?", (message_id,)
            ).fetchone()[0]
        )
        assert PATIENT not in kept
        with pytest.raises(BodyErased):
            store.get_raw(message_id)
        assert keys_held(tmp_path) == 0
        assert marks(store) == 0
        assert store.verify_lineage().ok
    finally:
        store.close()


def test_an_erasure_stopped_before_its_key_went_is_finished_when_the_store_opens(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "gw.db", KEY)
    store.open()
    rec = routed_for("S-5", b"MSH|SECRET-FIVE")

    async def first_step() -> None:
        await store.record_intake([rec])
        # step 1 alone: scrub, dead letters, SubjectErased and the mark, in one committed transaction
        await store.submit(functools.partial(store._erasure, value=PATIENT, actor="user:test", expungers=()))

    asyncio.run(first_step())
    # between the steps the key is still on disk, marked; nothing serves the body any more
    assert (keys_held(tmp_path), marks(store)) == (1, 1)
    with pytest.raises(BodyErased):
        store.get_raw(rec.id)
    assert store.due_deliveries("ehr", time.time() + 1, 10, set()) == []
    store.close()  # the process stops here: the key's step never runs
    assert keys_held(tmp_path) == 1
    assert_erased_in_full(tmp_path, rec.id)


KILLED_AT_THE_KEY = """
import asyncio, os, signal, sys
from pathlib import Path
from gateway.store.sqlite import SQLiteStore
from gateway.store.subjects import SubjectKeys

path, value, key_deleted = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "yes"
erase = SubjectKeys.erase

def killed(self, subject):
    if key_deleted:
        erase(self, subject)
    os.kill(os.getpid(), signal.SIGKILL)

SubjectKeys.erase = killed
store = SQLiteStore(path, b"k" * 32)
store.open()
asyncio.run(store.erase_subject(value, "user:test"))
"""
"""A process that erases a subject and is killed (SIGKILL) when its key is being destroyed."""


@pytest.mark.parametrize("key_deleted", [False, True], ids=["before-the-key-went", "after-the-key-went"])
def test_an_erasure_killed_at_its_key_is_never_half_done(tmp_path: Path, key_deleted: bool) -> None:
    """The erasing process is killed while the key is being destroyed (before or right after the
    delete): whatever it committed, the store reopened holds the whole erasure."""
    store = SQLiteStore(tmp_path / "gw.db", KEY)
    store.open()
    rec = routed_for("S-6", b"MSH|SECRET-SIX")
    asyncio.run(store.record_intake([rec]))
    store.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_AT_THE_KEY,
            str(tmp_path / "gw.db"),
            PATIENT,
            "yes" if key_deleted else "no",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    assert keys_held(tmp_path) == (0 if key_deleted else 1)
    assert_erased_in_full(tmp_path, rec.id)


def test_a_new_message_between_the_steps_gets_a_key_the_late_step_leaves_alone(store: SQLiteStore) -> None:
    old, new = routed_for("S-7", b"MSH|SECRET-OLD"), routed_for("S-8", b"MSH|SECRET-NEW")

    async def go() -> int:
        await store.record_intake([old])
        await store.submit(functools.partial(store._erasure, value=PATIENT, actor="user:test", expungers=()))
        await store.record_intake([new])  # finishes the erasure first, then makes the subject a new key
        return await store.submit(lambda txn: store._destroy_keys(txn.conn))  # the erasure's late step 2

    assert asyncio.run(go()) == 0  # nothing left marked: the new key is not destroyed
    assert marks(store) == 0
    assert store.get_raw(new.id) == b"MSH|SECRET-NEW"
    with pytest.raises(BodyErased):
        store.get_raw(old.id)


def test_a_pending_delivery_whose_key_is_gone_is_dead_lettered_by_its_worker(
    store: SQLiteStore, tmp_path: Path
) -> None:
    """A key gone while its delivery stayed pending (an erasure cut off before it committed, in a release
    that destroyed the key first): the worker dead-letters it with its event instead of passing over it
    for ever, and the next delivery under the same order key is no longer held up behind it."""
    lost = routed_for("S-9", b"MSH|SECRET-LOST", subject="P1", order_key="K")
    behind = routed_for("S-10", b"MSH|NEXT", subject="P2", order_key="K")

    async def go() -> MemorySink:
        await store.record_intake([lost, behind])
        with contextlib.closing(sqlite3.connect(tmp_path / KEYS_FILE)) as keys:
            keys.execute("DELETE FROM subject_keys WHERE subject = ?", (pseudonym(KEY, "P1"),))
            keys.commit()
        sink = MemorySink("ehr")
        engine = await start(store, sink)
        try:
            await until(lambda: len(sink.deliveries) == 1, timeout=10, what="the delivery behind it")
            await until(
                lambda: any(e.event == "DeadLettered" for e in store.lineage_of(lost.id)),
                timeout=10,
                what="the DeadLettered event",
            )
        finally:
            await engine.stop(1)
        return sink

    sink = asyncio.run(go())
    assert [d.envelope.control_id for d in sink.deliveries] == ["S-10"]
    (delivery,) = store.deliveries_of(lost.id)
    assert (delivery.status, delivery.last_error_code, delivery.attempts) == ("dead", "subject_erased", 0)
    (dead,) = [e for e in store.lineage_of(lost.id) if e.event == "DeadLettered"]
    assert (dead.actor, dead.outcome, dead.error_code) == ("sink:ehr", "dead", "subject_erased")
    assert [e.event for e in store.lineage_of(lost.id) if e.event.startswith("Delivery")] == []


class HeldSink(MemorySink):
    """A sink that holds each attempt until released, then fails it as retryable."""

    def __init__(self) -> None:
        super().__init__("ehr")
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def send(self, delivery: Delivery) -> None:
        self.entered.set()
        await self.release.wait()
        raise DeliveryRetryable("http_503", "unavailable")


def test_an_attempt_out_while_its_subject_is_erased_leaves_the_dead_letter_as_it_is(
    store: SQLiteStore,
) -> None:
    """The attempt had the body before the erasure; its failure, recorded after, must not turn the
    erasure's dead letter back into a retry or a replayable one."""
    rec = routed_for("S-11", b"MSH|SECRET-OUT")

    async def go() -> int:
        await store.record_intake([rec])
        sink = HeldSink()
        engine = await start(store, sink)
        try:
            await asyncio.wait_for(sink.entered.wait(), 10)
            await store.erase_subject(PATIENT, "user:test")
            sink.release.set()
            await until(
                lambda: any(e.event == "DeliveryFailed" for e in store.lineage_of(rec.id)),
                timeout=10,
                what="the attempt's result",
            )
        finally:
            await engine.stop(1)
        return await store.replay(None, "ehr", "user:test")

    assert asyncio.run(go()) == 0
    (delivery,) = store.deliveries_of(rec.id)
    assert (delivery.status, delivery.last_error_code) == ("dead", "subject_erased")
    events = store.lineage_of(rec.id)
    assert [(e.outcome, e.error_code) for e in events if e.event == "DeliveryFailed"] == [
        ("failed", "http_503")
    ]
    assert [e.actor for e in events if e.event == "DeadLettered"] == ["user:test"]


def test_a_running_store_finishes_an_erasure_another_process_left_marked(
    store: SQLiteStore, tmp_path: Path
) -> None:
    """``gateway subjects erase`` beside the server, stopped after its erasure committed: the server's
    periodic :meth:`finish_erasures` destroys the key without waiting for a restart."""
    rec = routed_for("S-12", b"MSH|SECRET-TWELVE")
    asyncio.run(store.record_intake([rec]))
    cli = SQLiteStore(tmp_path / "gw.db", KEY)
    cli.open()
    asyncio.run(cli.submit(functools.partial(cli._erasure, value=PATIENT, actor="user:test", expungers=())))
    cli.close()  # stopped before its key's step
    assert (keys_held(tmp_path), marks(store)) == (1, 1)

    async def twice() -> tuple[int, int]:
        return await store.finish_erasures(), await store.finish_erasures()

    assert asyncio.run(twice()) == (1, 0)
    assert (keys_held(tmp_path), marks(store)) == (0, 0)
    with pytest.raises(BodyErased):
        store.get_raw(rec.id)
