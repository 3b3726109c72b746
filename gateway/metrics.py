"""Prometheus metrics: one registry per running gateway, fed by intake and the delivery engine.

Counters and histograms are updated as things happen; the outbox gauges
(depth, oldest pending age, dead letters) and circuit states are read when
``/metrics`` is scraped, so they are never stale: a sink that has left both the
outbox and the configuration loses its series.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.envelope import Receipt, utcnow
from gateway.store import SinkBacklog

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
CIRCUIT_VALUE = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # label children are looked up once: ``labels()`` takes a lock and builds a tuple on every call
        self._intake_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._reply_children: dict[tuple[str, str], Any] = {}
        r = self.registry
        self.received = Counter(
            "gateway_messages_received", "Messages received", ["protocol", "listener"], registry=r
        )
        self.replied = Counter(
            "gateway_replies", "Replies sent, by the protocol's code", ["protocol", "code"], registry=r
        )
        self.ack_latency = Histogram(
            "gateway_ack_latency_seconds",
            "From receipt to reply",
            ["listener"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.deliveries = Counter(
            "gateway_deliveries", "Delivery attempts by outcome", ["sink", "outcome"], registry=r
        )
        self.retries = Counter(
            "gateway_delivery_retries", "Attempts that will be retried", ["sink"], registry=r
        )
        self.dead_letters = Counter("gateway_dead_letters", "Deliveries dead-lettered", ["sink"], registry=r)
        self.delivery_latency = Histogram(
            "gateway_delivery_latency_seconds",
            "From receipt to successful delivery",
            ["sink"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.outbox_depth = Gauge("gateway_outbox_depth", "Pending deliveries", ["sink"], registry=r)
        self.outbox_age = Gauge(
            "gateway_outbox_oldest_age_seconds", "Age of the oldest pending delivery", ["sink"], registry=r
        )
        self.outbox_dead = Gauge(
            "gateway_outbox_dead", "Dead-lettered deliveries waiting for replay", ["sink"], registry=r
        )
        self.circuit = Gauge(
            "gateway_circuit_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            ["sink"],
            registry=r,
        )
        self._outbox_sinks: set[str] = set()
        self._circuit_sinks: set[str] = set()
        self._render_lock = threading.Lock()
        """Scrapes run in a thread pool; one at a time keeps the gauges and the sets above in step."""

    def observe_intake(self, protocol: str, receipt: Receipt, codes: list[str]) -> None:
        """Intake's hook: messages received, replies by code, and the time from receipt to reply."""
        key = (protocol, receipt.listener)
        children = self._intake_children.get(key)
        if children is None:
            children = (
                self.received.labels(protocol, receipt.listener),
                self.ack_latency.labels(receipt.listener),
            )
            self._intake_children[key] = children
        received, latency = children
        received.inc(len(codes))
        for code in codes:
            reply = self._reply_children.get((protocol, code))
            if reply is None:
                reply = self._reply_children[(protocol, code)] = self.replied.labels(protocol, code)
            reply.inc()
        latency.observe((utcnow() - receipt.received_at).total_seconds())

    def observe_delivery(self, kind: str, sink: str, data: dict[str, object]) -> None:
        """The delivery engine's observer hook."""
        if kind == "delivered":
            self.deliveries.labels(sink, "delivered").inc()
            age = data.get("age_s")
            if isinstance(age, float):
                self.delivery_latency.labels(sink).observe(age)
        elif kind == "failed":
            self.deliveries.labels(sink, "failed").inc()
        elif kind == "dead":
            self.dead_letters.labels(sink).inc()
        elif kind == "retry":
            self.retries.labels(sink).inc()

    def render(
        self, backlog: Iterable[SinkBacklog], circuits: dict[str, str], now: Callable[[], float] = time.time
    ) -> bytes:
        with self._render_lock:
            return self._render(backlog, circuits, now())

    def _render(self, backlog: Iterable[SinkBacklog], circuits: dict[str, str], t: float) -> bytes:
        seen = set()
        for b in backlog:
            seen.add(b.sink)
            self.outbox_depth.labels(b.sink).set(b.pending)
            self.outbox_age.labels(b.sink).set(t - b.oldest_pending_at if b.oldest_pending_at else 0)
            self.outbox_dead.labels(b.sink).set(b.dead)
        for sink, state in circuits.items():
            if sink not in seen:
                self.outbox_depth.labels(sink).set(0)
                self.outbox_age.labels(sink).set(0)
                self.outbox_dead.labels(sink).set(0)
            self.circuit.labels(sink).set(CIRCUIT_VALUE.get(state, 0))
        # a sink no longer in the outbox (all delivered) nor configured keeps no stale series
        outbox_sinks = seen | set(circuits)
        for sink in self._outbox_sinks - outbox_sinks:
            for gauge in (self.outbox_depth, self.outbox_age, self.outbox_dead):
                gauge.remove(sink)
        for sink in self._circuit_sinks - set(circuits):
            self.circuit.remove(sink)
        self._outbox_sinks, self._circuit_sinks = outbox_sinks, set(circuits)
        return bytes(generate_latest(self.registry))
