"""End to end: the HTTP listener's limits hold before and while a body arrives.

On the real gateway, over raw sockets (so the test controls how much of a
body is sent, and when): a caller without a key is refused before the
gateway reads a body it announced, on every route that takes one; a body
announced over the limit is refused at once; and a body that trickles in is
cut off with 408 after ``http.body_timeout_s``, in the error shape of its API; a
connection whose request head does not arrive within ``http.header_timeout_s``
(nothing sent, or header lines trickled) is closed. A connection over
``http.max_connections_per_client`` or ``http.max_connections`` is answered 503
and closed, while those admitted go on being served, and a place given back
by a closed connection (one that asked for a WebSocket upgrade too) is taken
by the next.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_hl7_intake import field, fixture
from tests.support import ADMIN_KEY, TEST_KEY, Gateway, with_control_id

pytestmark = pytest.mark.e2e

FHIR_KEY = "fhir-key-0123456789abcdef"
HUGE = 400 * 1024 * 1024  # announced, never sent


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir: Path = tmp_path_factory.mktemp("limits")
    gateway = Gateway(
        workdir, {"http": {"max_body_bytes": 100_000, "body_timeout_s": 1.0, "header_timeout_s": 1.0}}
    )
    keys = gateway.config_path.read_text()
    gateway.config_path.write_text(
        keys.replace(
            "api_keys:\n",
            f"api_keys:\n  - name: ehr\n    key: {FHIR_KEY}\n    scopes: [fhir:read, fhir:write]\n",
            1,
        )
    )
    gateway.start()
    yield gateway
    gateway.stop()


def read_response(s: socket.socket) -> tuple[int, bytes]:
    """One whole HTTP response from ``s``: its status and body."""
    status, _, body = read_response_with_headers(s)
    return status, body


def read_response_with_headers(s: socket.socket) -> tuple[int, dict[bytes, bytes], bytes]:
    """One whole HTTP response from ``s``: its status, its headers (names in lower case) and its body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, "closed without an answer"
        data += chunk
    header, rest = data.split(b"\r\n\r\n", 1)
    lines = [h.split(b": ", 1) for h in header.split(b"\r\n")[1:]]
    headers = {k.lower(): v for k, v in lines}
    length = int(headers[b"content-length"])
    while len(rest) < length:
        chunk = s.recv(65536)
        assert chunk, "closed in the middle of the answer"
        rest += chunk
    return int(header.split(b" ")[1]), headers, rest


