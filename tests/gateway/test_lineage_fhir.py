"""Lineage exported as FHIR R4 AuditEvent and Provenance resources (IHE BALP), from a real store."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.provenance import Provenance

from gateway.adapter import Issue
from gateway.envelope import new_id, sha256_hex, utcnow
from gateway.lineage import GENESIS_HASH, EventDraft, LineageEvent, seal
from gateway.lineage_fhir import ENVELOPE_SYSTEM, audit_event, fhir_export, provenance
from gateway.store import BatchRecord, IntakeRecord
from gateway.store.sqlite import SQLiteStore

CANARY = "MRN-CANARY-55"
MASKED_CANARY = "MASKED-CANARY-***55"
PEER_CANARY = "203.0.113.77:4455"
PAYLOAD_CANARY = b"PAYLOAD-CANARY-DOE^JANE"


def record(
    control_id: str,
    *,
    outcome: str = "accepted",
    parent_id: str | None = None,
    listener: str = "mllp",
    keys: dict[str, str] | None = None,
) -> IntakeRecord:
    body = b"MSH|^~\\&|APP|FAC|||" + control_id.encode() + b"|" + PAYLOAD_CANARY
    return IntakeRecord(
        id=new_id(),
        received_at=utcnow().isoformat(),
        protocol="hl7v2",
        raw=body,
        raw_sha256=sha256_hex(body),
        outcome=outcome,  # type: ignore[arg-type]
        listener=listener,
        peer=PEER_CANARY,
        control_id=control_id,
        sender="APP^FAC",
        message_type="ADT^A01",
        business_keys=keys or {},
        masked_keys={"patient_id": MASKED_CANARY} if keys else {},
        issues=[Issue("error", "required_field_missing", "PID-3", "PID-3 is required.")]
        if outcome != "accepted"
        else [],
        parent_id=parent_id,
    )


class Scenario:
    """What the fixture recorded, to find it again in the export."""

    def __init__(self) -> None:
        body = b"BHS|batch|" + PAYLOAD_CANARY
        self.batch = BatchRecord(
            id=new_id(),
            received_at=utcnow().isoformat(),
            protocol="hl7v2",
            kind="hl7_batch",
            raw=body,
            raw_sha256=sha256_hex(body),
            listener="mllp",
            peer=PEER_CANARY,
        )
        self.first = record("B1", parent_id=self.batch.id, keys={"patient_id": CANARY})
        self.second = record("B2", parent_id=self.batch.id)
        self.rejected = record("R1", outcome="invalid")
        original = record("P1")
        self.report = record("ACK1", listener="reply", parent_id=original.id)
        self.original = replace(original, reply_record=self.report)


@pytest.fixture
def scenario(store: SQLiteStore) -> Scenario:
    sc = Scenario()

    async def go() -> None:
        await store.record_intake([sc.first, sc.second], sc.batch)
        await store.record_intake([sc.rejected])
        await store.record_intake([sc.original])
        await store.record_events(
            [
                EventDraft(
                    "MessageRead",
                    sc.first.id,
                    "user:auditor",
                    outcome="ok",
                    details={"scope": "messages:read"},
                ),
                EventDraft(
                    "LineageQueried",
                    None,
                    "user:auditor",
                    outcome="3 events found",
                    details={"scope": "lineage:read"},
                ),
                EventDraft(
                    "AccessDenied",
                    None,
                    "webhook:shopify",
                    outcome="bad_signature",
                    details={"peer": PEER_CANARY, "refused": 3, "window_s": 60},
                ),
            ]
        )

    asyncio.run(go())
    return sc


def _export(store: SQLiteStore) -> list[dict[str, Any]]:
    return list(fhir_export(store.events_between(None, None)))


def _by_event(resources: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [
        r
        for r in resources
        if r["resourceType"] == "AuditEvent"
        and any(
            c["system"] == "urn:connector-gateway:lineage-event" and c["code"] == event for c in r["subtype"]
        )
    ]


def _subject(resource: dict[str, Any]) -> str:
    return str(resource["entity"][0]["what"]["identifier"]["value"])


def _details(resource: dict[str, Any]) -> dict[str, str]:
    return {d["type"]: d["valueString"] for d in resource["entity"][0]["detail"]}


def test_every_resource_validates_as_fhir_r4(store: SQLiteStore, scenario: Scenario) -> None:
    events = list(store.events_between(None, None))
    resources = _export(store)
    audits = [r for r in resources if r["resourceType"] == "AuditEvent"]
    provenances = [r for r in resources if r["resourceType"] == "Provenance"]
    assert len(audits) == len(events)
    assert len(provenances) == 3  # two messages split from the batch, one status report
    assert len(resources) == len(audits) + len(provenances)
    for r in audits:
        AuditEvent.model_validate(r)
        # the models do not check bound codes: the AuditEvent ones are required bindings
        assert r["action"] in ("C", "R", "U", "D", "E")
        assert r["outcome"] in ("0", "4", "8", "12")
    for r in provenances:
        Provenance.model_validate(r)
    assert [r["id"] for r in audits] == [f"lineage-{e.seq}" for e in events]
    assert len({r["id"] for r in resources}) == len(resources)


def test_provenance_links_derived_messages_to_their_parents(store: SQLiteStore, scenario: Scenario) -> None:
    resources = _export(store)
    links = {
        p["target"][0]["identifier"]["value"]: (
            p["entity"][0]["what"]["identifier"]["value"],
            p["activity"]["text"],
        )
        for p in resources
        if p["resourceType"] == "Provenance"
    }
    assert links == {
        scenario.first.id: (scenario.batch.id, "split from batch"),
        scenario.second.id: (scenario.batch.id, "split from batch"),
        scenario.report.id: (scenario.original.id, "status report"),
    }
    for p in resources:
        if p["resourceType"] == "Provenance":
            assert p["entity"][0]["role"] == "source"
            assert p["target"][0]["identifier"]["system"] == ENVELOPE_SYSTEM
    # each Provenance follows the AuditEvent of its child's receipt
    for i, r in enumerate(resources):
        if r["resourceType"] == "Provenance":
            before = resources[i - 1]
            assert before["type"]["code"] == "110107"
            assert _subject(before) == r["target"][0]["identifier"]["value"]
            assert (
                before["entity"][1]["what"]["identifier"]["value"]
                == r["entity"][0]["what"]["identifier"]["value"]
            )


def test_read_is_a_balp_rest_read_with_the_api_key_as_requestor(
    store: SQLiteStore, scenario: Scenario
) -> None:
    (read,) = _by_event(_export(store), "MessageRead")
    assert read["type"] == {
        "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
        "code": "rest",
        "display": "Restful Operation",
    }
    assert read["subtype"][0]["code"] == "read"
    assert read["action"] == "R"
    assert read["outcome"] == "0"
    (agent,) = read["agent"]
    assert agent["requestor"] is True
    assert agent["who"]["display"] == "auditor"
    assert agent["who"]["identifier"]["value"] == "auditor"
    assert _subject(read) == scenario.first.id
    assert _details(read)["scope"] == "messages:read"


def test_search_of_lineage_is_an_execute_without_a_message(store: SQLiteStore, scenario: Scenario) -> None:
    (query,) = _by_event(_export(store), "LineageQueried")
    assert (query["type"]["code"], query["subtype"][0]["code"], query["action"]) == (
        "110101",
        "search-type",
        "E",
    )
    assert query["entity"][0]["what"]["identifier"]["system"] == "urn:connector-gateway:lineage"


def test_rejected_message_carries_a_failure_outcome_and_its_error_code(
    store: SQLiteStore, scenario: Scenario
) -> None:
    resources = _export(store)
    (rejected,) = [r for r in _by_event(resources, "MessageRejected") if _subject(r) == scenario.rejected.id]
    assert rejected["outcome"] in ("4", "8")
    assert rejected["outcomeDesc"] == "required_field_missing"
    assert _details(rejected)["validation"] == "invalid"
    assert "required_field_missing" in _details(rejected)["codes"]
    (received,) = [r for r in _by_event(resources, "MessageReceived") if _subject(r) == scenario.rejected.id]
    assert (received["type"]["code"], received["action"], received["outcome"]) == ("110107", "C", "0")
    assert "outcomeDesc" not in received
    assert received["agent"][0]["requestor"] is False
    assert received["agent"][0]["name"] == "mllp"
    (denied,) = _by_event(resources, "AccessDenied")
    assert (denied["type"]["code"], denied["outcome"]) == ("110113", "4")


def test_no_business_key_mask_peer_or_payload_value_leaves(store: SQLiteStore, scenario: Scenario) -> None:
    lineage = json.dumps([e.as_dict() for e in store.events_between(None, None)])
    assert (
        MASKED_CANARY in lineage and PEER_CANARY in lineage
    )  # there to leak, so the check below means something
    resources = _export(store)
    dump = json.dumps(resources)
    for canary in (CANARY, MASKED_CANARY, PEER_CANARY, PAYLOAD_CANARY.decode()):
        assert canary not in dump, canary
    # the key is still there to search by, as its pseudonym
    (received,) = [r for r in _by_event(resources, "MessageReceived") if _subject(r) == scenario.first.id]
    details = _details(received)
    assert details["pseudonym:patient_id"].startswith("hk:")
    assert details["raw_sha256"] == scenario.first.raw_sha256
    assert details["control_id"] == "B1"
    assert {"seq", "prev_hash", "hash"} <= details.keys()
    assert not any(t in details for t in ("keys", "masked_keys", "peer"))


def test_ids_and_content_are_stable_across_exports(store: SQLiteStore, scenario: Scenario) -> None:
    first = _export(store)
    second = _export(store)
    assert [r["id"] for r in first] == [r["id"] for r in second]
    assert first == second


def _event(
    event: str, outcome: str, error_code: str = "", actor: str = "sink:ehr", **kw: Any
) -> LineageEvent:
    draft = EventDraft(event, kw.pop("envelope_id", new_id()), actor, outcome, error_code, **kw)
    return seal(7, utcnow().isoformat(), draft, GENESIS_HASH)


@pytest.mark.parametrize(
    ("ev", "code", "action", "outcome"),
    [
        (
            _event("DeliverySucceeded", "delivered", details={"delivery_id": "d1", "attempt": 1}),
            "110106",
            "R",
            "0",
        ),
        (_event("DeliveryFailed", "retrying", "timeout"), "110106", "R", "4"),
        (_event("DeliveryFailed", "failed", "http_500"), "110106", "R", "8"),
        (_event("DeadLettered", "dead", "http_500"), "110106", "R", "8"),
        (_event("DeliveryAttempted", "attempted"), "DeliveryAttempted", "E", "0"),
        (
            _event("RouteMatched", "routed", actor="route:adt", details={"sinks": ["ehr", "lab"]}),
            "RouteMatched",
            "E",
            "0",
        ),
        (_event("RouteUnmatched", "rejected", actor="route:(unmatched)"), "RouteUnmatched", "E", "4"),
        (_event("Replayed", "pending", actor="user:ops (cli)"), "Replayed", "U", "0"),
        (_event("MessagesSearched", "2 found", actor="user:auditor", envelope_id=None), "rest", "E", "0"),
        (_event("MessageBodyRead", "ok", actor="user:admin"), "rest", "R", "0"),
        (_event("StockAdjusted", "applied", actor="user:store", envelope_id=None), "StockAdjusted", "U", "0"),
        (_event("SomethingNew", "odd", "weird_code"), "SomethingNew", "E", "4"),
    ],
    ids=lambda v: v.event if isinstance(v, LineageEvent) else None,
)
def test_mapping_table(ev: LineageEvent, code: str, action: str, outcome: str) -> None:
    resource = audit_event(ev)
    AuditEvent.model_validate(resource)
    assert (resource["type"]["code"], resource["action"], resource["outcome"]) == (code, action, outcome)
    assert resource["subtype"][-1] == {
        "system": "urn:connector-gateway:lineage-event",
        "code": ev.event,
        "display": ev.event,
    }
    agent = resource["agent"][0]
    assert agent["requestor"] is ev.actor.startswith("user:")
    if ev.actor == "user:ops (cli)":
        assert agent["who"]["identifier"] == {"system": "urn:connector-gateway:os-user", "value": "ops"}


def test_provenance_alone_validates() -> None:
    child, parent = new_id(), new_id()
    p = provenance(child, parent, "2024-05-01T10:00:00+00:00", "transform")
    Provenance.model_validate(p)
    assert p["id"] == f"provenance-{child}"
    assert p["activity"] == {"text": "transform"}
    odd = provenance("not a valid/id", parent, "2024-05-01T10:00:00+00:00", "transform")
    Provenance.model_validate(odd)
    assert odd["id"].startswith("provenance-") and "/" not in odd["id"]


def test_a_resource_goes_out_as_its_type_and_pseudonym_never_its_id_or_mask() -> None:
    """A FHIR read names the resource by ``resource_type``, the pseudonym of ``Type/id`` (``resource``)
    and a masked form: the export keeps the type and the pseudonym, and leaves out the mask, and the
    reference itself where an event written before resources were named so still holds it."""
    pseudo = "hk:" + "ab" * 16
    now = _event(
        "ResourceRead",
        "ok",
        actor="user:ehr",
        details={
            "resource_type": "Patient",
            "resource": pseudo,
            "masked_resource": "Patient/***Y777",
            "version": 1,
            "interaction": "read",
        },
    )
    details = _details(audit_event(now))
    assert details["pseudonym:resource"] == pseudo and details["resource_type"] == "Patient"
    assert "resource" not in details and "masked_resource" not in details
    assert "Y777" not in json.dumps(audit_event(now))
    before = _event("ResourceRead", "ok", actor="user:ehr", details={"resource": "Patient/MRNCANARY777"})
    exported = audit_event(before)
    AuditEvent.model_validate(exported)
    assert "MRNCANARY777" not in json.dumps(exported)
