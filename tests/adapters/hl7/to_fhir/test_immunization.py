"""Golden tests of the VXU^V04 → Immunization conversion (synthetic fixtures, then the FHIR-Converter corpus)."""

from __future__ import annotations

from pathlib import Path

import pytest

import adapters.hl7.to_fhir.immunization  # noqa: F401  (registers VXU^V04)
from adapters.hl7.to_fhir import convert, registry
from tests.adapters.hl7.to_fhir.conftest import (
    CORPUS,
    HL7,
    by_ref,
    converted_both_ways,
    converted_fixture,
    corpus_messages,
    of_type,
    one,
    raw,
    variant,
)

CVX = "http://hl7.org/fhir/sid/cvx"
V2 = "http://terminology.hl7.org/CodeSystem/v2-"


def test_vxu_is_registered() -> None:
    assert "VXU^V04" in registry.supported()


@pytest.mark.parametrize("name", sorted(p.name for p in HL7.glob("vxu_*.hl7")))
def test_every_vxu_fixture_converts_validates_and_is_deterministic(name: str) -> None:
    first = converted_fixture(name)
    assert first["entry"][0]["resource"]["resourceType"] == "MessageHeader"
    assert first["entry"][-1]["resource"]["resourceType"] == "Provenance"
    immunization = one(first, "Immunization")
    header = first["entry"][0]["resource"]
    assert {"reference": f"Immunization/{immunization['id']}"} in header["focus"]
    provenance = first["entry"][-1]["resource"]
    assert {"reference": f"Immunization/{immunization['id']}"} in provenance["target"]


def test_administered_dose() -> None:
    bundle = convert(raw("vxu_v04__immunization.hl7"))
    imm = one(bundle, "Immunization")
    patient = one(bundle, "Patient")
    assert imm["status"] == "completed"
    assert imm["vaccineCode"]["coding"] == [
        {"system": CVX, "code": "08", "display": "Hep B, adolescent or pediatric"}
    ]
    assert imm["patient"] == {"reference": f"Patient/{patient['id']}"}
    assert imm["occurrenceDateTime"] == "2024-03-26T09:45:00+00:00"
    assert imm["recorded"] == "2024-03-26T09:45:00+00:00"
    assert imm["primarySource"] is True
    assert "reportOrigin" not in imm
    assert imm["doseQuantity"] == {
        "value": 0.5,
        "unit": "milliliter",
        "system": "http://unitsofmeasure.org",
        "code": "mL",
    }
    assert imm["lotNumber"] == "LOT4471A"
    assert imm["expirationDate"] == "2025-06-30"
    maker = by_ref(bundle, imm["manufacturer"]["reference"])
    assert maker["identifier"] == [{"system": "http://hl7.org/fhir/sid/mvx", "value": "MSD"}]
    assert maker["name"] == "Merck and Co., Inc."
    # the route maps to v3-RouteOfAdministration; the original v2 coding is kept after it
    assert imm["route"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration",
        "code": "IM",
        "display": "Injection, intramuscular",
    }
    assert imm["route"]["coding"][1]["system"] == V2 + "0162"
    assert imm["site"]["coding"] == [{"system": V2 + "0163", "code": "RT", "display": "Right Thigh"}]
    assert imm["identifier"] == [
        {
            "type": {"coding": [{"system": V2 + "0203", "code": "FILL", "display": "Filler Identifier"}]},
            "system": "urn:connector-gateway:identifier:NW_IMMZ",
            "value": "IMM-77120",
            "assigner": {"display": "NW_IMMZ"},
        }
    ]
    assert imm["programEligibility"] == [
        {
            "coding": [{"system": V2 + "0064", "code": "V02", "display": "VFC eligible - Medicaid"}],
            "text": "VFC eligible - Medicaid",
        }
    ]
    mother = one(bundle, "RelatedPerson")
    assert mother["patient"] == imm["patient"]