def exchange(
    port: int, head: str, body: bytes, timeout: float = 10.0
) -> tuple[int, dict[str, object], float]:
    """Send ``head`` and the part ``body`` of a request, then read the answer: status, JSON body, and
    the seconds it took to come."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        start = time.monotonic()
        status, answer = read_response(s)
        return status, json.loads(answer), time.monotonic() - start


def request(method: str, path: str, length: int, headers: dict[str, str]) -> str:
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway", f"Content-Length: {length}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return "\r\n".join(lines) + "\r\n"


JSON = {"Content-Type": "application/json"}
BODY_ROUTES = [
    ("POST", "/api/subjects/erase", JSON),
    ("POST", "/api/lineage/search", JSON),
    ("PUT", "/api/inventory/SKU-1/locations/store-1", JSON),
    ("POST", "/ingest/hl7v2", {"Content-Type": "text/plain"}),
    ("POST", "/fhir/Patient", {"Content-Type": "application/fhir+json"}),
    ("POST", "/fhir", {"Content-Type": "application/fhir+json"}),
    ("POST", "/api/convert/hl7v2-to-fhir", {"Content-Type": "text/plain"}),
]


@pytest.mark.parametrize(("method", "path", "headers"), BODY_ROUTES)
def test_no_key_is_refused_before_the_body_is_read(
    gw: Gateway, method: str, path: str, headers: dict[str, str]
) -> None:
    status, body, took = exchange(gw.http_port, request(method, path, HUGE, headers), b'{"subject": "AAAA')
    assert status == 401, body
    assert took < 5  # answered while 400 MB were still to come


@pytest.mark.parametrize(
    ("method", "path", "key"),
    [
        ("POST", "/api/subjects/erase", ADMIN_KEY),
        ("POST", "/api/lineage/search", TEST_KEY),
        ("POST", "/ingest/hl7v2", TEST_KEY),
        ("POST", "/fhir/Patient", FHIR_KEY),
    ],
)
def test_a_body_announced_over_the_limit_is_refused_at_once(
    gw: Gateway, method: str, path: str, key: str
) -> None:
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/fhir+json" if "fhir" in path else "application/json",
    }
    if path.startswith("/ingest"):
        headers["Content-Type"] = "text/plain"
    status, body, took = exchange(gw.http_port, request(method, path, HUGE, headers), b"{")
    assert status == 413, body
    assert took < 5


def test_a_trickling_body_is_cut_off_with_408(gw: Gateway) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}", **JSON}
    status, body, took = exchange(gw.http_port, request("POST", "/api/subjects/erase", 500, admin), b'{"subj')
    assert (status, body["error"]) == (408, "request_timeout")
    assert 0.9 <= took < 5

    fhir = {"Authorization": f"Bearer {FHIR_KEY}", "Content-Type": "application/fhir+json"}
    status, body, took = exchange(
        gw.http_port, request("POST", "/fhir/Patient", 500, fhir), b'{"resourceType"'
    )
    assert status == 408
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "timeout"
    assert 0.9 <= took < 5

    convert = {"Authorization": f"Bearer {TEST_KEY}", "Content-Type": "x-application/hl7-v2+er7"}
    status, body, took = exchange(
        gw.http_port, request("POST", "/api/convert/hl7v2-to-fhir", 500, convert), b"MSH|"
    )
    assert status == 408 and body["issue"][0]["code"] == "timeout"

    # the listener still answers, and a body sent in time is taken
    ok = httpx.post(
        f"{gw.http_url}/api/lineage/search",
        json={"limit": 5},
        headers={"Authorization": f"Bearer {TEST_KEY}"},
    )
    assert ok.status_code == 200


def test_json_bodies_are_still_checked_and_documented(gw: Gateway) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    bad = httpx.post(f"{gw.http_url}/api/subjects/erase", json={"subject": "", "extra": 1}, headers=admin)
    assert bad.status_code == 400
    assert bad.json()["detail"] == "Invalid parameter: extra, subject."
    assert (
        "PATIENTCANARY"
        not in httpx.post(
            f"{gw.http_url}/api/subjects/erase",
            content=b'{"subject": 5, "x": "PATIENTCANARY"}',
            headers=admin,
        ).text
    )
    not_json = httpx.post(
        f"{gw.http_url}/api/lineage/search", content=b"{", headers={"Authorization": f"Bearer {TEST_KEY}"}
    )
    assert not_json.status_code == 400
    spec = httpx.get(f"{gw.http_url}/api/openapi.json").json()
    erase = spec["paths"]["/api/subjects/erase"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert erase["properties"]["subject"]["maxLength"] == 512


def test_the_openapi_document_says_how_to_authenticate_and_what_errors_look_like(gw: Gateway) -> None:
    """Swagger UI can send a key, and what the document promises is what the server does: every operation
    it marks as secured answers 401 without a key; the gateway's own routes document 400 (never FastAPI's
    422) in the error shape they answer with; ingest documents its body and the protocol's replies."""
    spec = httpx.get(f"{gw.http_url}/api/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert (schemes["apiKey"]["in"], schemes["apiKey"]["name"]) == ("header", "X-API-Key")
    assert spec["security"] == [{"bearer": []}, {"apiKey": []}]
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    secured = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if operation.get("security") == []:
                continue
            url = gw.http_url + re.sub(
                r"\{[^}]+\}", "01M8FVYXQHYDKD4X4PHRC5NYV9", path.replace("{rtype}", "Patient")
            )
            answer = httpx.request(method.upper(), url, timeout=30)
            assert answer.status_code == 401, (method, path, answer.status_code)
            secured += 1
            if path.startswith("/api/"):
                assert "422" not in operation["responses"], (method, path)
                assert {"401", "403"} <= set(operation["responses"]), (method, path)
    assert secured > 30
    listing = spec["paths"]["/api/messages"]["get"]["responses"]
    assert listing["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    bad = httpx.get(f"{gw.http_url}/api/messages", params={"limit": 0}, headers={"X-API-Key": TEST_KEY})
    assert bad.status_code == 400 and set(bad.json()) == set(
        spec["components"]["schemas"]["Error"]["required"]
    )
    ingest = spec["paths"]["/ingest/hl7v2"]["post"]
    assert {"x-application/hl7-v2+er7", "text/plain"} <= set(ingest["requestBody"]["content"])
    assert {"200", "400", "413", "415", "422", "503"} <= set(ingest["responses"])
    assert "application/json" not in ingest["responses"]["200"].get("content", {})


def closed_within(s: socket.socket, seconds: float) -> float:
    """Seconds until the gateway closed ``s`` (it must within ``seconds``)."""
    start = time.monotonic()
    s.settimeout(seconds)
    assert s.recv(100) == b""
    return time.monotonic() - start


def test_a_slow_or_missing_request_head_closes_the_connection(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=10) as s:
        assert closed_within(s, 8) >= 0.9  # nothing sent at all
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=10) as s:
        start = time.monotonic()
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for i in range(40):  # one header line every quarter second, never the blank line
                time.sleep(0.25)
                s.sendall(f"X-Slow-{i}: 1\r\n".encode())
        assert 0.9 <= time.monotonic() - start < 8
    # a request on time is answered, and its connection is kept for the next one
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=10) as s:
        for _ in range(2):
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
            assert read_response(s)[0] == 200
            time.sleep(0.6)  # idle between requests counts against keep-alive, not the head limit


