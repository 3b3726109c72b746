"""The delivery engine over the real SQLite store and the memory sink.

Backoff, circuit breaker and token bucket on their own; then the workers end to
end: delivery once, lineage per attempt, retry and dead letters, Retry-After,
per-key order, concurrency, the circuit, transforms, stop and replay. Every test
ends with a lineage chain that still verifies (the ``store`` fixture checks it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import datetime

import pytest

import gateway.delivery as delivery_module
from gateway.config import CircuitPolicy, RateLimit, RetryPolicy
from gateway.delivery import CircuitBreaker, DeliveryEngine, Observer, TokenBucket, backoff_s
from gateway.envelope import new_id, sha256_hex, utcnow
from gateway.lineage import LineageEvent
from gateway.sink import Delivery, DeliveryRetryable
from gateway.sinks.memory import MemorySink
from gateway.store import DeliveryRow, IntakeRecord, PlannedDelivery
from gateway.store.sqlite import SQLiteStore

HL7_TYPE = "x-application/hl7-v2+er7"
FAST = RetryPolicy(max_attempts=50, base_s=0.01, cap_s=0.03)
LAX = CircuitPolicy(failure_threshold=1000, cooldown_s=0.1)
DELIVERY_EVENTS = ("DeliveryAttempted", "DeliverySucceeded", "DeliveryFailed", "DeadLettered", "Replayed")


# -- helpers --------------------------------------------------------------------------------------


def hl7(control_id: str, extra: str = "") -> bytes:
    return (
        f"MSH|^~\\&|SND|FAC|RCV|FAC|20240101120000||ADT^A01|{control_id}|P|2.5\r"
        f"PID|1||MRN-{control_id}^^^HOSP||DOE^JANE\r{extra}"
    ).encode()


def record(
    control_id: str,
    *,
    sinks: Sequence[str] = ("s",),
    order_key: str | None = None,
    transform: str | None = None,
    raw: bytes | None = None,
    protocol: str = "hl7v2",
) -> IntakeRecord:
    body = raw if raw is not None else hl7(control_id)
    return IntakeRecord(
        id=new_id(),
        received_at=utcnow().isoformat(),
        protocol=protocol,
        raw=body,
        raw_sha256=sha256_hex(body),
        outcome="accepted",
        listener="test",
        control_id=control_id,
        sender="SND^FAC",
        receiver="RCV^FAC",
        message_type="ADT^A01",
        version="2.5",
        headers={"control_id": control_id},
        route="r",
        deliveries=[PlannedDelivery(sink, "r", transform, order_key) for sink in sinks],
    )


async def commit(store: SQLiteStore, *records: IntakeRecord) -> list[IntakeRecord]:
    decisions = await store.record_intake(list(records))
    assert [d.kind for d in decisions] == ["stored"] * len(records)
    return list(records)


async def until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(0.005)


async def start(
    store: SQLiteStore,
    *sinks: MemorySink,
    retry: RetryPolicy = FAST,
    circuit: CircuitPolicy = LAX,
    rate: RateLimit | None = None,
    concurrency: int = 4,
    observer: Observer | None = None,
) -> DeliveryEngine:
    engine = DeliveryEngine(store, observer)
    await engine.start({s.name: (s, retry, circuit, rate, concurrency) for s in sinks})
    return engine


def row(store: SQLiteStore, rec: IntakeRecord, sink: str = "s") -> DeliveryRow:
    (found,) = [d for d in store.deliveries_of(rec.id) if d.sink == sink]
    return found


def status(store: SQLiteStore, rec: IntakeRecord, sink: str = "s") -> str:
    return row(store, rec, sink).status


def events(store: SQLiteStore, rec: IntakeRecord) -> list[LineageEvent]:
    return [e for e in store.lineage_of(rec.id) if e.event in DELIVERY_EVENTS]


def names(store: SQLiteStore, rec: IntakeRecord) -> list[str]:
    return [e.event for e in events(store, rec)]


def pending(store: SQLiteStore, sink: str = "s") -> list[DeliveryRow]:
    return store.list_deliveries("pending", sink, 1000)


def at_ts(event: LineageEvent) -> float:
    """When the event was committed."""
    return datetime.fromisoformat(event.at).timestamp()


def started_ts(event: LineageEvent) -> float:
    """When the attempt a ``DeliveryAttempted`` event records started."""
    started = event.details["started_at"]
    assert isinstance(started, str)
    return datetime.fromisoformat(started).timestamp()


Rule = Callable[[Delivery, int], BaseException | None]
"""Given a delivery and how many times this control id was tried before, the error to raise (or None)."""


class ScriptedSink(MemorySink):
    """A memory sink that logs every attempt, counts what is in flight and fails per control id."""

    def __init__(self, name: str = "s") -> None:
        super().__init__(name)
        self.log: list[tuple[str, float, float]] = []
        """(control id, monotonic, wall clock) of every attempt as it starts."""
        self.rules: dict[str, Rule] = {}
        self.tries: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0

    async def send(self, delivery: Delivery) -> None:
        ctrl = delivery.envelope.control_id
        self.log.append((ctrl, time.monotonic(), time.time()))
        before = self.tries.get(ctrl, 0)
        self.tries[ctrl] = before + 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            rule = self.rules.get(ctrl)
            problem = rule(delivery, before) if rule is not None else None
            if problem is not None:
                self.attempts += 1
                raise problem
            await super().send(delivery)
        finally:
            self.in_flight -= 1

    @property
    def delivered(self) -> list[str]:
        return [d.envelope.control_id for d in self.deliveries]


# -- backoff ----------------------------------------------------------------------------------------


def test_backoff_is_full_jitter_under_a_growing_capped_ceiling() -> None:
    policy = RetryPolicy(max_attempts=100, base_s=0.5, cap_s=10.0)
    highest = []
    for attempt in range(1, 9):
        ceiling = min(10.0, 0.5 * 2 ** (attempt - 1))
        waits = [backoff_s(attempt, policy) for _ in range(300)]
        assert all(0.0 <= w <= ceiling for w in waits), attempt
        # full jitter: the waits spread over the whole range, not just near the ceiling
        assert min(waits) < 0.25 * ceiling and max(waits) > 0.75 * ceiling
        highest.append(max(waits))
    assert highest[0] < highest[1] < highest[2] < highest[3] < highest[4]  # grows ...
    assert all(w <= 10.0 for w in highest) and highest[-1] > 7.5  # ... up to the cap


def test_backoff_survives_attempt_counts_far_beyond_the_float_range() -> None:
    """``max_attempts`` has no upper bound: "retry for a week" must not crash the worker at attempt 1025."""
    policy = RetryPolicy(max_attempts=100_000, base_s=1.0, cap_s=300.0)
    for attempt in (1025, 5000, 99_999):
        assert 0.0 <= backoff_s(attempt, policy) <= 300.0
    assert 0.0 <= backoff_s(0, policy) <= 1.0


# -- circuit breaker ---------------------------------------------------------------------------------


def state(breaker: CircuitBreaker) -> str:
    return breaker.state


def test_circuit_opens_after_consecutive_failures_and_probes_once_after_the_cooldown() -> None:
    changes: list[str] = []
    breaker = CircuitBreaker(CircuitPolicy(failure_threshold=3, cooldown_s=10.0), changes.append)
    assert breaker.allow(0.0)
    breaker.failure(1.0)
    breaker.failure(2.0)
    breaker.success()  # not consecutive: the count starts again
    breaker.failure(3.0)
    breaker.failure(4.0)
    assert state(breaker) == "closed" and breaker.allow(4.0) and changes == []
    breaker.failure(5.0)
    assert state(breaker) == "open" and changes == ["open"]
    # cool-down: nothing goes through, and the worker learns how long to wait
    assert not breaker.allow(5.0)
    assert not breaker.allow(14.9)
    assert breaker.retry_in(9.0) == pytest.approx(6.0)
    # half-open: exactly one probe
    assert breaker.allow(15.0)
    assert state(breaker) == "half_open" and changes == ["open", "half_open"]
    assert not breaker.allow(15.1)
    assert not breaker.allow(100.0)
    assert breaker.retry_in(100.0) == 0.0
    breaker.success()
    assert state(breaker) == "closed" and changes == ["open", "half_open", "closed"]
    assert breaker.allow(100.0) and breaker.allow(100.0)


def test_circuit_reopens_when_the_probe_fails_and_callbacks_fire_once_per_transition() -> None:
    changes: list[str] = []
    breaker = CircuitBreaker(CircuitPolicy(failure_threshold=2, cooldown_s=5.0), changes.append)
    breaker.failure(0.0)
    breaker.failure(1.0)
    breaker.failure(1.5)  # a late failure of an attempt already in flight: still open, no new callback
    assert changes == ["open"]
    assert breaker.allow(6.5) and state(breaker) == "half_open"
    breaker.failure(7.0)  # the probe failed: open again, with a fresh cool-down from now
    assert state(breaker) == "open" and changes == ["open", "half_open", "open"]
    assert not breaker.allow(11.9)
    assert breaker.retry_in(10.0) == pytest.approx(2.0)
    assert breaker.allow(12.0)
    breaker.success()
    breaker.success()
    assert changes == ["open", "half_open", "open", "half_open", "closed"]


def test_a_released_probe_lets_the_next_one_through() -> None:
    breaker = CircuitBreaker(CircuitPolicy(failure_threshold=1, cooldown_s=1.0))
    breaker.failure(0.0)
    assert breaker.allow(1.0)
    assert not breaker.allow(1.0)
    breaker.release()  # the allowed attempt never happened
    assert breaker.allow(1.0)
    assert state(breaker) == "half_open"


# -- token bucket -------------------------------------------------------------------------------------


def test_token_bucket_spends_the_burst_at_once_then_keeps_the_rate() -> None:
    async def go() -> None:
        bucket = TokenBucket(RateLimit(per_s=40, burst=5))
        t0 = time.monotonic()
        for _ in range(5):
            await bucket.acquire()
        burst_s = time.monotonic() - t0
        for _ in range(15):
            await bucket.acquire()
        elapsed = time.monotonic() - t0
        assert burst_s < 0.2
        assert elapsed >= 0.8 * (20 - 5) / 40

    asyncio.run(go())


def test_token_bucket_holds_concurrent_takers_to_the_rate() -> None:
    async def go() -> None:
        bucket = TokenBucket(RateLimit(per_s=50, burst=2))
        t0 = time.monotonic()
        await asyncio.gather(*(bucket.acquire() for _ in range(22)))
        assert time.monotonic() - t0 >= 0.8 * (22 - 2) / 50

    asyncio.run(go())


def test_the_engine_keeps_a_sinks_rate_limit(store: SQLiteStore) -> None:
    async def go() -> None:
        sink = MemorySink("s")
        await commit(store, *(record(f"RL{i}") for i in range(10)))
        t0 = time.monotonic()
        engine = await start(store, sink, rate=RateLimit(per_s=25, burst=2), concurrency=4)
        try:
            await until(lambda: len(sink.deliveries) == 10)
            assert time.monotonic() - t0 >= 0.8 * (10 - 2) / 25
        finally:
            await engine.stop(1)

    asyncio.run(go())


# -- the engine end to end ------------------------------------------------------------------------------


def test_every_pending_row_is_delivered_once_with_lineage(store: SQLiteStore) -> None:
    async def go() -> list[IntakeRecord]:
        sink = MemorySink("s")
        other = MemorySink("t")
        recs = await commit(store, *(record(f"D{i}", sinks=("s", "t")) for i in range(20)))
        engine = await start(store, sink, other)
        try:
            await until(lambda: len(sink.deliveries) == 20 and len(other.deliveries) == 20)
            more = await commit(store, record("D-late"))
            engine.notify({"s"})  # intake wakes the worker of the sink that got rows
            await until(lambda: len(sink.deliveries) == 21)
            await asyncio.sleep(0.1)  # nothing is sent twice
        finally:
            await engine.stop(1)
        assert sink.attempts == 21 and other.attempts == 20
        ids = [d.delivery_id for d in sink.deliveries]
        assert sorted(ids) == sorted(f"{r.id}:s" for r in [*recs, *more])
        for d in sink.deliveries:
            assert d.attempt == 1
            assert d.content_type == HL7_TYPE
            assert d.body == d.envelope.raw == hl7(d.envelope.control_id)
            assert d.envelope.raw_sha256 == sha256_hex(d.body)
        assert sink.closed and other.closed
        return [*recs, *more]

    recs = asyncio.run(go())
    assert pending(store) == [] and pending(store, "t") == []
    for rec in recs[:-1]:
        assert {d.sink: (d.status, d.attempts) for d in store.deliveries_of(rec.id)} == {
            "s": ("delivered", 1),
            "t": ("delivered", 1),
        }
        evs = events(store, rec)
        assert sorted(e.event for e in evs) == sorted(["DeliveryAttempted", "DeliverySucceeded"] * 2)
        assert {e.actor for e in evs} == {"sink:s", "sink:t"}
        for e in evs:
            assert e.details["delivery_id"] == f"{rec.id}:{e.actor.removeprefix('sink:')}"
            assert e.details["attempt"] == 1
    assert names(store, recs[-1]) == ["DeliveryAttempted", "DeliverySucceeded"]


def test_retryable_failures_back_off_and_then_succeed(store: SQLiteStore) -> None:
    async def go() -> IntakeRecord:
        sink = MemorySink("s")
        sink.fail_next(2, code="http_503")
        (rec,) = await commit(store, record("RT1"))
        engine = await start(store, sink, retry=RetryPolicy(max_attempts=5, base_s=0.02, cap_s=0.05))
        try:
            await until(lambda: status(store, rec) == "delivered")
        finally:
            await engine.stop(1)
        assert sink.attempts == 3
        assert [d.attempt for d in sink.deliveries] == [3]
        return rec

    rec = asyncio.run(go())
    assert names(store, rec) == [
        "DeliveryAttempted",
        "DeliveryFailed",
        "DeliveryAttempted",
        "DeliveryFailed",
        "DeliveryAttempted",
        "DeliverySucceeded",
    ]
    evs = events(store, rec)
    failed = [e for e in evs if e.event == "DeliveryFailed"]
    attempted = [e for e in evs if e.event == "DeliveryAttempted"]
    assert [a.details["attempt"] for a in attempted] == [1, 2, 3]
    for n, f in enumerate(failed, start=1):
        assert (f.outcome, f.error_code, f.details["attempt"]) == ("retrying", "http_503", n)
        next_at = f.details["next_attempt_at"]
        assert isinstance(next_at, float)
        ceiling = min(0.05, 0.02 * 2 ** (n - 1))
        # the backoff runs from the failed attempt, within the ceiling, and the next attempt waits for it
        assert started_ts(attempted[n - 1]) <= next_at <= at_ts(f) + ceiling
        assert started_ts(attempted[n]) >= next_at - 0.001
    final = row(store, rec)
    assert (final.status, final.attempts, final.last_error_code, final.last_error) == ("delivered", 3, "", "")
    assert final.delivered_at is not None


def test_short_backoffs_are_kept_short(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A retry is attempted when it is due, not at the worker's next idle poll (POLL_S)."""
    # an idle poll of 10 s instead of 1 s: a retry left to the poll takes 40 s, far from the bound
    # below, so a busy machine (slow commits, late timers) cannot be mistaken for the bug
    monkeypatch.setattr(delivery_module, "POLL_S", 10.0)

    async def go() -> None:
        sink = MemorySink("s")
        sink.fail_next(4)
        (rec,) = await commit(store, record("QUICK"))
        t0 = time.monotonic()
        # waits longer than the few ms it takes to record an attempt, so that a retry is not simply
        # found due when the worker wakes after recording the failure
        engine = await start(store, sink, retry=RetryPolicy(max_attempts=10, base_s=0.25, cap_s=0.5))
        try:
            await until(lambda: status(store, rec) == "delivered", timeout=30)
            elapsed = time.monotonic() - t0
        finally:
            await engine.stop(1)
        assert sink.attempts == 5
        # four waits of at most 0.25 + 3 * 0.5 s in all; far below even one idle poll of POLL_S
        assert elapsed < delivery_module.POLL_S / 2

    asyncio.run(go())


