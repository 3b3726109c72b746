"""End to end: ISO 20022 over HTTP into the real gateway, status reports back, routes by amount, SEPA rules.

The gateway runs as a real process with a folder of official schemas; sinks are
real HTTP receivers. Replies are checked against the ISO 20022 XSDs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from lxml import etree

from tests.conftest import collect_schemas
from tests.finance_messages import DEBTOR_IBAN, pacs008, pain001
from tests.gateway.sinks.peers import Receiver
from tests.support import READ_KEY, TEST_KEY, Gateway, wait_until

pytestmark = pytest.mark.e2e

ISO = "urn:iso:std:iso:20022:tech:xsd:"
XML = {"Content-Type": "application/xml"}


@pytest.fixture
def bank(tmp_path: Path, schema_dir: Path) -> Iterator[tuple[Gateway, Receiver, Receiver]]:
    with Receiver() as core, Receiver() as review:
        fast = {"max_attempts": 5, "base_s": 0.05, "cap_s": 0.2}
        gw = Gateway(
            tmp_path,
            {
                "iso20022": {"schema_dir": str(schema_dir)},
                "sinks": {
                    "core_banking": {"type": "http", "endpoint": core.url, "retry": fast},
                    "compliance_review": {"type": "http", "endpoint": review.url, "retry": fast},
                },
                "routes": [
                    {
                        "name": "large-transfers",
                        "match": {
                            "protocol": "iso20022",
                            "message_type": "pacs.008",
                            "total_amount": {"gt": 1000000},
                        },
                        "to": ["compliance_review"],
                    },
                    {
                        "name": "sepa-initiation",
                        "match": {"protocol": "iso20022", "message_type": "pain.001", "currency": "EUR"},
                        "rules": ["sepa"],
                        "to": ["core_banking"],
                    },
                    {"name": "payments", "match": {"protocol": "iso20022"}, "to": ["core_banking"]},
                ],
                "unmatched": "reject",
            },
        ).start()
        try:
            yield gw, core, review
        finally:
            gw.stop()


def post(
    gw: Gateway, body: bytes, key: str = TEST_KEY, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        f"{gw.http_url}/ingest/iso20022",
        content=body,
        headers={**XML, "Authorization": f"Bearer {key}", **(headers or {})},
        timeout=30,
    )


def deliveries_of(gw: Gateway, message_id: str) -> list[dict[str, object]]:
    with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {TEST_KEY}"}) as api:
        rows: list[dict[str, object]] = api.get(f"/api/messages/{message_id}").json()["deliveries"]
        return rows


def report(resp: httpx.Response, schema_dir: Path, definition: str) -> etree._Element:
    """The reply parsed, after checking it is ``definition`` and valid against that version's XSD."""
    root = etree.fromstring(resp.content)
    assert root.tag == f"{{{ISO}{definition}}}Document"
    schema = etree.XMLSchema(etree.parse(str(schema_dir / f"{definition}.xsd")))
    assert schema.validate(root), [e.message for e in schema.error_log]
    return root


def texts(root: etree._Element, local_name: str) -> list[str]:
    return [el.text or "" for el in root.iter() if etree.QName(el).localname == local_name]


