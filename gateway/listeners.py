"""What every TCP listener shares: binding, connection limits per client and overall, TLS, peers.

:class:`TCPListener` binds an asyncio server and admits or refuses each new
connection against ``max_connections`` and ``max_connections_per_client``
(its :class:`ConnectionGate`, which the HTTP listener's protocol uses too);
the MLLP and ISO 8583 listeners add their framing and their work on top.
:func:`readable_headers` is how a listener addresses a refusal when it could
not take a message through intake, and :func:`cut` how it ends a connection on
a time-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import struct
from collections import Counter
from typing import Generic, Protocol, TypeVar

from gateway.adapter import Adapter, ParseError
from gateway.config import TLSConfig
from gateway.envelope import Receipt
from gateway.errors import ConfigError

__all__ = [
    "Connection",
    "ConnectionGate",
    "ConnectionLimits",
    "TCPListener",
    "bound_socket",
    "cannot_bind",
    "cut",
    "peer_of",
    "readable_headers",
    "server_tls",
]


class ConnectionLimits(Protocol):
    @property
    def max_connections(self) -> int: ...

    @property
    def max_connections_per_client(self) -> int: ...


class Connection(Protocol):
    host: str
    """Client address, the key of the per-client limit."""
    peer: str
    """``host:port``, for logs."""


C = TypeVar("C", bound=Connection)


def cannot_bind(exc: OSError) -> str:
    """Why an address could not be bound, in a few words (``Address already in use``)."""
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno)
    return exc.strerror or type(exc).__name__  # a name that does not resolve (socket.gaierror)


def bound_socket(name: str, host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6, as ``host`` resolves) for a server that takes
    sockets (uvicorn); :class:`ConfigError` naming listener ``name`` when the address cannot be bound."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=512)
    except OSError as exc:
        raise ConfigError(f"{name}: cannot listen on {host}:{port} ({cannot_bind(exc)})") from None


def peer_of(transport: asyncio.BaseTransport) -> tuple[str, str]:
    """``(host, "host:port")`` of the transport's remote end; empty strings when it has none."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple):
        return str(peer[0]), f"{peer[0]}:{peer[1]}"
    return "", ""


class ConnectionGate:
    """Admits or refuses each new connection of one listener against ``max_connections`` and
    ``max_connections_per_client`` of ``limits``, and counts the admitted ones until they are released.

    One gate per listener, shared by its connections: :class:`TCPListener` (MLLP, ISO 8583) and the HTTP
    listener's protocol (:mod:`gateway.http_head`) keep their limits with it. ``name`` prefixes the log
    line of a refusal, which names the peer address and nothing else.
    """

    def __init__(self, name: str, limits: ConnectionLimits, log: logging.Logger) -> None:
        self.name = name
        self.limits = limits
        self.log = log
        self.open = 0
        """Connections admitted and not yet released."""
        self._per_client: Counter[str] = Counter()

    def admit(self, host: str, peer: str) -> bool:
        """Count a new connection from ``host`` and answer ``True``, or log its refusal (with ``peer``,
        ``host:port``) and answer ``False``; a refused connection is not counted and is closed by its caller."""
        if self.open >= self.limits.max_connections:
            self.log.warning(f"{self.name} connection refused: too many connections", extra={"peer": peer})
            return False
        if self._per_client[host] >= self.limits.max_connections_per_client:
            self.log.warning(
                f"{self.name} connection refused: too many connections from client", extra={"peer": peer}
            )
            return False
        self.open += 1
        self._per_client[host] += 1
        return True

    def release(self, host: str) -> None:
        """Give back the place of an admitted connection from ``host`` that has ended; its caller releases
        each admitted connection once (a host with no admitted connection is left as it is)."""
        if self._per_client[host] <= 0:
            return
        self.open -= 1
        self._per_client[host] -= 1
        if self._per_client[host] <= 0:
            del self._per_client[host]


class TCPListener(Generic[C]):
    """Binds ``protocol_factory`` on ``host:port`` and keeps the connection limits of ``limits``.

    ``name`` prefixes the log lines (``mllp``, ``iso8583``). Connections call
    :meth:`admit` when made (and close at once on ``False``) and
    :meth:`release` when lost; the counting is the listener's :class:`ConnectionGate`.
    """

    def __init__(self, name: str, limits: ConnectionLimits, log: logging.Logger) -> None:
        self.name = name
        self.log = log
        self.gate = ConnectionGate(name, limits, log)
        self._server: asyncio.Server | None = None
        self._connections: set[C] = set()

    def protocol(self) -> asyncio.Protocol:
        """A new connection's protocol object."""
        raise NotImplementedError

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        """Listen on ``host:port``; :class:`ConfigError` when the address cannot be bound (in use, not
        this host's, a port below 1024 without the right)."""
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self.protocol,
                host,
                port,
                ssl=ssl_context,  # the handshake's time limit is the gateway loop's (gateway.server)
                reuse_address=True,
                backlog=512,
            )
        except OSError as exc:
            raise ConfigError(f"{self.name}: cannot listen on {host}:{port} ({cannot_bind(exc)})") from None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    def admit(self, conn: C) -> bool:
        if not self.gate.admit(conn.host, conn.peer):
            return False
        self._connections.add(conn)
        return True

    def release(self, conn: C) -> None:
        if conn in self._connections:
            self._connections.discard(conn)
            self.gate.release(conn.host)


def readable_headers(adapter: Adapter, raw: bytes, listener: str) -> dict[str, str]:
    """Whatever header fields ``adapter`` can read from ``raw``, for addressing a refusal."""
    try:
        return dict(adapter.parse(raw, Receipt(listener=listener)).headers)
    except ParseError as exc:
        return dict(exc.headers)
    except Exception:
        return {}


def ssl_server_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_tls(tls: TLSConfig | None) -> ssl.SSLContext | None:
    """The server context of a listener's ``tls`` setting (mutual TLS with ``client_ca``), or ``None``."""
    if tls is None:
        return None
    return ssl_server_context(str(tls.cert), str(tls.key), str(tls.client_ca) if tls.client_ca else None)


def cut(transport: asyncio.Transport | None) -> None:
    """End a connection on a time-out without waiting for its peer: replies it has not read are dropped
    (a reset), so that the connection and its per-client slot end now, not whenever the peer reads."""
    if transport is None or transport.is_closing():
        return
    if transport.get_write_buffer_size():  # (uvloop's transports do not subclass asyncio's: no isinstance)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a reset, not a close queued behind replies the peer will never read
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()