def test_refusal() -> None:
    bundle = convert(raw("vxu_v04__refused.hl7"))
    imm = one(bundle, "Immunization")
    assert imm["status"] == "not-done"
    assert imm["statusReason"]["coding"][0]["code"] == "00"
    assert imm["statusReason"]["text"] == "Parental decision"
    assert imm["vaccineCode"]["coding"][0] == {"system": CVX, "code": "03", "display": "MMR"}
    # RXA-3 has no zone: it takes MSH-7's
    assert imm["occurrenceDateTime"] == "2024-04-10T14:00:00-07:00"
    assert "doseQuantity" not in imm  # 999 = amount unknown
    assert "primarySource" not in imm and "lotNumber" not in imm
    assert [i["type"]["coding"][0]["code"] for i in imm["identifier"]] == ["PLAC"]
    (performer,) = imm["performer"]
    assert performer["function"]["coding"][0] == {
        "system": V2 + "0443",
        "code": "OP",
        "display": "Ordering Provider",
    }
    assert by_ref(bundle, performer["actor"]["reference"])["name"][0]["family"] == "OKAFOR"
    # the contraindication OBX has no Immunization element: an Observation that is part of it
    (obs,) = of_type(bundle, "Observation")
    assert obs["partOf"] == [{"reference": f"Immunization/{imm['id']}"}]
    assert obs["subject"] == imm["patient"]
    assert obs["status"] == "final"
    assert obs["code"]["coding"][0]["code"] == "30945-0"
    assert obs["valueCodeableConcept"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "91930004",
        "display": "Allergy to eggs",
    }
    assert set(imm) <= {
        "resourceType",
        "id",
        "identifier",
        "status",
        "statusReason",
        "vaccineCode",
        "patient",
        "occurrenceDateTime",
        "recorded",
        "performer",
    }


def test_the_key_is_the_order_number_so_a_correction_updates_the_same_immunization() -> None:
    first = one(convert(raw("vxu_v04__refused.hl7")), "Immunization")
    corrected = one(
        variant(
            "vxu_v04__refused.hl7",
            ("NWG-VXU04-0002", "NWG-VXU04-0003"),
            ("||RE|A", "||CP|U"),
            ("|999|", "|0.5|mL^mL^UCUM|"),
        ),
        "Immunization",
    )
    assert corrected["id"] == first["id"]
    assert corrected["status"] == "completed"
    assert corrected["doseQuantity"]["value"] == 0.5


def test_without_order_numbers_the_key_is_patient_vaccine_and_date() -> None:
    no_orc_ids = ("ORC|RE|PL-55821^NW_IMMZ|", "ORC|RE||")
    imm = one(variant("vxu_v04__refused.hl7", no_orc_ids), "Immunization")
    resent = one(variant("vxu_v04__refused.hl7", no_orc_ids, ("-0002|", "-0009|")), "Immunization")
    other_day = one(
        variant("vxu_v04__refused.hl7", no_orc_ids, ("RXA|0|1|20240410", "RXA|0|1|20240411")),
        "Immunization",
    )
    assert "identifier" not in imm
    assert resent["id"] == imm["id"]
    assert other_day["id"] != imm["id"]


@pytest.mark.parametrize(
    ("rxa20", "rxa21", "status", "subpotent"),
    [("PA", "A", "completed", True), ("NA", "A", "not-done", False), ("CP", "D", "entered-in-error", False)],
)
def test_completion_status_and_action_code(rxa20: str, rxa21: str, status: str, subpotent: bool) -> None:
    imm = one(variant("vxu_v04__immunization.hl7", ("|CP|A", f"|{rxa20}|{rxa21}")), "Immunization")
    assert imm["status"] == status
    assert imm.get("isSubpotent", False) is subpotent


def test_historical_record_vis_funding_and_notes() -> None:
    bundle = variant(
        "vxu_v04__immunization.hl7",
        (
            "00^New immunization record^NIP001",
            "01^Historical information - source unspecified^NIP001~Given at pharmacy",
        ),
        (
            "OBX|1|CE|64994-7",
            "OBX|1|CE|30963-3^Vaccine funding source^LN|1|VXC50^Public^CDCPHINVS||||||F\r"
            "OBX|2|CE|69764-9^Document type^LN|2|253088698300003511070517^Hepatitis B VIS^cdcgs1vis||||||F\r"
            "OBX|3|TS|29768-9^VIS published^LN|2|20120202||||||F\r"
            "OBX|4|TS|29769-7^VIS presented^LN|2|20240326||||||F\r"
            "OBX|5|NM|12345-6^Something else^LN|3|7||||||F\r"
            "NTE|1||Parent asked about the schedule\r"
            "OBX|6|CE|64994-7",
        ),
    )
    imm = one(bundle, "Immunization")
    assert imm["primarySource"] is False
    assert imm["reportOrigin"]["coding"][0]["code"] == "01"
    # the NTE after OBX 5 is that Observation's note (the IG's ORDER.OBSERVATION.NTE), not the Immunization's
    assert imm["note"] == [{"text": "Given at pharmacy"}]
    assert imm["fundingSource"]["coding"] == [
        {"system": "urn:oid:2.16.840.1.114222.4.5.274", "code": "VXC50", "display": "Public"}
    ]
    assert imm["education"] == [
        {
            "documentType": "253088698300003511070517",
            "publicationDate": "2012-02-02",
            "presentationDate": "2024-03-26",
        }
    ]
    assert imm["programEligibility"][0]["coding"][0]["code"] == "V02"
    # only the OBX the Immunization has no element for becomes an Observation
    (obs,) = of_type(bundle, "Observation")
    assert obs["code"]["coding"][0]["code"] == "12345-6"
    assert obs["valueQuantity"] == {"value": 7}
    assert obs["partOf"] == [{"reference": f"Immunization/{imm['id']}"}]
    assert obs["note"] == [{"text": "Parent asked about the schedule"}]