def test_a_connection_answered_before_its_body_arrived_is_closed(gw: Gateway) -> None:
    """After a 401 (or 413, 408) for a body still on its way, the gateway does not go on reading it, and
    its answer says so (``Connection: close``), so that a client does not send its next request there."""
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=10) as s:
        s.sendall(request("POST", "/api/subjects/erase", HUGE, JSON).encode() + b"\r\n" + b'{"subject": "A')
        status, headers, _ = read_response_with_headers(s)
        assert status == 401 and headers.get(b"connection") == b"close"
        assert closed_within(s, 5) < 5
        with pytest.raises(OSError):
            for _ in range(40):  # what the client goes on sending is not read
                s.sendall(b"A" * 65536)
                time.sleep(0.05)


def test_a_connection_whose_body_was_read_is_kept_for_the_next_request(gw: Gateway) -> None:
    """Keep-alive holds where the body was read: two searches, one connection, no ``Connection: close``."""
    body = b'{"control_id": "E2E-KEEPALIVE", "limit": 1}'
    head = request("POST", "/api/lineage/search", len(body), {**JSON, "Authorization": f"Bearer {TEST_KEY}"})
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=10) as s:
        for _ in range(2):
            s.sendall(head.encode() + b"\r\n" + body)
            status, headers, _ = read_response_with_headers(s)
            assert status == 200 and b"connection" not in headers


