"""Prometheus metrics: outbox gauges read from the real store at scrape time, counters fed by the engine."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import RetryPolicy
from gateway.metrics import Metrics
from gateway.sink import DeliveryRejected, DeliveryRetryable
from gateway.sinks.memory import MemorySink
from gateway.store import AttemptResult
from gateway.store.sqlite import SQLiteStore
from tests.gateway.test_delivery import ScriptedSink, commit, pending, record, start, status, until


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: bytes, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


def test_outbox_and_circuit_gauges_per_sink(store: SQLiteStore) -> None:
    async def go() -> None:
        a = await commit(store, *(record(f"MA{i}", sinks=("a",)) for i in range(3)))
        b = await commit(store, *(record(f"MB{i}", sinks=("b",)) for i in range(3)))
        await store.record_attempts(
            [
                AttemptResult(f"{b[0].id}:b", b[0].id, "b", 1, "dead", "http_400", "HTTP 400"),
                AttemptResult(f"{b[1].id}:b", b[1].id, "b", 1, "dead", "http_400", "HTTP 400"),
                AttemptResult(f"{b[2].id}:b", b[2].id, "b", 1, "delivered"),
                AttemptResult(f"{a[0].id}:a", a[0].id, "a", 1, "retry", "http_503", "HTTP 503", 1e12),
            ]
        )
        assert status(store, a[0], "a") == "pending"

    asyncio.run(go())
    backlog = {x.sink: x for x in store.backlog()}
    oldest = backlog["a"].oldest_pending_at
    assert oldest is not None and backlog["b"].oldest_pending_at is None
    metrics = Metrics()
    text = metrics.render(
        store.backlog(), {"a": "closed", "b": "open", "c": "half_open"}, now=lambda: oldest + 42.0
    )
    assert value(text, "gateway_outbox_depth", sink="a") == 3
    assert value(text, "gateway_outbox_oldest_age_seconds", sink="a") == pytest.approx(42.0)
    assert value(text, "gateway_outbox_dead", sink="a") == 0
    assert value(text, "gateway_outbox_depth", sink="b") == 0
    assert value(text, "gateway_outbox_oldest_age_seconds", sink="b") == 0
    assert value(text, "gateway_outbox_dead", sink="b") == 2
    # a configured sink without any outbox rows still shows, at zero
    assert value(text, "gateway_outbox_depth", sink="c") == 0
    assert value(text, "gateway_outbox_dead", sink="c") == 0
    assert value(text, "gateway_circuit_state", sink="a") == 0
    assert value(text, "gateway_circuit_state", sink="b") == 2
    assert value(text, "gateway_circuit_state", sink="c") == 1


def test_gauges_follow_the_store_and_forget_sinks_that_are_gone(store: SQLiteStore) -> None:
    async def go() -> None:
        (rec,) = await commit(store, record("MG1", sinks=("old",)))
        metrics = Metrics()
        text = metrics.render(store.backlog(), {"old": "open", "new": "closed"})
        assert value(text, "gateway_outbox_depth", sink="old") == 1
        assert value(text, "gateway_circuit_state", sink="old") == 2
        # the row is delivered and the sink leaves the configuration (a reload): nothing stale remains
        await store.record_attempts([AttemptResult(f"{rec.id}:old", rec.id, "old", 1, "delivered")])
        text = metrics.render(store.backlog(), {"new": "closed"})
        for name in (
            "gateway_outbox_depth",
            "gateway_outbox_oldest_age_seconds",
            "gateway_outbox_dead",
            "gateway_circuit_state",
        ):
            assert value(text, name, sink="old") in (None, 0), name
        assert value(text, "gateway_circuit_state", sink="old") is None
        assert value(text, "gateway_circuit_state", sink="new") == 0
        # without any configured sinks (no runtime) the depth still drops when the rows are gone
        (rec2,) = await commit(store, record("MG2", sinks=("x",)))
        assert value(metrics.render(store.backlog(), {}), "gateway_outbox_depth", sink="x") == 1
        await store.record_attempts([AttemptResult(f"{rec2.id}:x", rec2.id, "x", 1, "delivered")])
        assert value(metrics.render(store.backlog(), {}), "gateway_outbox_depth", sink="x") in (None, 0)

    asyncio.run(go())


def test_counters_count_deliveries_retries_and_dead_letters(store: SQLiteStore) -> None:
    async def go() -> bytes:
        metrics = Metrics()
        sink = ScriptedSink("s")
        sink.rules["CR-retry"] = lambda d, before: (
            DeliveryRetryable("http_503", "down") if before < 2 else None
        )
        sink.rules["CR-dead"] = lambda d, before: DeliveryRejected("http_422", "no")
        other = MemorySink("t")
        await commit(
            store,
            *(record(f"CR{i}") for i in range(3)),
            record("CR-retry"),
            record("CR-dead"),
            record("CR-t", sinks=("t",)),
        )
        engine = await start(
            store,
            sink,
            other,
            retry=RetryPolicy(max_attempts=5, base_s=0.01, cap_s=0.02),
            observer=metrics.observe_delivery,
        )
        try:
            await until(lambda: not pending(store, "s") and not pending(store, "t"))
            circuits: dict[str, str] = {n: w.breaker.state for n, w in engine.workers.items()}
        finally:
            await engine.stop(1)
        return metrics.render(store.backlog(), circuits)

    text = asyncio.run(go())
    assert value(text, "gateway_deliveries_total", sink="s", outcome="delivered") == 4
    assert value(text, "gateway_deliveries_total", sink="s", outcome="failed") == 3
    assert value(text, "gateway_deliveries_total", sink="t", outcome="delivered") == 1
    assert value(text, "gateway_deliveries_total", sink="t", outcome="failed") is None
    assert value(text, "gateway_delivery_retries_total", sink="s") == 2
    assert value(text, "gateway_dead_letters_total", sink="s") == 1
    assert value(text, "gateway_delivery_latency_seconds_count", sink="s") == 4
    assert value(text, "gateway_delivery_latency_seconds_count", sink="t") == 1
    assert value(text, "gateway_outbox_depth", sink="s") == 0
    assert value(text, "gateway_outbox_dead", sink="s") == 1
    assert value(text, "gateway_outbox_dead", sink="t") == 0
    assert value(text, "gateway_circuit_state", sink="s") == 0


def test_unknown_observer_kinds_are_ignored() -> None:
    metrics = Metrics()
    metrics.observe_delivery("circuit", "s", {"state": "open"})
    metrics.observe_delivery("something_new", "s", {})
    metrics.observe_delivery("delivered", "s", {"duration_s": 0.1, "age_s": 2.5})
    text = metrics.render([], {})
    assert value(text, "gateway_deliveries_total", sink="s", outcome="delivered") == 1
    assert value(text, "gateway_delivery_latency_seconds_sum", sink="s") == 2.5
    assert not [k for k in samples(text) if k[0] == "gateway_circuit_state"]
