"""The MLLP sink: send each delivery as one MLLP frame and wait for its HL7 acknowledgement.

What lives here: :class:`MLLPSink` and its connection pool.

The sink keeps at most ``concurrency`` connections to ``mllp://HOST:PORT``
(``mllps://`` for TLS, checked against ``ca_file`` or the system's trust
store). A connection is opened lazily, within ``connect_timeout_s``, and
carries one message at a time: write ``frame(body)``, read one ACK frame
within ``timeout_s``, and only then is the connection free for the next
message. A connection goes back to the pool only after an exchange that ended
with a readable ACK whose MSA-2 matched; on anything else (time-out, mismatch,
garbage, peer gone) it is closed, so a late or stray ACK can never be read as
the answer to a later message.

Outcome of one attempt (MSA-2 must equal the envelope's control id, MSH-10):

=======================================  ===========================================================
AA, CA                                   delivered
AE, CE                                   ``DeliveryRejected("ack_AE")`` (``DeliveryRetryable`` when
                                         ``on_ae: retry``)
AR, CR                                   ``DeliveryRetryable("ack_AR")``
any other MSA-1                          ``DeliveryRetryable("ack_unknown")``
MSA-2 mismatch                           ``DeliveryRetryable("ack_mismatch")``, connection dropped
no ACK within ``timeout_s``              ``DeliveryRetryable("timeout")``, connection dropped
unreadable ACK / ACK over 1 MiB          ``DeliveryRetryable("ack_invalid" / "ack_too_large")``
peer closed or reset the connection      ``DeliveryRetryable("connection_closed")``
could not connect                        ``DeliveryRetryable``: ``connect_timeout``,
                                         ``connect_refused``, ``connect_error``, ``tls_error``
=======================================  ===========================================================

Reasons carry the sink name and the codes only: the ACK's text (MSA-3, ERR)
is never quoted, because a receiver may echo message content in it.
"""

from __future__ import annotations

import asyncio
import re
import ssl

from adapters.hl7.ack import parse_ack
from adapters.hl7.framing import FrameReader, FrameTooLarge, frame
from gateway.config import MLLPSinkConfig
from gateway.errors import ConfigError
from gateway.sink import Delivery, DeliveryRejected, DeliveryRetryable
from gateway.sinks._net import CHECK_TIMEOUT_S, tcp_reachable

__all__ = ["MAX_ACK_BYTES", "MLLPSink"]

MAX_ACK_BYTES = 1024 * 1024
"""Largest acknowledgement frame read; a larger one drops the connection."""

READ_CHUNK = 64 * 1024
POSITIVE = frozenset({"AA", "CA"})
ERROR = frozenset({"AE", "CE"})
REJECT = frozenset({"AR", "CR"})
_MEANING = {
    "AE": "application error",
    "CE": "commit error",
    "AR": "application reject",
    "CR": "commit reject",
}


class _Failed(Exception):
    """An exchange failed before an ACK could be judged; carries the retryable code and reason."""

    def __init__(self, code: str, what: str) -> None:
        super().__init__(what)
        self.code = code
        self.what = what


