"""The HTTP sink: POST each delivery to a configured URL with aiohttp.

What lives here: :class:`HTTPSink` and :func:`parse_retry_after`.

The transport is aiohttp rather than httpx because this is the hot path of
delivery and aiohttp's client costs several times less CPU per request.

One ``aiohttp.ClientSession`` per sink (created in ``open``, closed in
``close``) pools its connections: at most ``concurrency`` of them, an idle one
kept for 5 s. A request is ``POST endpoint`` with either the message bytes
(``body: raw``, sent with the delivery's content type) or a JSON envelope
(``body: envelope``, see :func:`envelope_json`). Every request carries
``Idempotency-Key`` (the delivery id, stable across retries),
``X-Gateway-Envelope-Id``, ``X-Gateway-Attempt``, the configured headers, and
``Authorization: Bearer`` when ``bearer_token_env`` names a variable (read at
``open``; a missing variable is a :class:`~gateway.errors.ConfigError`).

Outcome of one attempt:

========================================  ===================================================
2xx                                       delivered
408, 429, 5xx (any status >= 500)         ``DeliveryRetryable("http_<status>")``, with
                                          ``Retry-After`` (seconds or HTTP-date) as the hint
3xx (redirects are not followed: the      ``DeliveryRejected("http_<status>")``
endpoint is configuration), other 4xx
no status within ``timeout_s`` (waiting   ``DeliveryRetryable``: ``timeout``
for a connection, connecting, sending,    (``connect_timeout`` when aiohttp reports that the
or waiting for the answer)                connection alone ran out of time)
network failures before a status          ``DeliveryRetryable``: ``connect_error`` (refused,
                                          unknown host), ``tls_error``, ``network_error``
                                          (reset), ``protocol_error`` (closed without a
                                          whole response, unreadable status or headers),
                                          ``transport_error`` (anything else)
========================================  ===================================================

Once the status has arrived it decides the outcome: a body that is cut short,
broken or late only costs the connection.

Reasons name the sink and the status with its *standard* reason phrase (never
the one the server sent, and never the response body: a downstream may echo
PHI); a network failure is described by exception type names only. The
response body is read up to 64 KiB, undecoded, and thrown away, so a
connection can be reused without letting a downstream fill memory.

Environment proxy variables are ignored (``trust_env=False``): a message
carrying PHI goes only where the configuration says. The server certificate is
checked against ``ca_file`` when set, else the system's trust store (not at
all with ``verify_tls: false``). Cookies a downstream sets are sent back to it
(load-balancer stickiness), as the httpx client this replaced did.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson
from yarl import URL

from gateway.config import HTTPSinkConfig
from gateway.envelope import Envelope
from gateway.errors import ConfigError
from gateway.sink import Delivery, DeliveryRejected, DeliveryRetryable
from gateway.sinks._net import CHECK_TIMEOUT_S, tcp_reachable

__all__ = ["MAX_RESPONSE_BYTES", "HTTPSink", "envelope_json", "parse_retry_after"]

MAX_RESPONSE_BYTES = 64 * 1024
"""Response bytes read (and discarded) before the connection is dropped instead of reused."""

KEEPALIVE_S = 5.0
"""How long an idle connection is kept for reuse (httpx's default, shorter than most servers' own)."""

RETRYABLE_4XX = frozenset({408, 429})
ENVELOPE_CONTENT_TYPE = "application/json"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or an HTTP-date); None if unreadable.

    A date in the past gives ``0.0``.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def envelope_json(envelope: Envelope, body: bytes, content_type: str) -> bytes:
    """The ``body: envelope`` request body: the envelope's metadata and the delivered bytes in base64."""
    doc: dict[str, Any] = {
        "id": envelope.id,
        "received_at": envelope.received_at.isoformat(),
        "protocol": envelope.protocol,
        "version": envelope.version,
        "message_type": envelope.message_type,
        "control_id": envelope.control_id,
        "sender": envelope.sender,
        "receiver": envelope.receiver,
        "headers": dict(envelope.headers),
        "raw_sha256": envelope.raw_sha256,
        "content_type": content_type,
        "body_base64": base64.b64encode(body).decode("ascii"),
    }
    return orjson.dumps(doc)


def _status_line(status: int) -> str:
    """``HTTP 503 Service Unavailable``: the code and its standard phrase, nothing the server wrote."""
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def _root_causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


class SessionSettings(Protocol):
    """What an HTTP-based sink's configuration says about its connections (http, fhir)."""

    @property
    def headers(self) -> dict[str, str]: ...
    @property
    def bearer_token_env(self) -> str | None: ...
    @property
    def verify_tls(self) -> bool: ...
    @property
    def ca_file(self) -> Path | None: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def timeout_s(self) -> float: ...


def open_session(
    name: str, cfg: SessionSettings, extra_headers: Mapping[str, str] | None = None
) -> aiohttp.ClientSession:
    """The pooled session of sink ``name``: its headers (and ``extra_headers``), the bearer token read
    from the environment (a ConfigError when the variable is unset), TLS as configured, no proxies from
    the environment, bodies read as sent."""
    headers = dict(cfg.headers)
    if cfg.bearer_token_env is not None:
        token = os.environ.get(cfg.bearer_token_env, "")
        if not token:
            raise ConfigError(
                f"sinks.{name}.bearer_token_env: environment variable {cfg.bearer_token_env} is not set or empty"
            )
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        headers["Authorization"] = f"Bearer {token}"
    headers.update(extra_headers or {})
    verify: ssl.SSLContext | bool = False
    if cfg.verify_tls:
        verify = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=cfg.concurrency, ssl=verify, keepalive_timeout=KEEPALIVE_S),
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=cfg.timeout_s),
        cookie_jar=aiohttp.CookieJar(unsafe=True),  # like httpx: keep a downstream's (sticky) cookies
        auto_decompress=False,
        trust_env=False,
    )