@pytest.mark.corpus
def test_every_corpus_vxu_converts_and_validates(corpora_dir: Path) -> None:
    paths = corpus_messages(corpora_dir, "VXU^V04")
    assert len(paths) >= 4
    for path in paths:
        data = path.read_bytes()
        for bundle in converted_both_ways(data):
            assert of_type(bundle, "Immunization"), path.name


@pytest.mark.corpus
def test_corpus_vxu_key_values_agree_with_fhir_converter(corpora_dir: Path) -> None:
    """VXU.hl7: the values FHIR-Converter's expected output has, where our mapping agrees."""
    bundle = convert(corpora_dir.joinpath(*CORPUS, "VXU.hl7").read_bytes())
    first, second, third = of_type(bundle, "Immunization")
    assert [i["value"] for i in first["identifier"]] == ["4422", "13696"]
    assert first["vaccineCode"]["coding"][0] == {
        "system": "http://hl7.org/fhir/sid/ndc",
        "code": "49281-0215-88",
        "display": "TENIVAC",
    }
    assert first["occurrenceDateTime"] == "2015-06-24"
    assert (first["lotNumber"], first["expirationDate"]) == ("315841", "2015-12-16")
    assert first["primarySource"] is True and first["status"] == "completed"
    assert first["fundingSource"]["coding"][0]["code"] == "PHC70"
    assert first["programEligibility"][0]["coding"][0]["code"] == "V01"
    assert first["education"] == [
        {"documentType": "253088698300028811170411", "presentationDate": "2015-06-24"}
    ]
    assert [p["function"]["coding"][0]["code"] for p in first["performer"]] == ["OP", "AP"]
    for later, date in ((second, "2014-10-12"), (third, "2013-11-12")):
        assert later["vaccineCode"]["coding"][0] == {
            "system": CVX,
            "code": "88",
            "display": "influenza, unspecified formulation",
        }
        assert later["occurrenceDateTime"] == date
        assert later["primarySource"] is False
        assert later["reportOrigin"]["coding"][0]["code"] == "01"
        assert "doseQuantity" not in later  # FHIR-Converter writes value 999; we leave it out
    nist = one(
        convert(corpora_dir.joinpath(*CORPUS, "IZ_1_1.1_Admin_Child_Max_Message.hl7").read_bytes()),
        "Immunization",
    )
    assert nist["education"] == [
        {
            "documentType": "Influenza, unspecified formulation",
            "publicationDate": "2012-07-02",
            "presentationDate": "2012-08-14",
        }
    ]


def test_person_observations_before_the_orders() -> None:
    """VXU_V04 PERSON_OBSERVATION (OBX before the first ORC) → Observations of the patient, with the
    NTEs after them; not part of any Immunization."""
    bundle = variant(
        "vxu_v04__immunization.hl7",
        (
            "\rORC|RE||IMM-77120",
            "\rOBX|1|CE|59784-9^Disease with presumed immunity^LN|1|38907003^Varicella infection^SCT||||||F|||20240326\r"
            "NTE|1||History of chickenpox reported by the mother\r"
            "ORC|RE||IMM-77120",
        ),
    )
    patient, imm = one(bundle, "Patient"), one(bundle, "Immunization")
    (obs,) = of_type(bundle, "Observation")
    assert obs["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert "partOf" not in obs
    assert obs["code"]["coding"][0]["code"] == "59784-9"
    assert obs["valueCodeableConcept"]["coding"][0]["code"] == "38907003"
    assert obs["effectiveDateTime"] == "2024-03-26"
    assert obs["note"] == [{"text": "History of chickenpox reported by the mother"}]
    assert "note" not in imm or all("chickenpox" not in n["text"] for n in imm["note"])
