"""End to end: a published FHIR client (fhirpy) and plain HTTP against the real gateway's /fhir API.

One gateway process serves the module; each test makes resources of its own
(identifiers carry a per-test marker) so that the tests do not see each other's.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound
from lxml import etree

from tests.gateway.sinks.peers import Receiver
from tests.support import ADMIN_KEY, READ_KEY, Gateway, wait_until

pytestmark = pytest.mark.e2e

FHIR_KEY = "fhir-key-0123456789abcdef"
FHIR_READ_KEY = "fhir-read-0123456789abcdef"
PATIENT_ONLY_KEY = "patient-read-0123456789ab"
OBSERVATION_ONLY_KEY = "obs-read-0123456789abcdef"
SYSTEM = "urn:oid:1.2.36.146.595.217.0.1"
FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"


@pytest.fixture(scope="module")
def sink() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, sink: Receiver) -> Iterator[Gateway]:
    workdir: Path = tmp_path_factory.mktemp("fhir")
    gateway = Gateway(
        workdir,
        {
            "auth": {
                "api_keys": [
                    {"name": "ehr", "key": FHIR_KEY, "scopes": ["fhir:read", "fhir:write"]},
                    {"name": "viewer", "key": FHIR_READ_KEY, "scopes": ["fhir:read"]},
                    {"name": "patient-app", "key": PATIENT_ONLY_KEY, "scopes": ["system/Patient.read"]},
                    {"name": "lab-app", "key": OBSERVATION_ONLY_KEY, "scopes": ["system/Observation.read"]},
                    {"name": "registrar", "key": WRITE_ONLY_KEY, "scopes": ["system/Patient.write"]},
                    {
                        "name": "front-desk",
                        "key": PATIENT_RW_KEY,
                        "scopes": ["system/Patient.read", "system/Patient.write"],
                    },
                    {"name": "lab-feed", "key": OBS_WRITER_KEY, "scopes": ["system/Observation.*"]},
                    {"name": "auditor", "key": READ_KEY, "scopes": ["messages:read", "lineage:read"]},
                    {"name": "operator", "key": ADMIN_KEY, "scopes": ["admin"]},
                ]
            },
            "sinks": {"registry": {"type": "http", "endpoint": sink.url}},
            "routes": [
                {
                    "name": "patients-to-registry",
                    "match": {"protocol": "fhir", "message_type": "Patient"},
                    "to": ["registry"],
                }
            ],
            "unmatched": "reject",
        },
    ).start()
    try:
        yield gateway
    finally:
        assert gateway.stop() == 0


def client(gw: Gateway, key: str = FHIR_KEY) -> SyncFHIRClient:
    return SyncFHIRClient(f"{gw.http_url}/fhir", authorization=f"Bearer {key}")


def http(gw: Gateway, key: str = FHIR_KEY) -> httpx.Client:
    return httpx.Client(
        base_url=f"{gw.http_url}/fhir", headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


def marker() -> str:
    return uuid.uuid4().hex[:12]


def patient(mark: str, family: str = "Chalmers", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": mark}],
        "name": [{"family": family, "given": ["Peter", "James"]}],
        "gender": "male",
        "birthDate": "1974-12-25",
        **extra,
    }


def outcome(response: httpx.Response) -> OperationOutcome:
    assert response.headers["content-type"].startswith(FHIR_JSON)
    return OperationOutcome.model_validate(response.json())


def test_capability_statement_says_what_is_implemented(gw: Gateway) -> None:
    with http(gw) as h:
        r = h.get("/metadata")
    assert r.status_code == 200
    cap = CapabilityStatement.model_validate(r.json())
    assert cap.fhirVersion == "4.0.1"
    assert set(cap.format) == {"application/fhir+json", "application/fhir+xml"}
    assert set(cap.patchFormat or []) == {"application/json-patch+json", "application/merge-patch+json"}
    rest = cap.rest[0]
    assert {i.code for i in rest.interaction} == {"transaction", "batch", "history-system"}
    by_type = {res.type: res for res in rest.resource}
    for rtype in ("Patient", "Observation", "Encounter", "AuditEvent", "Provenance", "Immunization"):
        assert rtype in by_type
    pat = by_type["Patient"]
    assert {i.code for i in pat.interaction} >= {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
        "search-type",
    }
    names = {p.name: p.type for p in pat.searchParam}
    assert names["identifier"] == "token" and names["birthdate"] == "date" and names["name"] == "string"
    assert pat.conditionalCreate and pat.conditionalUpdate and pat.versioning == "versioned-update"
    assert "Observation:subject" in by_type["Observation"].searchInclude


def test_create_read_update_vread_history_delete_with_fhirpy(gw: Gateway) -> None:
    mark = marker()
    fc = client(gw)
    pat = fc.resource("Patient", **patient(mark))
    pat.save()
    assert pat.id and pat["meta"]["versionId"] == "1"
    read = fc.reference("Patient", pat.id).to_resource()
    assert read["name"][0]["family"] == "Chalmers" and read["birthDate"] == "1974-12-25"

    read["name"][0]["family"] = "Windsor"
    read.save()
    assert read["meta"]["versionId"] == "2"
    with http(gw) as h:
        now = h.get(f"/Patient/{pat.id}")
        assert now.headers["etag"] == 'W/"2"' and "last-modified" in now.headers
        assert now.json()["name"][0]["family"] == "Windsor"
        v1 = h.get(f"/Patient/{pat.id}/_history/1")
        assert v1.status_code == 200 and v1.json()["name"][0]["family"] == "Chalmers"
        assert v1.headers["etag"] == 'W/"1"'
        hist = h.get(f"/Patient/{pat.id}/_history").json()
        Bundle.model_validate(hist)
        assert hist["type"] == "history" and hist["total"] == 2
        assert [e["resource"]["meta"]["versionId"] for e in hist["entry"]] == ["2", "1"]
        assert hist["entry"][1]["request"]["method"] == "POST"

    read.delete()
    with pytest.raises(ResourceNotFound):
        fc.reference("Patient", pat.id).to_resource()
    with http(gw) as h:
        gone = h.get(f"/Patient/{pat.id}")
        assert gone.status_code == 410
        assert outcome(gone).issue[0].code == "deleted"
        assert h.get(f"/Patient/{pat.id}/_history/3").status_code == 410  # the deletion itself
        assert h.get(f"/Patient/{pat.id}/_history/1").status_code == 200  # older versions stay
        assert h.delete(f"/Patient/{pat.id}").status_code == 204  # deleting again changes nothing
        assert h.get(f"/Patient/{pat.id}/_history").json()["total"] == 3
        assert h.get("/Patient", params={"identifier": f"{SYSTEM}|{mark}"}).json()["total"] == 0


def test_history_since_answers_the_versions_written_at_or_after_the_instant(gw: Gateway) -> None:
    """``_since`` between two writes answers exactly the newer versions, newest first, at the instance,
    type and system levels; an instant equal to a version's lastUpdated includes that version."""

    def versions(h: httpx.Client, path: str, since: str) -> list[tuple[str, str]]:
        bundle = h.get(path, params={"_since": since, "_count": "100"}).json()
        assert bundle["total"] == len(bundle["entry"])
        return [(e["fullUrl"].split("/fhir/", 1)[1], e["response"]["etag"]) for e in bundle["entry"]]

    def updated(resource: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(resource["meta"]["lastUpdated"].replace("Z", "+00:00"))

    mark = marker()
    with http(gw) as h:
        older = h.post("/Patient", json=patient(mark)).json()
        pid = older["id"]
        older = h.put(f"/Patient/{pid}", json={**patient(mark, "Windsor"), "id": pid}).json()
        time.sleep(0.05)
        newer = h.put(f"/Patient/{pid}", json={**patient(mark, "Tudor"), "id": pid}).json()
        other = h.post("/Patient", json=patient(marker())).json()
        qid = other["id"]
        other = h.put(f"/Patient/{qid}", json={**patient(other["identifier"][0]["value"], "York"), "id": qid})
        other = other.json()
        obs = h.post(
            "/Observation", json={"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
        ).json()
        assert updated(older) + timedelta(milliseconds=40) < updated(newer) <= updated(other)
        between = (updated(older) + timedelta(milliseconds=20)).isoformat().replace("+00:00", "Z")

        assert versions(h, f"/Patient/{pid}/_history", between) == [(f"Patient/{pid}", 'W/"3"')]
        assert versions(h, f"/Patient/{qid}/_history", between) == [
            (f"Patient/{qid}", 'W/"2"'),
            (f"Patient/{qid}", 'W/"1"'),
        ]
        assert versions(h, "/Patient/_history", between) == [
            (f"Patient/{qid}", 'W/"2"'),
            (f"Patient/{qid}", 'W/"1"'),
            (f"Patient/{pid}", 'W/"3"'),
        ]
        assert versions(h, "/_history", between) == [
            (f"Observation/{obs['id']}", 'W/"1"'),
            *versions(h, "/Patient/_history", between),
        ]
        at_newer = newer["meta"]["lastUpdated"]
        assert versions(h, f"/Patient/{pid}/_history", at_newer) == [(f"Patient/{pid}", 'W/"3"')]
        assert versions(h, f"/Patient/{pid}/_history", older["meta"]["lastUpdated"]) == [
            (f"Patient/{pid}", 'W/"3"'),
            (f"Patient/{pid}", 'W/"2"'),
        ]


def test_update_creates_with_the_clients_id_and_if_match_guards_versions(gw: Gateway) -> None:
    rid = f"pat-{marker()}"
    with http(gw) as h:
        created = h.put(
            f"/Patient/{rid}", json={**patient(rid), "id": rid}, headers={"Content-Type": FHIR_JSON}
        )
        assert created.status_code == 201
        assert created.headers["location"].endswith(f"/fhir/Patient/{rid}/_history/1")
        stale = h.put(
            f"/Patient/{rid}",
            json={**patient(rid, "Stale"), "id": rid},
            headers={"Content-Type": FHIR_JSON, "If-Match": 'W/"7"'},
        )
        assert stale.status_code == 412
        assert outcome(stale).issue[0].code == "conflict"
        fresh = h.put(
            f"/Patient/{rid}",
            json={**patient(rid, "Fresh"), "id": rid},
            headers={"Content-Type": FHIR_JSON, "If-Match": 'W/"1"'},
        )
        assert fresh.status_code == 200 and fresh.headers["etag"] == 'W/"2"'
        assert fresh.json()["meta"]["versionId"] == "2"
        wrong_id = h.put(
            f"/Patient/{rid}", json={**patient(rid), "id": "other"}, headers={"Content-Type": FHIR_JSON}
        )
        assert wrong_id.status_code == 400
        assert h.get(f"/Patient/{rid}").json()["name"][0]["family"] == "Fresh"


def test_conditional_create_and_update(gw: Gateway) -> None:
    mark = marker()
    ident = f"identifier={SYSTEM}|{mark}"
    with http(gw) as h:
        first = h.post("/Patient", json=patient(mark), headers={"If-None-Exist": ident})
        again = h.post("/Patient", json=patient(mark, "Other"), headers={"If-None-Exist": ident})
        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json()["id"] == again.json()["id"]
        assert h.get("/Patient", params={"identifier": f"{SYSTEM}|{mark}"}).json()["total"] == 1

        upd = h.put(f"/Patient?{ident}", json=patient(mark, "Conditional"))
        assert upd.status_code == 200 and upd.json()["id"] == first.json()["id"]
        assert upd.json()["meta"]["versionId"] == "2"
        fresh = marker()
        made = h.put(f"/Patient?identifier={SYSTEM}|{fresh}", json=patient(fresh))
        assert made.status_code == 201

        h.post("/Patient", json=patient(mark))  # now two match
        twice = h.post("/Patient", json=patient(mark), headers={"If-None-Exist": ident})
        assert twice.status_code == 412
        assert h.put(f"/Patient?{ident}", json=patient(mark)).status_code == 412
    fc = client(gw)
    got = fc.resources("Patient").search(identifier=f"{SYSTEM}|{fresh}").first()
    assert got is not None and got.id == made.json()["id"]


def test_search_parameters_paging_sort_include_and_count(gw: Gateway) -> None:
    mark = marker()
    fc = client(gw)
    with http(gw) as h:
        pats = []
        for n, (family, born, gender) in enumerate(
            [("Müller", "1950-03-04", "female"), ("Mueller", "1980-06-01", "male"), ("Smith", "1980", "male")]
        ):
            r = h.post("/Patient", json=patient(f"{mark}-{n}", family, gender=gender, birthDate=born))
            pats.append(r.json()["id"])
        for n in range(25):
            obs = {
                "resourceType": "Observation",
                "status": "final",
                "identifier": [{"system": SYSTEM, "value": f"{mark}-obs-{n}"}],
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                "code": "vital-signs",
                            }
                        ]
                    }
                ],
                "code": {
                    "coding": [{"system": "http://loinc.org", "code": "8867-4" if n % 2 else "29463-7"}]
                },
                "subject": {"reference": f"Patient/{pats[n % 3]}"},
                "effectiveDateTime": f"2026-01-{n + 1:02d}T08:00:00+01:00",
                "valueQuantity": {
                    "value": 60 + n,
                    "unit": "/min",
                    "system": "http://unitsofmeasure.org",
                    "code": "/min",
                },
            }
            assert h.post("/Observation", json=obs).status_code == 201

        def ids(params: dict[str, str]) -> list[str]:
            bundle = h.get(
                "/Patient", params={"identifier:missing": "false", **params, "_count": "100"}
            ).json()
            return [e["resource"]["id"] for e in bundle.get("entry", []) if pats.count(e["resource"]["id"])]

        assert set(ids({"family": "muller"})) == {pats[0]}  # accents and case do not matter
        assert set(ids({"family:exact": "Mueller"})) == {pats[1]}
        assert set(ids({"birthdate": "ge1980-01-01", "gender": "male"})) == {pats[1], pats[2]}
        assert set(ids({"birthdate": "1980"})) == {pats[1], pats[2]}
        assert set(ids({"birthdate": "lt1960"})) == {pats[0]}
        assert set(ids({"_id": f"{pats[0]},{pats[2]}"})) == {pats[0], pats[2]}

        subject = {"subject": f"Patient/{pats[0]}", "code": "http://loinc.org|8867-4"}
        dated = h.get("/Observation", params={**subject, "date": "ge2026-01-10", "_sort": "-date"}).json()
        days = [e["resource"]["effectiveDateTime"][:10] for e in dated["entry"]]
        assert days == sorted(days, reverse=True) and all(d >= "2026-01-10" for d in days)
        assert len(days) == dated["total"] and days  # subject 0 with odd n from day 10: n = 9, 15, 21
        heavy = h.get("/Observation", params={"patient": pats[1], "value-quantity": "gt80"}).json()
        assert {e["resource"]["valueQuantity"]["value"] for e in heavy["entry"]} == {82}  # n = 22: 60 + 22

        page = h.get(
            "/Observation",
            params={
                "identifier:missing": "false",
                "category": "vital-signs",
                "subject:Patient": pats[0],
                "_count": "3",
            },
        ).json()
        assert page["total"] == 9 and len(page["entry"]) == 3
        rel = {link["relation"]: link["url"] for link in page["link"]}
        assert "next" in rel and "previous" not in rel
        second = httpx.get(rel["next"], headers={"Authorization": f"Bearer {FHIR_KEY}"}).json()
        assert {link["relation"] for link in second["link"]} == {"self", "next", "previous"}
        assert not {e["resource"]["id"] for e in second["entry"]} & {
            e["resource"]["id"] for e in page["entry"]
        }

        counted = h.get("/Observation", params={"subject": f"Patient/{pats[2]}", "_summary": "count"}).json()
        assert counted["total"] == 8 and "entry" not in counted

        inc = h.get(
            "/Observation",
            params={"subject": f"Patient/{pats[1]}", "_include": "Observation:subject", "_count": "2"},
        ).json()
        modes = [(e["search"]["mode"], e["resource"]["resourceType"]) for e in inc["entry"]]
        assert modes == [("match", "Observation"), ("match", "Observation"), ("include", "Patient")]

    every = fc.resources("Observation").search(subject=f"Patient/{pats[0]}").limit(4).fetch_all()
    assert len(every) == 9  # fhirpy follows the next links to the end
    assert fc.resources("Observation").search(patient=pats[0]).count() == 9


