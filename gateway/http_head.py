"""uvicorn's HTTP protocol with a time limit on each request's head.

uvicorn closes a connection idle between requests (``timeout_keep_alive``) but
sets no limit on the head of a request: a client that opens a connection and
sends nothing, or trickles a header line every few seconds, holds a
connection and its buffers for ever. :func:`head_timed` returns a protocol
class that closes the connection unless a request's line and headers arrive
within ``timeout_s`` of the connection opening, the request's first byte, or
the first bytes after a response that begin no request (blank lines), and
closes a connection answered before its request's body arrived (401, 413,
408) instead of reading the rest of that body. Bodies have their own time
limit (:mod:`gateway.bodies`).
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["head_timed"]

log = logging.getLogger("gateway.http")


def head_timed(timeout_s: float) -> type[asyncio.Protocol]:
    """The httptools protocol of uvicorn, closing connections whose request head is slower than
    ``timeout_s``."""

    class HeadTimedProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_head()

        def on_headers_complete(self) -> None:
            self._disarm_head()
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # bytes between requests that begin none (blank lines) stop uvicorn's keep-alive timer:
            # the next request's head is timed from them
            idle = self.cycle is None or self.cycle.response_complete
            if idle and self._head_timer is None and not self.transport.is_closing():
                self._arm_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            cycle = self.cycle
            if cycle is not None and cycle.response_complete and cycle.more_body:
                # answered before its body arrived (401, 413, 408): the rest of it is not read
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head()
            super().connection_lost(exc)

        def _arm_head(self) -> None:
            self._disarm_head()
            self._head_timer = self.loop.call_later(timeout_s, self._head_expired)

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
                client = self.client
                log.info(
                    "http request head not received in time; closed",
                    extra={"peer": f"{client[0]}:{client[1]}" if client else ""},
                )
                self.transport.close()

    return HeadTimedProtocol
