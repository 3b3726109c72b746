"""Reading an HTTP request body within the listener's limits: size (413) and time (408).

Every endpoint that takes a body reads it with :func:`read_limited`, after the
caller is authenticated: nobody without a key makes the gateway hold a body,
a body over the limit is refused as soon as it is announced or exceeded, and
a client that trickles one cannot hold a connection open. Each API maps
:class:`BodyRefused` to its own error shape (JSON error, FHIR OperationOutcome).

A request answered before its body was read to the end (401, 403, 413, 408,
415 …) gets ``Connection: close`` on its response, and the server closes the
connection after it (:class:`CloseUnreadBodies`): the rest of that body is
never read, and a client that would send its next request on the same
connection learns from the response that it must open a new one.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimits", "BodyRefused", "CloseUnreadBodies", "read_limited"]


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


class CloseUnreadBodies:
    """ASGI middleware: the response to a request whose body the endpoint did not read to its end says
    ``Connection: close`` (see the module docstring); uvicorn then closes the connection after it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        read = headers.get(b"content-length", b"0") == b"0" and b"transfer-encoding" not in headers

        async def receiving() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                read = True  # the whole body, or the client is gone
            return message

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and not read:
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receiving, sending)
