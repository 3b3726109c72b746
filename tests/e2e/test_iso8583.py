"""End to end: the real ``gateway serve`` process with its ISO 8583 listener, pyiso8583 messages over TCP.

Includes the PCI DSS test: known test PANs, track data, a PIN block and chip
data go in; afterwards the database files, the log, the lineage export and
every API response are searched for them.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import iso8583
import pytest
from iso8583.specs import default_ascii as spec

from tests.conftest import FIXTURES
from tests.support import ADMIN_KEY, TEST_KEY, Gateway, free_port, wait_port, wait_until

pytestmark = pytest.mark.e2e

DIR = FIXTURES / "finance" / "iso8583"

# Clear card data in the fixtures sent by the PCI test, and what must not be found anywhere.
PANS = [
    "4111111111111111",
    "5500005555555559",
    "4761739001010010",
    "4012888888881881",
    "378282246310005",
    "5555555555554444",
]
SECRETS = [
    *PANS,
    "5500005555555559=25121011000012345678",  # track 2
    "25121011000012345678",  # track 2 discretionary data
    "A1B2C3D4E5F60718",  # PIN block
    "9F2608C3D2A1B0E9F8A7965A08",  # chip data
    "CARDHOLDER/TEST A",  # track 1 name
    "4761-7390-0101-0010",  # PANs written in groups
    "3782 822463 10005",
    "4111 1111 1111 1111",
    "5555/5555/5555/4444",
    "5555 - 5555 - 5555 - 4444",
    "d29121010000",  # track 2 with a lower-case separator: expiry, service code, discretionary data
]


def fields_of(name: str, **changes: str) -> dict[str, str]:
    data: dict[str, str] = json.loads((DIR / name).read_text())
    data.update(changes)
    return data


def encode(fields: dict[str, str]) -> bytes:
    raw, _ = iso8583.encode(dict(fields), spec)
    return bytes(raw)


def framed(fields: dict[str, str]) -> bytes:
    raw = encode(fields)
    return len(raw).to_bytes(2, "big") + raw


def read_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def read_response(s: socket.socket) -> dict[str, str]:
    n = int.from_bytes(read_exact(s, 2), "big")
    decoded, _ = iso8583.decode(read_exact(s, n), spec)
    return decoded


def exchange(port: int, fields: dict[str, str]) -> dict[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(framed(fields))
        return read_response(s)


def start_gateway(workdir: Path, **iso: Any) -> tuple[Gateway, int]:
    port = free_port()
    gw = Gateway(workdir, {"iso8583": {"address": f"127.0.0.1:{port}", **iso}, "log_level": "debug"}).start()
    wait_port(port, proc=gw.proc)
    return gw, port


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, int]]:
    gw, port = start_gateway(tmp_path_factory.mktemp("iso8583"), max_message_bytes=2048)
    yield gw, port
    gw.stop()


@pytest.fixture
def api(gateway: tuple[Gateway, int]) -> Iterator[httpx.Client]:
    gw, _ = gateway
    with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=30) as c:
        yield c


def test_authorization_gets_0110_with_00_and_echoes(gateway: tuple[Gateway, int], api: httpx.Client) -> None:
    _, port = gateway
    request = fields_of("0100__basic.json", **{"11": "310001", "37": "507414310001"})
    response = exchange(port, request)
    assert response["t"] == "0110" and response["39"] == "00"
    for de in ("2", "3", "4", "7", "11", "37", "41", "42", "49"):
        assert response[de] == request[de], de
    items = api.get("/api/messages", params={"protocol": "iso8583", "control_id": "0100-310001-507414310001"})
    (item,) = items.json()["items"]
    assert item["status"] == "accepted" and item["reply_code"] == "00" and item["message_type"] == "0100"
    assert item["headers"]["pan_bin"] == "411111" and item["headers"]["pan_last4"] == "1111"
    assert item["headers"]["amount"] == "125.00" and item["headers"]["currency"] == "USD"
    assert "4111111111111111" not in items.text


def test_resend_is_answered_again_and_a_changed_resend_is_refused(
    gateway: tuple[Gateway, int], api: httpx.Client
) -> None:
    _, port = gateway
    request = fields_of("0100__basic.json", **{"11": "311001", "37": "507414311001"})
    assert exchange(port, request)["39"] == "00"
    assert exchange(port, request)["39"] == "00"  # the same message again: answered, not routed again
    changed = exchange(port, request | {"4": "000000099900"})
    assert changed["39"] == "30" and changed["11"] == "311001"
    items = api.get("/api/messages", params={"control_id": "0100-311001-507414311001"}).json()["items"]
    assert sorted(i["status"] for i in items) == ["accepted", "rejected"]


def test_echo_gets_0810_and_is_not_stored(gateway: tuple[Gateway, int], api: httpx.Client) -> None:
    _, port = gateway
    response = exchange(port, fields_of("0800__echo.json", **{"11": "320001"}))
    assert (response["t"], response["39"], response["11"], response["70"]) == ("0810", "00", "320001", "301")
    assert api.get("/api/messages", params={"message_type": "0800"}).json()["items"] == []


def test_bad_amount_gets_0210_with_30(gateway: tuple[Gateway, int], api: httpx.Client) -> None:
    _, port = gateway
    request = fields_of("0200__purchase.json", **{"4": "0000001250.0", "11": "330001", "37": "507414330001"})
    response = exchange(port, request)
    assert (response["t"], response["39"], response["11"], response["41"]) == (
        "0210",
        "30",
        "330001",
        "TERM0001",
    )
    (item,) = api.get("/api/messages", params={"control_id": "0200-330001-507414330001"}).json()["items"]
    assert item["status"] == "rejected" and "invalid_amount" in {i["code"] for i in item["issues"]}


def test_pipelined_requests_are_all_answered_and_matched_by_stan(gateway: tuple[Gateway, int]) -> None:
    _, port = gateway
    stans = [f"{340000 + i:06d}" for i in range(40)]
    payload = b"".join(
        framed(fields_of("0200__purchase.json", **{"11": stan, "37": f"507414{stan}"})) for stan in stans
    )
    echo = framed(fields_of("0800__echo.json", **{"11": "349999"}))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(payload[: len(payload) // 2] + echo + payload[len(payload) // 2 :])
        responses = [read_response(s) for _ in range(len(stans) + 1)]
        by_stan = {(r["11"], r.get("41", "")): r for r in responses}
        assert by_stan.pop(("349999", ""))["t"] == "0810"
        assert sorted(by_stan) == [(stan, "TERM0001") for stan in stans]
        assert all(r["t"] == "0210" and r["39"] == "00" for r in by_stan.values())
        # the connection is still good
        s.sendall(framed(fields_of("0200__purchase.json", **{"11": "341000", "37": "507414341000"})))
        assert read_response(s)["11"] == "341000"


def test_oversize_length_closes_the_connection(gateway: tuple[Gateway, int]) -> None:
    _, port = gateway
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall((4000).to_bytes(2, "big") + b"0100" + b"0" * 100)
        rest = b""
        try:
            while chunk := s.recv(65536):
                rest += chunk
        except ConnectionResetError:
            pass
    assert rest == b""
    assert exchange(port, fields_of("0800__echo.json"))["39"] == "00"  # the listener is fine


def test_pci_no_card_data_is_kept_anywhere(tmp_path: Path) -> None:
    """Seed test PANs, track 1 and 2, a PIN block and chip data; find none of them afterwards."""
    gw, port = start_gateway(tmp_path)
    responses: list[str] = []
    try:
        sent = [
            fields_of("0100__track2_pin.json"),
            fields_of("0100__chip.json"),
            fields_of("0100__track1.json"),
            fields_of("0100__track2_only.json"),
            fields_of(
                "0200__private_data.json",
                **{
                    "2": "4111111111111111",
                    "48": "COPY 4111111111111111 ALT 4761-7390-0101-0010 3782 822463 10005",
                },
            ),
            fields_of("invalid__invalid_amount.json", **{"2": "5500005555555559"}),
            # card numbers in a fixed-length element (DE43), in groups joined by other separators, at the
            # end of a reference, and track 2 data with a lower-case separator
            fields_of(
                "0100__basic.json",
                **{
                    "11": "360001",
                    "37": "507414360001",
                    "43": "PAID 5555555555554444 SPRINGFIELD US".ljust(40),
                    "48": "REF20260101" + "5555555555554444",
                    "62": "5555/5555/5555/4444 ALT 5555 - 5555 - 5555 - 4444",
                },
            ),
            fields_of(
                "0100__basic.json",
                **{
                    "11": "360002",
                    "37": "507414360002",
                    "43": "CARD 4111 1111 1111 1111 ACME STORE  US ",
                    "62": "5555555555554444d29121010000",
                },
            ),
        ]
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            for fields in sent:
                s.sendall(framed(fields))
            answers = [read_response(s) for _ in sent]
            # an undecodable message: DE35's length says more than is there
            broken = encode(fields_of("0100__track2_pin.json", **{"11": "350001"}))
            cut = broken[:-20]
            s.sendall(len(cut).to_bytes(2, "big") + cut)
            answers.append(read_response(s))
        assert sorted(a["39"] for a in answers) == ["00"] * 7 + ["30", "30"]

        with (
            httpx.Client(
                base_url=gw.http_url, headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=30
            ) as c,
            httpx.Client(
                base_url=gw.http_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
            ) as admin,
        ):

            def fetch(client: httpx.Client, method: str, url: str, **kw: Any) -> httpx.Response:
                r = client.request(method, url, **kw)
                responses.append(r.text)
                assert r.status_code == 200, (url, r.status_code)
                return r

            items = fetch(c, "GET", "/api/messages", params={"protocol": "iso8583"}).json()["items"]
            assert len(items) == len(answers)
            stored: dict[str, dict[str, Any]] = {}
            for item in items:
                fetch(c, "GET", f"/api/messages/{item['id']}")
                fetch(c, "GET", f"/api/messages/{item['id']}/lineage")
                fetch(c, "GET", f"/api/lineage/messages/{item['id']}")
                raw = fetch(admin, "GET", f"/api/messages/{item['id']}/raw")
                if item["status"] == "accepted":
                    stored[item["control_id"]] = json.loads(raw.content)
                    assert stored[item["control_id"]]["format"] == "iso8583/redacted-v1"
            # masked in place: the stored elements keep their lengths and still encode with the spec
            first = stored["0100-360001-507414360001"]["fields"]
            assert first["43"] == "PAID 555555******4444 SPRINGFIELD US".ljust(40)
            assert first["48"] == "REF20260101555555******4444"
            assert first["62"] == "5555/55**/****/4444 ALT 5555 - 55** - **** - 4444"
            second = stored["0100-360002-507414360002"]
            assert second["fields"]["43"] == "CARD 4111 11** **** 1111 ACME STORE  US "
            assert second["removed"] == ["62"] and "62" not in second["fields"]
            for doc in (first, second["fields"]):
                kept = {k: v for k, v in doc.items() if k not in ("p", "1")}
                assert {k: v for k, v in iso8583.decode(encode(kept), spec)[0].items() if k != "p"} == kept
            # lookups by the clear PAN work through its pseudonym, and show only the masked form
            for pan, masked in (
                ("5500005555555559", "550000******5559"),
                ("4761739001010010", "476173******0010"),
            ):
                events = fetch(c, "POST", "/api/lineage/search", json={"key": pan}).json()["events"]
                assert events, pan
                assert masked in json.dumps(events)
            hits = fetch(c, "POST", "/api/lineage/search", json={"key": "4111111111111111"}).json()["events"]
            assert {e["envelope_id"] for e in hits if e["event"] == "MessageReceived"}
            track_only = next(i for i in items if i["control_id"] == "0100-100003-507414100003")
            assert track_only["headers"]["pan_bin"] == "401288"
            fetch(c, "GET", "/api/lineage/verify")
    finally:
        assert gw.stop() == 0

    export = gw.cli("lineage", "export", *gw.store_args())
    assert export.returncode == 0, export.stderr
    assert "MessageReceived" in export.stdout
    haystacks: dict[str, bytes] = {
        "lineage export": export.stdout.encode(),
        "log": gw.log_path.read_bytes(),
        "api responses": "\n".join(responses).encode(),
    }
    for path in sorted(gw.data_dir.iterdir()):
        if path.is_file():
            haystacks[path.name] = path.read_bytes()
    assert "gateway.db" in haystacks
    assert b"550000******5559" in haystacks["gateway.db"] + haystacks.get("gateway.db-wal", b"")
    # the stored raw form, as the API gives it: PANs written in groups masked in place, same length
    assert b"ALT 4761-73**-****-0010 3782 82**** *0005" in haystacks["api responses"]
    found = {
        (where, secret)
        for where, data in haystacks.items()
        for secret in SECRETS
        if secret.encode() in data or secret.encode("utf-16-le") in data
    }
    assert not found, found


def test_a_client_that_never_reads_is_cut_off_and_its_slot_freed(tmp_path: Path) -> None:
    """A client that writes echo requests and never reads the answers: once they pile up the gateway reads
    no more from it, resets it idle_timeout_s after that, and the address may connect again (one
    connection per client)."""
    port = free_port()
    gw = Gateway(
        tmp_path,
        {
            "iso8583": {
                "address": f"127.0.0.1:{port}",
                "idle_timeout_s": 2.0,
                "read_timeout_s": 60.0,
                "max_connections_per_client": 1,
            }
        },
    ).start()
    wait_port(port, proc=gw.proc)
    echo = framed(fields_of("0800__echo.json"))

    def connected(rcvbuf: int = 0) -> socket.socket:
        """A connection the gateway admitted (the start-up probe may hold the only slot a moment)."""
        for _ in range(50):
            s = socket.socket()
            if rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.settimeout(10)
            s.connect(("127.0.0.1", port))
            try:
                s.sendall(echo)
                assert read_response(s)["39"] == "00"
                return s
            except (ConnectionError, OSError):
                s.close()
                time.sleep(0.1)
        raise AssertionError("never admitted")

    def established(s: socket.socket) -> bool:
        return bool(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == 1)

    try:
        s = connected(rcvbuf=4096)
        with s:
            # more answers than the kernel's buffers hold (4 MiB), sent as fast as the gateway takes them
            s.setblocking(False)
            pending = echo * 200_000
            deadline = time.monotonic() + 120
            while pending and time.monotonic() < deadline and established(s):
                _, writable, _ = select.select([], [s], [], 0.2)
                if writable:
                    try:
                        pending = pending[s.send(pending) :]
                    except (BrokenPipeError, ConnectionResetError):
                        break
            assert wait_until(lambda: not established(s), 60), "a client that does not read is never cut off"
        assert "iso8583 client not reading its responses; closed" in gw.logs()
        with connected():
            pass
    finally:
        gw.stop()
