"""The ``iso8583`` sink: authorisations relayed in line to an upstream host, answered by its response.

A route that sends card messages to a sink of type ``iso8583`` makes the
gateway an acquirer front end: after the request is stored (redacted) and
routed, its bytes as received go, in memory, to the upstream host over one
persistent TCP connection with the configured length prefix and field
specification, and the terminal gets the upstream's response as the upstream
sent it. Several requests may be in flight at once; responses are matched to
requests on STAN (DE11) + terminal id (DE41), never by arrival order, so an
upstream answering out of order is answered to the right terminal.

No answer within ``timeout_s``, an unreachable host or a broken connection
raise :class:`~gateway.sink.DeliveryRetryable`; intake then answers the
terminal DE39 ``91`` (issuer or switch inoperative; ``911`` in the 1993 form)
itself. A response that comes after its request gave up is dropped and
logged (without values). Nothing of a request or response is stored or
logged here: lineage records the upstream's DE39 and the time it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import iso8583

from adapters.finance.iso8583 import load_spec
from adapters.finance.iso8583_listener import frame
from gateway.config import ISO8583SinkConfig, parse_address
from gateway.sink import Delivery, DeliveryRejected, DeliveryRetryable, Relayed

log = logging.getLogger("gateway.iso8583.relay")

Key = tuple[str, str]


class ISO8583Relay:
    """One upstream host, one connection, requests matched to responses on STAN + terminal id."""

    def __init__(self, name: str, config: ISO8583SinkConfig) -> None:
        self.name = name
        self.config = config
        self.spec = load_spec(config.spec)
        self.host, self.port = parse_address(config.endpoint)
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[Key, asyncio.Future[Relayed]] = {}
        self._connecting = asyncio.Lock()

    async def open(self) -> None:
        """Nothing to do yet: the connection is made on the first relay (and again after a loss)."""

    def _key(self, raw: bytes) -> Key:
        try:
            fields, _ = iso8583.decode(bytes(raw), self.spec)
        except Exception:  # the decode error text may carry the PAN: never let it out
            raise DeliveryRejected(
                "undecodable", "The message cannot be read with the upstream's spec."
            ) from None
        return fields.get("11", "").strip(), fields.get("41", "").strip()

    async def relay(self, raw: bytes) -> Relayed:
        key = self._key(raw)
        if key in self._pending:
            raise DeliveryRejected(
                "in_flight", "A request with this STAN and terminal id is already in flight."
            )
        writer = await self._connection()
        future: asyncio.Future[Relayed] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            writer.write(frame(bytes(raw), self.config.length_header))
            await writer.drain()
            return await asyncio.wait_for(asyncio.shield(future), self.config.timeout_s)
        except TimeoutError:
            raise DeliveryRetryable(
                "timeout", f"No response from the upstream within {self.config.timeout_s} s."
            ) from None
        except (ConnectionError, OSError):
            raise DeliveryRetryable("connection_lost", "The connection to the upstream broke.") from None
        finally:
            self._pending.pop(key, None)

    async def _connection(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), self.config.connect_timeout_s
                )
            except (TimeoutError, OSError):
                raise DeliveryRetryable("unreachable", "The upstream host cannot be reached.") from None
            self._writer = writer
            self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))
            return writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                body = await self._frame(reader)
                if body is None:
                    break
                self._answer(body)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("upstream connection lost"))
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    async def _frame(self, reader: asyncio.StreamReader) -> bytes | None:
        size = 2 if self.config.length_header == "binary2" else 4
        prefix = await reader.readexactly(size) if not reader.at_eof() else b""
        if len(prefix) < size:
            return None
        n = int.from_bytes(prefix, "big") if size == 2 else int(prefix) if prefix.isdigit() else -1
        if not 0 <= n <= self.config.max_message_bytes:
            log.warning(
                "upstream response length out of bounds; connection closed", extra={"sink": self.name}
            )
            return None
        return await reader.readexactly(n) if n else b""

    def _answer(self, body: bytes) -> None:
        if not body:
            return  # a keep-alive
        try:
            fields, _ = iso8583.decode(bytearray(body), self.spec)
        except Exception:
            log.warning(
                "upstream response cannot be decoded; dropped", extra={"sink": self.name, "bytes": len(body)}
            )
            return
        key = (fields.get("11", "").strip(), fields.get("41", "").strip())
        future = self._pending.get(key)
        if future is None or future.done():
            log.warning("upstream response matches no waiting request; dropped", extra={"sink": self.name})
            return
        future.set_result(Relayed(body, fields.get("39", "")))

    async def send(self, delivery: Delivery) -> None:
        """Never from the outbox: the store holds card messages redacted, and an authorisation is answered in line."""
        raise DeliveryRejected(
            "online_only", "An iso8583 sink relays in line; it takes nothing from the outbox."
        )

    async def check(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        self._writer = None
