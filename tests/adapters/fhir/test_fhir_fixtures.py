"""Conformance suite of the ``fhir`` adapter over every fixture in ``fixtures/fhir``, and the corpus.

The fixtures are found by glob, so a new file is checked without touching this
module. Its name says what it must do:

- ``<resource type>__<variant>.json`` / ``.xml`` (``patient__full.json``,
  ``bundle__transaction.json``): parses as that resource type (a Bundle as
  ``Bundle/<type>``), validates with no issue at all, and its JSON form comes
  back unchanged through FHIR XML (JSON → XML → JSON); an XML fixture also
  comes back through JSON.
- ``invalid__<code>.json``: yields exactly the error issue ``<code>`` (from
  ``parse`` as :class:`ParseError` issues, or from ``validate``), and the reply
  is an OperationOutcome with that code (400 when it could not be read, 422
  when it was read but is not valid).

The shared corpus (``../shared/corpora/fhir/google-fhir-data-pipes``): every
resource of every Synthea bundle validates, and the known-invalid
``patients.ndjson`` Patients are reported invalid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from adapters import BUILTIN_ADAPTERS
from adapters.fhir.adapter import (
    FHIR_VERSION,
    MAX_PATIENTS,
    FhirAdapter,
    mask_patient,
    patient_of,
    patients_of,
)
from adapters.fhir.resources import load_json, read_resource, validate, write_json, write_xml
from gateway.adapter import Adapter, Issue, Outcome, ParseError
from gateway.envelope import Envelope, Receipt
from gateway.pipeline import classify
from tests.conftest import FIXTURES, require_or_skip

FOLDER = FIXTURES / "fhir"
ALL = sorted([*FOLDER.glob("*.json"), *FOLDER.glob("*.xml")])
INVALID = [p for p in ALL if p.name.startswith("invalid__")]
VALID = [p for p in ALL if p not in INVALID]
REQUIRED = {
    "patient__basic.json",
    "patient__full.json",
    "patient__xml.xml",
    "observation__vital_signs.json",
    "observation__lab_panel_component.json",
    "encounter__inpatient.json",
    "condition__diagnosis.json",
    "allergyintolerance__food.json",
    "medicationrequest__active.json",
    "immunization__flu.json",
    "servicerequest__lab.json",
    "appointment__booked.json",
    "procedure__appendectomy.json",
    "relatedperson__next_of_kin.json",
    "practitioner__basic.json",
    "organization__hospital.json",
    "location__ward.json",
    "diagnosticreport__cbc.json",
    "provenance__basic.json",
    "auditevent__read.json",
    "bundle__transaction.json",
    "bundle__batch.json",
    "invalid__structure.json",
    "invalid__value.json",
    "invalid__not-supported.json",
}
ADAPTER = FhirAdapter()
_TYPED: Adapter = ADAPTER  # the adapter satisfies the protocol (checked by mypy)


def _content_type(path: Path) -> str:
    return "application/fhir+xml" if path.suffix == ".xml" else "application/fhir+json"


def _receipt(path: Path, **attributes: str) -> Receipt:
    return Receipt("test", content_type=_content_type(path), attributes=attributes)


def _issues(path: Path) -> tuple[Envelope | None, list[Issue]]:
    """The envelope (``None`` when parse refused the bytes) and every issue of the fixture."""
    try:
        env = ADAPTER.parse(path.read_bytes(), _receipt(path))
    except ParseError as exc:
        return None, exc.issues
    return env, ADAPTER.validate(env)


def test_every_required_fixture_is_there() -> None:
    assert {p.name for p in ALL} >= REQUIRED


# -- valid fixtures --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixture_parses_and_validates_clean(path: Path) -> None:
    env = ADAPTER.parse(path.read_bytes(), _receipt(path, **{"x-request-id": "req-42"}))
    assert ADAPTER.validate(env) == []
    assert env.protocol == "fhir" and env.version == FHIR_VERSION == "4.0.1"
    assert env.message_type.split("/")[0].lower() == path.name.split("__")[0]
    assert env.sensitivity == "phi" and env.sender == env.receiver == ""
    assert env.control_id == "req-42" and env.raw == path.read_bytes()
    headers = dict(env.headers)
    assert headers["message_type"] == env.message_type and headers["control_id"] == "req-42"
    assert headers["resource_type"] == env.body["resourceType"]
    assert headers["resource_id"] == env.body.get("id", "")
    assert headers["interaction"] == "create"
    assert all(isinstance(v, str) for v in headers.values())
    if env.body["resourceType"] == "Bundle":
        assert env.message_type == f"Bundle/{env.body['type']}"
        assert headers["entries"] == str(len(env.body["entry"]))
    assert set(env.masked_keys) == set(env.business_keys)
    reply = ADAPTER.respond(Outcome("accepted", env.headers, [], env.id, env))
    assert (reply.status, reply.code, reply.content_type) == (200, "200", "application/fhir+json")
    outcome = json.loads(reply.body)
    assert outcome["resourceType"] == "OperationOutcome"
    assert [i["severity"] for i in outcome["issue"]] == ["information"]


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixture_round_trips_through_xml_and_json(path: Path) -> None:
    resource = read_resource(path.read_bytes(), _content_type(path))
    assert read_resource(write_xml(resource), "application/fhir+xml") == resource
    assert read_resource(write_json(resource), "application/fhir+json") == resource
    env = ADAPTER.parse(path.read_bytes(), _receipt(path))
    assert load_json(ADAPTER.serialize(env)) == resource


def test_patient_business_keys_are_masked() -> None:
    expected = {
        "patient__full.json": "Patient/pat-1002",
        "observation__vital_signs.json": "Patient/pat-1002",
        "allergyintolerance__food.json": "Patient/pat-1001",
        "immunization__flu.json": "Patient/pat-1001",
        "relatedperson__next_of_kin.json": "Patient/pat-1002",
        "patient__xml.xml": "Patient/pat-1004",
        "bundle__transaction.json": "urn:uuid:3f0c8b5e-1d2a-4c59-9a33-6f2d3c1b0a01",
        "practitioner__basic.json": "",
        "organization__hospital.json": "",
    }
    for name, patient in expected.items():
        env = ADAPTER.parse((FOLDER / name).read_bytes(), _receipt(FOLDER / name))
        assert env.business_keys.get("patient", "") == patient, name
        if patient:
            assert env.masked_keys["patient"] == mask_patient(patient)
            assert env.masked_keys["patient"].count("***") == 1
            assert patient not in env.masked_keys["patient"]
    assert mask_patient("Patient/pat-1002") == "Patient/***"
    assert mask_patient("Patient/0b1c2d3e-aaaa-bbbb") == "Patient/***bbbb"


def test_a_resource_about_several_patients_is_filed_under_each() -> None:
    def actor(ref: str) -> dict[str, Any]:
        return {"actor": {"reference": ref}, "status": "accepted"}

    appointment = {
        "resourceType": "Appointment",
        "status": "booked",
        "participant": [
            actor("Practitioner/dr-1"),
            actor("Patient/pa"),
            actor("Patient/pb"),
            actor("Patient/pa"),
        ],
    }
    assert patients_of(appointment) == ["Patient/pa", "Patient/pb"]
    assert patient_of(appointment) == "Patient/pa"  # the one its body is sealed under
    env = ADAPTER.parse(
        json.dumps(appointment).encode(), Receipt("test", content_type="application/fhir+json")
    )
    assert env.business_keys == {"patient": "Patient/pa", "patient.2": "Patient/pb"}
    assert env.masked_keys == {"patient": mask_patient("Patient/pa"), "patient.2": mask_patient("Patient/pb")}
    observation = {"resourceType": "Observation", "subject": {"reference": "Patient/pc"}}
    entries = [{"resource": observation}, {"resource": appointment}]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    assert patients_of(bundle) == ["Patient/pc", "Patient/pa", "Patient/pb"]
    response = {"resourceType": "AppointmentResponse", "actor": {"reference": "Patient/pb"}}
    assert patients_of(response) == ["Patient/pb"]
    assert patients_of({"resourceType": "Practitioner", "id": "dr-1"}) == []
    many = {"resourceType": "Appointment", "participant": [actor(f"Patient/p{n}") for n in range(150)]}
    capped = ADAPTER.parse(json.dumps(many).encode(), Receipt("test", content_type="application/fhir+json"))
    assert len(capped.business_keys) == MAX_PATIENTS  # for display; patients_of names every one
    assert capped.business_keys[f"patient.{MAX_PATIENTS}"] == "Patient/p99"
    assert len(patients_of(many)) == 150


def test_receipt_attributes_name_the_interaction_and_id() -> None:
    path = FOLDER / "patient__basic.json"
    env = ADAPTER.parse(path.read_bytes(), _receipt(path, interaction="update", resource_id="pat-77"))
    assert env.headers["interaction"] == "update" and env.headers["resource_id"] == "pat-77"


def test_an_unlabelled_body_is_sniffed() -> None:
    for path in (FOLDER / "patient__xml.xml", FOLDER / "patient__basic.json"):
        env = ADAPTER.parse(path.read_bytes(), Receipt("test", content_type="text/plain"))
        assert env.message_type == "Patient"


# -- invalid fixtures ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_fixture_yields_exactly_its_code(path: Path) -> None:
    code = path.stem.removeprefix("invalid__")
    env, issues = _issues(path)
    assert [i.code for i in issues if i.is_error] == [code]
    kind = classify(issues)
    assert kind == "invalid"
    reply = ADAPTER.respond(Outcome(kind, env.headers if env else {}, issues, "id", env))
    assert reply.status == (400 if env is None else 422) and reply.code == str(reply.status)
    assert [i["code"] for i in json.loads(reply.body)["issue"]] == [code]


def test_invalid_values_never_reach_an_issue_or_a_reply() -> None:
    doc: dict[str, Any] = {
        "resourceType": "Patient",
        "id": "pat-1",
        "birthDate": "1999-99-99",
        "name": [{"family": 555123987}],
        "telecom": [{"system": "phone", "value": 5550100, "rank": "Secret-Rank"}],
    }
    path = FOLDER / "patient__basic.json"
    env = ADAPTER.parse(json.dumps(doc).encode(), _receipt(path))
    issues = ADAPTER.validate(env)
    assert {i.location for i in issues} == {
        "Patient.birthDate",
        "Patient.name[0].family",
        "Patient.telecom[0].value",
        "Patient.telecom[0].rank",
    }
    shown = repr(issues) + ADAPTER.respond(Outcome("invalid", env.headers, issues, env.id, env)).body.decode()
    for value in ("1999-99-99", "555123987", "5550100", "Secret-Rank"):
        assert value not in shown


def test_duplicate_keys_are_refused_by_parse() -> None:
    raw = b'{"resourceType": "Patient", "id": "pat-1", "id": "pat-2"}'
    with pytest.raises(ParseError) as caught:
        ADAPTER.parse(
            raw, Receipt("test", content_type="application/fhir+json", attributes={"x-request-id": "r9"})
        )
    assert [i.code for i in caught.value.issues] == ["structure"]
    assert caught.value.headers["control_id"] == "r9" and caught.value.headers["message_type"] == ""
    assert "pat-2" not in repr(caught.value.issues)


def test_a_doctype_is_refused_and_no_entity_is_read() -> None:
    raw = (
        b'<?xml version="1.0"?>\n<!DOCTYPE Patient [<!ENTITY x SYSTEM "file:///etc/hostname">'
        b'<!ENTITY y "ENTITY-PATIENT-7731">]>\n'
        b'<Patient xmlns="http://hl7.org/fhir"><name><family value="&x;&y;"/></name></Patient>'
    )
    with pytest.raises(ParseError) as caught:
        ADAPTER.parse(raw, Receipt("test", content_type="application/fhir+xml"))
    assert [i.code for i in caught.value.issues] == ["security"]
    reply = ADAPTER.respond(Outcome("invalid", caught.value.headers, caught.value.issues))
    assert reply.status == 400
    shown = reply.body.decode() + repr(caught.value.issues)
    assert "ENTITY-PATIENT-7731" not in shown and "/etc/hostname" not in shown
    assert ADAPTER.split(raw) is None


def test_bundle_entries_are_checked_with_their_path() -> None:
    bundle = json.loads((FOLDER / "bundle__transaction.json").read_text(encoding="utf-8"))
    del bundle["entry"][1]["request"]
    bundle["entry"][0]["resource"]["birthDate"] = "Secret-Date"
    env = ADAPTER.parse(json.dumps(bundle).encode(), Receipt("test"))
    issues = ADAPTER.validate(env)
    assert [(i.code, i.location) for i in issues] == [
        ("value", "Bundle.entry[0].resource.birthDate"),
        ("required", "Bundle.entry[1].request.method"),
        ("required", "Bundle.entry[1].request.url"),
    ]
    assert "Secret" not in repr(issues)


# -- replies ---------------------------------------------------------------------------------------


def test_refusals_and_gateway_codes() -> None:
    env = ADAPTER.parse((FOLDER / "patient__basic.json").read_bytes(), Receipt("test"))
    unavailable = Issue("error", "store_unavailable", "", "The store is unavailable.")
    reply = ADAPTER.respond(Outcome("refused", env.headers, [unavailable], env.id, env))
    assert (reply.status, reply.code) == (503, "503")
    (issue,) = json.loads(reply.body)["issue"]
    assert issue["code"] == "transient"
    assert issue["details"]["coding"][0]["code"] == "store_unavailable"
    conflict = Issue("error", "control_id_conflict", "", "Seen before with other content.")
    assert ADAPTER.respond(Outcome("invalid", env.headers, [conflict], env.id, env)).status == 409
    unmatched = Issue("error", "route_unmatched", "", "No route.")
    reply = ADAPTER.respond(Outcome("refused", env.headers, [unmatched], env.id, env))
    assert reply.status == 400 and json.loads(reply.body)["issue"][0]["code"] == "not-supported"


# -- detect ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_detect_claims_every_fixture(path: Path) -> None:
    assert ADAPTER.detect(path.read_bytes(), None)
    assert ADAPTER.detect(b"\xef\xbb\xbf  \n" + path.read_bytes(), _content_type(path))


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_no_other_adapter_claims_a_fixture(path: Path) -> None:
    raw = path.read_bytes()
    assert [n for n, make in BUILTIN_ADAPTERS.items() if n != "fhir" and make().detect(raw, None)] == []


def test_no_other_fixture_is_claimed() -> None:
    others = [p for p in FIXTURES.rglob("*") if p.is_file() and FOLDER not in p.parents]
    assert len(others) > 100
    assert [p.name for p in others if ADAPTER.detect(p.read_bytes(), None)] == []


def test_detect_leaves_other_protocols_alone() -> None:
    others = [
        FIXTURES / "hl7" / "adt_a01__basic.hl7",
        FIXTURES / "retail" / "pos_json" / "pos.sale__basic.json",
        *sorted((FIXTURES / "retail" / "shopify").glob("*.json"))[:3],
        *sorted((FIXTURES / "retail" / "poslog").glob("*.xml"))[:3],
        *sorted((FIXTURES / "finance" / "iso20022").glob("*.xml"))[:3],
    ]
    for path in others:
        assert not ADAPTER.detect(path.read_bytes(), None), path.name
    for raw in (b"", b"{", b"<", b"\x00\xff" * 100, b'{"resourceType": 3}', b"<Patient/>", b"MSH|^~\\&|"):
        assert ADAPTER.detect(raw, None) is False
    for _ in range(50):  # never raises
        ADAPTER.detect(os.urandom(256), None)


# -- the shared corpus -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fhir_corpus(corpora_dir: Path) -> Path:
    folder = corpora_dir / "fhir" / "google-fhir-data-pipes"
    if not folder.is_dir():
        require_or_skip(f"the FHIR corpus is not at {folder}")
    return folder


def _bundles(corpus: Path) -> list[Path]:
    return sorted((corpus / "synthea-hiv" / "sample_data").glob("*.json"))


def test_corpus_synthea_bundles_validate(fhir_corpus: Path) -> None:
    bundles = _bundles(fhir_corpus)
    assert len(bundles) >= 10
    entries = 0
    for path in bundles:
        env = ADAPTER.parse(path.read_bytes(), Receipt("test", content_type="application/fhir+json"))
        assert env.message_type in ("Bundle/transaction", "Bundle/batch"), path.name
        errors = [i for i in ADAPTER.validate(env) if i.is_error]
        assert errors == [], path.name
        for entry in env.body["entry"]:
            assert validate(entry["resource"]) == []
        entries += len(env.body["entry"])
    assert entries > 9000


def test_corpus_synthea_bundle_round_trips_through_xml(fhir_corpus: Path) -> None:
    smallest = min(_bundles(fhir_corpus), key=lambda p: p.stat().st_size)
    bundle = read_resource(smallest.read_bytes(), "application/fhir+json")
    assert read_resource(write_xml(bundle), "application/fhir+xml") == bundle


def test_corpus_patients_ndjson_is_reported_invalid(fhir_corpus: Path) -> None:
    path = fhir_corpus / "pipelines" / "batch" / "src" / "test" / "resources" / "patients.ndjson"
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    assert len(lines) == 3
    for line in lines:
        env = ADAPTER.parse(line, Receipt("test", content_type="application/fhir+json"))
        issues = ADAPTER.validate(env)
        assert {(i.code, i.location) for i in issues} == {
            ("value", "Patient.birthDate"),
            ("value", "Patient.name[0].family"),
        }
        assert classify(issues) == "invalid"
        family = json.loads(line)["name"][0]["family"][0]
        assert family not in repr(issues)
