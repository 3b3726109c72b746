"""MLLP and HTTP over TLS and mutual TLS, against the real gateway process, with certificates made by
trustme."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest
import trustme

from tests.conftest import FIXTURES
from tests.support import EB, SB, TEST_KEY, Gateway, read_frame, wait_until

pytestmark = pytest.mark.e2e

MESSAGE = (FIXTURES / "hl7" / "adt_a01__basic.hl7").read_bytes().replace(b"\n", b"\r")


def exchange(port: int, ctx: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        s.sendall(SB + MESSAGE + EB)
        return read_frame(s)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    server.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    client_ca = trustme.CA()
    client_ca.cert_pem.write_to_path(str(d / "clients.pem"))
    return {"dir": d, "ca": ca, "client_ca": client_ca}


def listener_tls(pki: dict[str, object], *, mutual: bool = False) -> dict[str, str]:
    """A listener's ``tls`` setting with the module's server certificate (and client CA when ``mutual``)."""
    d = pki["dir"]
    assert isinstance(d, Path)
    tls = {"cert": str(d / "server.pem"), "key": str(d / "server.pem")}
    return {**tls, "client_ca": str(d / "clients.pem")} if mutual else tls


def client_context(pki: dict[str, object], *, client_cert: bool = False) -> ssl.SSLContext:
    """A client context trusting the module's CA, presenting a client certificate when ``client_cert``."""
    ctx = ssl.create_default_context()
    pki["ca"].configure_trust(ctx)  # type: ignore[attr-defined]
    if client_cert:
        pki["client_ca"].issue_cert("lab-system.example.org").configure_cert(ctx)  # type: ignore[attr-defined]
    return ctx


def stalled_handshake_lasts(port: int) -> float:
    """Seconds until the gateway drops a connection that sends half a ClientHello and then nothing."""
    with socket.create_connection(("127.0.0.1", port), timeout=90) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        start = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            s.recv(100)
        return time.monotonic() - start


def test_tls(pki: dict[str, object], tmp_path: Path) -> None:
    gw = Gateway(tmp_path, {"mllp": {"tls": listener_tls(pki)}})
    gw.start()
    try:
        ctx = client_context(pki)
        assert b"MSA|AA|" in exchange(gw.mllp_port, ctx)
        # a plain-text client gets nothing and does not disturb the listener
        with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=5) as s:
            s.sendall(SB + MESSAGE + EB)
            s.settimeout(5)
            try:
                data = s.recv(100)
            except (ConnectionResetError, TimeoutError):
                data = b""
            assert b"MSA" not in data
        assert b"MSA|AA|" in exchange(gw.mllp_port, ctx)
        # half a ClientHello, then nothing: dropped after the handshake limit, not asyncio's 60 s
        assert stalled_handshake_lasts(gw.mllp_port) < 30
    finally:
        gw.stop()


def test_mutual_tls_requires_a_client_certificate(pki: dict[str, object], tmp_path: Path) -> None:
    gw = Gateway(tmp_path, {"mllp": {"tls": listener_tls(pki, mutual=True)}})
    gw.start()
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            exchange(gw.mllp_port, client_context(pki))
        assert b"MSA|AA|" in exchange(gw.mllp_port, client_context(pki, client_cert=True))
    finally:
        gw.stop()


def https_client(pki: dict[str, object], port: int, *, client_cert: bool = False) -> httpx.Client:
    return httpx.Client(
        base_url=f"https://localhost:{port}",
        verify=client_context(pki, client_cert=client_cert),
        headers={"Authorization": f"Bearer {TEST_KEY}", "Content-Type": "x-application/hl7-v2+er7"},
        timeout=30,
    )


def test_https(pki: dict[str, object], tmp_path: Path) -> None:
    gw = Gateway(tmp_path, {"http": {"tls": listener_tls(pki)}})
    gw.start()
    try:
        with https_client(pki, gw.http_port) as client:
            r = client.post("/ingest/hl7v2", content=MESSAGE)
            assert r.status_code == 200 and b"MSA|AA|" in r.content
        # plain HTTP on the HTTPS port gets no answer, and does not disturb the listener
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{gw.http_port}/healthz", timeout=5)
        # half a ClientHello, then nothing: dropped after the handshake limit, not asyncio's 60 s
        assert stalled_handshake_lasts(gw.http_port) < 30
        with https_client(pki, gw.http_port) as client:
            assert client.get("/healthz").status_code == 200
        # a keep-alive client that reads nothing more does not hold up the stop for asyncio's 30 s wait
        # for its close_notify (the test's own stop gives up after 30 s and kills the gateway)
        raw = socket.create_connection(("127.0.0.1", gw.http_port))
        with client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as idle:
            idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
            assert idle.recv(64).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            assert gw.stop() == 0
            assert time.monotonic() - started < 20
    finally:
        gw.stop()


def test_https_with_client_ca_requires_a_client_certificate(pki: dict[str, object], tmp_path: Path) -> None:
    gw = Gateway(tmp_path, {"http": {"tls": listener_tls(pki, mutual=True)}})
    gw.start()
    try:
        with https_client(pki, gw.http_port) as client, pytest.raises(httpx.HTTPError):
            client.post("/ingest/hl7v2", content=MESSAGE)
        with https_client(pki, gw.http_port, client_cert=True) as client:
            r = client.post("/ingest/hl7v2", content=MESSAGE)
            assert r.status_code == 200 and b"MSA|AA|" in r.content
    finally:
        gw.stop()


def test_https_connections_over_the_per_client_limit_are_refused(
    pki: dict[str, object], tmp_path: Path
) -> None:
    """Over HTTPS a connection over the limit is refused once its handshake is done: it gets 503 and is
    closed; the admitted one goes on being served, and once it closes the next is admitted."""
    gw = Gateway(tmp_path, {"http": {"tls": listener_tls(pki), "max_connections_per_client": 1}})
    gw.start()
    try:
        with https_client(pki, gw.http_port) as first, https_client(pki, gw.http_port) as second:
            # the first admitted (the start-up probe may hold the only place a moment) keeps its connection
            assert wait_until(lambda: first.get("/healthz").status_code == 200, 15)
            refused = second.get("/healthz")
            assert (refused.status_code, refused.headers.get("connection")) == (503, "close")
            assert refused.text == "Too many connections."
            assert first.get("/healthz").status_code == 200
            first.close()
            assert wait_until(lambda: second.get("/healthz").status_code == 200, 15)
    finally:
        gw.stop()