def test_dead_letter_after_max_attempts(store: SQLiteStore) -> None:
    async def go() -> IntakeRecord:
        sink = MemorySink("s")
        sink.fail_next(100, code="http_502")
        (rec,) = await commit(store, record("MAX1"))
        engine = await start(store, sink, retry=RetryPolicy(max_attempts=3, base_s=0.01, cap_s=0.02))
        try:
            await until(lambda: status(store, rec) == "dead")
            await asyncio.sleep(0.1)  # and no attempt after that
        finally:
            await engine.stop(1)
        assert sink.attempts == 3 and sink.deliveries == []
        assert engine.workers == {}
        return rec

    rec = asyncio.run(go())
    assert names(store, rec) == [
        "DeliveryAttempted",
        "DeliveryFailed",
        "DeliveryAttempted",
        "DeliveryFailed",
        "DeliveryAttempted",
        "DeliveryFailed",
        "DeadLettered",
    ]
    evs = events(store, rec)
    assert [e.outcome for e in evs if e.event == "DeliveryFailed"] == ["retrying", "retrying", "failed"]
    dead = evs[-1]
    assert (dead.outcome, dead.error_code, dead.details["attempt"]) == ("dead", "http_502", 3)
    final = row(store, rec)
    assert (final.status, final.attempts, final.last_error_code) == ("dead", 3, "http_502")
    assert "failure asked for by the test" in final.last_error
    assert final.as_dict()["state"] == "dead"