def test_transaction_is_atomic_and_resolves_urn_references(gw: Gateway) -> None:
    mark = marker()
    pat_urn, enc_urn = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": pat_urn, "resource": patient(mark), "request": {"method": "POST", "url": "Patient"}},
            {
                "fullUrl": enc_urn,
                "resource": {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": {"reference": pat_urn},
                },
                "request": {"method": "POST", "url": "Encounter"},
            },
            {
                "resource": {
                    "resourceType": "Condition",
                    "subject": {"reference": pat_urn},
                    "encounter": {"reference": enc_urn},
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
                },
                "request": {"method": "POST", "url": "Condition"},
            },
        ],
    }
    fc = client(gw)
    result = fc.execute("/", method="post", data=tx)
    Bundle.model_validate(dict(result))
    assert result["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses == ["201 Created"] * 3
    pat_id = result["entry"][0]["response"]["location"].split("/")[1]
    enc_id = result["entry"][1]["response"]["location"].split("/")[1]
    cond = fc.reference(
        reference=result["entry"][2]["response"]["location"].split("/_history")[0]
    ).to_resource()
    assert cond["subject"]["reference"] == f"Patient/{pat_id}"
    assert cond["encounter"]["reference"] == f"Encounter/{enc_id}"

    broken = {
        **tx,
        "entry": [
            *tx["entry"][:2],
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "x"},
                    "subject": {"reference": f"Patient?identifier={SYSTEM}|nobody-{mark}"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    broken["entry"][0] = {**broken["entry"][0], "resource": patient(f"{mark}-second")}
    with http(gw) as h:
        refused = h.post("", json=broken)
        assert refused.status_code == 404
        assert outcome(refused).issue[0].expression == ["Bundle.entry[2].resource"]
        # all or nothing: the patient of the failed transaction was not kept
        found = h.get("/Patient", params={"identifier": f"{SYSTEM}|{mark}-second"}).json()
        assert found["total"] == 0


def test_batch_processes_entries_independently(gw: Gateway) -> None:
    mark = marker()
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": patient(mark),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYSTEM}|{mark}"},
            },
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
            {
                "resource": patient(mark),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYSTEM}|{mark}"},
            },
        ],
    }
    with http(gw) as h:
        r = h.post("", json=batch)
        assert r.status_code == 200
        body = r.json()
        assert body["type"] == "batch-response"
        statuses = [e["response"]["status"] for e in body["entry"]]
        assert statuses == ["201 Created", "404 Not Found", "200 OK"]
        assert body["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
        assert body["entry"][0]["response"]["location"] == body["entry"][2]["response"]["location"]


def test_xml_in_and_out(gw: Gateway) -> None:
    mark = marker()
    xml = (
        '<Patient xmlns="http://hl7.org/fhir"><identifier><system value="'
        + SYSTEM
        + '"/><value value="'
        + mark
        + '"/></identifier><name><family value="Ørsted"/></name><birthDate value="1901-02-03"/></Patient>'
    ).encode()
    with http(gw) as h:
        made = h.post("/Patient", content=xml, headers={"Content-Type": FHIR_XML, "Accept": FHIR_XML})
        assert made.status_code == 201 and made.headers["content-type"].startswith(FHIR_XML)
        root = etree.fromstring(made.content)
        ns = {"f": "http://hl7.org/fhir"}
        rid = root.find("f:id", ns).get("value")
        assert root.find("f:name/f:family", ns).get("value") == "Ørsted"
        as_json = h.get(f"/Patient/{rid}")
        assert as_json.json()["name"][0]["family"] == "Ørsted"
        as_xml = h.get(f"/Patient/{rid}", params={"_format": "xml"})
        assert as_xml.headers["content-type"].startswith(FHIR_XML)
        assert etree.fromstring(as_xml.content).find("f:birthDate", ns).get("value") == "1901-02-03"
        evil = (
            b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b'<Patient xmlns="http://hl7.org/fhir"><name><family value="&x;"/></name></Patient>'
        )
        refused = h.post("/Patient", content=evil, headers={"Content-Type": FHIR_XML})
        assert refused.status_code == 400 and b"root:" not in refused.content
        bad_accept = h.get(f"/Patient/{rid}", headers={"Accept": "text/csv"})
        assert bad_accept.status_code == 406
        assert h.post("/Patient", content=b"x", headers={"Content-Type": "text/csv"}).status_code == 415


def test_errors_are_operation_outcomes_with_the_right_status(gw: Gateway) -> None:
    with http(gw) as h:
        invalid = h.post(
            "/Patient",
            json={
                "resourceType": "Patient",
                "birthDate": "1999-99-99",
                "gender": "male",
                "name": [{"family": "Nobody"}],
            },
        )
        assert invalid.status_code == 422
        issue = outcome(invalid).issue[0]
        assert issue.expression == ["Patient.birthDate"]
        assert "1999-99-99" not in invalid.text
        unknown_element = h.post("/Patient", json={"resourceType": "Patient", "favouriteColour": "red"})
        assert unknown_element.status_code == 422
        malformed = h.post(
            "/Patient", content=b'{"resourceType": "Patient",', headers={"Content-Type": FHIR_JSON}
        )
        assert malformed.status_code == 400
        assert h.get("/Patient/nope").status_code == 404
        assert outcome(h.get("/NotAType/1")).issue[0].code in ("not-supported", "not-found")
        assert h.get("/NotAType/1").status_code == 404
        assert h.post("/Patient/x", json={}).status_code == 405  # no interaction POSTs to an instance
        fhirpath_patch = h.patch(
            "/Patient/x", content=b"<Parameters/>", headers={"Content-Type": "application/fhir+xml"}
        )
        assert fhirpath_patch.status_code == 415 and outcome(fhirpath_patch).issue[0].code == "not-supported"
        assert h.get("/Patient", params={"favourite-colour": "red"}).status_code == 400
        lenient = h.get(
            "/Patient", params={"favourite-colour": "red"}, headers={"Prefer": "handling=lenient"}
        )
        assert lenient.status_code == 200
        mismatch = h.post("/Observation", json=patient("x"))
        assert mismatch.status_code == 400
    assert httpx.get(f"{gw.http_url}/fhir/Patient").status_code == 401
    with http(gw, FHIR_READ_KEY) as viewer:
        denied = viewer.post("/Patient", json=patient(marker()))
        assert denied.status_code == 403 and outcome(denied).issue[0].code == "forbidden"
        assert viewer.get("/Patient", params={"_count": "1"}).status_code == 200


def test_smart_scopes_per_resource_type(gw: Gateway) -> None:
    with http(gw) as h:
        pid = h.post("/Patient", json=patient(marker())).json()["id"]
        h.post(
            "/Observation",
            json={
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "t"},
                "subject": {"reference": f"Patient/{pid}"},
            },
        )
    with http(gw, OBSERVATION_ONLY_KEY) as lab:
        found = lab.get("/Observation", params={"subject": pid, "_include": "Observation:subject"}).json()
        assert [e["resource"]["resourceType"] for e in found["entry"]] == ["Observation"]  # no Patient
    with http(gw, PATIENT_ONLY_KEY) as app:
        assert app.get(f"/Patient/{pid}").status_code == 200
        assert app.get("/Observation", params={"_count": "1"}).status_code == 403
        assert app.put(f"/Patient/{pid}", json={**patient("x"), "id": pid}).status_code == 403