def test_pain001_gets_pain002_and_reaches_core_banking(
    bank: tuple[Gateway, Receiver, Receiver], schema_dir: Path
) -> None:
    gw, core, review = bank
    raw = pain001("PAIN-OK-1", ["120.00", "80.50"])
    resp = post(gw, raw)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/xml")
    root = report(resp, schema_dir, "pain.002.001.14")
    assert texts(root, "GrpSts") == ["ACTC"]
    assert texts(root, "OrgnlMsgId") == ["PAIN-OK-1"]
    assert texts(root, "OrgnlMsgNmId") == ["pain.001.001.12"]
    assert wait_until(lambda: len(core.requests) == 1)
    assert core.requests[0].body == raw  # forwarded exactly as received
    assert review.requests == []

    with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {TEST_KEY}"}) as api:
        (item,) = api.get("/api/messages", params={"protocol": "iso20022"}).json()["items"]
        assert item["message_type"] == "pain.001" and item["version"] == "001.12"
        assert item["control_id"] == "PAIN-OK-1" and item["sender"] == "ACMEDEFF"
        assert item["headers"]["total_amount"] == "200.50" and item["headers"]["currency"] == "EUR"
        assert item["route"] == "sepa-initiation"
        shown = api.get(f"/api/messages/{item['id']}").text
        assert DEBTOR_IBAN not in shown and "DE89…3000" in shown  # accounts masked, not in clear
        found = api.post("/api/lineage/search", json={"key": DEBTOR_IBAN}).json()["events"]
        assert {e["envelope_id"] for e in found} == {item["id"]}
        received = next(e for e in found if e["event"] == "MessageReceived")
        assert DEBTOR_IBAN not in str(received)


def test_pacs008_over_a_million_goes_to_review_smaller_to_core(
    bank: tuple[Gateway, Receiver, Receiver], schema_dir: Path
) -> None:
    gw, core, review = bank
    large = post(gw, pacs008("PACS-BIG-1", ["600000.00", "400000.01"]))
    small = post(gw, pacs008("PACS-SMALL-1", ["999999.99"]))
    exactly = post(gw, pacs008("PACS-EDGE-1", ["1000000.00"]))
    for resp in (large, small, exactly):
        assert resp.status_code == 200
        assert texts(report(resp, schema_dir, "pacs.002.001.15"), "GrpSts") == ["ACTC"]
    assert wait_until(lambda: len(review.requests) == 1 and len(core.requests) == 2)
    assert b"PACS-BIG-1" in review.requests[0].body
    assert sorted(b"PACS-SMALL-1" in r.body for r in core.requests) == [False, True]


def test_rule_failures_are_rejected_with_iso_reason_codes_and_not_delivered(
    bank: tuple[Gateway, Receiver, Receiver], schema_dir: Path
) -> None:
    gw, core, _ = bank
    bad_iban = post(gw, pain001("PAIN-BAD-1", ["10.00"], debtor_iban="DE89370400440532013001"))
    assert bad_iban.status_code == 400
    root = report(bad_iban, schema_dir, "pain.002.001.14")
    assert texts(root, "GrpSts") == ["RJCT"] and "AC01" in texts(root, "Cd")

    sums = post(gw, pain001("PAIN-BAD-2", ["10.00", "5.00"], ctrl_sum="16.00"))
    assert sums.status_code == 400
    assert "AM10" in texts(report(sums, schema_dir, "pain.002.001.14"), "Cd")

    decimals = post(gw, pain001("PAIN-BAD-3", ["10.00", "5.001"]))
    root = report(decimals, schema_dir, "pain.002.001.14")
    # the failing transaction is named by its original references, with its own reason
    assert texts(root, "OrgnlEndToEndId") == ["PAIN-BAD-3-E2"]
    assert texts(root, "TxSts") == ["RJCT"] and "AM12" in texts(root, "Cd")

    # the SEPA rule set applies only on the route that demands it
    sepa = post(gw, pain001("PAIN-SEPA-1", ["10.00"], charge_bearer="SHAR"))
    assert sepa.status_code == 400
    assert "CH16" in texts(report(sepa, schema_dir, "pain.002.001.14"), "Cd")
    usd = post(gw, pain001("PAIN-USD-1", ["10.00"], currency="USD", charge_bearer="SHAR"))
    assert usd.status_code == 200

    assert wait_until(lambda: len(core.requests) == 1)
    assert b"PAIN-USD-1" in core.requests[0].body
    with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {TEST_KEY}"}) as api:
        items = api.get("/api/messages", params={"protocol": "iso20022", "status": "rejected"}).json()[
            "items"
        ]
        assert {i["control_id"] for i in items} == {"PAIN-BAD-1", "PAIN-BAD-2", "PAIN-BAD-3", "PAIN-SEPA-1"}
        codes = {i["control_id"]: {x["code"] for x in i["issues"]} for i in items}
        assert codes["PAIN-SEPA-1"] == {"sepa_charge_bearer"}
        assert all("DE89370400440532013001" not in str(i) for i in items)