def test_a_rejection_is_dead_at_once_and_the_sink_stays_up(store: SQLiteStore) -> None:
    seen: list[tuple[str, str, dict[str, object]]] = []

    async def go() -> tuple[IntakeRecord, IntakeRecord]:
        sink = MemorySink("s")
        sink.fail_next(1, retryable=False, code="http_422")
        (bad,) = await commit(store, record("REJ1"))
        engine = await start(
            store,
            sink,
            circuit=CircuitPolicy(failure_threshold=1, cooldown_s=30),
            observer=lambda kind, s, data: seen.append((kind, s, data)),
        )
        try:
            await until(lambda: status(store, bad) == "dead")
            (good,) = await commit(store, record("REJ2"))
            engine.notify({"s"})
            await until(lambda: status(store, good) == "delivered")
            worker = engine.workers["s"]
            assert worker.breaker.state == "closed"  # a downstream that answers is up
            assert (worker.state.dead, worker.state.delivered, worker.state.failed) == (1, 1, 1)
            assert worker.state.last_error_code == "http_422"
        finally:
            await engine.stop(1)
        assert sink.attempts == 2
        return bad, good

    bad, good = asyncio.run(go())
    assert names(store, good) == ["DeliveryAttempted", "DeliverySucceeded"]
    assert names(store, bad) == ["DeliveryAttempted", "DeliveryFailed", "DeadLettered"]
    assert [e.error_code for e in events(store, bad)[1:]] == ["http_422", "http_422"]
    final = row(store, bad)
    assert (final.status, final.attempts, final.last_error_code) == ("dead", 1, "http_422")
    assert [k for k, _, _ in seen] == ["failed", "dead", "delivered"]
    assert seen[1] == ("dead", "s", {"code": "http_422", "delivery_id": f"{bad.id}:s", "route": "r"})


