"""Alerts over a real HTTP receiver: one notification per incident start and end, never payloads."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.alerts import Alerter
from gateway.config import CircuitPolicy, HTTPSinkConfig, RetryPolicy
from gateway.sinks.http import HTTPSink
from gateway.sinks.memory import MemorySink
from gateway.store import IntakeRecord
from gateway.store.sqlite import SQLiteStore
from tests.gateway.sinks.peers import Answer, Receiver
from tests.gateway.test_delivery import commit, pending, record, start, status, until


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as rx:
        yield rx


def hook(rx: Receiver) -> HTTPSink:
    return HTTPSink("hook", HTTPSinkConfig(type="http", endpoint=rx.url, timeout_s=5))


def notes(rx: Receiver) -> list[dict[str, Any]]:
    out = []
    for r in rx.requests:
        assert r.headers["content-type"] == "application/json"
        out.append(json.loads(r.body))
    return out


def brief(rx: Receiver) -> list[tuple[str, str, str]]:
    return [(n["alert"], n["state"], n["sink"]) for n in notes(rx)]


def assert_no_payload(rx: Receiver, recs: list[IntakeRecord]) -> None:
    for r in rx.requests:
        for rec in recs:
            assert rec.raw not in r.body
            for piece in (rec.control_id, f"MRN-{rec.control_id}", "DOE^JANE", rec.id, rec.raw_sha256):
                assert piece.encode() not in r.body
            assert not any(piece in v for v in r.headers.values() for piece in (rec.control_id, "DOE"))


async def started_alerter(rx: Receiver, pending_age_s: float = 600.0) -> Alerter:
    sink = hook(rx)
    await sink.open()
    return Alerter(sink, pending_age_s)


async def shut(alerter: Alerter) -> None:
    await alerter.close()
    assert alerter.sink is not None
    await alerter.sink.close()


def test_many_dead_letters_make_one_firing_and_the_next_success_one_resolved(
    store: SQLiteStore, receiver: Receiver
) -> None:
    async def go() -> list[IntakeRecord]:
        alerter = await started_alerter(receiver)
        sink = MemorySink("s")
        sink.fail_next(5, retryable=False, code="http_422")
        recs = await commit(store, *(record(f"AL{i}") for i in range(5)))
        engine = await start(store, sink, concurrency=1, observer=alerter.observe)
        try:
            await until(lambda: all(status(store, r) == "dead" for r in recs))
            await until(lambda: len(receiver.requests) >= 1)
            assert brief(receiver) == [("dead_letters", "firing", "s")]
            (ok,) = await commit(store, record("AL-ok"))
            engine.notify({"s"})
            await until(lambda: status(store, ok) == "delivered")
            await until(lambda: len(receiver.requests) >= 2)
            # a second success resolves nothing more
            (ok2,) = await commit(store, record("AL-ok2"))
            engine.notify({"s"})
            await until(lambda: status(store, ok2) == "delivered")
        finally:
            await engine.stop(1)
            await shut(alerter)
        assert brief(receiver) == [("dead_letters", "firing", "s"), ("dead_letters", "resolved", "s")]
        firing, resolved = notes(receiver)
        assert firing["detail"] == {"error_code": "http_422"}
        assert resolved["detail"] == {}
        assert firing["since"] == resolved["since"]
        assert [(n["alert"], n["state"]) for n in alerter.sent] == [
            ("dead_letters", "firing"),
            ("dead_letters", "resolved"),
        ]
        assert alerter.open == {}
        return [*recs, ok, ok2]

    recs = asyncio.run(go())
    assert_no_payload(receiver, recs)


def test_circuit_open_and_close_alert_once_each(store: SQLiteStore, receiver: Receiver) -> None:
    async def go() -> list[IntakeRecord]:
        alerter = await started_alerter(receiver)
        sink = MemorySink("s")
        sink.fail_next(3, code="http_503")  # two open the circuit, the first probe fails: open again
        recs = await commit(store, record("CO1"), record("CO2"))
        engine = await start(
            store,
            sink,
            retry=RetryPolicy(max_attempts=20, base_s=0.01, cap_s=0.02),
            circuit=CircuitPolicy(failure_threshold=2, cooldown_s=0.15),
            concurrency=1,
            observer=alerter.observe,
        )
        try:
            await until(lambda: len(sink.deliveries) == 2)
            await until(lambda: len(receiver.requests) >= 2)
            assert engine.workers["s"].breaker.state == "closed"
        finally:
            await engine.stop(1)
            await shut(alerter)
        assert brief(receiver) == [("circuit_open", "firing", "s"), ("circuit_open", "resolved", "s")]
        return recs

    recs = asyncio.run(go())
    assert_no_payload(receiver, recs)


def test_backlog_age_fires_when_the_oldest_pending_is_too_old_and_resolves_when_not(
    store: SQLiteStore, receiver: Receiver
) -> None:
    async def go() -> list[IntakeRecord]:
        alerter = await started_alerter(receiver, pending_age_s=0.2)
        old = await commit(store, *(record(f"BL{i}", sinks=("s",)) for i in range(3)))
        await asyncio.sleep(0.35)
        young = await commit(store, record("BL-young", sinks=("t",)))
        backlog = {b.sink: b for b in store.backlog()}
        assert backlog["s"].pending == 3 and backlog["t"].pending == 1
        t_oldest = backlog["t"].oldest_pending_at
        assert t_oldest is not None
        now = t_oldest + 0.1  # s is ~0.45 s old, t 0.1 s: only s is late

        alerter.check_backlog(store.backlog(), now)
        alerter.check_backlog(store.backlog(), now + 0.01)  # still late: no second notification
        await until(lambda: len(receiver.requests) >= 1)
        assert brief(receiver) == [("backlog_age", "firing", "s")]
        assert notes(receiver)[0]["detail"] == {"pending": 3, "limit_s": 0.2}

        sink, other = MemorySink("s"), MemorySink("t")
        engine = await start(store, sink, other)
        try:
            await until(lambda: not pending(store, "s") and not pending(store, "t"))
        finally:
            await engine.stop(1)
        alerter.check_backlog(store.backlog())
        alerter.check_backlog(store.backlog())
        await until(lambda: len(receiver.requests) >= 2)
        await shut(alerter)
        assert brief(receiver) == [("backlog_age", "firing", "s"), ("backlog_age", "resolved", "s")]
        return [*old, *young]

    recs = asyncio.run(go())
    assert_no_payload(receiver, recs)


def test_backlog_below_the_limit_raises_nothing(store: SQLiteStore) -> None:
    async def go() -> None:
        await commit(store, record("BN1"))
        alerter = Alerter(None, pending_age_s=60)
        alerter.check_backlog(store.backlog())
        alerter.check_backlog(store.backlog(), time.time() + 30)
        assert list(alerter.sent) == []
        alerter.check_backlog(store.backlog(), time.time() + 61)
        assert [(n["alert"], n["state"]) for n in alerter.sent] == [("backlog_age", "firing")]

    asyncio.run(go())


def test_a_resolution_never_overtakes_its_firing_notification(receiver: Receiver) -> None:
    """The firing note fails once and is retried; the resolved note must still arrive after it."""

    async def go() -> None:
        receiver.answer(Answer(status=503))
        alerter = await started_alerter(receiver)
        alerter.observe("dead", "s", {"code": "http_500", "delivery_id": "X:s"})
        alerter.observe("delivered", "s", {"duration_s": 0.01, "age_s": 0.5})
        await until(lambda: len(receiver.requests) >= 3, timeout=30)
        await shut(alerter)
        assert brief(receiver) == [
            ("dead_letters", "firing", "s"),  # answered 503
            ("dead_letters", "firing", "s"),
            ("dead_letters", "resolved", "s"),
        ]
        # the retry is the same notification, not a new one
        first, again, _ = notes(receiver)
        assert first == again

    asyncio.run(go())


def test_an_undeliverable_notification_gives_up_after_a_few_attempts(receiver: Receiver) -> None:
    async def go() -> None:
        receiver.default = Answer(status=500)
        alerter = await started_alerter(receiver)
        alerter.observe("circuit", "s", {"state": "open"})
        t0 = time.monotonic()
        await until(lambda: len(receiver.requests) >= 3, timeout=8)
        await shut(alerter)
        # the close does not wait out a pointless back-off after the last attempt
        assert time.monotonic() - t0 < 4.5
        await asyncio.sleep(0.2)
        assert len(receiver.requests) == 3

    asyncio.run(go())


def test_observe_without_a_loop_or_a_sink_only_records() -> None:
    alerter = Alerter(None, 60)
    alerter.observe("dead", "s", {"code": "x"})
    alerter.observe("dead", "s", {"code": "y"})
    alerter.observe("circuit", "s", {"state": "half_open"})
    alerter.observe("circuit", "s", {"state": "open"})
    alerter.observe("delivered", "s", {})
    alerter.observe("circuit", "s", {"state": "closed"})
    alerter.observe("retry", "s", {"code": "x"})
    assert [(n["alert"], n["state"]) for n in alerter.sent] == [
        ("dead_letters", "firing"),
        ("circuit_open", "firing"),
        ("dead_letters", "resolved"),
        ("circuit_open", "resolved"),
    ]
    assert alerter.open == {}
