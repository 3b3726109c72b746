"""Enhanced acknowledgement mode over real sockets: a message whose MSH-15/MSH-16 ask for no reply gets
none over MLLP (so the sender's next reply is its own), is still stored, and HTTP still answers it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import EB, SB, TEST_KEY, Gateway, read_frame, wait_until

pytestmark = pytest.mark.e2e


def message(control_id: str, accept: str, application: str) -> bytes:
    return (
        f"MSH|^~\\&|LAB|HOSP|GW|GATEWAY|20240101120000||ADT^A01^ADT_A01|{control_id}|P|2.5.1|||"
        f"{accept}|{application}\rEVN|A01|20240101120000\rPID|1||MRN-{control_id}^^^HOSP^MR||DOE^JANE\r"
        "PV1|1|I\r"
    ).encode()


def msa(reply: bytes) -> list[str]:
    (line,) = [seg for seg in reply.decode().split("\r") if seg.startswith("MSA|")]
    return line.split("|")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path_factory.mktemp("ack-modes")).start()
    yield gateway
    gateway.stop()


@pytest.mark.parametrize(
    ("unwanted", "then"),
    [
        (message("NE-1", "NE", "NE"), message("AL-1", "AL", "NE")),
        (message("ER-1", "ER", "ER"), message("AL-2", "AL", "AL")),  # ER: only on error; this one is valid
        # SU: only on success; this one names a version there is none of
        (message("SU-1", "SU", "SU").replace(b"|P|2.5.1|", b"|P|9.9|"), message("AA-3", "", "")),
    ],
)
def test_no_reply_when_none_is_asked_for(
    gw: Gateway, api: httpx.Client, unwanted: bytes, then: bytes
) -> None:
    unwanted_id = unwanted.split(b"|")[9].decode()
    then_id = then.split(b"|")[9].decode()
    with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=30) as s:
        s.sendall(SB + unwanted + EB + SB + then + EB)
        first = read_frame(s)
        assert msa(first)[2] == then_id  # the one reply answers the message that asked for one
    listed = api.get("/api/messages", params={"control_id": unwanted_id}).json()["items"]
    assert len(listed) == 1 and listed[0]["status"] in {"accepted", "rejected"}

    # no ReplySent is recorded for the reply that was not sent; the other one has its own
    def replied(message_id: str) -> bool:
        lineage = api.get(f"/api/messages/{message_id}/lineage").json()
        return any(e["event"] == "ReplySent" for e in lineage["events"])

    (then_item,) = api.get("/api/messages", params={"control_id": then_id}).json()["items"]
    assert wait_until(lambda: replied(then_item["id"]), 10)
    assert not replied(listed[0]["id"])


def test_http_answers_every_request(gw: Gateway, api: httpx.Client) -> None:
    """HTTP must answer: a message that asked for no acknowledgement gets the accept acknowledgement."""
    r = api.post(
        "/ingest/hl7v2",
        content=message("NE-HTTP", "NE", "NE"),
        headers={"Content-Type": "x-application/hl7-v2+er7"},
    )
    assert r.status_code == 200 and msa(r.content)[1:3] == ["CA", "NE-HTTP"]


def test_gateway_send_knows_which_messages_ask_for_no_reply(gw: Gateway, tmp_path: Path) -> None:
    """``gateway send`` does not wait in vain for the ACK a message declined, and prints an empty batch's
    acknowledgement: over MLLP and over HTTP, exit status 0 when everything was accepted."""
    unasked = tmp_path / "ne.hl7"
    unasked.write_bytes(message("SEND-NE", "NE", "NE"))
    normal = tmp_path / "al.hl7"
    normal.write_bytes(message("SEND-AL", "AL", "NE"))
    empty = tmp_path / "empty.hl7"
    empty.write_bytes(b"FHS|^~\\&|LAB|HOSP|GW|GATEWAY\rBHS|^~\\&|LAB|HOSP|GW|GATEWAY\rBTS|0\rFTS|1\r")
    files = [str(unasked), str(normal), str(empty)]
    sent = gw.cli("send", "--mllp", f"127.0.0.1:{gw.mllp_port}", "--timeout", "20", *files, *gw.store_args())
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.splitlines() == [
        f"{unasked}\t(no ACK received: MSH-15/MSH-16 decline one on acceptance)",
        f"{normal}\tMSA|CA|SEND-AL",
        f"{empty}\t(a batch of no message, acknowledged)",
    ]
    posted = gw.cli(
        "send", "--http", f"{gw.http_url}/ingest/hl7v2", "--api-key", TEST_KEY, *files, *gw.store_args()
    )
    assert posted.returncode == 0, posted.stderr
    assert posted.stdout.splitlines() == [
        f"{unasked}\tMSA|CA|SEND-NE",  # HTTP answers every request
        f"{normal}\tMSA|CA|SEND-AL",
        f"{empty}\t(a batch of no message, acknowledged)",
    ]


def test_a_declined_reply_is_left_out_of_a_payload_of_several_and_not_recorded_as_sent(
    gw: Gateway, api: httpx.Client
) -> None:
    """Two bare messages in one MLLP frame, and a BHS batch over HTTP, each with one message that declines
    its ACK: the reply carries only the other's, and only that one has a ReplySent in lineage."""
    frame = message("MULTI-AL", "AL", "NE") + message("MULTI-NE", "NE", "NE")
    with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=30) as s:
        s.sendall(SB + frame + EB)
        reply = read_frame(s)
    assert [line.split("|")[1:3] for line in reply.decode().split("\r") if line.startswith("MSA|")] == [
        ["CA", "MULTI-AL"]
    ]
    batch = b"BHS|^~\\&|LAB|HOSP|GW|GATEWAY||||||B-NE\r" + message("BATCH-NE", "NE", "NE")
    batch += message("BATCH-AL", "AL", "NE") + b"BTS|2\r"
    r = api.post("/ingest/hl7v2", content=batch, headers={"Content-Type": "x-application/hl7-v2+er7"})
    assert r.status_code == 200
    lines = r.content.decode().split("\r")
    assert [line.split("|")[2] for line in lines if line.startswith("MSA|")] == ["BATCH-AL"]
    assert "BTS|1" in lines

    def replied(control_id: str) -> bool:
        (item,) = api.get("/api/messages", params={"control_id": control_id}).json()["items"]
        events = api.get(f"/api/messages/{item['id']}/lineage").json()["events"]
        return any(e["event"] == "ReplySent" for e in events)

    assert wait_until(lambda: replied("MULTI-AL") and replied("BATCH-AL"), 30)
    assert not replied("MULTI-NE") and not replied("BATCH-NE")
    # alone over HTTP the declined reply is what HTTP answers with: it is sent, and recorded
    api.post(
        "/ingest/hl7v2",
        content=message("ALONE-NE", "NE", "NE"),
        headers={"Content-Type": "x-application/hl7-v2+er7"},
    )
    assert wait_until(lambda: replied("ALONE-NE"), 30)