def test_retry_after_hint_is_respected(store: SQLiteStore) -> None:
    async def go() -> IntakeRecord:
        sink = ScriptedSink()
        sink.rules["RA1"] = lambda d, before: (
            DeliveryRetryable("http_503", "busy", retry_after_s=0.5) if before == 0 else None
        )
        (rec,) = await commit(store, record("RA1"))
        engine = await start(store, sink, retry=RetryPolicy(max_attempts=5, base_s=0.01, cap_s=5.0))
        try:
            await until(lambda: status(store, rec) == "delivered")
        finally:
            await engine.stop(1)
        (_, m1, w1), (_, m2, _) = sink.log
        assert m2 - m1 >= 0.5 * 0.95
        failed = next(e for e in events(store, rec) if e.event == "DeliveryFailed")
        next_at = failed.details["next_attempt_at"]
        assert isinstance(next_at, float) and next_at >= w1 + 0.5
        assert failed.error_code == "http_503" and failed.outcome == "retrying"
        return rec

    asyncio.run(go())


def test_order_holds_per_key_and_a_failing_key_does_not_hold_back_another(store: SQLiteStore) -> None:
    async def go() -> None:
        sink = ScriptedSink()

        def a1(d: Delivery, before: int) -> BaseException | None:
            # A1 keeps failing at least three times, and for as long as key B is not through
            if before < 3 or "B3" not in sink.delivered:
                return DeliveryRetryable("http_503", "down")
            return None

        sink.rules["A1"] = a1
        await commit(
            store,
            record("A1", order_key="A"),
            record("B1", order_key="B"),
            record("A2", order_key="A"),
            record("B2", order_key="B"),
            record("U1"),
            record("A3", order_key="A"),
            record("B3", order_key="B"),
        )
        engine = await start(store, sink, retry=RetryPolicy(max_attempts=200, base_s=0.01, cap_s=0.02))
        try:
            await until(lambda: len(sink.deliveries) == 7, timeout=30)
        finally:
            await engine.stop(1)
        delivered = sink.delivered
        assert [c for c in delivered if c.startswith("A")] == ["A1", "A2", "A3"]
        assert [c for c in delivered if c.startswith("B")] == ["B1", "B2", "B3"]
        # key B (and the unordered message) went through while A's head was failing
        assert delivered.index("B3") < delivered.index("A1")
        assert delivered.index("U1") < delivered.index("A1")
        assert sink.tries["A1"] >= 4
        # nothing of key A was attempted before its head was delivered
        attempts = [c for c, _, _ in sink.log]
        last_a1 = len(attempts) - 1 - attempts[::-1].index("A1")
        assert attempts.index("A2") > last_a1
        assert attempts.count("A2") == attempts.count("A3") == 1

    asyncio.run(go())


