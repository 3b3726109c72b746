"""HTTPSink against a real HTTP server on loopback: bodies, headers, status mapping, network failures."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import struct
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, TypeVar

import pytest

from gateway.config import HTTPSinkConfig
from gateway.errors import ConfigError
from gateway.sink import DeliveryRejected, DeliveryRetryable
from gateway.sinks.http import HTTPSink, parse_retry_after
from tests.gateway.sinks.peers import HL7_TYPE, Answer, Receiver, TLSFiles, delivery, envelope
from tests.support import free_port

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def config(endpoint: str, **kw: Any) -> HTTPSinkConfig:
    return HTTPSinkConfig.model_validate({"type": "http", "endpoint": endpoint, **kw})


async def send_once(cfg: HTTPSinkConfig, *deliveries: Any) -> HTTPSink:
    sink = HTTPSink("ehr", cfg)
    await sink.open()
    try:
        for d in deliveries or (delivery(),):
            await sink.send(d)
    finally:
        await sink.close()
    return sink


def test_raw_body_and_headers() -> None:
    d = delivery(attempt=3)
    with Receiver() as rx:
        run(send_once(config(rx.url, headers={"X-Site": "north", "Idempotency-Key": "ignored"}), d))
    (req,) = rx.requests
    assert req.path == "/in"
    assert req.body == d.body
    assert req.headers["content-type"] == HL7_TYPE
    assert req.headers["idempotency-key"] == d.delivery_id
    assert req.headers["x-gateway-envelope-id"] == d.envelope.id
    assert req.headers["x-gateway-attempt"] == "3"
    assert req.headers["x-site"] == "north"
    assert "authorization" not in req.headers


def test_envelope_body() -> None:
    env = envelope("C-77")
    d = delivery(env, body=b'{"resourceType":"Patient"}', content_type="application/fhir+json")
    with Receiver() as rx:
        run(send_once(config(rx.url, body="envelope"), d))
    (req,) = rx.requests
    assert req.headers["content-type"] == "application/json"
    doc = json.loads(req.body)
    assert {
        "id",
        "received_at",
        "protocol",
        "version",
        "message_type",
        "control_id",
        "sender",
        "receiver",
        "headers",
        "raw_sha256",
        "body_base64",
    } <= set(doc)
    assert doc["id"] == env.id
    assert doc["control_id"] == "C-77"
    assert doc["message_type"] == "ADT^A01"
    assert doc["protocol"] == "hl7v2"
    assert datetime.fromisoformat(doc["received_at"]) == env.received_at
    assert doc["headers"] == dict(env.headers)
    assert doc["raw_sha256"] == hashlib.sha256(env.raw).hexdigest()
    assert base64.b64decode(doc["body_base64"]) == d.body
    assert doc["content_type"] == "application/fhir+json"


def test_bearer_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EHR_TOKEN", "tok-123")
    with Receiver() as rx:
        run(send_once(config(rx.url, bearer_token_env="EHR_TOKEN", headers={"Authorization": "Basic x"})))
    assert rx.requests[0].headers["authorization"] == "Bearer tok-123"


def test_missing_bearer_variable_fails_at_open(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EHR_TOKEN_MISSING", raising=False)
    sink = HTTPSink("ehr", config("http://127.0.0.1:9/x", bearer_token_env="EHR_TOKEN_MISSING"))
    with pytest.raises(ConfigError, match="EHR_TOKEN_MISSING"):
        run(sink.open())


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_delivered(status: int) -> None:
    with Receiver() as rx:
        rx.default = Answer(status, body=b"" if status == 204 else b"fine")
        run(send_once(config(rx.url)))
    assert len(rx.requests) == 1


@pytest.mark.parametrize(
    ("answer", "code", "retry_after"),
    [
        (Answer(408), "http_408", None),
        (Answer(429, {"Retry-After": "7"}), "http_429", 7.0),
        (Answer(503, {"Retry-After": "120"}), "http_503", 120.0),
        (Answer(500), "http_500", None),
        (Answer(502, {"Retry-After": "soon"}), "http_502", None),
    ],
)
def test_retryable_statuses(answer: Answer, code: str, retry_after: float | None) -> None:
    with Receiver() as rx:
        rx.answer(answer)
        with pytest.raises(DeliveryRetryable) as info:
            run(send_once(config(rx.url)))
    assert info.value.code == code
    assert info.value.retry_after_s == retry_after
    assert "ehr" in info.value.reason


def test_429_with_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    with Receiver() as rx:
        rx.answer(Answer(429, {"Retry-After": format_datetime(when, usegmt=True)}))
        with pytest.raises(DeliveryRetryable) as info:
            run(send_once(config(rx.url)))
    assert info.value.retry_after_s is not None
    assert 25 <= info.value.retry_after_s <= 31


@pytest.mark.parametrize(("status", "code"), [(400, "http_400"), (404, "http_404"), (422, "http_422")])
def test_other_4xx_are_rejected(status: int, code: str) -> None:
    with Receiver() as rx:
        rx.answer(Answer(status))
        with pytest.raises(DeliveryRejected) as info:
            run(send_once(config(rx.url)))
    assert info.value.code == code


def test_redirect_is_rejected_not_followed() -> None:
    with Receiver() as rx:
        rx.answer(Answer(301, {"Location": "http://127.0.0.1:9/elsewhere"}))
        with pytest.raises(DeliveryRejected) as info:
            run(send_once(config(rx.url)))
    assert info.value.code == "http_301"
    assert len(rx.requests) == 1


def test_reason_never_echoes_the_response() -> None:
    """A downstream that echoes the message in its reason phrase and body: neither reaches the reason."""
    with Receiver() as rx:
        rx.answer(Answer(400, body=b"PID|DOE^JANE rejected", reason="Bad DOE^JANE"))
        with pytest.raises(DeliveryRejected) as info:
            run(send_once(config(rx.url)))
    assert "DOE" not in str(info.value)
    assert "400 Bad Request" in info.value.reason


def test_connection_refused_is_retryable() -> None:
    with pytest.raises(DeliveryRetryable) as info:
        run(send_once(config(f"http://127.0.0.1:{free_port()}/in")))
    assert info.value.code == "connect_error"


def test_slow_server_times_out() -> None:
    with Receiver() as rx:
        rx.answer(Answer(200, delay_s=10.0))  # released when the receiver closes
        started = time.monotonic()
        with pytest.raises(DeliveryRetryable) as info:
            run(send_once(config(rx.url, timeout_s=0.3)))
        elapsed = time.monotonic() - started
    assert info.value.code == "timeout"
    assert elapsed < 3  # the 0.3 s time-out ended the wait, not the answer (a new loop and session included)


def test_connections_are_reused() -> None:
    with Receiver() as rx:
        run(send_once(config(rx.url), delivery(), delivery(), delivery()))
    assert len(rx.requests) == 3
    assert len({r.client_port for r in rx.requests}) == 1


def test_large_response_body_is_not_kept() -> None:
    with Receiver() as rx:
        rx.answer(Answer(200, body=b"x" * (1024 * 1024)), Answer(200))
        run(send_once(config(rx.url), delivery(), delivery()))
    assert len(rx.requests) == 2


def test_concurrent_sends_share_a_bounded_pool() -> None:
    async def go(url: str) -> None:
        sink = HTTPSink("ehr", config(url, concurrency=2))
        await sink.open()
        try:
            await asyncio.gather(*(sink.send(delivery()) for _ in range(6)))
        finally:
            await sink.close()

    with Receiver() as rx:
        rx.default = Answer(200, delay_s=0.05)
        run(go(rx.url))
    assert len(rx.requests) == 6
    assert len({r.client_port for r in rx.requests}) <= 2


def test_https_with_ca_file(tls: TLSFiles) -> None:
    with Receiver(tls) as rx:
        run(send_once(config(rx.url, ca_file=str(tls.ca))))
        with pytest.raises(DeliveryRetryable) as info:
            run(send_once(config(rx.url)))  # the test CA is not in the system's trust store
    assert len(rx.requests) == 1
    assert info.value.code == "tls_error"


def test_check() -> None:
    with Receiver() as rx:
        sink = HTTPSink("ehr", config(rx.url))
        assert run(sink.check()) is True
    assert run(HTTPSink("ehr", config(f"http://127.0.0.1:{free_port()}/")).check()) is False


def test_send_before_open_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError):
        run(HTTPSink("ehr", config("http://127.0.0.1:9/")).send(delivery()))


def test_parse_retry_after() -> None:
    now = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("5", now) == 5.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after("Mon, 01 Jan 2024 12:01:00 GMT", now) == 60.0
    assert parse_retry_after("Mon, 01 Jan 2024 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("-3", now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("", now) is None
    assert parse_retry_after(None, now) is None


# -- a peer that misbehaves below HTTP ------------------------------------------------------------------


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    await reader.readexactly(length)


async def _against(behaviour: str, tls: TLSFiles | None = None, timeout_s: float = 2.0) -> str:
    """Send one delivery to a raw TCP peer acting out ``behaviour``; "delivered" or the error code."""
    handlers: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            if behaviour == "close_in_handshake":
                await reader.read(1)  # the ClientHello has arrived
                return
            await _read_request(reader)
            if behaviour == "reset":
                linger = struct.pack("ii", 1, 0)
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                writer.transport.abort()
            elif behaviour == "garbage":
                writer.write(b"HELLO THERE\r\n\r\n")
            elif behaviour in ("short_body", "stalled_body"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
                await writer.drain()
                if behaviour == "stalled_body":
                    await asyncio.sleep(timeout_s * 3)
            # "close": close without answering
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    extra = {"ca_file": str(tls.ca)} if tls else {}
    cfg = config(f"{'https' if tls else 'http'}://127.0.0.1:{port}/in", timeout_s=timeout_s, **extra)
    try:
        await send_once(cfg)
        return "delivered"
    except DeliveryRetryable as exc:
        assert "ehr" in exc.reason
        return exc.code
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


@pytest.mark.parametrize(
    ("behaviour", "code"),
    [
        ("close", "protocol_error"),  # closed without an answer
        ("reset", "network_error"),
        ("garbage", "protocol_error"),  # not an HTTP status line
        ("short_body", "delivered"),  # the status counts, the body is thrown away anyway
    ],
)
def test_network_failures(behaviour: str, code: str) -> None:
    assert run(_against(behaviour)) == code


def test_status_in_time_body_late_is_delivered() -> None:
    started = time.monotonic()
    assert run(_against("stalled_body", timeout_s=0.3)) == "delivered"
    assert time.monotonic() - started < 1.5


def test_server_closing_in_tls_handshake_is_a_tls_error(tls: TLSFiles) -> None:
    assert run(_against("close_in_handshake", tls=tls)) == "tls_error"
