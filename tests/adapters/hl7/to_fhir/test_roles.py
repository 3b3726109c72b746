"""ROL → Patient.generalPractitioner / Encounter.participant / PractitionerRole, and ADT^A47 (synthetic data)."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.fhir.resources import validate
from adapters.hl7 import er7
from adapters.hl7.to_fhir import SUPPORTED, convert, roles
from tests.adapters.hl7.to_fhir.conftest import assert_valid, by_ref, of_type, one, raw

V2 = "http://terminology.hl7.org/CodeSystem/v2-"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


@pytest.fixture(scope="module")
def bundle() -> dict[str, Any]:
    return convert(raw("adt_a01__roles.hl7"))


def _valid(b: dict[str, Any]) -> None:
    assert_valid(b)
    for entry in b["entry"]:
        assert [i for i in validate(entry["resource"]) if i.severity in ("error", "fatal")] == []


def _family(b: dict[str, Any], ref: str) -> str:
    return str(by_ref(b, ref)["name"][0]["family"])


def test_every_resource_validates(bundle: dict[str, Any]) -> None:
    _valid(bundle)


def test_pp_after_pid_is_the_general_practitioner(bundle: dict[str, Any]) -> None:
    patient = one(bundle, "Patient")
    gps = [g["reference"] for g in patient["generalPractitioner"]]
    assert [_family(bundle, r) for r in gps] == ["GARNER"]  # the FHCP ROL after PID is not mapped
    assert all(p["name"][0]["family"] != "OKAFOR" for p in of_type(bundle, "Practitioner"))


def test_rol_after_pv1_is_an_encounter_participant(bundle: dict[str, Any]) -> None:
    visit = one(bundle, "Encounter")
    by_family = {
        _family(bundle, p["individual"]["reference"]): p
        for p in visit["participant"]
        if "period" in p or p["type"][0]["coding"][0]["code"] != "ATND"
    }
    attending = by_family["ABERNATHY"]
    assert attending["type"][0]["coding"][:2] == [
        {"system": PARTICIPATION, "code": "ATND", "display": "attender"},
        {"system": V2 + "0443", "code": "AT", "display": "Attending Provider"},
    ]
    assert attending["period"] == {"start": "2024-05-07T08:45:00-05:00", "end": "2024-05-08T12:00:00-05:00"}
    assert by_family["SATO"]["type"][0]["coding"][0]["code"] == "CON"
    # a role the IG's ConceptMap does not map keeps its v2-0443 coding
    assert by_family["BRENNAN"]["type"][0]["coding"] == [
        {"system": V2 + "0443", "code": "MDIR", "display": "Medical Director"}
    ]
    # the ROL after PR1 (a procedure performer) is no Encounter participant
    assert "NOT" not in by_family
    assert all(p["name"][0]["family"] != "NOT" for p in of_type(bundle, "Practitioner"))


def test_rol_13_14_make_a_practitioner_role(bundle: dict[str, Any]) -> None:
    role = one(bundle, "PractitionerRole")
    assert _family(bundle, role["practitioner"]["reference"]) == "GARNER"
    assert role["code"][0]["coding"][0] == {
        "system": V2 + "0443",
        "code": "PP",
        "display": "Primary Care Provider",
    }
    assert role["period"] == {"start": "2020-01-01"}
    bed = by_ref(bundle, role["location"][0]["reference"])
    assert bed["name"] == "1" and by_ref(bundle, bed["partOf"]["reference"])["name"] == "201"
    org = by_ref(bundle, role["organization"]["reference"])
    assert org["name"] == "Northwind Family Clinic" and org["identifier"][0]["value"] == "NWFC1"


def test_placement_follows_the_message_structure() -> None:
    text = "\r".join(
        [
            "MSH|^~\\&|A|F|R|RF|20240101||ADT^A01|1|P|2.5.1",
            "PID|1||X1^^^NS^MR",
            "ARV|1",
            "ROL|1|AD|PP",
            "NK1|1",
            "ROL|2|AD|PP",
            "PV1|1|I",
            "PV2|",
            "ROL|3|AD|AT",
            "ROL|4|AD|CP",
            "DG1|1",
            "ROL|5|AD|AT",
        ]
    )
    placed = [(rol.fields[1], group) for rol, group in roles.placement(er7.parse_text(text).segments)]
    assert placed == [("1", roles.PATIENT), ("3", roles.VISIT), ("4", roles.VISIT)]


def test_a47_the_prior_identifier_is_replaced_by_the_new_one() -> None:
    assert "ADT^A47" in SUPPORTED
    b = convert(raw("adt_a47__change_identifier.hl7"))
    _valid(b)
    patients = of_type(b, "Patient")
    current = next(p for p in patients if p["identifier"][0]["value"] == "NW700202")
    prior = next(p for p in patients if p["identifier"][0]["value"] == "NW700201")
    assert prior["active"] is False
    assert prior["link"] == [{"other": {"reference": f"Patient/{current['id']}"}, "type": "replaced-by"}]
    assert current["link"] == [{"other": {"reference": f"Patient/{prior['id']}"}, "type": "replaces"}]


def test_a41_and_a45_stay_unsupported() -> None:
    assert "ADT^A41" not in SUPPORTED and "ADT^A45" not in SUPPORTED