def test_a_dead_letter_releases_its_key(store: SQLiteStore) -> None:
    async def go() -> None:
        sink = ScriptedSink()
        sink.rules["K1"] = lambda d, before: DeliveryRetryable("http_500", "broken")
        first, *_ = await commit(
            store,
            record("K1", order_key="K"),
            record("K2", order_key="K"),
            record("K3", order_key="K"),
        )
        engine = await start(store, sink, retry=RetryPolicy(max_attempts=2, base_s=0.01, cap_s=0.02))
        try:
            await until(lambda: len(sink.deliveries) == 2)
        finally:
            await engine.stop(1)
        assert sink.delivered == ["K2", "K3"]
        assert [c for c, _, _ in sink.log] == ["K1", "K1", "K2", "K3"]
        assert status(store, first) == "dead"

    asyncio.run(go())


def test_concurrency_limit_is_respected(store: SQLiteStore) -> None:
    async def go() -> None:
        sink = ScriptedSink()
        sink.delay_s = 0.05
        await commit(store, *(record(f"C{i}") for i in range(12)))
        engine = await start(store, sink, concurrency=3)
        peak = 0
        try:
            worker = engine.workers["s"]
            deadline = time.monotonic() + 30
            while len(sink.deliveries) < 12 and time.monotonic() < deadline:
                peak = max(peak, worker.state.in_flight, len(worker._inflight))
                await asyncio.sleep(0.002)
        finally:
            await engine.stop(1)
        assert len(sink.deliveries) == 12
        assert sink.max_in_flight == 3  # never more, and the limit was used
        assert peak <= 3

    asyncio.run(go())


