"""The ISO 8583 TCP listener: length-prefixed framing, concurrent requests, limits and time-outs.

Each message on the wire is a length prefix followed by that many bytes: two
bytes big-endian (``binary2``, the default) or four ASCII digits (``ascii4``).
A zero length is a keep-alive and is skipped. Connections stay open.

Requests on one connection are worked on concurrently (at most
:data:`MAX_IN_FLIGHT` at once; reading pauses above that, and while the
client is not reading its responses) and each response is written as soon as
it is ready: clients match responses to requests on STAN + terminal id, never
by order, as ISO 8583 hosts do.

* 0800 echo (DE70 301), sign-on (001) and sign-off (002), and their 1993 form
  1804 (DE24 831, 801, 802), are answered here with 0810 (1814) DE39 ``00``
  (``800``): not stored, not routed.
* Every other message goes through :meth:`gateway.pipeline.Intake.receive`
  (stored and routed, commit before reply); its response is framed and
  written, then :meth:`~gateway.pipeline.Intake.replied` records it.
* A message without a readable request MTI (garbage, or a response sent to
  the gateway) gets no response, there being nothing to address one to: a
  warning is logged, without values, and the connection stays open, as a jPOS
  server with ``ignoreISOExceptions`` does. Intake still records the rejection
  (an undecodable message with none of its bytes).

Limits: a declared length above ``max_message_bytes`` (or an ``ascii4`` prefix
that is not four digits) is logged and the connection closed; a message not
complete within ``read_timeout_s`` closes the connection; so does
``idle_timeout_s`` without traffic; connections overall and per client address
are capped. Logs carry the peer, lengths and limits, never message bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import cast

from adapters.finance.iso8583 import ISO8583Adapter
from gateway.adapter import Adapter, Issue, Outcome, Reply
from gateway.config import ISO8583Config
from gateway.envelope import Receipt
from gateway.listeners import TCPListener, cut, peer_of, readable_headers
from gateway.pipeline import Intake

__all__ = ["MAX_IN_FLIGHT", "ISO8583Server", "frame"]

log = logging.getLogger("gateway.iso8583")

MAX_IN_FLIGHT = 64
LISTENER = "iso8583"


def frame(message: bytes, length_header: str = "binary2") -> bytes:
    """``message`` with its length prefix (``binary2`` or ``ascii4``)."""
    n = len(message)
    if length_header == "ascii4":
        if n > 9999:
            raise ValueError("an ascii4 length prefix holds at most 9999 bytes")
        return b"%04d" % n + message
    if n > 0xFFFF:
        raise ValueError("a binary2 length prefix holds at most 65535 bytes")
    return n.to_bytes(2, "big") + message


class ISO8583Server(TCPListener["_Connection"]):
    """The ISO 8583 listener: one :class:`_Connection` per client, all feeding one :class:`Intake`."""

    def __init__(self, intake: Intake, adapter: Adapter, config: ISO8583Config) -> None:
        super().__init__(LISTENER, config, log)
        self.intake = intake
        self.adapter = adapter
        self.config = config
        self.codec = adapter if isinstance(adapter, ISO8583Adapter) else ISO8583Adapter(config)
        """Answers network management; the adapter itself when it is the ISO 8583 one."""

    def protocol(self) -> _Connection:
        return _Connection(self)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish (and be answered), then close every connection."""
        self.stop_accepting()
        for conn in list(self._connections):
            conn.stop_reading()
        pending = [task for conn in self._connections for task in conn.tasks]
        if pending:
            await asyncio.wait(pending, timeout=grace_s)
        for conn in list(self._connections):
            conn.close()


class _Connection(asyncio.Protocol):
    def __init__(self, server: ISO8583Server) -> None:
        self.server = server
        cfg = server.config
        self.ascii_header = cfg.length_header == "ascii4"
        self.header_len = 4 if self.ascii_header else 2
        self.limit = cfg.max_message_bytes
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.host = ""
        self.queued: deque[bytes] = deque()
        """Complete messages waiting for a free in-flight slot."""
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self.stopped = False
        self.read_paused = False
        self.write_paused = False
        self.last_activity = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.read_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.host, self.peer = peer_of(transport)
        if not self.server.admit(self):
            self.closing = True
            self.transport.abort()
            return
        loop = asyncio.get_running_loop()
        self.last_activity = loop.time()
        self.idle_timer = loop.call_later(self.server.config.idle_timeout_s, self._idle)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_activity = asyncio.get_running_loop().time()
        buf = self.buffer
        buf += data
        hl = self.header_len
        while len(buf) >= hl:
            if self.ascii_header:
                prefix = bytes(buf[:hl])
                if not prefix.isdigit():
                    log.warning("iso8583 length prefix is not four digits; closed", extra={"peer": self.peer})
                    self.close()
                    return
                length = int(prefix)
            else:
                length = int.from_bytes(buf[:hl], "big")
            if length > self.limit:
                log.warning(
                    "iso8583 message too large; closed",
                    extra={"peer": self.peer, "declared_bytes": length, "limit": self.limit},
                )
                self.close()
                return
            if len(buf) < hl + length:
                break
            message = bytes(buf[hl : hl + length])
            del buf[: hl + length]
            if self.read_timer is not None:  # the time allowed runs per message
                self.read_timer.cancel()
                self.read_timer = None
            if length:  # a zero length is a keep-alive
                self._dispatch(message)
            if self.closing:
                return
        self._arm_read_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.queued.clear()
        for timer in (self.idle_timer, self.read_timer):
            if timer is not None:
                timer.cancel()
        self.server.release(self)

    def pause_writing(self) -> None:
        # the client is not reading its responses: take no more requests until it does
        self.write_paused = True
        self._flow()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._flow()

    # -- work ---------------------------------------------------------------------------------

    def _dispatch(self, message: bytes) -> None:
        answer = self.server.codec.network_reply(message)
        if answer is not None:
            self._write(answer)
            log.debug("iso8583 network management answered", extra={"peer": self.peer})
            return
        if len(self.tasks) >= MAX_IN_FLIGHT:
            self.queued.append(message)
            self._flow()
            return
        self._start(message)

    def _start(self, message: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(message))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        while self.queued and len(self.tasks) < MAX_IN_FLIGHT and not self.closing:
            self._start(self.queued.popleft())
        self._flow()

    def _flow(self) -> None:
        """Pause reading while too much is in flight or the client does not read; resume after."""
        transport = self.transport
        if transport is None or self.closing or self.stopped:
            return
        busy = self.write_paused or bool(self.queued) or len(self.tasks) >= MAX_IN_FLIGHT
        if busy and not self.read_paused:
            transport.pause_reading()
            self.read_paused = True
        elif not busy and self.read_paused and len(self.tasks) <= MAX_IN_FLIGHT // 2:
            transport.resume_reading()
            self.read_paused = False

    async def _handle(self, message: bytes) -> None:
        intake = self.server.intake
        adapter = self.server.adapter
        try:
            result = await intake.receive(adapter, message, Receipt(listener=LISTENER, peer=self.peer))
        except Exception as exc:
            log.error(
                "iso8583 intake failed; refused", extra={"peer": self.peer, "error": type(exc).__name__}
            )
            issue = Issue("fatal", "internal_error", "", "The gateway failed to take the message.")
            reply = adapter.respond(Outcome("refused", readable_headers(adapter, message, LISTENER), [issue]))
            if reply.body:
                self._write(reply.body)
            return
        reply = result.combined()
        online = result.online[0] if result.online else ()
        if online and reply.accepted and result.message_ids:
            # the route relays in line: the terminal gets the upstream's answer, or 91 when none comes
            answer = await intake.relay(online[0], message, result.message_ids[0])
            if answer is not None:
                reply = Reply(answer.body, reply.content_type, reply.status, answer.code)
            else:
                body = self.server.codec.unavailable_reply(message)
                reply = Reply(body, reply.content_type, 504, "91")
            result.replies[0] = reply
        if not reply.body:
            # no readable request MTI (or a response sent to us): nothing to address an answer to
            log.warning(
                "iso8583 message without a request MTI; not answered",
                extra={"peer": self.peer, "bytes": len(message), "reply_code": reply.code},
            )
            return
        if self.transport is None or self.transport.is_closing():
            # the client is gone: it never saw this response and will send again (a duplicate)
            return
        self._write(reply.body)
        intake.replied(result)

    def _write(self, body: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(frame(body, self.server.config.length_header))

    # -- timers -------------------------------------------------------------------------------

    def _arm_read_timer(self) -> None:
        if self.buffer:
            if self.read_timer is None:
                self.read_timer = asyncio.get_running_loop().call_later(
                    self.server.config.read_timeout_s, self._read_expired
                )
        elif self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def _read_expired(self) -> None:
        log.warning(
            "iso8583 message not finished in time; closed",
            extra={"peer": self.peer, "read_timeout_s": self.server.config.read_timeout_s},
        )
        self._cut()

    def _idle(self) -> None:
        if self.closing:
            return
        loop = asyncio.get_running_loop()
        timeout = self.server.config.idle_timeout_s
        left = self.last_activity + timeout - loop.time()
        if self.write_paused and left <= 0:
            log.info("iso8583 client not reading its responses; closed", extra={"peer": self.peer})
            self._cut()
            return
        if left > 0 or self.tasks or self.queued:
            self.idle_timer = loop.call_later(left if left > 0 else timeout, self._idle)
            return
        log.info("iso8583 connection idle; closed", extra={"peer": self.peer})
        self._cut()

    def stop_reading(self) -> None:
        self.stopped = True
        self.queued.clear()  # never taken, never answered: the client sends them again
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def close(self) -> None:
        self.closing = True
        self.queued.clear()
        if self.transport is not None:
            self.transport.close()

    def _cut(self) -> None:
        """Close on a time-out without waiting for the client (see :func:`gateway.listeners.cut`)."""
        self.closing = True
        self.queued.clear()
        cut(self.transport)