def test_blank_lines_between_requests_do_not_hold_a_connection(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        assert read_response(s)[0] == 200
        start = time.monotonic()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(40):  # a blank line every quarter second begins no request
                s.sendall(b"\r\n")
                time.sleep(0.25)
        assert time.monotonic() - start < 8


def test_a_pipelined_head_waits_for_the_response_before_it(gw: Gateway) -> None:
    """While a write waits for the store (another process holds its lock), the next request's head
    arrives only in part: the connection stays open until the write's answer is sent."""
    other = sqlite3.connect(gw.data_dir / "gateway.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with socket.create_connection(("127.0.0.1", gw.http_port), timeout=10) as s:
            body = with_control_id(fixture("adt_a01__basic.hl7"), "PIPE-1")
            head = request(
                "POST",
                "/ingest/hl7v2",
                len(body),
                {"Authorization": f"Bearer {TEST_KEY}", "Content-Type": "text/plain"},
            )
            s.sendall(head.encode() + b"\r\n" + body + b"GET /healthz HTTP/1.1\r\n")
            time.sleep(2.5)  # past the 1 s head limit, twice
            other.execute("COMMIT")
            status, answer = read_response(s)
            assert status == 200 and field(answer, "MSA", 1) == "AA"
    finally:
        other.close()


# -- connection limits ------------------------------------------------------------------------------

HEALTH = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway whose HTTP listener takes 3 connections in all and 2 per client address."""
    gateway = Gateway(
        tmp_path_factory.mktemp("connections"),
        {"http": {"max_connections": 3, "max_connections_per_client": 2, "header_timeout_s": 2.0}},
    )
    gateway.start()
    yield gateway
    gateway.stop()


def connect(port: int, source: str) -> socket.socket:
    """A connection to the gateway from the loopback address ``source`` (127.0.0.2 is another client)."""
    s = socket.socket()
    s.settimeout(10)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def health(s: socket.socket) -> int | None:
    """The status of ``GET /healthz`` sent on ``s``; ``None`` when the gateway closed or reset it instead."""
    try:
        s.sendall(HEALTH)
        return read_response(s)[0]
    except (OSError, AssertionError):  # reset, or closed without (all of) an answer
        return None


def admitted(port: int, source: str = "127.0.0.1", timeout: float = 15.0) -> socket.socket:
    """A connection the gateway admitted, proved by a request answered 200 on it. Connections that
    ended give their places back once the gateway has seen them close: until then a new one is refused,
    and tried again until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        s = connect(port, source)
        if health(s) == 200:
            return s
        s.close()
        assert time.monotonic() < deadline, f"no connection from {source} admitted in {timeout} s"
        time.sleep(0.05)


def refusal(s: socket.socket) -> bytes:
    """All the gateway sends on ``s``, which has sent nothing, until the gateway closes it."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def assert_refused(port: int, source: str = "127.0.0.1") -> None:
    """A new connection from ``source`` is answered 503 (``Connection: close``) before it sends
    anything, and closed."""
    with connect(port, source) as s:
        answer = refusal(s)
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"connection: close" in head.lower().split(b"\r\n"), answer
    assert body == b"Too many connections."


def refusals(gw: Gateway) -> list[dict[str, object]]:
    """The gateway's log lines about refused HTTP connections."""
    lines = [json.loads(line) for line in gw.logs().splitlines() if line.startswith("{")]
    return [line for line in lines if str(line["msg"]).startswith("http connection refused")]


def test_a_client_over_its_connection_limit_is_refused_until_one_of_its_connections_closes(
    narrow: Gateway,
) -> None:
    port = narrow.http_port
    first, second = admitted(port), admitted(port)
    try:
        before = len(refusals(narrow))
        assert_refused(port)  # a third from the same address
        # a real client is told why, and not kept waiting
        answer = httpx.get(f"{narrow.http_url}/healthz", timeout=10)
        assert (answer.status_code, answer.headers.get("connection")) == (503, "close")
        # the two admitted go on being served
        assert (health(first), health(second)) == (200, 200)
        # the limit is per client address: another client is admitted meanwhile
        with admitted(port, "127.0.0.2") as other:
            assert health(other) == 200
        logged = refusals(narrow)[before:]
        assert len(logged) == 2
        for line in logged:  # the peer address and nothing else
            assert line["msg"] == "http connection refused: too many connections from client"
            assert set(line) == {"ts", "level", "logger", "msg", "peer"}
            assert str(line["peer"]).startswith("127.0.0.1:")
        first.close()
        # its place is given back: a new connection from the same address is admitted (in time)
        with admitted(port) as again:
            assert health(again) == 200
            assert health(second) == 200
    finally:
        first.close()
        second.close()


def test_connections_over_the_overall_limit_are_refused_until_one_closes(narrow: Gateway) -> None:
    port = narrow.http_port
    held = [admitted(port, "127.0.0.1"), admitted(port, "127.0.0.2"), admitted(port, "127.0.0.3")]
    try:
        before = len(refusals(narrow))
        assert_refused(port, "127.0.0.4")  # a client with no connection yet, over the 3 in all
        assert [health(s) for s in held] == [200, 200, 200]
        (logged,) = refusals(narrow)[before:]
        assert logged["msg"] == "http connection refused: too many connections"
        assert str(logged["peer"]).startswith("127.0.0.4:")
        held.pop().close()
        with admitted(port, "127.0.0.4") as newcomer:
            assert health(newcomer) == 200
            assert [health(s) for s in held] == [200, 200]
    finally:
        for s in held:
            s.close()


def test_a_websocket_upgrade_request_gives_its_place_back(narrow: Gateway) -> None:
    """The gateway has no WebSocket route: an upgrade request is answered as plain HTTP, on a connection
    that keeps (and then gives back) its place like any other."""
    upgrade = (
        b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    for _ in range(4):  # twice the limit, one after another
        with admitted(port := narrow.http_port) as s:
            s.sendall(upgrade)
            assert read_response(s)[0] == 200
    first, second = admitted(port), admitted(port)
    first.close()
    second.close()
    assert "WebSocket library" not in narrow.logs()  # uvicorn's advice to install one is not given