def test_circuit_opens_and_nothing_is_attempted_during_the_cooldown(store: SQLiteStore) -> None:
    transitions: list[tuple[str, float]] = []
    cooldown = 0.3

    def observer(kind: str, sink: str, data: dict[str, object]) -> None:
        if kind == "circuit":
            transitions.append((str(data["state"]), time.monotonic()))

    async def go() -> None:
        sink = ScriptedSink()
        sink.fail_next(4)  # three open the circuit, the first probe fails too, the second succeeds
        await commit(store, *(record(f"CB{i}") for i in range(5)))
        engine = await start(
            store,
            sink,
            retry=RetryPolicy(max_attempts=50, base_s=0.01, cap_s=0.02),
            circuit=CircuitPolicy(failure_threshold=3, cooldown_s=cooldown),
            concurrency=1,
            observer=observer,
        )
        try:
            await until(lambda: len(sink.deliveries) == 5)
            assert engine.workers["s"].state.circuit == "closed"
        finally:
            await engine.stop(1)
        assert [s for s, _ in transitions] == ["open", "half_open", "open", "half_open", "closed"]
        assert sink.attempts == 9
        starts = [m for _, m, _ in sink.log]
        opened = [t for s, t in transitions if s == "open"]
        # three attempts opened it; one probe per cool-down; none inside a cool-down
        assert sum(1 for m in starts if m < opened[0]) == 3
        assert sum(1 for m in starts if opened[0] < m < opened[1]) == 1
        for t in opened:
            assert not [m for m in starts if t < m < t + cooldown * 0.95]
        # the worker woke for the probe instead of waiting for its idle poll
        probe = min(m for m in starts if m > opened[1])
        assert probe - opened[1] < cooldown + 0.8 * delivery_module.POLL_S

    asyncio.run(go())