def test_writes_are_envelopes_routed_and_in_lineage_and_reads_are_audited(
    gw: Gateway, sink: Receiver
) -> None:
    mark = marker()
    before = len(sink.requests)
    with http(gw) as h:
        made = h.post("/Patient", json=patient(mark, "Lineage"))
        pid = made.json()["id"]
        h.get(f"/Patient/{pid}")
        h.post(
            "/Observation",
            json={
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "t"},
                "subject": {"reference": f"Patient/{pid}"},
            },
        )
    assert wait_until(lambda: any(mark.encode() in r.body for r in sink.requests[before:]))
    (delivered,) = [r for r in sink.requests[before:] if mark.encode() in r.body]  # the Patient, as received
    with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {READ_KEY}"}) as audit:
        check_lineage(audit, pid, mark, delivered.headers["x-gateway-envelope-id"])


def check_lineage(audit: httpx.Client, pid: str, mark: str, message_id: str) -> None:
    msgs = audit.get("/api/messages", params={"protocol": "fhir", "message_type": "Patient"}).json()["items"]
    mine = next(m for m in msgs if m["id"] == message_id)
    assert mine["route"] == "patients-to-registry" and mine["status"] == "accepted"
    # the message shows its resource as lineage names it: by the pseudonym of Patient/<pid>, not the id
    assert mine["headers"]["resource_type"] == "Patient" and mine["headers"]["resource_id"].startswith("hk:")
    lineage = audit.get(f"/api/messages/{mine['id']}/lineage").json()["events"]
    kinds = [e["event"] for e in lineage]
    assert "ResourceWritten" in kinds and "RouteMatched" in kinds

    def read_events() -> list[dict[str, Any]]:
        events = audit.get(f"/api/messages/{mine['id']}/lineage").json()["events"]
        return [e for e in events if e["event"] == "ResourceRead"]

    assert wait_until(lambda: bool(read_events()))
    read = read_events()[0]
    # the resource by type and pseudonym, the one the write's patient key (Patient/<pid>) has: never its id
    received = next(e for e in lineage if e["event"] == "MessageReceived")
    assert read["actor"] == "user:ehr" and read["details"]["resource_type"] == "Patient"
    assert (
        read["details"]["resource"]
        == received["details"]["keys"]["patient"]
        == mine["headers"]["resource_id"]
    )
    text = str(lineage) + str(read_events())
    assert "Lineage" not in text and mark not in text and "1974-12-25" not in text and pid not in text
    unrouted = [
        m
        for m in audit.get(
            "/api/messages", params={"protocol": "fhir", "message_type": "Observation"}
        ).json()["items"]
    ]
    assert unrouted and all(m["status"] == "accepted" for m in unrouted)  # kept without a route


