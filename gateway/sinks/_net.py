"""Network helpers the sinks share: the TCP reachability probe behind ``Sink.check``."""

from __future__ import annotations

import asyncio
import contextlib

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
