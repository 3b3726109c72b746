"""End to end: erasing a FHIR patient expunges it and what is about it from the real gateway's FHIR store.

A published FHIR client (fhirpy) writes two patients and their records through
``/fhir`` on a route that seals bodies per patient; ``gateway subjects erase
Patient/<id>`` runs beside the live server. Afterwards the erased patient's
resources answer 404, searches and histories no longer hold them, an
Observation moved to the other patient keeps only its current version, the
other patient is untouched, the same erasure works over the admin HTTP API, no copy of the erased patient's name is left in
the store's files, and the lineage chain still verifies. An Appointment of two
patients goes whole when the second one is erased, and so does its write's
body, sealed under the first one's key.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhirpy import SyncFHIRClient

from tests.gateway.sinks.peers import Receiver
from tests.support import ADMIN_KEY, Gateway, wait_until

pytestmark = pytest.mark.e2e

FHIR_KEY = "fhir-erasure-0123456789abcdef"


def observation(patient_id: str, code: str, value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "valueQuantity": {"value": value, "unit": "mmol/L"},
    }


def written_by(api: httpx.Client, reference: str, headers: dict[str, str] | None = None) -> str:
    """The id of the one message that wrote the resource ``reference`` (``Type/id``), found as an auditor
    finds it: by a lineage search, which matches the resource's pseudonym (messages show no id)."""
    query = {"key": reference, "event": "ResourceWritten"}
    events = api.post("/api/lineage/search", json=query, headers=headers).json()["events"]
    (message_id,) = {
        e["envelope_id"] for e in events if e["details"]["resource_type"] == reference.split("/")[0]
    }
    return str(message_id)


def sealing_gateway(tmp_path: Path, registry: Receiver) -> Gateway:
    """A started gateway whose FHIR writes go to ``registry``, their bodies sealed under their patient."""
    return Gateway(
        tmp_path,
        {
            "auth": {
                "api_keys": [
                    {"name": "ehr", "key": FHIR_KEY, "scopes": ["fhir:read", "fhir:write"]},
                    {"name": "operator", "key": ADMIN_KEY, "scopes": ["admin"]},
                ]
            },
            "sinks": {"registry": {"type": "http", "endpoint": registry.url}},
            "routes": [
                {
                    "name": "fhir-records",
                    "match": {"protocol": "fhir"},
                    "to": ["registry"],
                    "storage": "encrypted",
                    "subject": "patient",
                }
            ],
            "unmatched": "reject",
        },
    ).start()