WRITE_ONLY_KEY = "patient-write-0123456789ab"
PATIENT_RW_KEY = "patient-rw-0123456789abcdef"
OBS_WRITER_KEY = "obs-write-0123456789abcdef"


def test_a_write_only_key_learns_nothing_from_a_conditional_create(gw: Gateway, sink: Receiver) -> None:
    mark = marker()
    with http(gw) as h:
        h.post("/Patient", json=patient(mark, "Secretname"))
    assert wait_until(lambda: any(mark.encode() in req.body for req in sink.requests))  # its own delivery
    before = len(sink.requests)
    with http(gw, WRITE_ONLY_KEY) as w:
        r = w.post("/Patient", json=patient(mark), headers={"If-None-Exist": f"identifier={SYSTEM}|{mark}"})
        assert r.status_code == 200 and not r.content  # the match, but not what it says
        assert "location" in r.headers
        assert w.get("/Patient", params={"identifier": f"{SYSTEM}|{mark}"}).status_code == 403
    with http(gw) as h:  # nothing written: the one Patient with that identifier is the first
        assert h.get("/Patient", params={"identifier": f"{SYSTEM}|{mark}"}).json()["total"] == 1
    assert not any(mark.encode() in req.body for req in sink.requests[before:])  # and nothing routed


def test_limits_and_refusals_come_before_any_work(gw: Gateway) -> None:
    mark = marker()
    with http(gw) as h:
        made = h.post("/Patient", json=patient(mark), headers={"Accept": "text/html"})
        assert made.status_code == 406
        assert h.get("/Patient", params={"identifier": f"{SYSTEM}|{mark}"}).json()["total"] == 0  # not stored
        many = h.get("/Patient", params={"_id": ",".join(f"id{n}" for n in range(101))})
        assert many.status_code == 400 and outcome(many).issue[0].code == "too-costly"
        assert h.get("/_history", params={"_offset": "9" * 30}).status_code == 400
        pid = h.post("/Patient", json=patient(marker())).json()["id"]
        future = h.get(f"/Patient/{pid}/_history", params={"_since": "2099-01-01T00:00:00Z"})
        assert future.status_code == 200 and future.json()["total"] == 0
        stale = h.delete(f"/Patient/{pid}", headers={"If-Match": 'W/"9"'})
        assert stale.status_code == 412
    anonymous = httpx.post(
        f"{gw.http_url}/fhir/Patient/_search",
        content=b"name=x&" * 1000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert anonymous.status_code == 401
    with http(gw) as h:
        form = h.post(
            "/Patient/_search",
            content=b"_id=" + pid.encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert form.status_code == 200 and form.json()["total"] == 1


def test_decimals_keep_their_digits(gw: Gateway) -> None:
    obs = (
        b'{"resourceType": "Observation", "status": "final", "code": {"text": "t"},'
        b' "valueQuantity": {"value": 1.50, "unit": "mmol/L"}}'
    )
    with http(gw) as h:
        rid = h.post("/Observation", content=obs, headers={"Content-Type": FHIR_JSON}).json()["id"]
        assert b'"value":1.50' in h.get(f"/Observation/{rid}").content
        assert b'<value value="1.50"/>' in h.get(f"/Observation/{rid}", params={"_format": "xml"}).content
        assert b'"value":1.50' in h.get("/Observation", params={"_id": rid}).content


def test_bundles_resolve_relative_references_and_check_every_scope(gw: Gateway) -> None:
    mark = marker()
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"http://example.org/fhir/Patient/{mark}",
                "resource": patient(mark),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "t"},
                    "subject": {"reference": f"Patient/{mark}"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    with http(gw) as h:
        done = h.post("", json=tx).json()
        pid = done["entry"][0]["response"]["location"].split("/")[1]
        obs = h.get("/" + done["entry"][1]["response"]["location"].split("/_history")[0]).json()
        assert obs["subject"]["reference"] == f"Patient/{pid}"
        batch = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {
                    "resource": {"resourceType": "Patient", "birthDate": "not-a-date"},
                    "request": {"method": "POST", "url": "Patient"},
                },
                {"resource": patient(f"{mark}-ok"), "request": {"method": "POST", "url": "Patient"}},
            ],
        }
        answered = h.post("", json=batch).json()
        assert [e["response"]["status"] for e in answered["entry"]] == [
            "422 Unprocessable Entity",
            "201 Created",
        ]
    probe = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "t"},
                    "subject": {"reference": f"Patient?identifier={SYSTEM}|{mark}"},
                },
                "request": {"method": "POST", "url": "Observation"},
            }
        ],
    }
    with http(gw, OBS_WRITER_KEY) as w:
        refused = w.post("", json=probe)
        assert refused.status_code == 403  # a conditional reference would tell whether the patient exists


