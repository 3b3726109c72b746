"""MLLP transport: framing, the asyncio listener, and a small client.

A frame is ``0x0B`` + message + ``0x1C 0x0D``. Bytes before a start byte are
discarded; frames split across reads and several frames in one read are both
handled; replies go back in order on the same connection, which stays open. A
start byte inside an open frame abandons it: the partial message is neither
taken nor answered, and a warning names the peer. An empty frame (nothing, or
only whitespace, CR and LF) is a keep-alive: neither taken nor answered.
Limits: frame size (an oversized frame gets AR once the frames before it are
answered, and the connection is closed),
time to finish a started frame (from its start byte; the clock stops while
the listener has paused reading), idle time, connections overall and per
client address, and what a connection may hold: frames received but not yet
taken into work pause its reading at :data:`MAX_PENDING_FRAMES` of them or
``max_frame_bytes`` of bytes, so that a connection holds about three times
``max_frame_bytes`` at most (the open frame, those waiting, the one in work)
however fast its sender pipelines. A malformed frame never affects another connection. While a
peer leaves its replies unread (the transport's write buffer is above its
high-water mark) no more of its frames are read or taken into work, and the
idle time-out ends it; a time-out resets a connection whose replies are still
unsent rather than wait for a peer that may never read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Sequence
from typing import cast

from adapters.hl7.framing import END, START, FrameReader, FrameTooLarge, frame
from gateway.adapter import Adapter, Issue, Outcome
from gateway.config import MLLPConfig
from gateway.envelope import Receipt
from gateway.listeners import TCPListener, cut, peer_of, readable_headers
from gateway.pipeline import Intake

log = logging.getLogger("gateway.mllp")

MAX_PENDING_FRAMES = 64
"""Frames a connection may hold waiting for work before it stops reading (see also ``max_frame_bytes``)."""


class MLLPServer(TCPListener["_Connection"]):
    """The MLLP listener: one :class:`_Connection` per client, all feeding one :class:`Intake`."""

    def __init__(self, intake: Intake, adapter: Adapter, config: MLLPConfig) -> None:
        super().__init__("mllp", config, log)
        self.intake = intake
        self.adapter = adapter
        self.config = config

    def protocol(self) -> _Connection:
        return _Connection(self)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let in-flight messages finish, then close every connection."""
        self.stop_accepting()
        pending = [c.worker for c in self._connections if c.worker is not None]
        for conn in list(self._connections):
            conn.stop_reading()
        if pending:
            await asyncio.wait(pending, timeout=grace_s)
        for conn in list(self._connections):
            conn.close()