class _Connection:
    """One MLLP connection, used by one send at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.deframer = FrameReader(MAX_ACK_BYTES)
        self.extra = False
        """The peer sent more than one frame for one message: do not trust this connection again."""

    def reusable(self) -> bool:
        return not (self.extra or self.writer.is_closing() or self.reader.at_eof())

    async def exchange(self, message: bytes) -> bytes:
        """Write one framed message and return the first complete frame read back."""
        self.writer.write(frame(message))
        await self.writer.drain()
        while True:
            data = await self.reader.read(READ_CHUNK)
            if not data:
                raise _Failed("connection_closed", "the receiver closed the connection without an ACK")
            frames = self.deframer.feed(data)
            if frames:
                self.extra = len(frames) > 1 or self.deframer.in_frame
                return frames[0]

    def abort(self) -> None:
        """Close at once, discarding anything unsent or unread."""
        self.writer.transport.abort()


class MLLPSink:
    """Sends each delivery over MLLP and judges the HL7 ACK; see the module docstring for the outcomes."""

    def __init__(self, name: str, config: MLLPSinkConfig) -> None:
        self.name = name
        self.config = config
        m = re.fullmatch(r"(mllps?)://([^\s/:]+):(\d{1,5})", config.endpoint)
        if m is None:  # the config model already checked the shape
            raise ConfigError(f"sinks.{name}.endpoint: expected mllp://HOST:PORT or mllps://HOST:PORT")
        self._tls = m.group(1) == "mllps"
        self._host = m.group(2)
        self._port = int(m.group(3))
        self._ssl: ssl.SSLContext | None = None
        self._slots = asyncio.Semaphore(config.concurrency)
        self._idle: list[_Connection] = []
        self._live: set[_Connection] = set()
        self._open = False

    async def open(self) -> None:
        """Prepare the TLS context for ``mllps://``; connections are opened lazily by ``send``."""
        if self._tls and self._ssl is None:
            cafile = str(self.config.ca_file) if self.config.ca_file else None
            try:
                self._ssl = ssl.create_default_context(cafile=cafile)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"sinks.{self.name}.ca_file: {cafile} cannot be loaded ({type(exc).__name__})"
                ) from None
        self._open = True

    async def send(self, delivery: Delivery) -> None:
        """Send ``delivery.body`` in one frame and judge the ACK; see the module docstring."""
        if not self._open:
            raise RuntimeError(f"sink {self.name!r} is not open")
        async with self._slots:
            conn = self._take_idle() or await self._connect()
            keep = False
            try:
                try:
                    async with asyncio.timeout(self.config.timeout_s):
                        ack = await conn.exchange(delivery.body)
                except TimeoutError:
                    raise self._retryable("timeout", f"no ACK within {self.config.timeout_s} s") from None
                except _Failed as exc:
                    raise self._retryable(exc.code, exc.what) from None
                except FrameTooLarge:
                    raise self._retryable(
                        "ack_too_large", f"the ACK frame exceeds {MAX_ACK_BYTES} bytes"
                    ) from None
                except OSError as exc:
                    raise self._retryable(
                        "connection_closed", f"the connection failed ({type(exc).__name__})"
                    ) from None
                try:
                    code, acked, _text = parse_ack(ack)  # _text may echo content: never reported
                except ValueError:
                    raise self._retryable("ack_invalid", "the reply is not an HL7 ACK with MSA") from None
                if acked != delivery.envelope.control_id:
                    raise self._retryable(
                        "ack_mismatch", "the ACK's MSA-2 does not name the control id (MSH-10) just sent"
                    )
                keep = True
                self._judge(code.strip().upper())
            finally:
                self._release(conn, keep)

    def _judge(self, code: str) -> None:
        if code in POSITIVE:
            return
        if code in ERROR:
            what = f"the receiver answered {code} ({_MEANING[code]})"
            if self.config.on_ae == "retry":
                raise self._retryable(f"ack_{code}", what)
            raise DeliveryRejected(f"ack_{code}", f"sink {self.name!r}: {what}")
        if code in REJECT:
            raise self._retryable(f"ack_{code}", f"the receiver answered {code} ({_MEANING[code]})")
        raise self._retryable("ack_unknown", "the ACK's MSA-1 is not an acknowledgement code")

    def _retryable(self, code: str, what: str) -> DeliveryRetryable:
        return DeliveryRetryable(code, f"sink {self.name!r}: {what}")

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable():
                return conn
            self._drop(conn)  # closed by the peer while idle
        return None

    async def _connect(self) -> _Connection:
        timeout = self.config.connect_timeout_s
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                    limit=READ_CHUNK,
                ),
                timeout,
            )
        except TimeoutError:
            raise self._retryable("connect_timeout", f"no connection within {timeout} s") from None
        except ssl.SSLError as exc:
            raise self._retryable("tls_error", f"TLS handshake failed ({type(exc).__name__})") from None
        except ConnectionRefusedError:
            raise self._retryable("connect_refused", "the connection was refused") from None
        except OSError as exc:
            raise self._retryable("connect_error", f"could not connect ({type(exc).__name__})") from None
        conn = _Connection(reader, writer)
        self._live.add(conn)
        return conn

    def _release(self, conn: _Connection, keep: bool) -> None:
        if keep and self._open and conn.reusable():
            self._idle.append(conn)
        else:
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        conn.abort()
        self._live.discard(conn)

    async def check(self) -> bool:
        """True when a TCP connection to the receiver opens within a short time."""
        return await tcp_reachable(
            self._host, self._port, min(CHECK_TIMEOUT_S, self.config.connect_timeout_s)
        )

    async def close(self) -> None:
        """Close every connection, idle or in use (a send in flight then fails as retryable)."""
        self._open = False
        for conn in list(self._live):
            self._drop(conn)
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing
