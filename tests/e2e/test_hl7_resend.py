"""End to end: HL7 v2 files joined together, and messages sent again in other bytes, against the real
``gateway serve`` over real MLLP (python-hl7's client) and HTTP, and with the real ``gateway send``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7.client
import httpx
import pytest

from tests.conftest import FIXTURES
from tests.support import TEST_KEY, Gateway, with_control_id

pytestmark = pytest.mark.e2e

HL7 = FIXTURES / "hl7"
BOM = b"\xef\xbb\xbf"
ER7 = {"Content-Type": "x-application/hl7-v2+er7"}


def message(name: str, control_id: str) -> bytes:
    """A fixture with CR segment ends and MSH-10 set to ``control_id``."""
    return with_control_id((HL7 / name).read_bytes(), control_id)


def bom_file(name: str, control_id: str) -> bytes:
    """The message as a Windows tool saves it: a UTF-8 BOM in front and ``\\r\\n`` line endings."""
    return BOM + message(name, control_id).replace(b"\r", b"\r\n")


def msa(reply: bytes) -> list[list[str]]:
    """MSA-1 and MSA-2 of every acknowledgement in ``reply``."""
    lines = reply.replace(b"\n", b"\r").split(b"\r")
    return [line.decode().split("|")[1:3] for line in lines if line.startswith(b"MSA|")]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    g = Gateway(tmp_path_factory.mktemp("gw")).start()
    yield g
    g.stop()


def accepted(api: httpx.Client, control_id: str) -> list[dict[str, Any]]:
    """The accepted messages with MSH-10 ``control_id``."""
    items = api.get("/api/messages", params={"control_id": control_id}).json()["items"]
    return [item for item in items if item["status"] == "accepted"]


def test_joined_files_are_each_their_own_message_over_http(gw: Gateway, api: httpx.Client) -> None:
    joined = bom_file("adt_a01__basic.hl7", "CAT1") + bom_file("adt_a04__register.hl7", "CAT2")
    r = api.post("/ingest/hl7v2", content=joined, headers=ER7)
    assert r.status_code == 200
    assert msa(r.content) == [["AA", "CAT1"], ["AA", "CAT2"]]
    (first,) = accepted(api, "CAT1")
    (second,) = accepted(api, "CAT2")
    assert first["message_type"] == "ADT^A01" and second["message_type"] == "ADT^A04"
    assert first["parent_id"] is not None and first["parent_id"] == second["parent_id"]


def test_joined_files_are_each_their_own_message_with_gateway_send(gw: Gateway, tmp_path: Path) -> None:
    joined = tmp_path / "joined.hl7"
    joined.write_bytes(bom_file("adt_a01__basic.hl7", "CAT3") + bom_file("adt_a08__update.hl7", "CAT4"))
    for target in (["--mllp", f"127.0.0.1:{gw.mllp_port}"], ["--http", f"{gw.http_url}/ingest/hl7v2"]):
        r = gw.cli("send", *target, "--api-key", TEST_KEY, str(joined))
        assert r.returncode == 0, r.stderr
        assert [line.split("\t")[1] for line in r.stdout.splitlines()] == ["MSA|AA|CAT3", "MSA|AA|CAT4"]


def send(gw: Gateway, transport: str, payload: bytes) -> bytes:
    """The reply to ``payload`` sent alone over ``transport`` (``mllp`` or ``http``)."""
    if transport == "mllp":
        with hl7.client.MLLPClient("127.0.0.1", gw.mllp_port) as client:
            reply: bytes = client.send_message(payload)
        return reply
    headers = {**ER7, "Authorization": f"Bearer {TEST_KEY}"}
    return httpx.post(f"{gw.http_url}/ingest/hl7v2", content=payload, headers=headers, timeout=30).content


@pytest.mark.parametrize("transport", ["mllp", "http"])
def test_a_resend_in_other_bytes_is_a_duplicate_and_other_content_a_conflict(
    gw: Gateway, api: httpx.Client, transport: str
) -> None:
    control_id = f"RESEND-{transport.upper()}"
    raw = message("adt_a03__discharge.hl7", control_id)
    assert msa(send(gw, transport, raw)) == [["AA", control_id]]
    msh = raw.split(b"\r", 1)[0].split(b"|")
    restamped = b"|".join([*msh[:6], b"20991231235959", *msh[7:]]) + raw[raw.index(b"\r") :]
    resends = [
        raw + b"\n",
        BOM + raw,
        raw.replace(b"\r", b"\n"),
        bom_file("adt_a03__discharge.hl7", control_id),
        restamped,  # MSH-7 stamped again by a sender that sends it again
    ]
    for resend in resends:
        assert msa(send(gw, transport, resend)) == [["AA", control_id]], resend[-6:]
    (stored,) = accepted(api, control_id)
    items = api.get("/api/messages", params={"control_id": control_id}).json()["items"]
    assert len(items) == 1, "a resend is acknowledged again, not stored again"
    events = [e["event"] for e in api.get(f"/api/messages/{stored['id']}/lineage").json()["events"]]
    assert events.count("DuplicateReceived") == len(resends)

    changed = raw.replace(b"\rPV1|1|", b"\rPV1|2|", 1)
    assert changed != raw
    reply = send(gw, transport, changed.replace(b"\r", b"\r\n"))
    assert msa(reply) == [["AE", control_id]]
    assert b"205" in reply  # HL7 table 0357: duplicate key identifier
    items = api.get("/api/messages", params={"control_id": control_id}).json()["items"]
    assert sorted(i["status"] for i in items) == ["accepted", "rejected"]
