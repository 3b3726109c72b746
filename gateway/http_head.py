"""uvicorn's HTTP protocol with the HTTP listener's limits: connections overall and per client, and a time
limit on each request's head.

uvicorn accepts every connection it is offered. :func:`limited_protocol`
returns a protocol class (a :class:`LimitedProtocol`) that admits or refuses
each new connection, plain or TLS (once its handshake is done), against
``max_connections`` and ``max_connections_per_client``, with the same
:class:`~gateway.listeners.ConnectionGate` as the MLLP and ISO 8583 listeners:
one gate per class, so one per server. A refused connection is answered
``503 Service Unavailable`` with ``Connection: close`` without waiting for its
request, nothing it sends is read, and it is closed at once.

uvicorn closes a connection idle between requests (``timeout_keep_alive``) but
sets no limit on the head of a request: a client that opens a connection and
sends nothing, or trickles a header line every few seconds, holds a
connection and its buffers for ever. The protocol class closes the connection
unless a request's line and headers arrive within ``header_timeout_s`` of the
connection opening, the request's first byte, or the first bytes after a
response that begin no request (blank lines). Bodies have their own time limit,
and a connection answered before its request's body was read is closed
(:mod:`gateway.bodies`).

The gateway has no WebSocket route, and the server is run without a WebSocket
protocol (``ws="none"``): an upgrade would hand the connection to another
protocol, outside these limits (and never giving its place back). An upgrade
request is answered as plain HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.config import HTTPConfig
from gateway.listeners import ConnectionGate, peer_of

__all__ = ["REFUSAL", "LimitedProtocol", "limited_protocol"]

log = logging.getLogger("gateway.http")

_REFUSAL_TEXT = b"Too many connections."
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\n"
    b"connection: close\r\n"
    b"\r\n" % len(_REFUSAL_TEXT)
) + _REFUSAL_TEXT
"""What a connection over the limits gets before it is closed (before it has sent a request)."""


class LimitedProtocol(HttpToolsProtocol):
    """The httptools protocol of uvicorn, keeping the connection limits of :attr:`gate` and closing
    connections whose request head is slower than :attr:`header_timeout_s`. A server's own subclass,
    with its own gate, comes from :func:`limited_protocol`."""

    gate: ClassVar[ConnectionGate]
    """Counts this server's connections: one per class, shared by its connections."""
    header_timeout_s: ClassVar[float]

    _head_timer: asyncio.TimerHandle | None = None
    _host: str | None = None
    """The client address whose place this connection holds; ``None`` while it holds none (refused)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host, peer = peer_of(transport)
        if not self.gate.admit(host, peer):
            self.connections.discard(self)  # not one of the server's connections: nothing waits for it
            transport.write(REFUSAL)
            transport.close()
            return
        self._host = host
        self._arm_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head()

    def on_headers_complete(self) -> None:
        self._disarm_head()
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._host is None:
            return  # refused: nothing it sends is read
        super().data_received(data)
        # bytes between requests that begin none (blank lines) stop uvicorn's keep-alive timer:
        # the next request's head is timed from them
        idle = self.cycle is None or self.cycle.response_complete
        if idle and self._head_timer is None and not self.transport.is_closing():
            self._arm_head()

    def _unsupported_upgrade_warning(self) -> None:
        # the server runs without a WebSocket protocol (ws="none"), so that every connection stays one of
        # these; uvicorn's own warning would advise installing a WebSocket library
        log.info("http upgrade request answered as plain HTTP", extra={"peer": self._peer()})

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head()
        if self._host is not None:
            self.gate.release(self._host)
            self._host = None
        super().connection_lost(exc)

    def _arm_head(self) -> None:
        self._disarm_head()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_expired)

    def _disarm_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head()  # a response is still on its way: the next head waits for it
            return
        if not self.transport.is_closing():
            log.info("http request head not received in time; closed", extra={"peer": self._peer()})
            self.transport.close()

    def _peer(self) -> str:
        client = self.client
        return f"{client[0]}:{client[1]}" if client else ""


def limited_protocol(config: HTTPConfig) -> type[LimitedProtocol]:
    """The protocol class of one HTTP server: :class:`LimitedProtocol` with ``config``'s connection limits
    (``max_connections``, ``max_connections_per_client``) and ``header_timeout_s``, and a count of
    connections of its own. Call it once per server."""

    class ServerProtocol(LimitedProtocol):
        gate = ConnectionGate("http", config, log)
        header_timeout_s = config.header_timeout_s

    return ServerProtocol
