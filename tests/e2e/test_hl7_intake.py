"""End to end: the real ``gateway serve`` process, real MLLP over TCP, real HTTP, the real CLI."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import hl7
import hl7.client
import httpx
import pytest
import yaml

from tests.conftest import FIXTURES
from tests.support import EB, READ_KEY, SB, TEST_KEY, Gateway, read_frame, wait_until, with_control_id

pytestmark = pytest.mark.e2e

HL7 = FIXTURES / "hl7"


def fixture(name: str) -> bytes:
    return (HL7 / name).read_bytes()


def cr(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")


def field(message: bytes, segment: str, n: int) -> str:
    """Field n of the first segment named ``segment`` (MSH-n counted the HL7 way)."""
    for seg in cr(message).split(b"\r"):
        if seg.startswith(segment.encode()):
            parts = seg.decode("latin-1").split("|")
            return parts[n - 1] if segment == "MSH" else (parts[n] if n < len(parts) else "")
    return ""


def mllp_exchange(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(SB + payload + EB)
        return read_frame(s)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    g = Gateway(
        tmp_path_factory.mktemp("gw"),
        {
            "mllp": {
                "max_frame_bytes": 200_000,
                "frame_timeout_s": 1.0,
                "idle_timeout_s": 3.0,
                "max_connections_per_client": 20,
            },
            "http": {"max_body_bytes": 200_000},
        },
    ).start()
    yield g
    g.stop()


def test_mllp_ack_from_python_hl7_client(gw: Gateway, api: httpx.Client) -> None:
    """A client we did not write gets AA, MSA-2 = MSH-10, sender and receiver swapped, version kept."""
    raw = with_control_id(fixture("adt_a01__basic.hl7"), "E2E-PYHL7-1")
    with hl7.client.MLLPClient("127.0.0.1", gw.mllp_port) as client:
        ack = hl7.parse(client.send_message(raw.decode()))
    assert str(ack.segment("MSA")[1]) == "AA"
    assert str(ack.segment("MSA")[2]) == "E2E-PYHL7-1"
    msh = ack.segment("MSH")
    assert str(msh[3]) == field(raw, "MSH", 5) and str(msh[5]) == field(raw, "MSH", 3)
    assert str(msh[4]) == field(raw, "MSH", 6) and str(msh[6]) == field(raw, "MSH", 4)
    assert str(msh[12]) == field(raw, "MSH", 12)
    assert str(msh[9]).startswith("ACK^A01")
    items = api.get("/api/messages", params={"control_id": "E2E-PYHL7-1"}).json()["items"]
    assert len(items) == 1 and items[0]["status"] == "accepted" and items[0]["message_type"] == "ADT^A01"


def test_mllp_framing_noise_split_and_pipelined(gw: Gateway) -> None:
    """Garbage before the start byte is dropped; a frame split across writes and two frames in one write work."""
    a = with_control_id(fixture("adt_a01__basic.hl7"), "E2E-FRAME-A")
    b = with_control_id(fixture("adt_a04__register.hl7"), "E2E-FRAME-B")
    c = with_control_id(fixture("adt_a08__update.hl7"), "E2E-FRAME-C")
    with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=10) as s:
        s.sendall(b"noise\r\n" + SB + a[:40])
        time.sleep(0.2)
        s.sendall(a[40:] + EB + SB + b + EB + SB + c + EB)
        acks = [read_frame(s) for _ in range(3)]
    assert [field(x, "MSA", 2) for x in acks] == ["E2E-FRAME-A", "E2E-FRAME-B", "E2E-FRAME-C"]
    assert all(field(x, "MSA", 1) == "AA" for x in acks)


def test_mllp_invalid_message_gets_ae_with_err(gw: Gateway) -> None:
    ack = mllp_exchange(gw.mllp_port, cr(fixture("invalid__missing_msh9.hl7")))
    assert field(ack, "MSA", 1) in ("AE", "AR")
    assert field(ack, "MSA", 2) == field(fixture("invalid__missing_msh9.hl7"), "MSH", 10)
    assert b"\rERR|" in ack


def test_mllp_unparseable_frame_gets_a_reply_and_the_listener_survives(gw: Gateway) -> None:
    ack = mllp_exchange(gw.mllp_port, b"this is not HL7 at all")
    assert field(ack, "MSA", 1) in ("AE", "AR")
    ok = mllp_exchange(gw.mllp_port, with_control_id(fixture("adt_a01__basic.hl7"), "E2E-AFTER-JUNK"))
    assert field(ok, "MSA", 1) == "AA"


def test_mllp_oversized_frame_is_refused_and_closed(gw: Gateway) -> None:
    big = with_control_id(fixture("adt_a01__basic.hl7"), "E2E-BIG") + b"\rNTE|1||" + b"x" * 300_000
    with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=10) as s:
        s.sendall(SB + big + EB)
        ack = read_frame(s)
        assert field(ack, "MSA", 1) == "AR"
        s.settimeout(5)
        rest = b""
        try:
            while chunk := s.recv(65536):
                rest += chunk
        except ConnectionResetError:
            pass
    assert b"MSA" not in rest


def test_mllp_unfinished_frame_and_idle_connections_are_closed(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=10) as s:
        s.sendall(SB + b"MSH|^~\\&|half")
        t0 = time.monotonic()
        assert s.recv(100) == b""  # closed by the frame time-out (1 s)
        assert time.monotonic() - t0 < 5
    with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=10) as s:
        t0 = time.monotonic()
        assert s.recv(100) == b""  # closed by the idle time-out (3 s)
        assert 2 < time.monotonic() - t0 < 8
    with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=10) as s:
        t0 = time.monotonic()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(16):  # bytes outside any frame, every half second, do not keep it open
                s.sendall(b"X")
                time.sleep(0.5)
        assert 2 < time.monotonic() - t0 < 6


def test_mllp_connection_limit_per_client(gw: Gateway) -> None:
    socks = [socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=5) for _ in range(20)]
    try:
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=5)
        with contextlib.suppress(OSError):
            extra.sendall(SB + with_control_id(fixture("adt_a01__basic.hl7"), "E2E-LIMIT") + EB)
        with contextlib.suppress(ConnectionResetError):
            assert extra.recv(100) == b""
        extra.close()
    finally:
        for s in socks:
            s.close()

    # the closed connections give their places back once the gateway has seen them close: how soon
    # depends on the machine's load, so a connection refused meanwhile (closed, no ACK) is tried again
    acks: list[bytes] = []
    after = with_control_id(fixture("adt_a01__basic.hl7"), "E2E-LIMIT-AFTER")

    def admitted() -> bool:
        try:
            acks.append(mllp_exchange(gw.mllp_port, after))
        except ConnectionError:
            return False
        return True

    assert wait_until(admitted, 30)
    assert field(acks[-1], "MSA", 1) == "AA"


def test_duplicate_is_acknowledged_not_stored_again(gw: Gateway, api: httpx.Client) -> None:
    raw = with_control_id(fixture("adt_a03__discharge.hl7"), "E2E-DUP-1")
    first = mllp_exchange(gw.mllp_port, raw)
    again = mllp_exchange(gw.mllp_port, raw)
    assert field(first, "MSA", 1) == field(again, "MSA", 1) == "AA"
    items = api.get("/api/messages", params={"control_id": "E2E-DUP-1"}).json()["items"]
    assert len(items) == 1
    events = [e["event"] for e in api.get(f"/api/messages/{items[0]['id']}/lineage").json()["events"]]
    assert events.count("DuplicateReceived") == 1
    assert events[:2] == ["MessageReceived", "MessageAccepted"]
    assert "ReplySent" in events

    changed = raw.replace(b"PV1|1|", b"PV1|2|", 1)
    assert changed != raw
    conflict = mllp_exchange(gw.mllp_port, changed)
    assert field(conflict, "MSA", 1) == "AE"
    assert b"205" in conflict  # HL7 table 0357: duplicate key identifier
    items = api.get("/api/messages", params={"control_id": "E2E-DUP-1"}).json()["items"]
    assert sorted(i["status"] for i in items) == ["accepted", "rejected"]


def test_http_ingest_auth_and_limits(gw: Gateway) -> None:
    raw = with_control_id(fixture("adt_a01__basic.hl7"), "E2E-HTTP-1")
    url = f"{gw.http_url}/ingest/hl7v2"
    ct = {"Content-Type": "x-application/hl7-v2+er7"}
    assert httpx.post(url, content=raw, headers=ct).status_code == 401
    assert httpx.post(url, content=raw, headers={**ct, "X-API-Key": "wrong-key-wrong-key"}).status_code == 401
    assert httpx.post(url, content=raw, headers={**ct, "X-API-Key": READ_KEY}).status_code == 403
    auth = {"Authorization": f"Bearer {TEST_KEY}"}
    r = httpx.post(url, content=raw, headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 415
    r = httpx.post(url, content=raw + b"\rNTE|1||" + b"y" * 250_000, headers={**auth, **ct})
    assert r.status_code == 413
    r = httpx.post(url, content=raw, headers={**auth, "Content-Type": "text/plain"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "x-application/hl7-v2+er7; charset=UTF-8"
    assert field(r.content, "MSA", 1) == "AA" and field(r.content, "MSA", 2) == "E2E-HTTP-1"
    # the charset names how the ACK's bytes are encoded: as the message was read (MSH-18 8859/1 here)
    latin1 = with_control_id(cr(fixture("adt_a01__latin1.hl7")), "E2E-HTTP-LATIN1").replace(
        b"GATEWAY", b"G\xc4TEWAY"
    )
    r = httpx.post(url, content=latin1, headers={**auth, **ct})
    assert (
        r.status_code == 200 and r.headers["content-type"] == "x-application/hl7-v2+er7; charset=ISO-8859-1"
    )
    assert "GÄTEWAY" in r.text and r.encoding.lower() in ("iso-8859-1", "latin-1")


def test_http_ingest_invalid_is_4xx_with_reason(gw: Gateway) -> None:
    r = httpx.post(
        f"{gw.http_url}/ingest/hl7v2",
        content=cr(fixture("invalid__unsupported_version.hl7")),
        headers={"Authorization": f"Bearer {TEST_KEY}", "Content-Type": "x-application/hl7-v2+er7"},
    )
    assert 400 <= r.status_code < 500
    assert field(r.content, "MSA", 1) == "AR"
    assert b"ERR|" in r.content and b"203" in r.content  # 0357: unsupported version id


def test_http_batch_each_message_its_own_envelope(gw: Gateway, api: httpx.Client) -> None:
    r = api.post(
        "/ingest/hl7v2",
        content=fixture("batch__fhs_bhs.hl7"),
        headers={"Content-Type": "x-application/hl7-v2+er7"},
    )
    assert r.status_code == 200
    acks = [seg for seg in r.content.split(b"\r") if seg.startswith(b"MSA")]
    assert len(acks) == 3 and all(a.startswith(b"MSA|AA|") for a in acks)
    reply = hl7.parse_file(r.content.decode())
    assert (str(reply.header[12]), str(reply[0].header[12])) == ("NWG-FHS-0001", "NWG-BHS-0001")
    control_ids = [a.split(b"|")[2].decode() for a in acks]
    parents = set()
    for cid in control_ids:
        (item,) = api.get("/api/messages", params={"control_id": cid}).json()["items"]
        parents.add(item["parent_id"])
    assert len(parents) == 1 and None not in parents
    batch_id = parents.pop()
    batch = api.get(f"/api/messages/{batch_id}").json()
    assert batch["status"] == "batch"
    trace = api.get(f"/api/lineage/messages/{batch_id}").json()
    assert sorted(c["control_id"] for c in trace["children"]) == sorted(control_ids)
    assert trace["events"][0]["event"] == "BatchReceived"
    assert [e["event"] for e in batch["lineage"]].count("MessageReceived") == 3


def batch_file(tag: str, count: int, declared: int | None = None) -> bytes:
    """An FHS/BHS file of ``count`` ADT^A01 messages with control ids ``{tag}-1`` …; BTS-1 says
    ``declared`` (``count`` by default)."""
    messages = b"".join(
        with_control_id(fixture("adt_a01__basic.hl7"), f"{tag}-{n}") for n in range(1, count + 1)
    )
    return (
        (
            f"FHS|^~\\&|LAB|HOSP|GW|GATEWAY|20240101120000||{tag}.hl7||{tag}-F\r"
            f"BHS|^~\\&|LAB|HOSP|GW|GATEWAY|20240101120000||{tag}||{tag}-B\r"
        ).encode()
        + cr(messages)
        + f"BTS|{count if declared is None else declared}\rFTS|1\r".encode()
    )


def test_a_batch_is_answered_by_an_acknowledgement_batch(gw: Gateway, api: httpx.Client) -> None:
    """FHS/BHS in, FHS/BHS out (HL7 v2.5 §2.10.3): one ACK per message inside, the inbound control ids
    as references, counts in the trailers; python-hl7 reads it as a file of one batch of ACKs."""
    r = api.post(
        "/ingest/hl7v2",
        content=batch_file("E2E-BACK", 3),
        headers={"Content-Type": "x-application/hl7-v2+er7"},
    )
    assert r.status_code == 200
    reply = hl7.parse_file(r.content.decode())
    assert str(reply.header[12]) == "E2E-BACK-F" and str(reply.header[5]) == "LAB"  # FHS-12, FHS-5
    (batch,) = reply
    assert str(batch.header[12]) == "E2E-BACK-B" and str(batch.trailer[1]) == "3"
    assert [(str(m.segment("MSA")[1]), str(m.segment("MSA")[2])) for m in batch] == [
        ("AA", "E2E-BACK-1"),
        ("AA", "E2E-BACK-2"),
        ("AA", "E2E-BACK-3"),
    ]
    assert str(reply.trailer[1]) == "1"
    # the same over MLLP
    ack = mllp_exchange(gw.mllp_port, batch_file("E2E-BACK-MLLP", 2))
    assert ack.startswith(b"FHS|") and b"\rBTS|2\rFTS|1\r" in ack and ack.count(b"MSA|AA|") == 2


def test_an_empty_batch_is_kept_and_acknowledged(gw: Gateway, api: httpx.Client) -> None:
    """``BTS|0`` (a feed's "nothing today") is a batch, not a broken message: it is kept, with its lineage,
    and answered by an acknowledgement batch of no ACK."""
    sent = batch_file("E2E-EMPTY", 0)
    ack = mllp_exchange(gw.mllp_port, sent)
    lines = ack.rstrip(b"\r").split(b"\r")
    assert [line[:3] for line in lines] == [b"FHS", b"BHS", b"BTS", b"FTS"]
    assert lines[1].split(b"|")[11] == b"E2E-EMPTY-B" and lines[2:] == [b"BTS|0", b"FTS|1"]
    batches = api.get("/api/messages", params={"status": "batch", "limit": 1000}).json()["items"]
    (kept,) = [b for b in batches if b["raw_sha256"] == hashlib.sha256(sent).hexdigest()]
    assert kept["message_type"] == "BATCH:fhs"
    events = api.get(f"/api/messages/{kept['id']}/lineage").json()["events"]
    (received,) = [e for e in events if e["event"] == "BatchReceived"]
    assert received["details"]["messages"] == 0 and "issues" not in received["details"]


def test_batch_counts_that_do_not_match_are_recorded_and_reported(gw: Gateway, api: httpx.Client) -> None:
    r = api.post(
        "/ingest/hl7v2",
        content=batch_file("E2E-COUNT", 1, declared=5),
        headers={"Content-Type": "x-application/hl7-v2+er7"},
    )
    assert r.status_code == 200  # the message is fine; the batch's count is a warning
    assert b"\rBTS|1|BTS-1 declares 5 messages; 1 arrived.\r" in r.content
    (item,) = api.get("/api/messages", params={"control_id": "E2E-COUNT-1"}).json()["items"]
    events = api.get(f"/api/messages/{item['parent_id']}/lineage").json()["events"]
    (received,) = [e for e in events if e["event"] == "BatchReceived"]
    assert received["details"]["issues"] == ["batch_count_mismatch"] and received["details"]["messages"] == 1


def test_api_queries_and_lineage(gw: Gateway, api: httpx.Client) -> None:
    raw = with_control_id(fixture("oru_r01__cbc_20_obx.hl7"), "E2E-API-ORU")
    assert field(mllp_exchange(gw.mllp_port, raw), "MSA", 1) == "AA"
    since = "2000-01-01T00:00:00Z"
    r = api.get(
        "/api/messages",
        params={"protocol": "hl7v2", "message_type": "ORU^R01", "status": "accepted", "since": since},
    )
    assert r.status_code == 200
    assert "E2E-API-ORU" in [i["control_id"] for i in r.json()["items"]]
    assert api.get("/api/messages", params={"until": since}).json()["items"] == []
    assert api.get("/api/messages", params={"since": "yesterday"}).status_code == 400
    (item,) = api.get("/api/messages", params={"control_id": "E2E-API-ORU"}).json()["items"]
    detail = api.get(f"/api/messages/{item['id']}").json()
    assert detail["headers"]["message_structure"] == "ORU_R01"
    seqs = [e["seq"] for e in detail["lineage"]]
    assert seqs == sorted(seqs)
    assert api.get("/api/messages/NOPE").status_code == 404
    assert api.get("/api/lineage/verify").json()["ok"] is True
    assert httpx.get(f"{gw.http_url}/api/messages").status_code == 401
    assert httpx.get(f"{gw.http_url}/api/lineage/verify", headers={"X-API-Key": READ_KEY}).status_code == 403
    assert httpx.get(f"{gw.http_url}/healthz").json()["ok"] is True


def test_query_times_are_moments_whatever_their_zone(gw: Gateway, api: httpx.Client) -> None:
    """``since``/``until`` name a moment: the same one in any zone selects the same rows, and one that names
    no zone is UTC, whatever the machine's zone (API, lineage search and CLI alike)."""
    raw = with_control_id(fixture("adt_a01__basic.hl7"), "E2E-TIMES-1")
    assert field(mllp_exchange(gw.mllp_port, raw), "MSA", 1) == "AA"
    (item,) = api.get("/api/messages", params={"control_id": "E2E-TIMES-1"}).json()["items"]
    received = datetime.fromisoformat(item["received_at"])
    plus5 = timezone(timedelta(hours=5))

    def forms(moment: datetime) -> list[str]:
        """``moment`` in UTC, at +05:00, and in UTC with no zone named."""
        return [
            moment.astimezone(UTC).isoformat(),
            moment.astimezone(plus5).isoformat(),
            moment.astimezone(UTC).replace(tzinfo=None).isoformat(),
        ]

    before, after = received - timedelta(seconds=2), received + timedelta(seconds=2)
    for since in forms(before):
        listed = api.get("/api/messages", params={"control_id": "E2E-TIMES-1", "since": since}).json()
        assert [i["id"] for i in listed["items"]] == [item["id"]], since
        searched = api.post("/api/lineage/search", json={"control_id": "E2E-TIMES-1", "since": since})
        assert item["id"] in {e["envelope_id"] for e in searched.json()["events"]}, since
    for since in forms(after):
        listed = api.get("/api/messages", params={"control_id": "E2E-TIMES-1", "since": since}).json()
        assert listed["items"] == [], since
        searched = api.post("/api/lineage/search", json={"control_id": "E2E-TIMES-1", "since": since})
        assert searched.json()["events"] == [], since
    # the command line pages as the API does: --limit, then --before the last id shown
    for n in (2, 3):
        assert field(mllp_exchange(gw.mllp_port, with_control_id(raw, f"E2E-TIMES-{n}")), "MSA", 1) == "AA"
    first = gw.cli("messages", "list", "--limit", "1", "--json", *gw.store_args())
    (newest,) = [json.loads(line) for line in first.stdout.splitlines()]
    older = gw.cli("messages", "list", "--limit", "2", "--before", newest["id"], "--json", *gw.store_args())
    expected = api.get("/api/messages", params={"limit": 2, "before": newest["id"]}).json()["items"]
    assert [json.loads(line)["id"] for line in older.stdout.splitlines()] == [i["id"] for i in expected]
    assert len(expected) == 2 and all(i["id"] < newest["id"] for i in expected)
    for zone in ("UTC", "America/New_York", "Asia/Tokyo"):
        for since, found in ((forms(before)[2], [item["id"]]), (forms(after)[2], [])):
            r = gw.cli(
                "messages", "list", "--control-id", "E2E-TIMES-1", "--since", since, "--json",
                *gw.store_args(), env={"TZ": zone},
            )  # fmt: skip
            assert r.returncode == 0, r.stderr
            assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == found, (zone, since)
    # what is not a time, a status or an id is refused in the API's and the command line's own terms
    # a moment before the first id (1970) selects from the first; one out of range in UTC is refused
    everything = api.get("/api/messages", params={"since": "1969-12-31", "control_id": "E2E-TIMES-1"})
    assert [i["id"] for i in everything.json()["items"]] == [item["id"]]
    out_of_range = ({"since": "0001-01-01T00:00:00+14:00"}, {"until": "9999-12-31T23:59:59-05:00"})
    for params in (
        {"since": "yesterday"},
        {"status": "bogus"},
        {"before": "zzz"},
        {"before": "../../x"},
        *out_of_range,
    ):
        r = api.get("/api/messages", params=params)
        assert r.status_code == 400 and r.json()["error"] == "bad_parameter", params
    assert api.post("/api/lineage/search", json={"since": "yesterday"}).status_code == 400
    for args in (
        ("--since", "yesterday"),
        ("--limit", "0"),
        ("--status", "bogus"),
        ("--since", "0001-01-01T00:00:00+14:00"),
    ):
        r = gw.cli("messages", "list", *args, *gw.store_args())
        assert r.returncode == 2 and "Traceback" not in r.stderr and args[0] in r.stderr, args


def test_reading_a_body_takes_the_admin_scope(gw: Gateway, api: httpx.Client) -> None:
    """The stored bytes carry PHI: a key with messages:read (or ingest and lineage scopes too) gets 403,
    a request without a valid key 401, and neither answer holds any of the body."""
    raw = with_control_id(fixture("adt_a01__canary.hl7"), "E2E-RAW-SCOPE")
    assert field(mllp_exchange(gw.mllp_port, raw), "MSA", 1) == "AA"
    (item,) = api.get("/api/messages", params={"control_id": "E2E-RAW-SCOPE"}).json()["items"]
    url = f"{gw.http_url}/api/messages/{item['id']}/raw"
    refusals = [
        (httpx.get(url, headers={"X-API-Key": READ_KEY}), 403),
        (httpx.get(url, headers={"Authorization": f"Bearer {READ_KEY}"}), 403),
        (httpx.get(url, headers={"Authorization": f"Bearer {TEST_KEY}"}), 403),
        (httpx.get(url), 401),
        (httpx.get(url, headers={"X-API-Key": "wrong-key-wrong-key"}), 401),
    ]
    assert [r.status_code for r, _ in refusals] == [status for _, status in refusals]
    for r, _ in refusals:
        assert b"CANARYPATIENT" not in r.content and b"CANARY-MRN-0001" not in r.content


def test_cli_send_over_mllp_and_http(gw: Gateway, tmp_path: Path) -> None:
    good = tmp_path / "good.hl7"
    good.write_bytes(with_control_id(fixture("siu_s12__appointment.hl7"), "E2E-CLI-SIU"))
    r = gw.cli("send", "--mllp", f"127.0.0.1:{gw.mllp_port}", str(good))
    assert r.returncode == 0, r.stderr
    assert "MSA|AA|E2E-CLI-SIU" in r.stdout
    r = gw.cli("send", "--mllp", f"127.0.0.1:{gw.mllp_port}", str(HL7 / "batch__multi_msh.hl7"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("MSA|AA|") == 3
    r = gw.cli("send", "--mllp", f"127.0.0.1:{gw.mllp_port}", str(HL7 / "invalid__missing_msh10.hl7"))
    assert r.returncode == 1
    assert "MSA|A" in r.stdout
    r = gw.cli(
        "send",
        "--http",
        f"{gw.http_url}/ingest/hl7v2",
        "--api-key",
        TEST_KEY,
        str(HL7 / "vxu_v04__immunization.hl7"),
    )
    assert r.returncode == 0, r.stderr
    assert "MSA|AA|" in r.stdout
    r = gw.cli("send", "--http", f"{gw.http_url}/ingest/hl7v2", "--api-key", READ_KEY, str(good))
    assert r.returncode == 1


def test_cli_send_reports_an_unreadable_file_and_carries_on(gw: Gateway, tmp_path: Path) -> None:
    """A missing or unreadable file is one line on stderr, not a traceback; the other files are sent
    and their MSA lines printed (over HTTP the replies already received were lost), and the exit
    status says not everything was accepted."""
    missing, folder = tmp_path / "missing.hl7", tmp_path / "a-folder.hl7"
    folder.mkdir()
    for how, target in (
        ("--mllp", f"127.0.0.1:{gw.mllp_port}"),
        ("--http", f"{gw.http_url}/ingest/hl7v2"),
    ):
        name = how.strip("-").upper()
        first, second = tmp_path / f"first-{name}.hl7", tmp_path / f"second-{name}.hl7"
        first.write_bytes(with_control_id(fixture("adt_a01__basic.hl7"), f"E2E-SEND-{name}-1"))
        second.write_bytes(with_control_id(fixture("adt_a04__register.hl7"), f"E2E-SEND-{name}-2"))
        r = gw.cli(
            "send", how, target, "--api-key", TEST_KEY, str(first), str(missing), str(folder), str(second)
        )
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr
        assert f"{first}\tMSA|AA|E2E-SEND-{name}-1" in r.stdout
        assert f"{second}\tMSA|AA|E2E-SEND-{name}-2" in r.stdout
        assert f"gateway: {missing}: cannot read (No such file or directory)" in r.stderr
        assert f"gateway: {folder}: cannot read (Is a directory)" in r.stderr


def logs_so_far(gw: Gateway) -> str:
    """The gateway's log with everything it did before now in it: a refused marker message (logged at info)
    is sent last, and the log is read once the marker is in it."""
    marker = f"E2E-MARK-{time.monotonic_ns()}"
    raw = with_control_id(fixture("adt_a01__basic.hl7"), marker).replace(b"|P|2.5.1", b"|P|9.9", 1)
    assert field(mllp_exchange(gw.mllp_port, raw), "MSA", 1) == "AR"
    assert wait_until(lambda: marker in gw.logs(), 30)
    return gw.logs()


def test_canary_never_leaks(gw: Gateway, api: httpx.Client) -> None:
    """A canary patient name and identifier never appear in logs, error bodies or lineage."""
    canary = cr(fixture("adt_a01__canary.hl7"))
    assert b"CANARYPATIENT" in canary and b"CANARY-MRN-0001" in canary
    bodies: list[bytes] = []
    bodies.append(mllp_exchange(gw.mllp_port, canary))
    broken = (
        canary.replace(b"|2.5|", b"|9.9|") if b"|2.5|" in canary else canary.replace(b"MSH|", b"MSH|X", 1)
    )
    bodies.append(mllp_exchange(gw.mllp_port, broken))
    bodies.append(mllp_exchange(gw.mllp_port, canary.replace(b"ADT^A01", b"ADT^A01^ZZZ_NOPE", 1)))
    headers = {"Content-Type": "x-application/hl7-v2+er7"}
    bodies.append(api.post("/ingest/hl7v2", content=broken, headers=headers).content)
    bodies.append(api.post("/ingest/hl7v2", content=canary, headers=headers).content)
    bodies.append(
        api.post("/ingest/hl7v2", content=canary, headers={"Content-Type": "application/json"}).content
    )
    items = api.get("/api/messages", params={"control_id": field(canary, "MSH", 10)}).json()
    bodies.append(api.get("/api/messages", params={"control_id": field(canary, "MSH", 10)}).content)
    for item in items["items"]:
        bodies.append(api.get(f"/api/messages/{item['id']}").content)
        bodies.append(api.get(f"/api/messages/{item['id']}/lineage").content)
    conn = sqlite3.connect(gw.data_dir / "gateway.db")
    lineage_dump = "\n".join(repr(r) for r in conn.execute("SELECT * FROM lineage"))
    conn.close()
    logs = logs_so_far(gw)
    for secret in ("CANARYPATIENT", "CANARY-MRN-0001"):
        assert secret not in logs
        assert secret not in lineage_dump
        for body in bodies:
            assert secret.encode() not in body


def test_canary_never_leaks_from_broken_frames(gw: Gateway) -> None:
    """A canary patient in an oversized frame, an unfinished one and an unparseable one: each is refused
    or closed and logged, and neither the name nor the identifier appears in the logs or a reply."""
    canary = cr(fixture("adt_a01__canary.hl7"))
    logs_before = gw.logs()
    replies: list[bytes] = []

    oversized = with_control_id(canary, "E2E-CANARY-BIG") + b"\rNTE|1||" + b"x" * 300_000
    with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=10) as s:
        s.sendall(SB + oversized + EB)
        replies.append(read_frame(s))
    assert field(replies[-1], "MSA", 1) == "AR"

    with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=10) as s:
        s.sendall(SB + with_control_id(canary, "E2E-CANARY-HALF"))
        assert s.recv(100) == b""  # closed by the frame time-out (1 s)

    unparseable = b"CANARYPATIENT^CANARIA CANARY-MRN-0001 " + canary.replace(b"MSH|", b"MSX|")
    replies.append(mllp_exchange(gw.mllp_port, unparseable))
    assert field(replies[-1], "MSA", 1) in ("AE", "AR")

    def logged(text: str) -> int:
        return gw.logs().count(text) - logs_before.count(text)

    assert wait_until(lambda: logged("mllp frame too large") >= 1, 30)
    assert wait_until(lambda: logged("mllp frame not finished in time") >= 1, 30)
    logs = logs_so_far(gw)
    for secret in ("CANARYPATIENT", "CANARIA", "CANARY-MRN-0001", "CANARY LANE"):
        assert secret not in logs
        for reply in replies:
            assert secret.encode() not in reply


@pytest.mark.corpus
def test_real_world_corpus_is_accepted_over_mllp(gw: Gateway, api: httpx.Client, corpora_dir: Path) -> None:
    """Every message of the third-party corpus is accepted (LF endings and BOMs as published, sent with CR).

    The corpus reuses control ids across files from the same sender (for example MSH-10 ``1``): the
    first is accepted, and a later file with the same sender and control id but other content is
    answered AE with 0357 code 205 (duplicate key identifier), as the gateway's idempotency demands.
    """
    files = sorted((corpora_dir / "hl7v2" / "microsoft-FHIR-Converter" / "messages").glob("*.hl7"))
    assert len(files) >= 139
    first_seen: dict[tuple[str, str, str], bytes] = {}
    wrong = {}
    unanswered: list[str] = []
    with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=30) as s:
        for path in files:
            raw = cr(path.read_bytes())
            text = raw.lstrip(b"\xef\xbb\xbf")
            key = (
                field(text, "MSH", 3).split("^")[0],
                field(text, "MSH", 4).split("^")[0],
                field(text, "MSH", 10),
            )
            s.sendall(SB + raw + EB)
            msh = text.split(b"\r", 1)[0].split(b"|")
            accept, application = (msh[n].decode().strip() if len(msh) > n else "" for n in (14, 15))
            if accept == "NE" and application in ("", "NE"):
                unanswered.append(key[2])  # it asked for no acknowledgement: none comes
                first_seen.setdefault(key, raw)
                continue
            ack = read_frame(s)
            assert field(ack, "MSA", 2) == key[2], path.name  # each reply answers its own message
            code = field(ack, "MSA", 1)
            if key in first_seen and first_seen[key] != raw:
                if code not in ("AE", "CE") or b"205" not in ack:
                    wrong[path.name] = f"{code} (expected AE 205: control id reused)"
            elif code not in ("AA", "CA"):  # CA: enhanced mode (MSH-15) asked for a commit ACK
                wrong[path.name] = code
            first_seen.setdefault(key, raw)
    assert wrong == {}
    assert len(first_seen) > 20
    assert unanswered  # the corpus has NE/NE messages: they are stored all the same
    for control_id in unanswered:
        items = api.get("/api/messages", params={"control_id": control_id}).json()["items"]
        assert "accepted" in {i["status"] for i in items}, control_id


