"""Alerts: one notification when an incident starts and one when it ends, never one per failed message.

Incidents, per sink:

* ``dead_letters`` — a delivery was dead-lettered; ends when the sink next delivers successfully;
* ``circuit_open`` — the sink's circuit opened; ends when it closes;
* ``backlog_age``  — the oldest pending delivery is older than ``alerts.pending_age_s``; ends when it is not.

Notifications go to the HTTP sink named in ``alerts.sink`` as JSON
(``{"alert", "state": "firing"|"resolved", "sink", "since", "at", "detail"}``;
``since`` is when the incident started) in the background, one at a time and
in order (a resolution never overtakes its firing notification), with a few
attempts each; they carry sink names and error codes, never message contents.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from datetime import UTC, datetime

import orjson

from gateway.envelope import Envelope, new_id, sha256_hex, utcnow
from gateway.sink import Delivery, DeliveryError, Sink
from gateway.store import SinkBacklog

log = logging.getLogger("gateway.alerts")

ATTEMPTS = 3


class Alerter:
    def __init__(self, sink: Sink | None, pending_age_s: float) -> None:
        self.sink = sink
        self.pending_age_s = pending_age_s
        self.open: dict[tuple[str, str], float] = {}
        self._queue: deque[dict[str, object]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self.sent: deque[dict[str, object]] = deque(maxlen=100)
        """The latest notifications, for /healthz and tests."""

    def observe(self, kind: str, sink: str, data: dict[str, object]) -> None:
        """The delivery engine's observer hook."""
        if kind == "dead":
            self._fire("dead_letters", sink, {"error_code": data.get("code", "")})
        elif kind == "delivered":
            self._resolve("dead_letters", sink)
        elif kind == "circuit":
            if data.get("state") == "open":
                self._fire("circuit_open", sink, {})
            elif data.get("state") == "closed":
                self._resolve("circuit_open", sink)

    def check_backlog(self, backlog: list[SinkBacklog], now: float | None = None) -> None:
        t = time.time() if now is None else now
        late = {
            b.sink
            for b in backlog
            if b.oldest_pending_at is not None and t - b.oldest_pending_at > self.pending_age_s
        }
        for b in backlog:
            if b.sink in late:
                self._fire("backlog_age", b.sink, {"pending": b.pending, "limit_s": self.pending_age_s})
        for alert, sink in list(self.open):
            if alert == "backlog_age" and sink not in late:
                self._resolve("backlog_age", sink)

    def _fire(self, alert: str, sink: str, detail: dict[str, object]) -> None:
        if (alert, sink) in self.open:
            return
        since = self.open[(alert, sink)] = time.time()
        self._send(alert, "firing", sink, since, detail)

    def _resolve(self, alert: str, sink: str) -> None:
        since = self.open.pop((alert, sink), None)
        if since is not None:
            self._send(alert, "resolved", sink, since, {})

    def _send(self, alert: str, state: str, sink: str, since: float, detail: dict[str, object]) -> None:
        note: dict[str, object] = {
            "alert": alert,
            "state": state,
            "sink": sink,
            "since": datetime.fromtimestamp(since, UTC).isoformat(),
            "at": utcnow().isoformat(),
            "detail": detail,
        }
        log.warning(f"alert {alert} {state}", extra={"sink": sink})
        self.sent.append(note)
        if self.sink is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._queue.append(note)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())

    async def _drain(self) -> None:
        """Deliver queued notifications one at a time, in the order they were raised."""
        while self._queue:
            await self._deliver(self._queue.popleft())

    async def _deliver(self, note: dict[str, object]) -> None:
        assert self.sink is not None
        body = orjson.dumps(note)
        env = Envelope(
            id=new_id(),
            received_at=datetime.now(UTC),
            protocol="alert",
            version="1",
            message_type=str(note["alert"]),
            control_id="",
            sender="gateway",
            receiver=self.sink.name,
            raw=body,
            raw_sha256=sha256_hex(body),
            body=note,
            headers={},
        )
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await self.sink.send(Delivery(env.id, env, body, "application/json", attempt))
                return
            except DeliveryError as exc:
                log.warning("alert not delivered", extra={"error_code": exc.code, "attempt": attempt})
            except Exception:  # a sink bug (or a closed sink) must not stop the notifications after this one
                log.exception("alert not delivered", extra={"attempt": attempt})
                return
            if attempt < ATTEMPTS:
                await asyncio.sleep(attempt)

    async def close(self) -> None:
        if self._worker is not None and not self._worker.done():
            await asyncio.wait([self._worker], timeout=5)