def test_prefer_return_minimal_representation_and_operation_outcome(gw: Gateway) -> None:
    with http(gw) as h:
        minimal = h.post("/Patient", json=patient(marker()), headers={"Prefer": "return=minimal"})
        assert minimal.status_code == 201 and not minimal.content
        assert minimal.headers["etag"] == 'W/"1"' and "/fhir/Patient/" in minimal.headers["location"]
        told = h.post("/Patient", json=patient(marker()), headers={"Prefer": "return=OperationOutcome"})
        assert told.status_code == 201 and outcome(told).issue[0].severity == "information"
        shown = h.post("/Patient", json=patient(marker()), headers={"Prefer": "return=representation"})
        assert shown.status_code == 201 and shown.json()["resourceType"] == "Patient"
        assert shown.json()["meta"]["versionId"] == "1" and "lastUpdated" in shown.json()["meta"]


def test_the_cli_lists_writes_with_their_whole_resource_type(gw: Gateway) -> None:
    with http(gw, OBS_WRITER_KEY) as h:
        made = h.post(
            "/Observation",
            json={"resourceType": "Observation", "status": "final", "code": {"text": "listed"}},
        )
        assert made.status_code == 201
    listed = gw.cli("messages", "list", "--protocol", "fhir", "--status", "accepted", *gw.store_args())
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert "Observation" in {row.split()[2] for row in rows}  # not cut to the column's least width
    assert {row.index(" accepted ") + 1 for row in rows} == {header.index("STATUS")}  # columns line up


JSON_PATCH = {"Content-Type": "application/json-patch+json"}


