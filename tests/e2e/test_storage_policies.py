"""End to end: per-route storage policies (full, metadata, encrypted) and erasing a data subject.

The real gateway keeps ADT bodies sealed under a key per patient, drops ORU
bodies once delivered, and keeps the rest as received. Deliveries still get
the bodies as received; erasing one patient makes only their bodies
unreadable, and the lineage chain still verifies.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_hl7_intake import field, fixture, mllp_exchange
from tests.e2e.test_routing_delivery import adt
from tests.gateway.sinks.peers import Receiver
from tests.support import ADMIN_KEY, Gateway, wait_until, with_control_id

pytestmark = pytest.mark.e2e


def body_reads(api: httpx.Client, message_id: str) -> list[tuple[str, str, str]]:
    """The ``MessageBodyRead`` events of a message: (actor, outcome, scope), oldest first."""
    events = api.get(f"/api/messages/{message_id}/lineage").json()["events"]
    return [
        (e["actor"], e["outcome"], e["details"].get("scope", ""))
        for e in events
        if e["event"] == "MessageBodyRead"
    ]


def test_bodies_kept_as_each_route_says_and_a_subject_erased(tmp_path: Path) -> None:
    with Receiver() as ehr:
        gw = Gateway(
            tmp_path,
            {
                "sinks": {"ehr": {"type": "http", "endpoint": ehr.url}},
                "routes": [
                    {
                        "name": "adt",
                        "match": {"protocol": "hl7v2", "message_type": "ADT^*"},
                        "to": ["ehr"],
                        "storage": "encrypted",
                        "subject": "patient_id",
                    },
                    {
                        "name": "results",
                        "match": {"message_type": "ORU^R01"},
                        "to": ["ehr"],
                        "storage": "metadata",
                    },
                ],
                "unmatched": "reject",
            },
        ).start()
        try:
            # the bodies carry a name found nowhere else (the patient id is a header, kept as metadata)
            one = adt("ST-1", "PSUBJECTONE").replace(b"PID|", b"NTE|1||SURNAMECANARYONE\rPID|", 1)
            two = adt("ST-2", "PSUBJECTTWO").replace(b"PID|", b"NTE|1||SURNAMECANARYTWO\rPID|", 1)
            oru = with_control_id(fixture("oru_r01__cbc_20_obx.hl7"), "ST-3")
            for raw in (one, two, oru):
                assert field(mllp_exchange(gw.mllp_port, raw), "MSA", 1) == "AA"
            assert wait_until(lambda: len(ehr.requests) == 3)
            assert sorted(r.body for r in ehr.requests) == sorted([one, two, oru])  # delivered as received

            with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as api:
                ids = {m["control_id"]: m["id"] for m in api.get("/api/messages").json()["items"]}
                assert api.get(f"/api/messages/{ids['ST-1']}/raw").content == one  # read back, unsealed
                # a read of a body is a lineage event of that message: who read it, and that it was given
                assert wait_until(lambda: body_reads(api, ids["ST-1"]) == [("user:operator", "ok", "admin")])
                # the results body goes once delivered: only its metadata and lineage stay
                assert wait_until(lambda: api.get(f"/api/messages/{ids['ST-3']}/raw").content == b"")
                events = [
                    e["event"] for e in api.get(f"/api/messages/{ids['ST-3']}/lineage").json()["events"]
                ]
                assert "BodyDropped" in events
            # at rest, the sealed bodies are nowhere in clear
            at_rest = b"".join(p.read_bytes() for p in gw.data_dir.glob("gateway.db*"))
            assert b"SURNAMECANARYONE" not in at_rest and b"SURNAMECANARYTWO" not in at_rest

            erased = gw.cli("subjects", "erase", "PSUBJECTONE^^^HOSP", *gw.store_args())
            assert erased.returncode == 0, erased.stderr
            with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as api:
                gone = api.get(f"/api/messages/{ids['ST-1']}/raw")
                assert gone.status_code == 410 and gone.json()["error"] == "erased"
                assert wait_until(
                    lambda: (
                        body_reads(api, ids["ST-1"])
                        == [("user:operator", "ok", "admin"), ("user:operator", "erased", "admin")]
                    )
                )
                assert (
                    api.get(f"/api/messages/{ids['ST-2']}/raw").content == two
                )  # the other patient is untouched
                assert api.get("/api/lineage/verify").json()["ok"] is True
                found = api.post("/api/lineage/search", json={"event": "SubjectErased"}).json()["events"]
                assert len(found) == 1 and "PSUBJECTONE" not in str(found)
        finally:
            gw.stop()
    verified = gw.cli("lineage", "verify", *gw.store_args())
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_erasure_reaches_rejected_messages_key_columns_order_keys_and_appointments(tmp_path: Path) -> None:
    """What a sealed route keeps about a subject goes with the subject, whatever its outcome: an ADT
    rejected by validation and a FHIR write refused with 422 are sealed as their route says; the
    patient id kept beside the bodies (promoted headers, business keys, the outbox's order key) is
    a pseudonym after the erasure; and an Appointment whose participant is the patient is expunged.
    In the end the MRN is nowhere in the store's files."""
    mrn, fhir_id = "MRNERASE4711", "apx-erase-1"
    with Receiver() as ehr:
        gw = Gateway(
            tmp_path,
            {
                "auth": {
                    "api_keys": [
                        {"name": "feed", "key": "feed-key-0123456789abcdef", "scopes": ["ingest:hl7v2"]},
                        {
                            "name": "ehr",
                            "key": "fhir-key-0123456789abcdef",
                            "scopes": ["fhir:read", "fhir:write"],
                        },
                        {"name": "operator", "key": ADMIN_KEY, "scopes": ["admin"]},
                    ]
                },
                "sinks": {"ehr": {"type": "http", "endpoint": ehr.url}},
                "routes": [
                    {
                        "name": "adt",
                        "match": {"protocol": "hl7v2", "message_type": "ADT^*"},
                        "to": ["ehr"],
                        "storage": "encrypted",
                        "subject": "patient_id",
                        "order_by": "patient_id",
                    },
                    {
                        "name": "fhir",
                        "match": {"protocol": "fhir"},
                        "to": ["ehr"],
                        "storage": "encrypted",
                        "subject": "patient",
                    },
                ],
                "unmatched": "reject",
            },
        ).start()
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        fhir = {"Authorization": "Bearer fhir-key-0123456789abcdef", "Content-Type": "application/fhir+json"}
        try:
            good = adt("ER-1", mrn)
            # the same patient's ADT with a processing id the gateway does not take: refused
            bad = adt("ER-2", mrn).replace(b"|ER-2|P|", b"|ER-2|X|", 1)
            assert field(mllp_exchange(gw.mllp_port, good), "MSA", 1) == "AA"
            assert field(mllp_exchange(gw.mllp_port, bad), "MSA", 1) == "AR"
            base = f"{gw.http_url}/fhir"
            patient = {"resourceType": "Patient", "id": fhir_id, "name": [{"family": "APPTCANARY"}]}
            assert httpx.put(f"{base}/Patient/{fhir_id}", json=patient, headers=fhir).status_code == 201
            appointment = {
                "resourceType": "Appointment",
                "status": "booked",
                "description": "APPTCANARY follow-up",
                "participant": [
                    {"actor": {"reference": "Practitioner/dr-1"}, "status": "accepted"},
                    {
                        "actor": {"reference": f"Patient/{fhir_id}", "display": "APPTCANARY"},
                        "status": "accepted",
                    },
                ],
            }
            made = httpx.post(f"{base}/Appointment", json=appointment, headers=fhir)
            assert made.status_code == 201, made.text
            appt_id = made.json()["id"]
            refused = httpx.put(
                f"{base}/Patient/{fhir_id}", json={**patient, "birthDate": "1970-13-45"}, headers=fhir
            )
            assert refused.status_code == 422
            assert wait_until(lambda: len(ehr.requests) == 3)  # the good ADT, the Patient, the Appointment

            with httpx.Client(base_url=gw.http_url, headers=admin) as api:
                rows = api.get("/api/messages", params={"limit": 50}).json()["items"]
                rejected = [m["id"] for m in rows if m["status"] == "rejected"]
                assert len(rejected) == 2  # the ADT and the FHIR write
                deliveries = api.get("/api/deliveries").json()["items"]
                assert mrn not in json.dumps(deliveries)  # the order key is a pseudonym from the start

                erased = api.post("/api/subjects/erase", json={"subject": f"{mrn}^^^HOSP"})
                assert erased.status_code == 200, erased.text
                erased = api.post("/api/subjects/erase", json={"subject": f"Patient/{fhir_id}"})
                assert erased.status_code == 200 and erased.json()["records"] >= 2, erased.text
                for mid in rejected:
                    gone = api.get(f"/api/messages/{mid}/raw")
                    assert gone.status_code == 410, (mid, gone.status_code)
                assert api.get("/api/lineage/verify").json()["ok"] is True
            read = httpx.get(f"{base}/Appointment/{appt_id}", headers=fhir)
            assert read.status_code in (404, 410), read.text
        finally:
            gw.stop()
    at_rest = b"".join(p.read_bytes() for p in gw.data_dir.glob("gateway.db*"))
    assert mrn.encode() not in at_rest
    assert b"APPTCANARY" not in at_rest