def test_transform_is_applied_and_the_stored_message_is_unchanged(store: SQLiteStore) -> None:
    async def go() -> None:
        raw = hl7("TR1", "ZPI|1|site extension\rNK1|1|DOE^JOHN\r")
        sink = MemorySink("s")
        plain = MemorySink("t")
        rec = record("TR1", raw=raw, sinks=("s",), transform="hl7v2_without_z_segments")
        copy = record("TR2", raw=raw, sinks=("t",))
        await commit(store, rec, copy)
        engine = await start(store, sink, plain)
        try:
            await until(lambda: len(sink.deliveries) == 1 and len(plain.deliveries) == 1)
        finally:
            await engine.stop(1)
        (d,) = sink.deliveries
        assert d.body == hl7("TR1", "NK1|1|DOE^JOHN\r")
        assert d.content_type == HL7_TYPE
        assert d.envelope.raw == raw
        assert plain.bodies == [raw]
        assert store.get_raw(rec.id) == raw

    asyncio.run(go())


def test_a_failing_transform_is_dead_lettered_without_an_attempt(store: SQLiteStore) -> None:
    async def go() -> tuple[IntakeRecord, IntakeRecord]:
        sink = MemorySink("s")
        unknown = record("TF1", transform="no_such_transform")
        wrong = record(
            "TF2",
            transform="hl7v2_without_z_segments",
            protocol="pos_json",
            raw=b'{"order": "TF2", "total": 12.5}',
        )
        await commit(store, unknown, wrong)
        engine = await start(store, sink)
        try:
            await until(lambda: status(store, unknown) == "dead" and status(store, wrong) == "dead")
        finally:
            await engine.stop(1)
        assert sink.attempts == 0
        return unknown, wrong

    unknown, wrong = asyncio.run(go())
    for rec, kind in ((unknown, "KeyError"), (wrong, "applies to hl7v2 envelopes, not pos_json")):
        assert names(store, rec) == ["DeliveryAttempted", "DeliveryFailed", "DeadLettered"]
        assert {e.error_code for e in events(store, rec)[1:]} == {"transform_failed"}
        final = row(store, rec)
        assert (final.status, final.attempts, final.last_error_code) == ("dead", 1, "transform_failed")
        assert kind in final.last_error
        assert b"12.5" not in final.last_error.encode()


def test_a_transform_failure_as_the_half_open_probe_does_not_wedge_the_circuit(store: SQLiteStore) -> None:
    async def go() -> None:
        sink = ScriptedSink()
        # GOOD fails once with a long Retry-After: the circuit opens and GOOD is not due for the first probe
        sink.rules["GOOD"] = lambda d, before: (
            DeliveryRetryable("http_503", "busy", retry_after_s=0.4) if before == 0 else None
        )
        (good,) = await commit(store, record("GOOD"))
        engine = await start(
            store,
            sink,
            retry=RetryPolicy(max_attempts=5, base_s=0.01, cap_s=5),
            circuit=CircuitPolicy(failure_threshold=1, cooldown_s=0.1),
        )
        try:
            await until(lambda: engine.workers["s"].breaker.state == "open")
            (broken,) = await commit(store, record("BROKEN", transform="no_such_transform"))
            engine.notify({"s"})
            await until(lambda: status(store, broken) == "dead")  # the probe that proved nothing
            await until(lambda: status(store, good) == "delivered", timeout=30)
            assert engine.workers["s"].breaker.state == "closed"
        finally:
            await engine.stop(1)
        assert sink.delivered == ["GOOD"]

    asyncio.run(go())


def test_an_unexpected_sink_error_is_retried_not_blamed_on_the_transform(store: SQLiteStore) -> None:
    async def go() -> IntakeRecord:
        sink = ScriptedSink()
        sink.rules["KE1"] = lambda d, before: KeyError("header") if before == 0 else None
        (rec,) = await commit(store, record("KE1"))
        engine = await start(store, sink)
        try:
            await until(lambda: status(store, rec) != "pending")
        finally:
            await engine.stop(1)
        return rec

    rec = asyncio.run(go())
    assert status(store, rec) == "delivered"
    failed = next(e for e in events(store, rec) if e.event == "DeliveryFailed")
    assert (failed.outcome, failed.error_code) == ("retrying", "sink_error")


