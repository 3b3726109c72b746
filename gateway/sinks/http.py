"""The HTTP sink: POST each delivery to a configured URL with httpx.

What lives here: :class:`HTTPSink` and :func:`parse_retry_after`.

One ``httpx.AsyncClient`` per sink pools its connections (at most
``concurrency`` of them). A request is ``POST endpoint`` with either the
message bytes (``body: raw``, sent with the delivery's content type) or a JSON
envelope (``body: envelope``, see :func:`envelope_json`). Every request carries
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
time-outs (connect, pool, read, write,    ``DeliveryRetryable``: ``connect_timeout``,
or the whole request over ``timeout_s``)  ``pool_timeout``, ``timeout``
network failures                          ``DeliveryRetryable``: ``connect_error``,
                                          ``tls_error``, ``network_error``, ``protocol_error``,
                                          ``transport_error``
========================================  ===================================================

Reasons name the sink and the status with its *standard* reason phrase (never
the one the server sent, and never the response body: a downstream may echo
PHI). The response body is read up to 64 KiB and thrown away, so a connection
can be reused without letting a downstream fill memory.

Environment proxy variables are ignored (``trust_env=False``): a message
carrying PHI goes only where the configuration says. The server certificate is
checked against ``ca_file`` when set, else the system's trust store.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import ssl
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any

import httpx
import orjson

from gateway.config import HTTPSinkConfig
from gateway.envelope import Envelope
from gateway.errors import ConfigError
from gateway.sink import Delivery, DeliveryRejected, DeliveryRetryable
from gateway.sinks._net import CHECK_TIMEOUT_S, tcp_reachable

__all__ = ["MAX_RESPONSE_BYTES", "HTTPSink", "envelope_json", "parse_retry_after"]

MAX_RESPONSE_BYTES = 64 * 1024
"""Response bytes read (and discarded) before the connection is dropped instead of reused."""

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


class HTTPSink:
    """POSTs each delivery to ``config.endpoint``; see the module docstring for the outcome table."""

    def __init__(self, name: str, config: HTTPSinkConfig) -> None:
        self.name = name
        self.config = config
        self._client: httpx.AsyncClient | None = None
        url = httpx.URL(config.endpoint)
        self._host = url.host
        self._port = url.port or (443 if url.scheme == "https" else 80)

    async def open(self) -> None:
        """Read the bearer token from the environment and create the pooled client."""
        if self._client is not None:
            return
        cfg = self.config
        headers = httpx.Headers(cfg.headers)
        if cfg.bearer_token_env is not None:
            token = os.environ.get(cfg.bearer_token_env, "")
            if not token:
                raise ConfigError(
                    f"sinks.{self.name}.bearer_token_env: environment variable "
                    f"{cfg.bearer_token_env} is not set or empty"
                )
            headers["Authorization"] = f"Bearer {token}"
        verify: ssl.SSLContext | bool = False
        if cfg.verify_tls:
            verify = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(cfg.timeout_s),
            limits=httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency),
            verify=verify,
            follow_redirects=False,
            trust_env=False,
        )

    async def send(self, delivery: Delivery) -> None:
        """POST ``delivery`` once; return on 2xx, else raise DeliveryRetryable or DeliveryRejected."""
        client = self._client
        if client is None:
            raise RuntimeError(f"sink {self.name!r} is not open")
        if self.config.body == "envelope":
            content = envelope_json(delivery.envelope, delivery.body, delivery.content_type)
            content_type = ENVELOPE_CONTENT_TYPE
        else:
            content, content_type = delivery.body, delivery.content_type
        request = client.build_request(
            "POST",
            self.config.endpoint,
            content=content,
            headers={
                "Content-Type": content_type,
                "Idempotency-Key": delivery.delivery_id,
                "X-Gateway-Envelope-Id": delivery.envelope.id,
                "X-Gateway-Attempt": str(delivery.attempt),
            },
        )
        status: int | None = None
        retry_after: str | None = None
        try:
            async with asyncio.timeout(self.config.timeout_s):
                response = await client.send(request, stream=True)
                status = response.status_code
                retry_after = response.headers.get("retry-after")
                await _drain(response)
        except TimeoutError:
            if status is None:
                raise self._retryable("timeout", f"no response within {self.config.timeout_s} s") from None
            # the status arrived in time; only reading the (discarded) body ran over
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
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

    def _transport_error(self, exc: httpx.HTTPError) -> DeliveryRetryable:
        causes = _root_causes(exc)
        kinds = ", ".join(dict.fromkeys(type(c).__name__ for c in causes))
        if isinstance(exc, httpx.ConnectTimeout):
            return self._retryable("connect_timeout", f"no connection within {self.config.timeout_s} s")
        if isinstance(exc, httpx.PoolTimeout):
            return self._retryable("pool_timeout", "no free connection in time")
        if isinstance(exc, httpx.TimeoutException):
            return self._retryable("timeout", f"no response within {self.config.timeout_s} s")
        if any(isinstance(c, ssl.SSLError) for c in causes):
            return self._retryable("tls_error", f"TLS handshake failed ({kinds})")
        if isinstance(exc, httpx.ConnectError):
            return self._retryable("connect_error", f"could not connect ({kinds})")
        if isinstance(exc, httpx.RemoteProtocolError):
            return self._retryable("protocol_error", f"the server broke the HTTP protocol ({kinds})")
        if isinstance(exc, httpx.NetworkError):
            return self._retryable("network_error", f"the connection failed ({kinds})")
        return self._retryable("transport_error", f"the request failed ({kinds})")

    async def check(self) -> bool:
        """True when a TCP connection to the endpoint's host and port opens within a short time."""
        return await tcp_reachable(self._host, self._port, min(CHECK_TIMEOUT_S, self.config.timeout_s))

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


async def _drain(response: httpx.Response) -> None:
    """Read and discard up to MAX_RESPONSE_BYTES of the body; a longer or broken body drops the connection."""
    received = 0
    try:
        async for chunk in response.aiter_raw():
            received += len(chunk)
            if received > MAX_RESPONSE_BYTES:
                break
    except httpx.HTTPError:
        pass  # the status line is what counts; a body cut short only costs the connection
    finally:
        await response.aclose()
