"""The delivery engine: outbox workers, retry with backoff and jitter, circuit breakers, rate limits.

Intake writes outbox rows in the same transaction as the message; this engine
works them off, one :class:`SinkWorker` per sink, so a slow or dead sink never
holds up intake or another sink. Each worker:

* takes due rows (for routes with ``order_by``, only the oldest pending row of
  each key, and never a key that already has a delivery in flight, so order
  holds per key while a failing message holds back only its own key);
* waits for its rate limit (a token bucket) and asks its circuit breaker;
* applies the route's transform, makes one attempt through the sink, and
  records the attempt and its outcome in lineage;
* on a retryable failure schedules the next attempt after an exponential
  backoff with full jitter (never sooner than the downstream's Retry-After),
  and dead-letters the delivery after ``retry.max_attempts`` or at once when
  the downstream rejects it.

A dead letter no longer holds its key: later messages for that key go on, and
the dead one waits for an operator's replay. Deliveries are at least once; the
stable delivery id (envelope id + sink) lets a downstream make the effect
exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from gateway.config import CircuitPolicy, RateLimit, RetryPolicy
from gateway.envelope import Envelope, utcnow
from gateway.sink import Delivery, DeliveryRejected, DeliveryRetryable, Sink
from gateway.store import AttemptResult, DueDelivery, Store
from gateway.transforms import TransformError, transforms

log = logging.getLogger("gateway.delivery")

CONTENT_TYPES: Mapping[str, str] = {"hl7v2": "x-application/hl7-v2+er7"}
POLL_S = 1.0
"""Longest a worker sleeps without looking at the outbox (it also wakes on new rows and finished attempts)."""

RETRY_AFTER_MAX_S = 3600.0
CircuitState = Literal["closed", "open", "half_open"]


_jitter = random.Random()
_MAX_DOUBLINGS = 1000
"""2.0 ** 1000 is still a float; a larger power of two overflows (``max_attempts`` has no upper bound)."""


def backoff_s(attempt: int, policy: RetryPolicy) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    doublings = min(max(0, attempt - 1), _MAX_DOUBLINGS)
    ceiling = min(policy.cap_s, policy.base_s * 2.0**doublings)
    return _jitter.uniform(0, ceiling)


class CircuitBreaker:
    """Closed → open after N consecutive failures → one probe after the cool-down → closed on success."""

    def __init__(
        self, policy: CircuitPolicy, on_change: Callable[[CircuitState], None] | None = None
    ) -> None:
        self.policy = policy
        self.state: CircuitState = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self._probing = False
        self._on_change = on_change

    def _set(self, state: CircuitState) -> None:
        if state != self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(state)

    def allow(self, now: float) -> bool:
        """May an attempt start now? In half-open state exactly one probe is let through."""
        if self.state == "closed":
            return True
        if self.state == "open" and now - self.opened_at >= self.policy.cooldown_s:
            self._set("half_open")
        if self.state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def retry_in(self, now: float) -> float:
        return max(0.0, self.policy.cooldown_s - (now - self.opened_at)) if self.state == "open" else 0.0

    def success(self) -> None:
        self.failures = 0
        self._probing = False
        self._set("closed")

    def failure(self, now: float) -> None:
        self.failures += 1
        self._probing = False
        if self.state == "half_open" or self.failures >= self.policy.failure_threshold:
            self.opened_at = now
            self._set("open")

    def release(self) -> None:
        """An allowed attempt did not happen (or proved nothing): let the next probe through."""
        self._probing = False


class TokenBucket:
    """``per_s`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, limit: RateLimit) -> None:
        self.rate = limit.per_s
        self.capacity = float(limit.burst)
        self.tokens = float(limit.burst)
        self.stamp = time.monotonic()

    async def acquire(self) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


@dataclass
class SinkState:
    """What ``/healthz`` and ``/metrics`` show of a sink."""

    name: str
    circuit: CircuitState = "closed"
    in_flight: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    last_error_code: str = ""


Observer = Callable[[str, str, dict[str, object]], None]
"""Called as observer(kind, sink, data) for attempts, dead letters and circuit changes (alerts, metrics)."""


def envelope_of(d: DueDelivery) -> Envelope:
    """Rebuild the envelope a delivery needs from the stored message (the body is not re-parsed)."""
    return Envelope(
        id=d.message_id,
        received_at=datetime.fromisoformat(d.received_at),
        protocol=d.protocol,
        version=d.version,
        message_type=d.message_type,
        control_id=d.control_id,
        sender=d.sender,
        receiver=d.receiver,
        raw=d.raw,
        raw_sha256=d.raw_sha256,
        body=None,
        headers=d.headers,
    )


class SinkWorker:
    """Works off one sink's outbox (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        sink: Sink,
        *,
        retry: RetryPolicy,
        circuit: CircuitPolicy,
        rate_limit: RateLimit | None,
        concurrency: int,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.sink = sink
        self.name = sink.name
        self.retry = retry
        self.concurrency = concurrency
        self.bucket = TokenBucket(rate_limit) if rate_limit else None
        self.state = SinkState(sink.name)
        self.observer = observer
        self.breaker = CircuitBreaker(circuit, self._circuit_changed)
        self.wake = asyncio.Event()
        self.stopping = False
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._recording: set[str] = set()
        """Rows whose attempt is over and whose result waits for a commit: not to be fetched again."""
        self._tasks: set[asyncio.Task[None]] = set()
        """Every attempt task, in flight or recording its result, and result writers."""
        self._results: list[tuple[AttemptResult, asyncio.Future[None]]] = []
        """Results finished in this turn of the loop, written together."""
        self._inflight_keys: set[str] = set()
        self._retry_times: list[float] = []
        """A heap of the times retries were scheduled for, so the worker wakes when one is due."""
        self._task: asyncio.Task[None] | None = None

    def _notify(self, kind: str, data: dict[str, object]) -> None:
        if self.observer is not None:
            try:
                self.observer(kind, self.name, data)
            except Exception:
                log.exception("delivery observer failed", extra={"sink": self.name})

    def _circuit_changed(self, state: CircuitState) -> None:
        self.state.circuit = state
        log.warning("circuit " + state, extra={"sink": self.name})
        self._notify("circuit", {"state": state})

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sink:{self.name}")

    async def stop(self, grace_s: float) -> None:
        """Take no new work; let attempts in flight finish within ``grace_s``; the rest stays pending."""
        self.stopping = True
        self.wake.set()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=grace_s)
        pending = list(self._tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace_s)
            for task in late:
                task.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _run(self) -> None:
        while not self.stopping:
            self.wake.clear()
            try:
                self._fill()
            except Exception:
                log.exception("outbox read failed", extra={"sink": self.name})
            timeout = POLL_S
            now = time.time()
            if self.breaker.state == "open":
                timeout = min(POLL_S, max(0.05, self.breaker.retry_in(now)))
            while self._retry_times and self._retry_times[0] <= now:
                heapq.heappop(self._retry_times)  # due: the fill just done saw it
            if self._retry_times:
                timeout = min(timeout, max(0.001, self._retry_times[0] - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)

    def _fill(self) -> None:
        free = self.concurrency - len(self._inflight)
        if free <= 0 or self.stopping:
            return
        now = time.time()
        if self.breaker.state != "closed" and not self.breaker.allow(now):
            return
        probing = self.breaker.state == "half_open"
        limit = 1 if probing else free
        started = 0
        try:
            due = self.store.due_deliveries(
                self.name, now, limit + len(self._inflight_keys), set(self._inflight) | self._recording
            )
            for d in due:
                if d.order_key is not None and d.order_key in self._inflight_keys:
                    continue
                if started >= limit:
                    break
                if d.order_key is not None:
                    self._inflight_keys.add(d.order_key)
                task = asyncio.get_running_loop().create_task(self._attempt(d))
                self._inflight[d.id] = task
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                started += 1
        finally:
            if probing and started == 0:
                self.breaker.release()  # no probe went out (nothing due, or the read failed)

    async def _attempt(self, d: DueDelivery) -> None:
        try:
            if self.bucket is not None:
                await self.bucket.acquire()
            result = await self._send(d)
            if result.outcome == "retry":
                heapq.heappush(self._retry_times, result.next_attempt_at)
            # the slot is free for the next delivery while this result waits for a commit to ride on;
            # the row (and its key) stay excluded until the result is recorded
            self._recording.add(d.id)
            self._inflight.pop(d.id, None)
            self.wake.set()
            try:
                await self._record(result)
            except Exception:
                # the row stays as it was: the attempt will be repeated, which the delivery id makes safe
                log.exception("could not record a delivery attempt", extra={"sink": self.name})
        finally:
            self._inflight.pop(d.id, None)
            self._recording.discard(d.id)
            if d.order_key is not None:
                self._inflight_keys.discard(d.order_key)
            self.wake.set()

    async def _record(self, result: AttemptResult) -> None:
        """Record ``result``; results that finish in the same turn of the loop share one store write."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._results.append((result, done))
        if len(self._results) == 1:
            loop.call_soon(self._write_results)
        await done

    def _write_results(self) -> None:
        batch, self._results = self._results, []

        async def write() -> None:
            try:
                await self.store.record_attempts([r for r, _ in batch])
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                return
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

        task = asyncio.get_running_loop().create_task(write())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, d: DueDelivery) -> AttemptResult:
        attempt = d.attempts + 1
        started = utcnow()
        t0 = time.monotonic()
        self.state.in_flight += 1
        outcome: Literal["delivered", "retry", "dead"]
        code = reason = ""
        next_at = 0.0
        try:
            envelope = envelope_of(d)
            try:
                if d.transform:  # off the loop: converting a large message takes a while
                    transformed = await asyncio.to_thread(transforms()[d.transform], envelope)
                    body, content_type = transformed.body, transformed.content_type
                else:
                    body, content_type = d.raw, CONTENT_TYPES.get(d.protocol, "application/octet-stream")
            except (TransformError, KeyError) as exc:
                self.breaker.release()  # the sink was not asked: if this was the probe, it proved nothing
                outcome, code, reason = (  # a TransformError says why in bounded codes, never values
                    "dead",
                    "transform_failed",
                    f"transform {d.transform!r} failed: "
                    + (str(exc) if isinstance(exc, TransformError) else type(exc).__name__),
                )
            else:
                await self.sink.send(Delivery(d.id, envelope, body, content_type, attempt))
                outcome = "delivered"
                self.breaker.success()
        except DeliveryRejected as exc:
            outcome, code, reason = "dead", exc.code, exc.reason
            self.breaker.success()  # the downstream answered: it is up
        except DeliveryRetryable as exc:
            code, reason = exc.code, exc.reason
            self.breaker.failure(time.time())
            outcome, next_at = self._retry_at(attempt, exc.retry_after_s)
        except Exception as exc:  # a sink bug: retry, and say what kind of error it was
            code, reason = "sink_error", f"{type(exc).__name__} in sink {self.name}"
            log.exception("sink raised an unexpected error", extra={"sink": self.name})
            self.breaker.failure(time.time())
            outcome, next_at = self._retry_at(attempt, None)
        finally:
            self.state.in_flight -= 1
        duration = time.monotonic() - t0
        self._account(d, outcome, code, attempt, duration)
        return AttemptResult(
            delivery_id=d.id,
            message_id=d.message_id,
            sink=self.name,
            attempt=attempt,
            outcome=outcome,
            error_code=code,
            reason=reason,
            next_attempt_at=next_at,
            started_at=started.isoformat(),
            duration_ms=duration * 1000,
        )

    def _retry_at(self, attempt: int, retry_after_s: float | None) -> tuple[Literal["retry", "dead"], float]:
        if attempt >= self.retry.max_attempts:
            return "dead", 0.0
        wait = backoff_s(attempt, self.retry)
        if retry_after_s is not None:
            # the downstream's own hint wins over our cap, up to an hour (a bogus hint must not park a delivery)
            wait = max(wait, min(retry_after_s, max(self.retry.cap_s, RETRY_AFTER_MAX_S)))
        return "retry", time.time() + wait

    def _account(self, d: DueDelivery, outcome: str, code: str, attempt: int, duration: float) -> None:
        state = self.state
        if outcome == "delivered":
            state.delivered += 1
            age = time.time() - datetime.fromisoformat(d.received_at).astimezone(UTC).timestamp()
            self._notify("delivered", {"duration_s": duration, "age_s": age, "route": d.route})
        else:
            state.failed += 1
            state.last_error_code = code
            self._notify("failed", {"code": code, "attempt": attempt, "route": d.route})
            if outcome == "retry":
                self._notify("retry", {"code": code, "attempt": attempt, "route": d.route})
            else:
                state.dead += 1
                log.warning(
                    "delivery dead-lettered",
                    extra={"sink": self.name, "delivery_id": d.id, "error_code": code, "attempts": attempt},
                )
                self._notify("dead", {"code": code, "delivery_id": d.id, "route": d.route})


class DeliveryEngine:
    """One worker per sink; ``notify`` wakes the workers whose sinks just got outbox rows."""

    def __init__(self, store: Store, observer: Observer | None = None) -> None:
        self.store = store
        self.observer = observer
        self.workers: dict[str, SinkWorker] = {}

    async def start(
        self, sinks: Mapping[str, tuple[Sink, RetryPolicy, CircuitPolicy, RateLimit | None, int]]
    ) -> None:
        for name, (sink, retry, circuit, rate, concurrency) in sinks.items():
            await sink.open()
            worker = SinkWorker(
                self.store,
                sink,
                retry=retry,
                circuit=circuit,
                rate_limit=rate,
                concurrency=concurrency,
                observer=self.observer,
            )
            self.workers[name] = worker
            worker.start()

    def notify(self, sinks: set[str]) -> None:
        for name in sinks:
            worker = self.workers.get(name)
            if worker is not None:
                worker.wake.set()

    async def stop(self, grace_s: float = 10.0) -> None:
        await asyncio.gather(*(w.stop(grace_s) for w in self.workers.values()))
        for w in self.workers.values():
            with contextlib.suppress(Exception):
                await w.sink.close()
        self.workers.clear()