def test_erasing_a_patient_expunges_its_fhir_resources(tmp_path: Path) -> None:
    erased_name, kept_name = f"ERASEDCANARY{uuid.uuid4().hex[:8]}", f"KEPTCANARY{uuid.uuid4().hex[:8]}"
    second_name = f"SECONDCANARY{uuid.uuid4().hex[:8]}"
    with Receiver() as registry:
        gw = sealing_gateway(tmp_path, registry)
        try:
            fc = SyncFHIRClient(f"{gw.http_url}/fhir", authorization=f"Bearer {FHIR_KEY}")
            for pid, family in (("erase-me-1", erased_name), ("keep-me-1", kept_name)):
                fc.resource("Patient", id=pid, name=[{"family": family, "given": ["Ann"]}]).save()
            posted = fc.resource("Patient", name=[{"family": second_name}])  # the server gives the id
            posted.save()
            glucose = fc.resource("Observation", **observation("erase-me-1", "2345-7", 5.4))
            glucose.save()
            removed = fc.resource("Observation", **observation("erase-me-1", "2339-0", 6.1))
            removed.save()
            removed.delete()  # deleted before the erasure: only its history holds it
            moved = fc.resource("Observation", **observation("erase-me-1", "2093-3", 4.2))
            moved.save()
            moved["subject"] = {"reference": "Patient/keep-me-1"}  # filed under the wrong patient, moved
            moved.save()
            kept = fc.resource("Observation", **observation("keep-me-1", "2345-7", 7.7))
            kept.save()
            second_obs = fc.resource("Observation", **observation(posted.id, "2345-7", 9.9))
            second_obs.save()
            # a transaction about both patients, the erased one second; its Observation is deleted since
            both = {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "resource": observation(pid, "8867-4", n),
                        "request": {"method": "POST", "url": "Observation"},
                    }
                    for n, pid in ((70, "keep-me-1"), (80, "erase-me-1"))
                ],
            }
            with httpx.Client(
                base_url=f"{gw.http_url}/fhir", headers={"Authorization": f"Bearer {FHIR_KEY}"}
            ) as h:
                made = h.post("", json=both).json()["entry"]
                shared_kept, shared_gone = (e["response"]["location"].split("/")[1] for e in made)
                assert h.delete(f"/Observation/{shared_gone}").status_code == 200
                # an Observation of the other patient, filed under the erased one for a while by Bundle
                # PATCH entries (their resource is a Binary: the patch's result names the patient)
                wander = h.post("/Observation", json=observation("keep-me-1", "2093-3", 5.0)).json()["id"]
                for target in ("erase-me-1", "keep-me-1"):
                    ops = [{"op": "replace", "path": "/subject/reference", "value": f"Patient/{target}"}]
                    binary = {
                        "resourceType": "Binary",
                        "contentType": "application/json-patch+json",
                        "data": base64.b64encode(json.dumps(ops).encode()).decode(),
                    }
                    entry = {
                        "resource": binary,
                        "request": {"method": "PATCH", "url": f"Observation/{wander}"},
                    }
                    assert (
                        h.post(
                            "", json={"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
                        ).status_code
                        == 200
                    )

            erased = gw.cli("subjects", "erase", "Patient/erase-me-1", *gw.store_args())
            assert erased.returncode == 0, erased.stderr
            # the patient and its three records whole, and the first version of the moved one
            assert "6 FHIR resources" in erased.stdout

            with httpx.Client(
                base_url=f"{gw.http_url}/fhir", headers={"Authorization": f"Bearer {FHIR_KEY}"}
            ) as h:
                erased_refs = ("Patient/erase-me-1", f"Observation/{glucose.id}", f"Observation/{removed.id}")
                for ref in (*erased_refs, f"Observation/{shared_gone}"):
                    assert h.get(f"/{ref}").status_code == 404, ref
                    assert h.get(f"/{ref}/_history").status_code == 404, ref
                found = h.get("/Observation", params={"subject": "Patient/erase-me-1"}).json()
                assert found["total"] == 0
                assert h.get("/Patient", params={"family": erased_name}).json()["total"] == 0
                # the moved Observation keeps its current version, about the other patient, and only that
                now = h.get(f"/Observation/{moved.id}")
                assert now.status_code == 200 and now.json()["subject"]["reference"] == "Patient/keep-me-1"
                history = h.get(f"/Observation/{moved.id}/_history").json()
                assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2"]
                assert h.get(f"/Observation/{moved.id}/_history/1").status_code == 404
                # the other patient and their records are untouched
                assert h.get("/Patient/keep-me-1").json()["name"][0]["family"] == kept_name
                theirs = h.get("/Observation", params={"subject": "Patient/keep-me-1"}).json()
                assert {e["resource"]["id"] for e in theirs["entry"]} == {
                    moved.id,
                    kept.id,
                    shared_kept,
                    wander,
                }
                # the wandering Observation keeps the versions about the other patient only
                wandered = h.get(f"/Observation/{wander}/_history").json()
                assert [e["resource"]["meta"]["versionId"] for e in wandered["entry"]] == ["3", "1"]

            with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as api:
                txns = api.get("/api/messages", params={"message_type": "Bundle/transaction"}).json()["items"]
                shared_body = next(
                    m for m in txns if m["headers"].get("entries") == "2"
                )  # the one about both
                gone = api.get(f"/api/messages/{shared_body['id']}/raw")
                assert gone.status_code == 410 and gone.json()["error"] == "erased"

            # the same over the HTTP API, for an admin key only; the value travels in the body
            second = {"subject": f"Patient/{posted.id}"}
            with httpx.Client(base_url=gw.http_url) as api:
                refused = api.post("/api/subjects/erase", json=second, headers={"X-API-Key": FHIR_KEY})
                assert refused.status_code == 403
                admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
                bad = api.post(
                    "/api/subjects/erase", json={"subject": "", "x": second["subject"]}, headers=admin
                )
                assert bad.status_code == 400 and posted.id not in bad.text
                create = written_by(api, f"Patient/{posted.id}", admin)
                assert second_name.encode() in api.get(f"/api/messages/{create}/raw", headers=admin).content
                done = api.post("/api/subjects/erase", json=second, headers=admin)
                assert done.status_code == 200 and done.json() == {"bodies": 2, "records": 2}
                # the POSTed Patient was filed under the id the server gave it: its body is sealed and gone
                gone = api.get(f"/api/messages/{create}/raw", headers=admin)
                assert gone.status_code == 410 and gone.json()["error"] == "erased"
                fhir = {"Authorization": f"Bearer {FHIR_KEY}"}
                assert api.get(f"/fhir/Patient/{posted.id}", headers=fhir).status_code == 404
                assert api.get(f"/fhir/Observation/{second_obs.id}", headers=fhir).status_code == 404

                assert api.get("/api/lineage/verify", headers=admin).json()["ok"] is True
                found = api.post("/api/lineage/search", json={"event": "SubjectErased"}, headers=admin).json()
                assert [e["details"]["records"] for e in found["events"]] == [6, 2]
                assert "erase-me" not in str(found) and posted.id not in str(found)

            # no copy of the erased patient's name is left in the store's files; the other's still is
            at_rest = b"".join(p.read_bytes() for p in gw.data_dir.glob("gateway.db*")).lower()
            assert erased_name.lower().encode() not in at_rest  # (the search index keeps names in lower case)
            assert second_name.lower().encode() not in at_rest
            assert kept_name.lower().encode() in at_rest
            # nor of their ids: lineage never held them, and the message rows keep their pseudonyms now
            assert b"erase-me-1" not in at_rest and posted.id.lower().encode() not in at_rest
            assert b"keep-me-1" in at_rest
        finally:
            assert gw.stop() == 0


def test_erasing_the_second_patient_of_an_appointment_expunges_it(tmp_path: Path) -> None:
    """An Appointment of two patients is filed under both: erasing the second one (not the one its body
    is sealed under) expunges it from the FHIR store and removes its write's body."""
    canary = f"APPTSECONDCANARY{uuid.uuid4().hex[:8]}"
    with Receiver() as registry:
        gw = sealing_gateway(tmp_path, registry)
        try:
            appointment = {
                "resourceType": "Appointment",
                "status": "booked",
                "description": f"Joint session with {canary}",
                "participant": [
                    {"actor": {"reference": "Practitioner/dr-1"}, "status": "accepted"},
                    {"actor": {"reference": "Patient/appt-first", "display": "Ann"}, "status": "accepted"},
                    {"actor": {"reference": "Patient/appt-second", "display": canary}, "status": "accepted"},
                ],
            }
            with (
                httpx.Client(
                    base_url=f"{gw.http_url}/fhir", headers={"Authorization": f"Bearer {FHIR_KEY}"}
                ) as h,
                httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as api,
            ):
                for pid in ("appt-first", "appt-second"):
                    patient = {"resourceType": "Patient", "id": pid, "name": [{"family": "Doe"}]}
                    assert h.put(f"/Patient/{pid}", json=patient).status_code == 201
                made = h.post("/Appointment", json=appointment)
                assert made.status_code == 201, made.text
                appt_id = made.json()["id"]
                second = {"patient": "Patient/appt-second"}
                assert h.get("/Appointment", params=second).json()["total"] == 1
                write = written_by(api, f"Appointment/{appt_id}")
                assert canary.encode() in api.get(f"/api/messages/{write}/raw").content

                done = api.post("/api/subjects/erase", json={"subject": "Patient/appt-second"})
                assert done.status_code == 200, done.text

                assert h.get(f"/Appointment/{appt_id}").status_code in (404, 410)
                assert h.get("/Appointment", params=second).json()["total"] == 0
                gone = api.get(f"/api/messages/{write}/raw")
                assert gone.status_code == 410 and gone.json()["error"] == "erased"
                # the Patient and the Appointment; the Patient's body and the Appointment's, sealed under
                # the first patient's key
                assert done.json() == {"bodies": 2, "records": 2}
                assert h.get("/Patient/appt-first").status_code == 200  # the other patient stays
                assert api.get("/api/lineage/verify").json()["ok"] is True

            at_rest = b"".join(p.read_bytes() for p in gw.data_dir.glob("gateway.db*")).lower()
            assert canary.lower().encode() not in at_rest
        finally:
            assert gw.stop() == 0


def test_a_patient_id_never_enters_lineage_and_its_erasure_leaves_it_nowhere(tmp_path: Path) -> None:
    """Clients use an MRN as a Patient's id. Its write, read and history read, and an Observation about
    it, name the resource in lineage by type and keyed pseudonym only, which a lineage search by
    ``Patient/<id>`` (or ``Observation/<id>``) finds; once the patient is erased the id is nowhere: not in
    lineage, its searches and exports, the message listing or the store's files."""
    mrn = f"MRNCANARY{uuid.uuid4().hex[:8].upper()}"
    ref = f"Patient/{mrn}"
    with Receiver() as registry:
        gw = sealing_gateway(tmp_path, registry)
        try:
            with httpx.Client(
                base_url=f"{gw.http_url}/fhir", headers={"Authorization": f"Bearer {FHIR_KEY}"}
            ) as h:
                patient = {"resourceType": "Patient", "id": mrn, "name": [{"family": "Doe"}]}
                assert h.put(f"/Patient/{mrn}", json=patient).status_code == 201
                assert h.get(f"/Patient/{mrn}").status_code == 200
                assert h.get(f"/Patient/{mrn}/_history").json()["total"] == 1
                obs = h.post("/Observation", json=observation(mrn, "2345-7", 5.4)).json()["id"]
                assert h.get(f"/Observation/{obs}").status_code == 200

            with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as api:

                def found(key: str) -> list[dict[str, Any]]:
                    answer = api.post("/api/lineage/search", json={"key": key, "limit": 1000})
                    assert answer.status_code == 200, answer.text
                    events: list[dict[str, Any]] = answer.json()["events"]
                    return events

                named = {"ResourceWritten", "ResourceRead", "ResourceHistoryRead"}
                assert wait_until(lambda: named <= {e["event"] for e in found(ref)})  # reads are noted after
                events = found(ref)
                received = next(e for e in events if e["event"] == "MessageReceived")
                pseudo = received["details"]["keys"]["patient"]
                assert pseudo.startswith("hk:") and received["details"]["masked_keys"]["patient"].endswith(
                    mrn[-4:]
                )
                for e in events:
                    if e["event"] in named and e["details"]["resource_type"] == "Patient":
                        assert e["details"]["resource"] == pseudo
                        assert e["details"]["masked_resource"] == f"Patient/***{mrn[-4:]}"
                assert wait_until(
                    lambda: (
                        {"ResourceWritten", "ResourceRead"}
                        <= {e["event"] for e in found(f"Observation/{obs}")}
                    )
                )
                assert mrn not in json.dumps(events)
                write = written_by(api, ref)
                assert api.get(f"/api/messages/{write}").json()["headers"]["resource_id"] == pseudo
                with sqlite3.connect(gw.data_dir / "gateway.db") as db:  # kept at rest until the erasure
                    (held,) = db.execute("SELECT headers FROM messages WHERE id = ?", (write,)).fetchone()
                assert json.loads(held)["resource_id"] == mrn

                done = api.post("/api/subjects/erase", json={"subject": ref})
                assert done.status_code == 200 and done.json() == {"bodies": 2, "records": 2}

                shown = api.get(f"/api/messages/{write}")
                assert shown.json()["headers"]["resource_id"] == pseudo  # as lineage names the resource
                seen = [
                    shown.content,
                    api.get("/api/messages", params={"protocol": "fhir"}).content,
                    api.get(f"/api/lineage/messages/{write}").content,
                    json.dumps(found(ref)).encode(),
                    json.dumps(found(f"Observation/{obs}")).encode(),
                ]
                assert found(ref), "the erased patient's events are still found by the pseudonym"
                assert api.get("/api/lineage/verify").json()["ok"] is True
            for fmt in ("jsonl", "fhir"):
                out = tmp_path / f"export.{fmt}"
                exported = gw.cli(
                    "lineage", "export", "--format", fmt, "--output", str(out), *gw.store_args()
                )
                assert exported.returncode == 0, exported.stderr
                seen.append(out.read_bytes())
            traced = gw.cli("lineage", "trace", write, "--json", *gw.store_args())
            assert traced.returncode == 0, traced.stderr
            seen.append(traced.stdout.encode())
            seen.extend(p.read_bytes() for p in gw.data_dir.glob("gateway.db*"))  # the store's files
            seen.append(gw.logs().encode())
            everything = b"\n".join(seen)
            assert mrn.encode() not in everything and mrn.lower().encode() not in everything.lower()
            assert pseudo.encode() in everything  # the search is real: the pseudonym is there
        finally:
            assert gw.stop() == 0
