"""Reading an HTTP request body within the listener's limits: size (413) and time (408).

Every endpoint that takes a body reads it with :func:`read_limited`, after the
caller is authenticated: nobody without a key makes the gateway hold a body,
a body over the limit is refused as soon as it is announced or exceeded, and
a client that trickles one cannot hold a connection open. Each API maps
:class:`BodyRefused` to its own error shape (JSON error, FHIR OperationOutcome).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.requests import Request

__all__ = ["BodyLimits", "BodyRefused", "read_limited"]


@dataclass(frozen=True, slots=True)
class BodyLimits:
    max_bytes: int
    """Largest body taken; a larger one gets 413."""
    timeout_s: float
    """Time allowed for the whole body to arrive; a slower one gets 408."""


class BodyRefused(Exception):
    """The body broke a limit: ``status`` is 413 (too large) or 408 (too slow)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def read_limited(request: Request, limits: BodyLimits) -> bytes:
    """The request body, or :class:`BodyRefused` as soon as it is over the size or the time limit."""
    too_large = BodyRefused(413, f"The body exceeds the limit of {limits.max_bytes} bytes.")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_bytes:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        raise BodyRefused(408, f"The body did not arrive within {limits.timeout_s:g} s.") from None
    return b"".join(chunks)