def test_patch_with_json_patch_and_a_clients_merge_patch(gw: Gateway, sink: Receiver) -> None:
    mark = marker()
    fc = client(gw)
    pat = fc.resource("Patient", **patient(mark, "Chalmers"))
    pat.save()
    before = len(sink.requests)
    with http(gw) as h:
        ops = [
            {"op": "test", "path": "/name/0/family", "value": "Chalmers"},
            {"op": "replace", "path": "/name/0/family", "value": "Windsor"},
            {"op": "add", "path": "/telecom", "value": [{"system": "phone", "value": "555-0101"}]},
            {"op": "remove", "path": "/name/0/given/1"},
        ]
        done = h.patch(f"/Patient/{pat.id}", json=ops, headers=JSON_PATCH)
        assert done.status_code == 200 and done.headers["etag"] == 'W/"2"'
        body = done.json()
        assert (
            body["name"][0] == {"family": "Windsor", "given": ["Peter"]} and body["meta"]["versionId"] == "2"
        )
        assert h.get(f"/Patient/{pat.id}").json()["telecom"][0]["value"] == "555-0101"
        history = h.get(f"/Patient/{pat.id}/_history").json()
        assert [e["request"]["method"] for e in history["entry"]] == ["PATCH", "POST"]
        # the patched Patient is an envelope like any write: routed to the registry as it now is
        assert wait_until(lambda: any(b"Windsor" in r.body for r in sink.requests[before:]))

        # a failing test changes nothing and echoes no value
        failed = h.patch(
            f"/Patient/{pat.id}",
            json=[
                {"op": "test", "path": "/name/0/family", "value": "Secretvalue"},
                {"op": "replace", "path": "/gender", "value": "female"},
            ],
            headers=JSON_PATCH,
        )
        assert failed.status_code == 422 and outcome(failed).issue[0].code == "processing"
        assert "Operation 1 (test at /name/0/family)" in failed.text
        assert "Secretvalue" not in failed.text and "Windsor" not in failed.text
        missing = h.patch(
            f"/Patient/{pat.id}",
            json=[{"op": "replace", "path": "/address/0/city", "value": "X"}],
            headers=JSON_PATCH,
        )
        assert missing.status_code == 422
        assert h.get(f"/Patient/{pat.id}").headers["etag"] == 'W/"2"'

        # malformed documents, and what a patch may not do
        for bad in (
            [],
            {"op": "replace"},
            [{"op": "frobnicate", "path": "/x"}],
            [{"op": "add", "path": "x"}],
        ):
            r = h.patch(f"/Patient/{pat.id}", json=bad, headers=JSON_PATCH)
            assert r.status_code == 400 and outcome(r).issue[0].code == "invalid", bad
        moved = h.patch(
            f"/Patient/{pat.id}",
            json=[{"op": "replace", "path": "/id", "value": "other"}],
            headers=JSON_PATCH,
        )
        assert moved.status_code == 422
        invalid = h.patch(
            f"/Patient/{pat.id}",
            json=[{"op": "replace", "path": "/birthDate", "value": "Secret-date"}],
            headers=JSON_PATCH,
        )
        assert invalid.status_code == 422 and "Secret" not in invalid.text  # validated like any write

        # If-Match names the version the patch is for
        stale = h.patch(
            f"/Patient/{pat.id}",
            json=[{"op": "replace", "path": "/gender", "value": "other"}],
            headers={**JSON_PATCH, "If-Match": 'W/"1"'},
        )
        assert stale.status_code == 412
        fresh = h.patch(
            f"/Patient/{pat.id}",
            json=[{"op": "replace", "path": "/gender", "value": "other"}],
            headers={**JSON_PATCH, "If-Match": 'W/"2"'},
        )
        assert fresh.status_code == 200 and fresh.json()["meta"]["versionId"] == "3"
        assert h.patch("/Patient/no-such-one", json=ops, headers=JSON_PATCH).status_code == 404

        # decimals keep the digits they were written with
        obs = h.post(
            "/Observation",
            json={"resourceType": "Observation", "status": "final", "code": {"text": "glucose"}},
        ).json()
        patched = h.patch(
            f"/Observation/{obs['id']}",
            content=b'[{"op": "add", "path": "/valueQuantity", "value": {"value": 7.10, "unit": "mmol/L"}}]',
            headers=JSON_PATCH,
        )
        assert patched.status_code == 200 and b'"value":7.10' in h.get(f"/Observation/{obs['id']}").content

    # fhirpy's patch() sends a merge patch as application/json: it works, and null removes a member
    fc.reference("Patient", pat.id).patch(gender="female", telecom=None)
    now = fc.reference("Patient", pat.id).to_resource()
    assert now["gender"] == "female" and "telecom" not in now and now["meta"]["versionId"] == "4"

    # a patch reads what it changes (a failing test is an answer): a write-only key may not patch
    with http(gw, WRITE_ONLY_KEY) as w:
        probe = [{"op": "test", "path": "/gender", "value": "female"}]
        refused = w.patch(f"/Patient/{pat.id}", json=probe, headers=JSON_PATCH)
        assert refused.status_code == 403 and outcome(refused).issue[0].code == "forbidden"

    # concurrent patches without If-Match: each applies to the version it finds, none is lost
    racers = 8
    start = threading.Barrier(racers)

    def add_given(n: int) -> int:
        with http(gw) as h:
            op = [{"op": "add", "path": "/name/0/given/-", "value": f"Given{n}"}]
            h.get("/metadata")  # the connection is open before the race starts
            start.wait()
            return h.patch(f"/Patient/{pat.id}", json=op, headers=JSON_PATCH).status_code

    given_before = fc.reference("Patient", pat.id).to_resource()["name"][0]["given"]
    with ThreadPoolExecutor(racers) as pool:
        statuses = list(pool.map(add_given, range(racers)))
    # each patch loses at most one race to each other patch: fewer than the times a patch is tried
    assert statuses == [200] * racers
    given = fc.reference("Patient", pat.id).to_resource()["name"][0]["given"]
    assert given[: len(given_before)] == given_before
    assert sorted(given[len(given_before) :]) == sorted(f"Given{n}" for n in range(racers))  # none lost
    with http(gw) as h:
        odd = h.patch(
            f"/Patient/{pat.id}", json=[{"op": "remove", "path": "/Jane Doe 123-45-6789"}], headers=JSON_PATCH
        )
        assert odd.status_code == 422 and "Jane" not in odd.text and "123-45" not in odd.text
        weird = h.patch(f"/Patient/{pat.id}", json=[{"op": ["add"], "path": "/x"}], headers=JSON_PATCH)
        assert weird.status_code == 400
        deep = h.patch(f"/Patient/{pat.id}", content=b"[" * 5000 + b"]" * 5000, headers=JSON_PATCH)
        assert deep.status_code == 400

    # a deleted resource is gone for patches too
    with http(gw) as h:
        assert h.delete(f"/Patient/{pat.id}").status_code == 200
        assert h.patch(f"/Patient/{pat.id}", json=ops, headers=JSON_PATCH).status_code == 410