def test_resent_file_is_acknowledged_again_and_reused_msg_id_is_rejected(
    bank: tuple[Gateway, Receiver, Receiver], schema_dir: Path
) -> None:
    gw, core, _ = bank
    raw = pain001("PAIN-DUP-1", ["42.00"])
    assert post(gw, raw).status_code == 200
    again = post(gw, raw)  # a retry after a lost reply: same answer, no second payment
    assert again.status_code == 200
    assert texts(report(again, schema_dir, "pain.002.001.14"), "GrpSts") == ["ACTC"]
    other = post(gw, pain001("PAIN-DUP-1", ["43.00"]))  # same MsgId, different payment
    assert other.status_code == 400
    root = report(other, schema_dir, "pain.002.001.14")
    assert texts(root, "GrpSts") == ["RJCT"] and texts(root, "Cd") == ["DU01"]
    assert wait_until(lambda: len(core.requests) >= 1)
    # the store says why no second payment can follow: one accepted message with one outbox row, the
    # resend recorded as its duplicate, the reused MsgId kept as a rejected message of its own
    with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {TEST_KEY}"}) as api:
        items = api.get("/api/messages", params={"control_id": "PAIN-DUP-1"}).json()["items"]
        assert sorted(i["status"] for i in items) == ["accepted", "rejected"]
        accepted = next(i["id"] for i in items if i["status"] == "accepted")
        assert len(api.get(f"/api/messages/{accepted}").json()["deliveries"]) == 1
        events = [e["event"] for e in api.get(f"/api/messages/{accepted}/lineage").json()["events"]]
        assert events.count("DuplicateReceived") == 1
    assert wait_until(lambda: all(d["status"] == "delivered" for d in deliveries_of(gw, accepted)))
    assert len(core.requests) == 1


