"""Real loopback downstreams for the sink tests: an HTTP receiver, an MLLP peer, TLS material, and deliveries."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from adapters.hl7.framing import END, START, FrameReader
from gateway.envelope import Envelope, new_id, sha256_hex
from gateway.sink import Delivery

HL7_TYPE = "x-application/hl7-v2+er7"


def hl7(control_id: str, message_type: str = "ADT^A01") -> bytes:
    return (
        f"MSH|^~\\&|SND|FAC|RCV|FAC|20240101120000||{message_type}|{control_id}|P|2.5\r"
        "PID|1||MRN123^^^HOSP||DOE^JANE\r"
    ).encode()


def envelope(
    control_id: str = "CTRL1",
    *,
    protocol: str = "hl7v2",
    message_type: str = "ADT^A01",
    raw: bytes | None = None,
    received_at: dt.datetime | None = None,
) -> Envelope:
    data = raw if raw is not None else hl7(control_id, message_type)
    return Envelope(
        id=new_id(),
        received_at=received_at or dt.datetime(2024, 3, 5, 10, 30, tzinfo=dt.UTC),
        protocol=protocol,
        version="2.5",
        message_type=message_type,
        control_id=control_id,
        sender="SND^FAC",
        receiver="RCV^FAC",
        raw=data,
        raw_sha256=sha256_hex(data),
        body=None,
        headers={"control_id": control_id, "message_type": message_type},
    )


def delivery(
    env: Envelope | None = None,
    *,
    sink: str = "out",
    body: bytes | None = None,
    content_type: str = HL7_TYPE,
    attempt: int = 1,
) -> Delivery:
    env = env or envelope()
    return Delivery(
        delivery_id=f"{env.id}:{sink}",
        envelope=env,
        body=env.raw if body is None else body,
        content_type=content_type,
        attempt=attempt,
    )


# -- TLS --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


def make_tls(folder: Path) -> TLSFiles:
    """A throw-away CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sink test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


# -- HTTP receiver ------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    reason: str | None = None
    delay_s: float = 0.0


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int
    at: float = field(default_factory=time.time)
    """When the request's body had arrived (wall clock, comparable with the gateway's timestamps)."""


class Receiver:
    """A real HTTP/1.1 server on 127.0.0.1 in a thread; answers from a script, records every request."""

    def __init__(self, tls: TLSFiles | None = None) -> None:
        self.requests: list[Recorded] = []
        self.script: deque[Answer] = deque()
        self.default = Answer()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 65536  # one write per response: no Nagle / delayed-ACK stall between header and body

            def do_POST(self) -> None:  # the method name http.server dispatches to
                self._answer("POST")

            def do_GET(self) -> None:
                self._answer("GET")

            def do_PUT(self) -> None:
                self._answer("PUT")

            def do_DELETE(self) -> None:
                self._answer("DELETE")

            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver.requests.append(
                    Recorded(
                        method,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                        self.client_address[1],
                    )
                )
                answer = receiver.script.popleft() if receiver.script else receiver.default
                if answer.delay_s:
                    receiver.release.wait(answer.delay_s)
                self.send_response(answer.status, answer.reason)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up (time-out tests) is expected

        self.server = Server(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if tls is not None:
            self.server.socket = tls.server_context().wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/in"

    def answer(self, *answers: Answer) -> None:
        self.script.extend(answers)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# -- MLLP peer ---------------------------------------------------------------------------------------


def ack(code: str, acked: str, text: str = "") -> bytes:
    msa = f"MSA|{code}|{acked}" + (f"|{text}" if text else "")
    return f"MSH|^~\\&|RCV|FAC|SND|FAC|20240101120001||ACK^A01^ACK|A{acked}|P|2.5\r{msa}\r".encode()


def control_id_of(message: bytes) -> str:
    return message.split(b"\r", 1)[0].split(b"|")[9].decode()


class Peer:
    """A real MLLP receiver on 127.0.0.1 (asyncio, in the test's loop) that acts as each test tells it.

    Actions, taken one per received message (``AA`` once the list is empty):
    an ACK code (``AA``, ``CA``, ``AE`` ... ``CR``); ``AE:text`` (with MSA-3);
    ``mismatch`` (AA naming another control id); ``stall`` (never answer);
    ``late:<s>`` (answer AA after ``s`` seconds, then set ``late_sent``);
    ``slow:<s>`` (AA after ``s`` seconds, in line); ``close`` (close without
    answering); ``AA+close`` (answer, then close); ``big`` (an ACK frame over
    1 MiB); ``garbage`` (a frame that is not HL7).
    """

    def __init__(self, *actions: str, tls: TLSFiles | None = None) -> None:
        self.actions: deque[str] = deque(actions)
        self.tls = tls
        self.received: list[tuple[int, str]] = []
        """(connection number, control id) of every message, in arrival order."""
        self.connections = 0
        self.eof: set[int] = set()
        """Connections the sink closed."""
        self.max_open = 0
        self.late_sent = asyncio.Event()
        self._open = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"{'mllps' if self.tls else 'mllp'}://127.0.0.1:{port}"

    async def __aenter__(self) -> Peer:
        ctx = self.tls.server_context() if self.tls else None
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=ctx)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        number = self.connections
        self.connections += 1
        self._open += 1
        self.max_open = max(self.max_open, self._open)
        deframer = FrameReader(10 * 1024 * 1024)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    self.eof.add(number)
                    return
                for message in deframer.feed(data):
                    ctrl = control_id_of(message)
                    self.received.append((number, ctrl))
                    if not await self._act(self.actions.popleft() if self.actions else "AA", ctrl, writer):
                        return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._open -= 1
            self._tasks.discard(task)
            writer.close()

    async def _act(self, action: str, ctrl: str, writer: asyncio.StreamWriter) -> bool:
        """Answer one message; False when the connection is to be closed."""
        name, _, arg = action.partition(":")
        if name == "stall":
            return True
        if name == "close":
            return False
        if name == "mismatch":
            writer.write(START + ack("AA", "SOMEONE-ELSE") + END)
        elif name == "big":
            writer.write(START + b"x" * (1024 * 1024 + 100) + END)
        elif name == "garbage":
            writer.write(START + b"hello there" + END)
        elif name == "late":
            late = asyncio.create_task(self._late(float(arg), ctrl, writer))
            self._tasks.add(late)
            late.add_done_callback(self._tasks.discard)
            return True
        elif name == "slow":
            await asyncio.sleep(float(arg))
            writer.write(START + ack("AA", ctrl) + END)
        elif name == "AA+close":
            writer.write(START + ack("AA", ctrl) + END)
            await writer.drain()
            return False
        else:
            writer.write(START + ack(name, ctrl, arg) + END)
        await writer.drain()
        return True

    async def _late(self, delay_s: float, ctrl: str, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay_s)
        writer.write(START + ack("AA", ctrl) + END)  # on the connection message 1 came in on
        self.late_sent.set()
