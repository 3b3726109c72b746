"""The ``iso8583`` sink: authorisations relayed in line to an upstream host, answered by its response.

A route that sends card messages to a sink of type ``iso8583`` makes the
gateway an acquirer front end: after the request is stored (redacted) and
routed, its bytes as received go, in memory, to the upstream host over one
persistent TCP connection, and the terminal gets the upstream's response as the
upstream sent it. Requests go upstream as received, so the upstream speaks the
listener's field specification (``gateway check`` refuses a sink whose ``spec``
differs from the listener's).

Matching: a response answers the waiting request with the same *key*: the
response MTI the request expects (an 0100 waits for an 0110, its reversal 0400
for an 0410), STAN (DE11), terminal id (DE41), acquirer (DE32) and retrieval
reference number (DE37) where present. Responses are never matched by
arrival order, and a late 0110 can never answer the terminal's reversal.

* The same request again (a terminal that resends after its own time-out)
  while the first is still waiting shares the first's answer; one answered in
  the last :data:`ANSWER_TTL_S` seconds gets the same answer again. It is never
  sent upstream twice.
* No answer within ``timeout_s`` (connecting, writing and waiting together),
  an unreachable host or a broken connection raise
  :class:`~gateway.sink.DeliveryRetryable`; intake then answers the terminal
  DE39 ``91`` itself. An answer that comes after that is recorded with
  :attr:`late` (the acquirer must reverse it; see the issue notes).
* The upstream's own 0800 network messages are answered 0810 ``00`` here.
* Closing (a reload, a shutdown) waits for the requests in flight, up to
  ``timeout_s``, before the connection goes.

Nothing of a request or response is stored or logged here: lineage records
the upstream's DE39 and the time it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping

import iso8583

from adapters.finance.iso8583 import load_spec, response_mti
from adapters.finance.iso8583_listener import frame
from gateway.config import ISO8583SinkConfig, parse_address
from gateway.sink import Delivery, DeliveryRejected, DeliveryRetryable, Relayed

log = logging.getLogger("gateway.iso8583.relay")

Key = tuple[str, str, str, str, str]
ANSWER_TTL_S = 300.0
"""How long an answer is kept (in memory only) for a terminal that sends the same request again."""
MAX_ANSWERS = 10_000


def _key(fields: Mapping[str, str], mti: str) -> Key:
    return (
        mti,
        fields.get("11", "").strip(),
        fields.get("41", "").strip(),
        fields.get("32", "").strip(),
        fields.get("37", "").strip(),
    )


class ISO8583Relay:
    """One upstream host, one connection, requests matched to responses by key (module docstring)."""

    def __init__(self, name: str, config: ISO8583SinkConfig) -> None:
        self.name = name
        self.config = config
        self.spec = load_spec(config.spec)
        self.host, self.port = parse_address(config.endpoint)
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[Key, asyncio.Future[Relayed]] = {}
        self._answers: OrderedDict[Key, tuple[float, Relayed]] = OrderedDict()
        self._connecting = asyncio.Lock()
        self._closed = False
        self.late = 0
        """Answers that came after their request had been given up (the terminal got 91)."""

    async def open(self) -> None:
        """Nothing to do yet: the connection is made on the first relay (and again after a loss)."""

    def _decode(self, raw: bytes) -> dict[str, str] | None:
        try:
            fields, _ = iso8583.decode(bytearray(raw), self.spec)
        except Exception:  # the decode error text may carry the PAN: never let it out
            return None
        return fields

    async def relay(self, raw: bytes) -> Relayed:
        fields = self._decode(raw)
        expected = response_mti(fields.get("t", "")) if fields is not None else None
        if fields is None or expected is None:
            raise DeliveryRejected("undecodable", "The request cannot be read with the upstream's spec.")
        key = _key(fields, expected)
        kept = self._answers.get(key)
        if kept is not None and time.monotonic() - kept[0] < ANSWER_TTL_S:
            return kept[1]  # the same request again: the same answer, not a second authorisation
        waiting = self._pending.get(key)
        if waiting is not None:  # the same request while the first waits: share its answer
            return await self._wait(waiting)
        future: asyncio.Future[Relayed] = asyncio.get_running_loop().create_future()
        self._pending[key] = future  # registered before any await: a twin arriving now shares it
        try:
            return await asyncio.wait_for(self._send_and_wait(raw, future), self.config.timeout_s)
        except TimeoutError:
            raise DeliveryRetryable(
                "timeout", f"No response from the upstream within {self.config.timeout_s} s."
            ) from None
        except (ConnectionError, OSError):
            raise DeliveryRetryable("connection_lost", "The connection to the upstream broke.") from None
        finally:
            if self._pending.get(key) is future:
                del self._pending[key]
            if not future.done():
                future.cancel()

    async def _wait(self, future: asyncio.Future[Relayed]) -> Relayed:
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.config.timeout_s)
        except (TimeoutError, asyncio.CancelledError):
            raise DeliveryRetryable(
                "timeout", "The first request of this kind got no answer in time."
            ) from None
        except (ConnectionError, OSError):
            raise DeliveryRetryable("connection_lost", "The connection to the upstream broke.") from None

    async def _send_and_wait(self, raw: bytes, future: asyncio.Future[Relayed]) -> Relayed:
        try:
            framed = frame(bytes(raw), self.config.length_header)
        except ValueError:
            raise DeliveryRejected(
                "too_large", "The request does not fit the upstream's length prefix."
            ) from None
        writer = await self._connection()
        writer.write(framed)
        await writer.drain()
        return await asyncio.shield(future)

    async def _connection(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._closed:
                raise ConnectionError("the relay is closed")
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), self.config.connect_timeout_s
                )
            except (TimeoutError, OSError):
                raise DeliveryRetryable("unreachable", "The upstream host cannot be reached.") from None
            self._writer = writer
            self._reader_task = asyncio.get_running_loop().create_task(self._read(reader, writer))
            return writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                body = await self._frame(reader)
                if body is None:
                    break
                self._answer(body, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if self._writer is writer:  # a newer connection is not this reader's to fail
                self._writer = None
                for future in self._pending.values():
                    if not future.done():
                        future.set_exception(ConnectionError("upstream connection lost"))
            writer.close()

    async def _frame(self, reader: asyncio.StreamReader) -> bytes | None:
        size = 2 if self.config.length_header == "binary2" else 4
        prefix = await reader.readexactly(size)
        n = int.from_bytes(prefix, "big") if size == 2 else int(prefix) if prefix.isdigit() else -1
        if not 0 <= n <= self.config.max_message_bytes:
            log.warning(
                "upstream response length out of bounds; connection closed", extra={"sink": self.name}
            )
            return None
        return await reader.readexactly(n) if n else b""

    def _answer(self, body: bytes, writer: asyncio.StreamWriter) -> None:
        if not body:
            return  # a keep-alive
        fields = self._decode(body)
        if fields is None:
            log.warning(
                "upstream message cannot be decoded; dropped", extra={"sink": self.name, "bytes": len(body)}
            )
            return
        mti = fields.get("t", "")
        if mti in ("0800", "1804"):  # the host's echo or sign-on: answer it, or it drops the link
            echo: dict[str, str] = {k: fields[k] for k in ("7", "11", "24", "70") if k in fields}
            out, _ = iso8583.encode({"t": "0810" if mti == "0800" else "1814", **echo, "39": "00"}, self.spec)
            writer.write(frame(bytes(out), self.config.length_header))
            return
        key = _key(fields, mti)
        relayed = Relayed(body, fields.get("39", ""))
        future = self._pending.get(key)
        if future is None or future.done():
            self.late += 1
            log.warning("upstream response matches no waiting request; dropped", extra={"sink": self.name})
            return
        future.set_result(relayed)
        self._answers[key] = (time.monotonic(), relayed)
        while len(self._answers) > MAX_ANSWERS:
            self._answers.popitem(last=False)

    async def send(self, delivery: Delivery) -> None:
        """Never from the outbox: the store holds card messages redacted, and an authorisation is answered in line."""
        raise DeliveryRejected(
            "online_only", "An iso8583 sink relays in line; it takes nothing from the outbox."
        )

    async def check(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def close(self) -> None:
        """Let the requests in flight have their answers (up to ``timeout_s``), then close."""
        deadline = time.monotonic() + self.config.timeout_s
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        async with self._connecting:
            self._closed = True
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