def test_settings_from_environment(tmp_path: Path) -> None:
    """GATEWAY_* variables configure serve as the options do."""
    import os
    import subprocess
    import sys

    from tests.support import free_port, wait_port

    mllp, http = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_MLLP=f"127.0.0.1:{mllp}",
        GATEWAY_HTTP=f"127.0.0.1:{http}",
        GATEWAY_DATA_DIR=str(tmp_path / "d"),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve"], env=env, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(mllp, proc=proc)
        wait_port(http, proc=proc)
        key = (tmp_path / "d" / "api-key").read_text().strip()
        r = httpx.get(f"http://127.0.0.1:{http}/api/messages", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_serve_names_a_listener_address_it_cannot_bind(tmp_path: Path) -> None:
    """A port already taken (another program, another gateway) or a host that does not resolve: one line
    naming the listener, the address and the reason, exit 2; no traceback."""
    gw = Gateway(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        for listener, mllp, http in (("mllp", busy, "off"), ("http", "off", busy)):
            r = gw.cli("serve", *gw.store_args(), "--mllp", mllp, "--http", http)
            assert r.returncode == 2, r.stderr
            assert r.stderr.endswith(
                f"gateway: {listener}: cannot listen on {busy} (Address already in use)\n"
            )
            assert "Traceback" not in r.stderr
    r = gw.cli("serve", *gw.store_args(), "--mllp", "off", "--http", "no-such-host.invalid:8080")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert (
        "\ngateway: http: cannot listen on no-such-host.invalid:8080 (" in r.stderr
    )  # the resolver's reason


def test_serve_refuses_a_data_directory_it_cannot_use(tmp_path: Path) -> None:
    """One line naming the directory and the reason, exit 2 like any configuration error; no traceback."""
    a_file = tmp_path / "not-a-directory"
    a_file.write_text("")
    gw = Gateway(tmp_path)
    for data_dir, reason in (
        ("/proc/forbidden", "No such file or directory"),
        (str(a_file), "Not a directory"),
    ):
        r = gw.cli(
            "serve", "--config", str(gw.config_path), "--data-dir", data_dir, "--mllp", "off", "--http", "off"
        )
        assert r.returncode == 2, r.stderr
        assert r.stderr == f"gateway: data directory {data_dir}: {reason}\n"
    replay = gw.cli("replay", "--sink", "x", "--data-dir", str(a_file))  # the other writers open it alike
    assert replay.returncode == 2 and replay.stderr == f"gateway: data directory {a_file}: Not a directory\n"
    not_a_database = tmp_path / "garbled"
    not_a_database.mkdir(mode=0o700)
    (not_a_database / "gateway.db").write_bytes(b"this is not an SQLite file" * 200)
    r = gw.cli("serve", "--config", str(gw.config_path), "--data-dir", str(not_a_database), "--mllp", "off")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith(f"gateway: data directory {not_a_database}: gateway.db cannot be opened")


def test_convert_reports_an_unreadable_file_and_carries_on(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    good = FIXTURES / "hl7" / "adt_a01__basic.hl7"
    r = gw.cli("convert", str(tmp_path / "missing.hl7"), str(good))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr == f"gateway: {tmp_path / 'missing.hl7'}: cannot read (No such file or directory)\n"
    assert json.loads(r.stdout)["resourceType"] == "Bundle"


def test_cli_reads_the_store_while_the_server_is_stopped(tmp_path: Path) -> None:
    gw = Gateway(tmp_path).start()
    raw = with_control_id(fixture("adt_a01__basic.hl7"), "E2E-STOPPED-1")
    assert field(mllp_exchange(gw.mllp_port, raw), "MSA", 1) == "AA"
    assert gw.stop() == 0
    listed = gw.cli("messages", "list", "--control-id", "E2E-STOPPED-1", "--json", *gw.store_args())
    assert listed.returncode == 0, listed.stderr
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["status"] == "accepted" and row["reply_code"] == "AA"
    shown = gw.cli("messages", "show", row["id"], *gw.store_args())
    assert shown.returncode == 0 and "MessageAccepted" in shown.stdout and "ReplySent" in shown.stdout
    assert "ADT^A01" in shown.stdout
    ok = gw.cli("lineage", "verify", *gw.store_args())
    assert ok.returncode == 0 and "lineage intact" in ok.stdout
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n")
    for wrong in (gw.data_dir / "lineage-signing.key", garbage):  # the private key, and not a key at all
        refused = gw.cli("lineage", "verify", "--public-key", str(wrong), *gw.store_args())
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert (
            refused.stderr
            == f"gateway: {wrong}: not an Ed25519 public key in PEM (-----BEGIN PUBLIC KEY-----)\n"
        )
    trace = gw.cli("lineage", "trace", row["id"], *gw.store_args())
    assert trace.returncode == 0 and "MessageReceived" in trace.stdout and "ReplySent" in trace.stdout
    export = gw.cli("lineage", "export", "--format", "csv", "--since", "2000-01-01", *gw.store_args())
    assert export.returncode == 0
    exported = export.stdout.splitlines()
    assert exported[0].startswith("seq,at,event") and int(ok.stdout.split()[2]) == len(exported) - 1
    assert "CANARY" not in export.stdout
    later = gw.cli("lineage", "export", "--since", "2999-01-01", *gw.store_args())
    assert later.returncode == 0 and later.stdout == "" and "0 events" in later.stderr
    conn = sqlite3.connect(gw.data_dir / "gateway.db")
    conn.execute("UPDATE lineage SET outcome = 'rejected' WHERE event = 'MessageAccepted'")
    conn.commit()
    conn.close()
    broken = gw.cli("lineage", "verify", "--json", *gw.store_args())
    assert broken.returncode == 1
    assert json.loads(broken.stdout)["ok"] is False
    missing = gw.cli("messages", "list", "--data-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no store" in missing.stderr


def test_reading_commands_run_without_the_ingest_keys_in_the_environment(tmp_path: Path) -> None:
    """An auditor holding none of the ingest keys (written as ${VAR}) reads the store; serve still
    refuses to start without them, naming the variable and no secret."""
    gw = Gateway(tmp_path).start()
    assert (
        field(
            mllp_exchange(gw.mllp_port, with_control_id(fixture("adt_a01__basic.hl7"), "E2E-AUD-1")), "MSA", 1
        )
        == "AA"
    )
    assert gw.stop() == 0
    config = yaml.safe_load(gw.config_path.read_text())
    config["auth"]["api_keys"][0]["key"] = "${AUD_LAB_KEY_NOT_SET_HERE}"
    gw.config_path.write_text(yaml.safe_dump(config))
    for command in (
        ["messages", "list", "--control-id", "E2E-AUD-1"],
        ["lineage", "verify"],
        ["lineage", "search", "--control-id", "E2E-AUD-1"],
        ["access", "review", "--since", "2000-01-01"],
        ["deliveries", "list"],
    ):
        r = gw.cli(*command, *gw.store_args())
        assert r.returncode == 0, (command, r.stderr)
    assert "E2E-AUD-1" in gw.cli("messages", "list", "--control-id", "E2E-AUD-1", *gw.store_args()).stdout
    assert "lineage intact" in gw.cli("lineage", "verify", *gw.store_args()).stdout
    assert (
        "tester: scopes ingest:hl7v2"
        in gw.cli("access", "review", "--since", "2000-01-01", *gw.store_args()).stdout
    )
    for command in (["check", str(gw.config_path)], ["docs", str(gw.config_path)]):
        r = gw.cli(*command)
        assert r.returncode == 0, (command, r.stderr)
    served = gw.cli("serve", *gw.store_args(), "--mllp", "off", "--http", "off")
    assert served.returncode == 2
    assert served.stderr == (
        f"gateway: {gw.config_path}.auth.api_keys[0].key: environment variable AUD_LAB_KEY_NOT_SET_HERE is not set\n"
    )
    assert READ_KEY not in served.stderr + served.stdout


def test_signed_checkpoints_catch_a_cut_tail(tmp_path: Path) -> None:
    """The running gateway signs checkpoints outside the database; after a stop, cutting events is found."""
    cp_file = tmp_path / "audit" / "checkpoints.jsonl"
    gw = Gateway(
        tmp_path, {"lineage": {"checkpoint_file": str(cp_file), "checkpoint_every_events": 5}}
    ).start()
    for i in range(4):
        assert (
            field(
                mllp_exchange(gw.mllp_port, with_control_id(fixture("adt_a01__basic.hl7"), f"CUT-{i}")),
                "MSA",
                1,
            )
            == "AA"
        )
    assert wait_until(lambda: cp_file.exists(), 30), "the running gateway writes checkpoints on its own"
    assert (
        field(mllp_exchange(gw.mllp_port, with_control_id(fixture("adt_a01__basic.hl7"), "CUT-4")), "MSA", 1)
        == "AA"
    )
    assert gw.stop() == 0  # and a final one at shutdown
    assert len(cp_file.read_text().splitlines()) >= 2
    ok = gw.cli("lineage", "verify", "--require-checkpoints", *gw.store_args())
    assert ok.returncode == 0 and "signed checkpoints" in ok.stdout
    conn = sqlite3.connect(gw.data_dir / "gateway.db")
    (last,) = conn.execute("SELECT max(seq) FROM lineage").fetchone()
    conn.execute("DELETE FROM lineage WHERE seq > ?", (last - 3,))
    conn.commit()
    conn.close()
    cut = gw.cli("lineage", "verify", "--json", *gw.store_args())
    assert cut.returncode == 1
    verdict = json.loads(cut.stdout)
    assert verdict["ok"] is False and verdict["first_bad_seq"] == last - 2


def test_every_read_is_recorded_with_who_and_outcome(gw: Gateway) -> None:
    """Reads through the API are lineage events: who read which message, with which scope, and refusals."""
    raw = with_control_id(fixture("adt_a04__register.hl7"), "E2E-AUDIT-1")
    assert field(mllp_exchange(gw.mllp_port, raw), "MSA", 1) == "AA"
    reader = httpx.Client(base_url=gw.http_url, headers={"X-API-Key": READ_KEY}, timeout=30)
    (item,) = reader.get("/api/messages", params={"control_id": "E2E-AUDIT-1"}).json()["items"]
    assert reader.get(f"/api/messages/{item['id']}").status_code == 200
    assert reader.get(f"/api/messages/{item['id']}/lineage").status_code == 403  # reader lacks lineage:read
    reader.close()
    with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=30) as c:

        def events() -> list[tuple[str, str, str]]:
            body = c.get(f"/api/messages/{item['id']}/lineage").json()
            return [(e["event"], e["actor"], e["outcome"]) for e in body["events"]]

        assert wait_until(lambda: ("AccessDenied", "user:reader", "forbidden") in events(), 30)
        # a read is recorded after it is answered: the next read shows it
        assert wait_until(lambda: ("LineageQueried", "user:tester", "ok") in events(), 30)
        assert ("MessageRead", "user:reader", "ok") in events()
        assert c.get("/api/lineage/verify").json()["ok"] is True


def test_search_lineage_by_business_key(gw: Gateway) -> None:
    """Who received, routed and read messages about one patient, found by the patient id it never stores."""
    raw = with_control_id(fixture("adt_a01__canary.hl7"), "E2E-KEY-1")
    assert field(mllp_exchange(gw.mllp_port, raw), "MSA", 1) == "AA"
    patient = field(raw, "PID", 3).split("~")[0].split("^")
    key = f"{patient[0]}^^^{patient[3]}" if len(patient) > 3 and patient[3] else patient[0]
    assert "CANARY-MRN-0001" in key
    with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=30) as c:
        (item,) = c.get("/api/messages", params={"control_id": "E2E-KEY-1"}).json()["items"]
        assert c.get(f"/api/messages/{item['id']}").status_code == 200

        def found() -> list[tuple[str, str, str]]:
            r = c.post("/api/lineage/search", json={"key": key, "since": "2000-01-01T00:00:00Z"})
            assert r.status_code == 200
            return [(e["envelope_id"], e["event"], e["actor"]) for e in r.json()["events"]]

        assert wait_until(lambda: (item["id"], "MessageRead", "user:tester") in found(), 30)
        events = found()
        assert {e[1] for e in events} >= {"MessageReceived", "MessageAccepted", "ReplySent", "MessageRead"}
        assert c.post("/api/lineage/search", json={"key": "NO-SUCH-PATIENT"}).json()["events"] == []
        # other criteria, and paging
        by_type = c.post(
            "/api/lineage/search", json={"control_id": "E2E-KEY-1", "event": "MessageAccepted"}
        ).json()["events"]
        assert [(e["envelope_id"], e["event"]) for e in by_type] == [(item["id"], "MessageAccepted")]
        first = c.post("/api/lineage/search", json={"key": key, "limit": 2}).json()
        assert len(first["events"]) == 2 and first["next_after_seq"] == first["events"][-1]["seq"]
        rest = c.post("/api/lineage/search", json={"key": key, "after_seq": first["next_after_seq"]}).json()
        assert [e["seq"] for e in first["events"] + rest["events"]] == [
            e["seq"] for e in c.post("/api/lineage/search", json={"key": key}).json()["events"]
        ]
        assert c.post("/api/lineage/search", json={"key": key, "extra": 1}).status_code == 400
        body = c.post("/api/lineage/search", json={"key": key}).text
    assert "CANARY-MRN-0001" not in body
    cli = gw.cli("lineage", "search", "--key", key, *gw.store_args())
    assert cli.returncode == 0 and item["id"] in cli.stdout and "CANARY" not in cli.stdout


def test_access_review_lists_every_key_and_what_it_did(gw: Gateway) -> None:
    with httpx.Client(base_url=gw.http_url, headers={"X-API-Key": READ_KEY}, timeout=30) as reader:
        assert reader.get("/api/messages", params={"limit": 1}).status_code == 200
    ingested = httpx.post(
        f"{gw.http_url}/ingest/hl7v2",
        content=with_control_id(fixture("adt_a01__basic.hl7"), "E2E-ACCESS-1"),
        headers={"X-API-Key": TEST_KEY, "Content-Type": "x-application/hl7-v2+er7"},
        timeout=30,
    )
    assert ingested.status_code == 200

    def review() -> dict[str, dict[str, object]]:
        r = gw.cli("access", "review", "--since", "2000-01-01", "--json", *gw.store_args())
        assert r.returncode == 0, r.stderr
        return {e["name"]: e for e in json.loads(r.stdout)}

    assert wait_until(lambda: review()["reader"]["events"].get("MessagesSearched", 0) >= 1, 30)
    report = review()
    assert set(report) >= {"tester", "reader", "operator"}
    assert report["reader"]["scopes"] == ["messages:read"] and report["reader"]["last_used"]
    assert report["tester"]["events"].get("MessageIngested", 0) >= 1
    assert report["operator"]["last_used"] == ""  # configured, unused in the period
    later = gw.cli("access", "review", "--since", "2999-01-01", *gw.store_args())
    assert later.returncode == 0 and "never in the period" in later.stdout