def test_bad_documents_and_bad_requests(bank: tuple[Gateway, Receiver, Receiver], schema_dir: Path) -> None:
    gw, core, _ = bank
    broken = post(gw, b"<Document xmlns='urn:iso:std:iso:20022:tech:xsd:pain.001.001.12'><CstmrCdtTrfInitn>")
    assert broken.status_code == 400
    root = report(broken, schema_dir, "pain.002.001.14")
    assert texts(root, "GrpSts") == ["RJCT"] and texts(root, "Cd") == ["FF01"]

    xxe = post(
        gw,
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.12">&x;</Document>',
    )
    assert xxe.status_code == 400 and b"root:" not in xxe.content

    statement = post(gw, b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.008.001.02"><x/></Document>')
    assert statement.status_code == 422  # a message type the gateway does not take: refused
    ack = etree.fromstring(statement.content)
    assert ack.tag == f"{{{ISO}admi.007.001.01}}Document"
    assert texts(ack, "StsCd") == ["RJCT"]

    assert post(gw, pain001("X", ["1.00"]), headers={"Content-Type": "text/plain"}).status_code == 415
    assert post(gw, pain001("X", ["1.00"]), key=READ_KEY).status_code == 403
    assert httpx.post(f"{gw.http_url}/ingest/iso20022", content=b"<x/>", headers=XML).status_code == 401
    assert core.requests == []


def test_corpus_statement_is_acknowledged_with_admi007(tmp_path: Path, corpora_dir: Path) -> None:
    """A bank's camt.053 (from the shared corpus) over HTTP, schemas from an operator's folder."""
    schemas = collect_schemas(tmp_path / "xsd")
    (tmp_path / "gw").mkdir()
    gw = Gateway(tmp_path / "gw", {"iso20022": {"schema_dir": str(schemas)}}).start()
    try:
        sample = corpora_dir / "iso20022" / "moov-io-iso20022" / "testdata" / "FI_camt_053_sample.xml.xml"
        resp = post(gw, sample.read_bytes())
        assert resp.status_code == 200, resp.text
        ack = etree.fromstring(resp.content)
        assert ack.tag == f"{{{ISO}admi.007.001.01}}Document"
        assert texts(ack, "StsCd") == ["ACPT"] and texts(ack, "Ref") == ["BANKFILEID00001"]
        with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {TEST_KEY}"}) as api:
            (item,) = api.get("/api/messages", params={"message_type": "camt.053"}).json()["items"]
            assert item["version"] == "001.02" and item["headers"]["total_amount"]
    finally:
        gw.stop()


def test_status_reports_are_routed_to_the_sender(tmp_path: Path) -> None:
    with Receiver() as core, Receiver() as sender_bank:
        fast = {"max_attempts": 5, "base_s": 0.05, "cap_s": 0.2}
        gw = Gateway(
            tmp_path,
            {
                "sinks": {
                    "core_banking": {"type": "http", "endpoint": core.url, "retry": fast},
                    "sender_bank": {"type": "http", "endpoint": sender_bank.url, "retry": fast},
                },
                "routes": [
                    {
                        "name": "reports-to-sender",
                        "match": {"direction": "reply", "message_type": ["pain.002", "pacs.002"]},
                        "to": ["sender_bank"],
                    },
                    {"name": "payments", "match": {"protocol": "iso20022"}, "to": ["core_banking"]},
                ],
                "unmatched": "reject",
            },
        ).start()
        try:
            first = pain001("PAIN-RPT-1", ["10.00"])
            good = post(gw, first)
            bad = post(gw, pain001("PAIN-RPT-2", ["10.00"], debtor_iban="DE89370400440532013001"))
            assert (good.status_code, bad.status_code) == (200, 400)
            assert wait_until(lambda: len(sender_bank.requests) == 2)
            # the sender's bank gets exactly the reports the HTTP caller got, accepted and rejected
            assert sorted(r.body for r in sender_bank.requests) == sorted([good.content, bad.content])
            assert post(gw, first).status_code == 200  # the same file again
            assert wait_until(lambda: len(core.requests) == 1)
            assert [r.body[:200].count(b"pain.001") > 0 for r in core.requests] == [
                True
            ]  # no report came back in
            with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {TEST_KEY}"}) as api:
                original = api.get("/api/messages", params={"control_id": "PAIN-RPT-1"}).json()["items"]
                (trace_id,) = [m["id"] for m in original if m["message_type"] == "pain.001"]
                trace = api.get(f"/api/lineage/messages/{trace_id}").json()
                (child,) = trace["children"]
                assert child["message_type"] == "pain.002" and child["route"] == "reports-to-sender"
                assert child["headers"]["direction"] == "reply" and child["listener"] == "reply"
                # the resent file's report was answered, not routed again: the store holds the two reports
                # routed to the sender (an outbox row is written with its message, before the HTTP answer),
                # and once both are delivered the sender's bank has had exactly those two
                reports = api.get("/api/messages", params={"message_type": "pain.002"}).json()["items"]

                def to_sender() -> list[str]:
                    return [
                        d["status"]
                        for r in reports
                        for d in api.get(f"/api/messages/{r['id']}").json()["deliveries"]
                        if d["sink"] == "sender_bank"
                    ]

                assert len(to_sender()) == 2
                assert wait_until(lambda: to_sender() == ["delivered", "delivered"], 30)
            assert len(sender_bank.requests) == 2
        finally:
            gw.stop()


NAME_CANARY = "ZZCANARYDEBTORNAME"
ID_CANARY = "CANARY12345"


def test_a_private_initiating_party_is_never_shown_and_its_resends_are_told_apart(
    bank: tuple[Gateway, Receiver, Receiver], schema_dir: Path
) -> None:
    """A person as initiating party (a name alone, or a PrvtId) is not the sender: the message listing,
    its journey, lineage and ``gateway lineage trace`` show ``private-party`` and never the name or id,
    which a lineage search finds by its pseudonym. A resend is still recognised, per person: the same
    file again is a duplicate, another person's file with the same MsgId is a payment of its own, and
    the same person reusing the MsgId for another file is DU01."""
    gw, core, _ = bank
    by_name = f"<Nm>{NAME_CANARY}</Nm>"
    by_id = f"<Nm>Jo Example</Nm><Id><PrvtId><Othr><Id>{ID_CANARY}</Id></Othr></PrvtId></Id>"
    first = pain001("PRIV-PAY-1", ["10.00"], initiating_party=by_name)
    assert post(gw, first).status_code == 200
    again = post(gw, first)  # a retry after a lost reply: answered again, no second payment
    assert again.status_code == 200
    assert texts(report(again, schema_dir, "pain.002.001.14"), "GrpSts") == ["ACTC"]
    other = post(gw, pain001("PRIV-PAY-1", ["20.00"], initiating_party=by_id))  # another person
    assert other.status_code == 200, other.text
    assert texts(report(other, schema_dir, "pain.002.001.14"), "GrpSts") == ["ACTC"]
    reused = post(gw, pain001("PRIV-PAY-1", ["30.00"], initiating_party=by_name))
    assert reused.status_code == 400
    root = report(reused, schema_dir, "pain.002.001.14")
    assert texts(root, "GrpSts") == ["RJCT"] and texts(root, "Cd") == ["DU01"]

    seen: list[bytes] = []
    with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {TEST_KEY}"}) as api:
        listing = api.get("/api/messages", params={"control_id": "PRIV-PAY-1"})
        seen.append(listing.content)
        items = listing.json()["items"]
        assert sorted(i["status"] for i in items) == ["accepted", "accepted", "rejected"]
        assert {i["sender"] for i in items} == {"private-party"}
        assert {i["headers"]["initiating_party"] for i in items} == {""}
        accepted = [i["id"] for i in items if i["status"] == "accepted"]
        for mid in accepted:
            seen.append(api.get(f"/api/messages/{mid}").content)
            seen.append(api.get(f"/api/lineage/messages/{mid}").content)
            assert wait_until(lambda mid=mid: all(d["status"] == "delivered" for d in deliveries_of(gw, mid)))
        by_sender = api.post("/api/lineage/search", json={"sender": "private-party"}).json()["events"]
        assert set(accepted) <= {e["envelope_id"] for e in by_sender}
        assert api.post("/api/lineage/search", json={"sender": NAME_CANARY}).json()["events"] == []
        for canary in (NAME_CANARY, ID_CANARY):  # each person's messages, found by the pseudonym
            found = api.post("/api/lineage/search", json={"key": canary}).json()["events"]
            events = [e for e in found if e["event"] == "MessageReceived"]
            assert len({e["envelope_id"] for e in events}) == (2 if canary == NAME_CANARY else 1), canary
            assert all(e["details"]["keys"]["private_party"].startswith("hk:") for e in events)
            seen.append(json.dumps(found).encode())
    assert len(core.requests) == 2  # the two payments, each once
    for mid in accepted:
        traced = gw.cli("lineage", "trace", mid, *gw.store_args())
        assert traced.returncode == 0 and "from private-party" in traced.stdout, traced.stderr
        seen.append(traced.stdout.encode())
    everything = b"\n".join(seen)
    assert NAME_CANARY.encode() not in everything and ID_CANARY.encode() not in everything
    assert "…2345".encode() in everything  # the masked id is there: the search is real