class _Connection(asyncio.Protocol):
    def __init__(self, server: MLLPServer) -> None:
        self.server = server
        cfg = server.config
        self.reader = FrameReader(cfg.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.host = ""
        self.frames: deque[bytes] = deque()
        self.pending_bytes = 0
        """Bytes of the frames in :attr:`frames`."""
        self.wakeup: asyncio.Event = asyncio.Event()
        self.worker: asyncio.Task[None] | None = None
        self.closing = False
        self.stopped = False
        self.read_paused = False
        self.write_paused = False
        """The transport's write buffer is above its high-water mark: the peer is not reading its replies."""
        self.busy = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self.frame_timer: asyncio.TimerHandle | None = None
        self.frame_left: float | None = None
        """Time left to finish the open frame (``None``: no frame open); its clock stops while reading is paused."""
        self.frame_deadline = 0.0
        self.refusal: bytes | None = None
        """The framed AR for an oversized frame, sent once the frames before it are answered."""

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.host, self.peer = peer_of(transport)
        if not self.server.admit(self):
            self.closing = True
            self.transport.abort()
            return
        self.worker = asyncio.get_running_loop().create_task(self._work())
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        was_open = self.reader.in_frame
        abandoned = self.reader.abandoned
        try:
            frames = self.reader.feed(data)
        except FrameTooLarge as exc:
            self._note_abandoned(abandoned)
            self._end_frame_clock()
            self._queue(self._messages(exc.frames))
            self._refuse_oversized(exc.head)
            return
        self._note_abandoned(abandoned)
        if frames or self.reader.in_frame:  # bytes outside any frame are noise: they keep nothing open
            self._arm_idle()
        if not self.reader.in_frame:
            self._end_frame_clock()
        elif frames or not was_open:
            self._start_frame_clock()  # the open frame began in this read
        # else the open frame goes on (or was abandoned for another): its clock keeps running
        if messages := self._messages(frames):
            self._queue(messages)
            self._flow()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.wakeup.set()
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self._end_frame_clock()
        self.server.release(self)

    def pause_writing(self) -> None:
        # the peer is not reading its replies: take no more frames, and give it idle_timeout_s to read
        self.write_paused = True
        self._flow()
        self._arm_idle()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._flow()
        self._arm_idle()
        self.wakeup.set()

    # -- work ---------------------------------------------------------------------------------

    async def _next_frame(self) -> bytes | None:
        """The next frame to take into work, waiting while the peer does not read its replies; ``None``
        when there is nothing more to do on this connection."""
        while True:
            transport = self.transport
            if transport is None or transport.is_closing():
                return None
            if self.write_paused:
                if self.stopped:  # the listener stops, and the peer reads nothing: nothing more to do
                    return None
                # the peer is not reading its replies: take nothing more until it does
            elif self.frames:
                message = self.frames.popleft()
                self.pending_bytes -= len(message)
                self._flow()
                return message
            elif self.refusal is not None:
                self._send_refusal(self.refusal)
                return None
            elif self.closing or self.stopped:  # (stopped: the frames received before were all taken)
                return None
            self.wakeup.clear()
            await self.wakeup.wait()

    async def _work(self) -> None:
        intake = self.server.intake
        adapter = self.server.adapter
        while (message := await self._next_frame()) is not None:
            receipt = Receipt(listener="mllp", peer=self.peer)
            self.busy = True
            try:
                result = await intake.receive(adapter, message, receipt)
            except Exception:
                log.exception("mllp intake failed", extra={"peer": self.peer})
                self.close()
                return
            finally:
                self.busy = False
            reply = result.combined()
            transport = self.transport
            if transport is None or transport.is_closing():
                # the sender is gone: it never saw this reply and will send again (a duplicate)
                return
            if not reply.wanted:  # MSH-15/MSH-16 asked for none: the sender reads none
                continue
            transport.write(frame(reply.body))
            intake.replied(result)

    def _queue(self, messages: list[bytes]) -> None:
        """Hold ``messages`` for the worker."""
        if messages:
            self.frames.extend(messages)
            self.pending_bytes += sum(map(len, messages))
            self.wakeup.set()

    def _messages(self, frames: list[bytes]) -> list[bytes]:
        """``frames`` without the empty ones (nothing but whitespace, CR and LF): senders send those as
        keep-alives, and expect no reply. They still count as activity for the idle time-out."""
        messages = [f for f in frames if f.strip()]
        if len(messages) != len(frames):
            log.debug("mllp empty frame ignored", extra={"peer": self.peer})
        return messages

    def _flow(self) -> None:
        """Pause reading while :data:`MAX_PENDING_FRAMES` or ``max_frame_bytes`` of frames wait, while
        the peer does not read its replies (or once the listener stops); resume when none of these holds
        and fewer than half as many frames and bytes wait.

        The open frame's clock stops while reading is paused: the sender is not slow, the gateway is.
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        budget = self.server.config.max_frame_bytes
        if self.read_paused:
            if (
                not (self.stopped or self.write_paused)
                and len(self.frames) < MAX_PENDING_FRAMES // 2
                and self.pending_bytes < budget // 2
            ):
                transport.resume_reading()
                self.read_paused = False
                if self.frame_left is not None and self.frame_timer is None:
                    self._run_frame_clock()
        elif (
            self.stopped
            or self.write_paused
            or len(self.frames) >= MAX_PENDING_FRAMES
            or self.pending_bytes >= budget
        ):
            transport.pause_reading()
            self.read_paused = True
            if self.frame_timer is not None:
                self.frame_timer.cancel()
                self.frame_timer = None
                self.frame_left = max(0.0, self.frame_deadline - asyncio.get_running_loop().time())

    def _note_abandoned(self, before: int) -> None:
        """Warn when the last read abandoned a frame. Its clock keeps running for the frame that takes
        its place: it bounds how long a connection may hold a frame open, however many times it starts
        again."""
        if self.reader.abandoned != before:
            log.warning("mllp frame abandoned: a new frame began before its end", extra={"peer": self.peer})

    def _refuse_oversized(self, head: bytes) -> None:
        """Read nothing more; queue the AR behind the replies still owed for earlier frames."""
        log.warning(
            "mllp frame too large; refused and closed",
            extra={"peer": self.peer, "limit": self.server.config.max_frame_bytes},
        )
        issue = Issue(
            "fatal",
            "frame_too_large",
            "",
            f"The frame exceeds the listener's limit of {self.server.config.max_frame_bytes} bytes.",
        )
        first = head.split(b"\r", 1)[0].split(b"\n", 1)[0]  # MSH is enough to address the refusal
        headers = readable_headers(self.server.adapter, first, "mllp")
        reply = self.server.adapter.respond(Outcome("refused", headers, [issue]))
        self.refusal = frame(reply.body)
        self.closing = True
        self.wakeup.set()

    def _send_refusal(self, refusal: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(refusal)
            transport.close()
        self.refusal = None  # sent: the idle time-out now ends a peer that does not read it

    def _arm_idle(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.transport is None or self.transport.is_closing():
            self.idle_timer = None
            return
        self.idle_timer = asyncio.get_running_loop().call_later(self.server.config.idle_timeout_s, self._idle)

    def _start_frame_clock(self) -> None:
        """A frame began: it has ``frame_timeout_s`` of reading time to end."""
        self._end_frame_clock()
        self.frame_left = self.server.config.frame_timeout_s
        if not self.read_paused:
            self._run_frame_clock()

    def _run_frame_clock(self) -> None:
        assert self.frame_left is not None
        loop = asyncio.get_running_loop()
        self.frame_deadline = loop.time() + self.frame_left
        self.frame_timer = loop.call_later(self.frame_left, self._frame_expired)

    def _end_frame_clock(self) -> None:
        if self.frame_timer is not None:
            self.frame_timer.cancel()
            self.frame_timer = None
        self.frame_left = None

    def _idle(self) -> None:
        if self.write_paused:
            log.info("mllp peer not reading its replies; closed", extra={"peer": self.peer})
        elif self.frames or self.busy or self.refusal is not None:
            self._arm_idle()
            return
        else:
            log.info("mllp connection idle; closed", extra={"peer": self.peer})
        self._cut()

    def _frame_expired(self) -> None:
        self.frame_timer = None
        log.warning("mllp frame not finished in time; closed", extra={"peer": self.peer})
        self._cut()

    def _cut(self) -> None:
        """Close on a time-out without waiting for the peer (see :func:`gateway.listeners.cut`)."""
        self.closing = True
        self.wakeup.set()
        cut(self.transport)

    def stop_reading(self) -> None:
        """The listener stops: read nothing more, finish the frames already received, then end."""
        self.stopped = True
        self._flow()
        self.wakeup.set()

    def close(self) -> None:
        self.closing = True
        self.wakeup.set()
        if self.transport is not None:
            self.transport.close()


async def send_frames(
    host: str,
    port: int,
    messages: list[bytes],
    timeout_s: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
    *,
    unasked: Sequence[bool] = (),
    grace_s: float = 2.0,
) -> list[bytes | None]:
    """Send each message in its own frame on one connection; return the replies in order.

    A message marked in ``unasked`` asks for no acknowledgement when it is accepted (MSH-15/MSH-16
    ``NE``, ``ER``): an error reply to it is awaited ``grace_s`` at most, and ``None`` stands for none.
    The messages after it then go on a new connection, so that an error reply that comes later still
    can never be read as theirs.
    """
    replies: list[bytes | None] = []
    reader, writer = await _connect(host, port, timeout_s, ssl_context)
    try:
        for n, message in enumerate(messages):
            writer.write(frame(message))
            await writer.drain()
            optional = n < len(unasked) and unasked[n]
            try:
                await asyncio.wait_for(reader.readuntil(START), grace_s if optional else timeout_s)
            except TimeoutError:
                if not optional:
                    raise
                replies.append(None)
                if n + 1 < len(messages):
                    await _close(writer)
                    reader, writer = await _connect(host, port, timeout_s, ssl_context)
                continue
            data = await asyncio.wait_for(reader.readuntil(END), timeout_s)
            replies.append(data[: -len(END)])
    finally:
        await _close(writer)
    return replies


async def _connect(
    host: str, port: int, timeout_s: float, ssl_context: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ssl_context), timeout_s)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