class HTTPSink:
    """POSTs each delivery to ``config.endpoint``; see the module docstring for the outcome table."""

    def __init__(self, name: str, config: HTTPSinkConfig) -> None:
        self.name = name
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._url = URL(config.endpoint)
        self._host = self._url.host or ""
        self._port = self._url.port or (443 if self._url.scheme == "https" else 80)

    async def open(self) -> None:
        """Read the bearer token from the environment and create the pooled session."""
        if self._session is not None:
            return
        self._session = open_session(self.name, self.config)

    async def send(self, delivery: Delivery) -> None:
        """POST ``delivery`` once; return on 2xx, else raise DeliveryRetryable or DeliveryRejected."""
        session = self._session
        if session is None:
            raise RuntimeError(f"sink {self.name!r} is not open")
        if self.config.body == "envelope":
            content = envelope_json(delivery.envelope, delivery.body, delivery.content_type)
            content_type = ENVELOPE_CONTENT_TYPE
        else:
            content, content_type = delivery.body, delivery.content_type
        headers = {
            "Content-Type": content_type,  # present, so aiohttp adds no Content-Type of its own
            "Idempotency-Key": delivery.delivery_id,
            "X-Gateway-Envelope-Id": delivery.envelope.id,
            "X-Gateway-Attempt": str(delivery.attempt),
        }
        status: int | None = None
        retry_after: str | None = None
        try:
            async with asyncio.timeout(self.config.timeout_s):
                response = await session.post(self._url, data=content, headers=headers, allow_redirects=False)
                try:
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
                    await _drain(response)
                finally:
                    response.release()  # back to the pool when the body was read to its end, else closed
        except (aiohttp.ClientError, ValueError) as exc:  # ValueError: a header aiohttp refuses to send
            if status is None:
                raise self._transport_error(exc) from None
            # the status arrived; a failure after it only costs the connection
        except TimeoutError:
            if status is None:
                raise self._retryable("timeout", f"no response within {self.config.timeout_s} s") from None
            # the status arrived in time; only reading the (discarded) body ran over
        assert status is not None
        self._outcome(status, retry_after)

    def _outcome(self, status: int, retry_after: str | None) -> None:
        if 200 <= status < 300:
            return
        code = f"http_{status}"
        line = _status_line(status)
        if status in RETRYABLE_4XX or status >= 500 or status < 200:
            raise DeliveryRetryable(
                code, f"sink {self.name!r}: {line}", retry_after_s=parse_retry_after(retry_after)
            )
        if 300 <= status < 400:
            raise DeliveryRejected(
                code, f"sink {self.name!r}: {line}; redirects are not followed, configure the final URL"
            )
        raise DeliveryRejected(code, f"sink {self.name!r}: {line}")

    def _retryable(self, code: str, what: str) -> DeliveryRetryable:
        return DeliveryRetryable(code, f"sink {self.name!r}: {what}")

    def _transport_error(self, exc: Exception) -> DeliveryRetryable:
        return self._retryable(*transport_error(exc, self.config.timeout_s, self._url))

    async def check(self) -> bool:
        """True when a TCP connection to the endpoint's host and port opens within a short time."""
        return await tcp_reachable(self._host, self._port, min(CHECK_TIMEOUT_S, self.config.timeout_s))

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def transport_error(exc: Exception, timeout_s: float, url: URL) -> tuple[str, str]:
    """The error code and reason for a failure before any status arrived (every HTTP-based sink codes
    them alike); the reason names exception types only, never a value."""
    causes = _root_causes(exc)
    kinds = ", ".join(dict.fromkeys(type(c).__name__ for c in causes))
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect_timeout", f"no connection within {timeout_s} s"
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return "timeout", f"no response within {timeout_s} s"
    if (
        isinstance(exc, aiohttp.ClientSSLError)
        or any(isinstance(c, ssl.SSLError) for c in causes)
        or (isinstance(exc, aiohttp.ClientConnectorError) and _closed_in_handshake(exc, url))
    ):
        return "tls_error", f"TLS handshake failed ({kinds})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect_error", f"could not connect ({kinds})"
    if isinstance(
        exc, aiohttp.ServerDisconnectedError | aiohttp.ClientResponseError | aiohttp.ClientPayloadError
    ):
        # closed before a whole response, or an unreadable status line or headers
        return "protocol_error", f"the server broke the HTTP protocol ({kinds})"
    if isinstance(exc, aiohttp.ClientConnectionError):
        return "network_error", f"the connection failed ({kinds})"
    return "transport_error", f"the request failed ({kinds})"


def _closed_in_handshake(exc: aiohttp.ClientConnectorError, url: URL) -> bool:
    """True when the server closed the connection during the TLS handshake.

    asyncio (and uvloop) report that as a ``ConnectionResetError`` without an errno, unlike a reset
    from the kernel; httpx called it ``SSLEOFError``, hence ``tls_error`` rather than ``connect_error``.
    """
    return (
        url.scheme == "https"
        and isinstance(exc.os_error, ConnectionResetError)
        and exc.os_error.errno is None
    )


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read and discard up to MAX_RESPONSE_BYTES of the body; a longer or broken body drops the connection."""
    received = 0
    try:
        while chunk := await response.content.read(MAX_RESPONSE_BYTES + 1 - received):
            received += len(chunk)
            if received > MAX_RESPONSE_BYTES:
                response.close()
                return
    except (aiohttp.ClientError, TimeoutError):
        response.close()  # the status line is what counts; a body cut short only costs the connection