def test_revinclude_and_chains_follow_references_both_ways(gw: Gateway) -> None:
    mark = marker()
    with http(gw) as h:
        pids = [h.post("/Patient", json=patient(f"{mark}-{n}")).json()["id"] for n in range(2)]
        observations = {
            pid: [
                h.post(
                    "/Observation",
                    json={
                        "resourceType": "Observation",
                        "status": "final",
                        "code": {"text": f"revinclude {n}"},
                        "subject": {"reference": f"Patient/{pid}"},
                    },
                ).json()["id"]
                for n in range(2)
            ]
            for pid in pids
        }
        gone = observations[pids[0]][1]
        assert h.delete(f"/Observation/{gone}").status_code == 200  # deleted ones are not included

        found = h.get(
            "/Patient", params={"identifier": f"{SYSTEM}|{mark}-0", "_revinclude": "Observation:subject"}
        ).json()
        entries = [
            (e["search"]["mode"], e["resource"]["resourceType"], e["resource"]["id"]) for e in found["entry"]
        ]
        assert entries == [
            ("match", "Patient", pids[0]),
            ("include", "Observation", observations[pids[0]][0]),
        ]
        assert found["total"] == 1  # included resources do not count as matches
        assert "_revinclude=Observation%3Asubject" in found["link"][0]["url"]

        both = h.get(
            "/Patient",
            params={"_id": ",".join(pids), "_revinclude": "Observation:patient", "_count": "1"},
        ).json()
        included = {e["resource"]["id"] for e in both["entry"] if e["search"]["mode"] == "include"}
        matched = next(e["resource"]["id"] for e in both["entry"] if e["search"]["mode"] == "match")
        assert included == {o for o in observations[matched] if o != gone}  # only the page's matches'

        for bad in (
            "Observation",
            "Observation:code",
            "Nothing:subject",
            "Observation:subject:Group",
            "Patient:general-practitioner",
        ):
            r = h.get("/Patient", params={"_id": pids[0], "_revinclude": bad})
            assert r.status_code == 400 and outcome(r).issue[0].code == "invalid", bad

    # chained search, as fhirpy writes it (subject__Patient__identifier → subject:Patient.identifier)
    fc = client(gw)
    chained = (
        fc.resources("Observation").search(subject__Patient__identifier=f"{SYSTEM}|{mark}-1").fetch_all()
    )
    assert sorted(o.id for o in chained) == sorted(observations[pids[1]])
    assert fc.resources("Observation").search(patient__identifier=f"{SYSTEM}|{mark}-0").count() == 1

    with http(gw) as h:  # and the other way: the Patients that Observations with this code name
        nothing = h.get("/Patient", params={"_has:Observation:subject:status": "cancelled", "_id": pids[1]})
        assert nothing.status_code == 200 and nothing.json()["total"] == 0
        named = h.get(
            "/Patient",
            params={"_has:Observation:subject:status": "final", "identifier": f"{SYSTEM}|{mark}-1"},
        ).json()
        assert [e["resource"]["id"] for e in named["entry"]] == [pids[1]]
    with http(gw, PATIENT_ONLY_KEY) as narrow:  # _has reads the referring type: Observations here
        assert narrow.get("/Patient", params={"_has:Observation:subject:status": "final"}).status_code == 403

    with http(gw, OBSERVATION_ONLY_KEY) as lab:  # a chain reads the type it searches: Patients here
        assert lab.get("/Observation", params={"patient.family": "chalmers"}).status_code == 403
        assert lab.get("/Observation", params={"subject": f"Patient/{pids[0]}"}).status_code == 200

    with http(gw, PATIENT_ONLY_KEY) as narrow:  # included resources are reads: only types this key may read
        limited = narrow.get("/Patient", params={"_id": pids[1], "_revinclude": "Observation:subject"}).json()
        assert [e["resource"]["resourceType"] for e in limited["entry"]] == ["Patient"]

    with http(gw) as h:
        cap = h.get("/metadata").json()
        patient_entry = next(r for r in cap["rest"][0]["resource"] if r["type"] == "Patient")
        assert {"Observation:subject", "Observation:patient", "Encounter:subject"} <= set(
            patient_entry["searchRevInclude"]
        )


def test_revinclude_stops_at_a_thousand_and_says_so(gw: Gateway) -> None:
    mark = marker()
    with http(gw) as h:
        pid = h.post("/Patient", json=patient(mark)).json()["id"]
        entries = [
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": f"many {n}"},
                    "subject": {"reference": f"Patient/{pid}"},
                },
                "request": {"method": "POST", "url": "Observation"},
            }
            for n in range(1001)
        ]
        made = h.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
        assert made.status_code == 200
        found = h.get("/Patient", params={"_id": pid, "_revinclude": "Observation:subject"}).json()
    modes = [e["search"]["mode"] for e in found["entry"]]
    assert modes.count("match") == 1 and modes.count("include") == 1000 and modes[-1] == "outcome"
    warning = found["entry"][-1]["resource"]["issue"][0]
    assert warning["severity"] == "warning" and "1000" in warning["diagnostics"]


def binary_patch(ops: list[dict[str, Any]]) -> dict[str, Any]:
    """A PATCH entry's resource: the JSON Patch in a Binary."""
    return {
        "resourceType": "Binary",
        "contentType": "application/json-patch+json",
        "data": base64.b64encode(json.dumps(ops).encode()).decode(),
    }


def test_patch_entries_in_transactions_and_batches(gw: Gateway) -> None:
    mark = marker()
    with http(gw) as h:
        pid = h.post("/Patient", json=patient(mark, "Chalmers")).json()["id"]
        rename = [{"op": "replace", "path": "/name/0/family", "value": "Windsor"}]
        txn = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": binary_patch(rename), "request": {"method": "PATCH", "url": f"Patient/{pid}"}},
                {
                    "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "t"},
                                 "subject": {"reference": f"Patient/{pid}"}},
                    "request": {"method": "POST", "url": "Observation"},
                },
            ],
        }  # fmt: skip
        done = h.post("", json=txn)
        assert done.status_code == 200
        assert [e["response"]["status"] for e in done.json()["entry"]] == ["200 OK", "201 Created"]
        assert h.get(f"/Patient/{pid}").json()["name"][0]["family"] == "Windsor"
        history = h.get(f"/Patient/{pid}/_history").json()
        assert history["entry"][0]["request"]["method"] == "PATCH"

        # a failing test fails the whole transaction: the Observation beside it is not kept either
        failing = [{"op": "test", "path": "/name/0/family", "value": "Secretvalue"}]
        txn["entry"][0]["resource"] = binary_patch(failing)  # type: ignore[index]
        refused = h.post("", json=txn)
        assert refused.status_code == 422 and "Secretvalue" not in refused.text
        assert h.get("/Observation", params={"subject": f"Patient/{pid}"}).json()["total"] == 1
        # a patch whose result is not a valid resource is refused, as a PATCH is
        txn["entry"][0]["resource"] = binary_patch(  # type: ignore[index]
            [{"op": "replace", "path": "/birthDate", "value": "Secret-date"}]
        )
        invalid = h.post("", json=txn)
        assert invalid.status_code == 422 and "Secret" not in invalid.text

        batch = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"resource": binary_patch(failing), "request": {"method": "PATCH", "url": f"Patient/{pid}"}},
                {"resource": {"resourceType": "Binary", "contentType": "text/plain", "data": "eA=="},
                 "request": {"method": "PATCH", "url": f"Patient/{pid}"}},
                {"resource": binary_patch([{"op": "add", "path": "/gender", "value": "other"}]),
                 "request": {"method": "PATCH", "url": f"Patient/{pid}"}},
            ],
        }  # fmt: skip
        answered = h.post("", json=batch).json()
        assert [e["response"]["status"][:3] for e in answered["entry"]] == ["422", "400", "200"]
        assert h.get(f"/Patient/{pid}").json()["gender"] == "other"

        # a fullUrl of the Bundle in a patch's value becomes the id the server gave; a conditional one is refused
        doctor = {"resourceType": "Practitioner", "name": [{"family": "Who"}]}
        gp = [{"op": "add", "path": "/generalPractitioner", "value": [{"reference": "urn:uuid:0c3e6a4e-1"}]}]
        linked = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": "urn:uuid:0c3e6a4e-1",
                    "resource": doctor,
                    "request": {"method": "POST", "url": "Practitioner"},
                },
                {"resource": binary_patch(gp), "request": {"method": "PATCH", "url": f"Patient/{pid}"}},
            ],
        }
        made = h.post("", json=linked).json()["entry"]
        doctor_ref = made[0]["response"]["location"].rsplit("/_history", 1)[0]
        assert h.get(f"/Patient/{pid}").json()["generalPractitioner"] == [{"reference": doctor_ref}]
        gp[0]["value"] = [{"reference": f"Practitioner?identifier={SYSTEM}|x"}]
        linked["entry"] = [
            {"resource": binary_patch(gp), "request": {"method": "PATCH", "url": f"Patient/{pid}"}}
        ]
        assert h.post("", json=linked).status_code == 400

    with http(gw, WRITE_ONLY_KEY) as w:  # a PATCH entry reads what it changes, as PATCH does
        assert w.post("", json=batch).status_code == 403