def test_stop_lets_attempts_in_flight_finish_and_leaves_the_rest_pending(store: SQLiteStore) -> None:
    async def go() -> list[IntakeRecord]:
        sink = MemorySink("s")
        sink.delay_s = 0.3
        recs = await commit(store, *(record(f"ST{i}") for i in range(6)))
        engine = await start(store, sink, concurrency=2)
        await until(lambda: sink.attempts == 2)
        await engine.stop(grace_s=5)
        assert len(sink.deliveries) == 2 and sink.attempts == 2 and sink.closed
        await asyncio.sleep(0.4)
        assert sink.attempts == 2  # nothing started after stop
        return recs

    recs = asyncio.run(go())
    done = [r for r in recs if status(store, r) == "delivered"]
    left = [r for r in recs if status(store, r) == "pending"]
    assert len(done) == 2 and len(left) == 4
    for r in left:
        assert row(store, r).attempts == 0 and names(store, r) == []

    async def again() -> MemorySink:
        sink = MemorySink("s")
        engine = await start(store, sink)
        try:
            await until(lambda: not pending(store))
        finally:
            await engine.stop(1)
        return sink

    later = asyncio.run(again())
    assert sorted(d.delivery_id for d in later.deliveries) == sorted(f"{r.id}:s" for r in left)


def test_stop_after_the_grace_cancels_attempts_and_keeps_their_rows_pending(store: SQLiteStore) -> None:
    async def go() -> list[IntakeRecord]:
        sink = MemorySink("s")
        sink.delay_s = 30
        recs = await commit(store, *(record(f"SC{i}") for i in range(3)))
        engine = await start(store, sink, concurrency=2)
        await until(lambda: sink.attempts == 2)
        t0 = time.monotonic()
        await engine.stop(grace_s=0.1)
        assert time.monotonic() - t0 < 3
        assert sink.deliveries == []
        return recs

    recs = asyncio.run(go())
    for r in recs:
        final = row(store, r)
        assert (final.status, final.attempts) == ("pending", 0)


def test_replay_makes_a_dead_letter_pending_and_it_is_delivered(store: SQLiteStore) -> None:
    async def go() -> IntakeRecord:
        sink = MemorySink("s")
        sink.fail_next(1, retryable=False, code="http_400")
        (rec,) = await commit(store, record("RP1"))
        engine = await start(store, sink)
        try:
            await until(lambda: status(store, rec) == "dead")
            assert await store.replay(rec.id, None, "user:test") == 1
            replayed = row(store, rec)
            assert (replayed.status, replayed.attempts) in {("pending", 0), ("delivered", 1)}
            engine.notify({"s"})
            await until(lambda: status(store, rec) == "delivered")
            assert await store.replay(rec.id, None, "user:test") == 0  # nothing dead any more
        finally:
            await engine.stop(1)
        assert [d.attempt for d in sink.deliveries] == [1]
        return rec

    rec = asyncio.run(go())
    assert names(store, rec) == [
        "DeliveryAttempted",
        "DeliveryFailed",
        "DeadLettered",
        "Replayed",
        "DeliveryAttempted",
        "DeliverySucceeded",
    ]
    replayed = next(e for e in events(store, rec) if e.event == "Replayed")
    assert replayed.actor == "user:test" and replayed.details == {"delivery_id": f"{rec.id}:s", "sink": "s"}
    final = row(store, rec)
    assert (final.status, final.attempts, final.last_error_code) == ("delivered", 1, "")


def test_a_slow_sink_does_not_hold_up_another(store: SQLiteStore) -> None:
    async def go() -> None:
        slow, fast = MemorySink("slow"), MemorySink("fast")
        slow.delay_s = 30
        await commit(store, *(record(f"SF{i}", sinks=("slow", "fast")) for i in range(5)))
        engine = await start(store, slow, fast, concurrency=1)
        try:
            await until(lambda: len(fast.deliveries) == 5)
            assert slow.deliveries == [] and slow.attempts == 1
        finally:
            await engine.stop(0.05)
        assert len(pending(store, "slow")) == 5

    asyncio.run(go())
