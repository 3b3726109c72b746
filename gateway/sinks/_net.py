"""Network helpers the sinks share: the TCP reachability probe behind ``Sink.check``, and reading an
HTTP answer's body within a size limit."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

CHECK_TIMEOUT_S = 2.0
"""Longest a health probe waits for a TCP connection."""


async def tcp_reachable(host: str, port: int, timeout_s: float = CHECK_TIMEOUT_S) -> bool:
    """True when a TCP connection to ``host:port`` opens within ``timeout_s``; never raises.

    Only the TCP handshake is made (no TLS, no request), so a probe costs the
    downstream nothing but an accepted and closed connection.
    """
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The answer's body to its end, or its first ``limit + 1`` bytes when it is longer (the caller tells
    the two apart by the length). Errors reading it propagate.

    ``content.read(n)`` returns what has arrived so far (at most ``n`` bytes), not ``n`` bytes: an answer
    that comes in more than one piece (a TLS record, a slow network, a busy host) is read until the end.
    """
    chunks: list[bytes] = []
    received = 0
    while chunk := await response.content.read(limit + 1 - received):
        chunks.append(chunk)
        received += len(chunk)
        if received > limit:
            break
    return b"".join(chunks)