def test_conditional_patch_and_delete_as_fhirpy_sends_them(gw: Gateway) -> None:
    mark = marker()
    fc = client(gw)
    pat = fc.resource("Patient", **patient(mark))
    pat.save()
    by_mark = fc.resources("Patient").search(identifier=f"{SYSTEM}|{mark}")
    patched = by_mark.patch(gender="female")  # PATCH /Patient?identifier=...
    assert patched.id == pat.id and patched["gender"] == "female"
    twin = fc.resource("Patient", **patient(mark, "Twin"))
    twin.save()
    with http(gw) as h:
        both = {"identifier": f"{SYSTEM}|{mark}"}
        merge = {"Content-Type": "application/merge-patch+json"}
        assert h.patch("/Patient", params=both, json={"gender": "male"}, headers=merge).status_code == 412
        assert h.delete("/Patient", params=both).status_code == 412  # more than one: nothing deleted
        nobody = {"identifier": f"{SYSTEM}|{mark}-nobody"}
        assert h.patch("/Patient", params=nobody, json={"gender": "male"}, headers=merge).status_code == 404
        none = h.delete("/Patient", params=nobody)
        assert none.status_code == 200 and outcome(none).issue[0].severity == "information"
        assert h.patch("/Patient", json={"gender": "male"}, headers=merge).status_code == 400  # no criteria
    fc.resources("Patient").search(identifier=f"{SYSTEM}|{mark}", family="Twin").delete()
    with http(gw) as h:
        assert h.get(f"/Patient/{twin.id}").status_code == 410
        assert h.get(f"/Patient/{pat.id}").status_code == 200
    with http(gw, WRITE_ONLY_KEY) as w:  # the search tells what matches: read access is needed too
        assert w.delete("/Patient", params={"identifier": f"{SYSTEM}|{mark}"}).status_code == 403
    with http(gw) as h:
        cap = h.get("/metadata").json()
        entry = next(r for r in cap["rest"][0]["resource"] if r["type"] == "Patient")
        assert entry["conditionalDelete"] == "single"
        assert not any(i["code"].startswith("conditional") for i in entry["interaction"])


def test_conditions_that_search_other_types_need_read_access_to_them(gw: Gateway) -> None:
    """A condition tells what matches: one that chains to Observations, or asks which Patients they
    name (_has), needs the scope to read Observations, whatever the write."""
    mark = marker()
    with http(gw) as h:
        pid = h.post("/Patient", json=patient(mark)).json()["id"]
    has = {"_has:Observation:subject:code": "http://loinc.org|8867-4", "identifier": f"{SYSTEM}|{mark}"}
    merge = {"Content-Type": "application/merge-patch+json"}
    with http(gw, PATIENT_RW_KEY) as desk:
        assert desk.get(f"/Patient/{pid}").status_code == 200  # it may read and write Patients
        assert desk.patch("/Patient", params={"identifier": f"{SYSTEM}|{mark}"}, json={"gender": "male"},
                          headers=merge).status_code == 200  # fmt: skip
        assert desk.patch("/Patient", params=has, json={"gender": "female"}, headers=merge).status_code == 403
        assert desk.delete("/Patient", params=has).status_code == 403
        assert desk.put("/Patient", params=has, json=patient(mark)).status_code == 403
        condition = {"If-None-Exist": "_has:Observation:subject:code=8867-4"}
        assert desk.post("/Patient", json=patient(mark), headers=condition).status_code == 403
        txn = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": patient(mark),
                    "request": {
                        "method": "POST",
                        "url": "Patient",
                        "ifNoneExist": "_has:Observation:patient:code=1",
                    },
                }
            ],
        }
        assert desk.post("", json=txn).status_code == 403
    with http(gw) as h:
        assert h.get(f"/Patient/{pid}").json()["gender"] == "male"  # nothing but the allowed patch happened


def test_summary_and_elements_answer_a_tagged_part_of_each_resource(gw: Gateway) -> None:
    mark = marker()
    subsetted = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
    with http(gw) as h:
        pid = h.post(
            "/Patient", json=patient(mark, photo=[{"contentType": "image/png", "data": "iVBORw=="}])
        ).json()["id"]
        whole = h.get(f"/Patient/{pid}").json()
        assert "photo" in whole and subsetted not in whole["meta"].get("tag", [])
        summary = h.get(f"/Patient/{pid}", params={"_summary": "true"}).json()
        assert (
            "photo" not in summary
            and summary["name"] == whole["name"]
            and subsetted in summary["meta"]["tag"]
        )
        named = h.get(f"/Patient/{pid}", params={"_elements": "gender"}).json()
        assert set(named) == {"resourceType", "id", "meta", "gender"}
        xml = h.get(f"/Patient/{pid}", params={"_elements": "gender", "_format": "xml"})
        assert b"<gender" in xml.content and b"<name" not in xml.content and b"SUBSETTED" in xml.content
        found = h.get("/Patient", params={"identifier": f"{SYSTEM}|{mark}", "_elements": "birthDate"}).json()
        (entry,) = found["entry"]
        assert set(entry["resource"]) == {"resourceType", "id", "meta", "birthDate"}
        assert "_elements=birthDate" in found["link"][0]["url"]
        assert h.get(f"/Patient/{pid}", params={"_summary": "maybe"}).status_code == 400
        # a part is not for writing back: an update tagged SUBSETTED is refused, and nothing is lost
        assert h.put(f"/Patient/{pid}", json=named).status_code == 422
        assert h.get(f"/Patient/{pid}").json()["name"] == whole["name"]
        history = h.get(f"/Patient/{pid}/_history", params={"_elements": "gender"}).json()
        assert set(history["entry"][0]["resource"]) == {"resourceType", "id", "meta", "gender"}
        assert "_elements=gender" in history["link"][0]["url"]

    # a refused subset is refused before the read: no read is recorded for it
    with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {READ_KEY}"}) as audit:

        def reads() -> int:
            query = {"key": f"Patient/{pid}", "event": "ResourceRead", "limit": 10000}
            return len(audit.post("/api/lineage/search", json=query).json()["events"])

        assert wait_until(lambda: reads() >= 3)  # the three reads above
        before = reads()
        with http(gw) as h:
            assert h.get(f"/Patient/{pid}", params={"_summary": "true", "_elements": "id"}).status_code == 400
            assert h.get(f"/Patient/{pid}", params={"_summary": ""}).status_code == 200  # empty: no summary
        assert wait_until(lambda: reads() == before + 1)
