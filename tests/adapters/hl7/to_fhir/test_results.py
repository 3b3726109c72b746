"""Golden tests of the ORU^R01 conversion (OBX → Observation, OBR → DiagnosticReport) on our own
synthetic fixtures, and the FHIR-Converter corpus for ORU/ORM/OML."""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import adapters.hl7.to_fhir.orders  # registers ORM^O01, OML^O21
import adapters.hl7.to_fhir.results  # noqa: F401  (registers ORU^R01)
from adapters.hl7 import er7
from adapters.hl7.to_fhir import Tables, convert, message_type, registry
from adapters.hl7.to_fhir.results import is_ucum
from tests.adapters.hl7.to_fhir.conftest import (
    CORPUS,
    assert_valid,
    by_ref,
    context,
    converted_both_ways,
    converted_fixture,
    of_type,
    one,
    raw,
)

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
FIXTURES = ["oru_r01__cbc_20_obx.hl7", "oru_r01__value_types.hl7"]


def _by_code(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["code"]["coding"][0]["code"]: o for o in of_type(bundle, "Observation")}


@pytest.fixture(scope="module")
def cbc() -> dict[str, Any]:
    return convert(raw("oru_r01__cbc_20_obx.hl7"), envelope_id="env-cbc")


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return convert(raw("oru_r01__value_types.hl7"), envelope_id="env-values")


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_converts_validates_and_is_deterministic(name: str) -> None:
    converted_fixture(name)
    assert "ORU^R01" in registry.supported()


def test_cbc_report_links_observations_in_order(cbc: dict[str, Any]) -> None:
    report = one(cbc, "DiagnosticReport")
    patient = one(cbc, "Patient")
    observations = of_type(cbc, "Observation")
    assert len(observations) == 22
    assert [r["reference"] for r in report["result"]] == [f"Observation/{o['id']}" for o in observations]
    assert report["status"] == "final"
    assert report["code"]["coding"][0] == {
        "system": LOINC,
        "code": "58410-2",
        "display": "CBC panel - Blood by Automated count",
    }
    assert report["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert report["encounter"] == {"reference": f"Encounter/{one(cbc, 'Encounter')['id']}"}
    assert report["effectiveDateTime"] == "2024-03-21T07:15:00+00:00"
    assert report["issued"] == "2024-03-21T09:25:00+00:00"
    values = {i["type"]["coding"][0]["code"]: i["value"] for i in report["identifier"]}
    assert values == {"PLAC": "ORD-552301", "FILL": "LAB-88120"}
    request = by_ref(cbc, report["basedOn"][0]["reference"])
    assert request["resourceType"] == "ServiceRequest"
    assert request["status"] == "completed"  # ORC-5 CM
    assert request["intent"] == "order"
    assert request["code"] == report["code"]
    assert by_ref(cbc, request["requester"]["reference"])["name"][0]["family"] == "VANCE"
    for obs in observations:
        assert obs["subject"] == {"reference": f"Patient/{patient['id']}"}
        assert obs["basedOn"] == report["basedOn"]
        assert obs["status"] == "final"


def test_cbc_values_units_ranges_interpretation(cbc: dict[str, Any]) -> None:
    obs = _by_code(cbc)
    wbc = obs["6690-2"]
    assert wbc["valueQuantity"] == {
        "value": Decimal("7.2"),
        "unit": "10*3/uL",
        "system": UCUM,
        "code": "10*3/uL",
    }
    assert wbc["effectiveDateTime"] == "2024-03-21T07:15:00+00:00"
    assert wbc["referenceRange"] == [
        {
            "low": {"value": Decimal("4.0"), "unit": "10*3/uL", "system": UCUM, "code": "10*3/uL"},
            "high": {"value": Decimal("11.0"), "unit": "10*3/uL", "system": UCUM, "code": "10*3/uL"},
            "text": "4.0-11.0",
        }
    ]
    assert wbc["interpretation"] == [
        {"coding": [{"system": V3_INTERPRETATION, "code": "N", "display": "Normal"}]}
    ]
    platelets = obs["777-3"]
    assert platelets["valueQuantity"]["value"] == 412
    assert platelets["interpretation"][0]["coding"][0]["code"] == "H"
    assert obs["38518-7"]["valueQuantity"]["code"] == "/100{WBCs}"
    assert obs["58413-6"]["note"] == [{"text": "Platelet count verified by smear review."}]
    assert "note" not in wbc


def test_numeric_string_coded_and_text_values(values: dict[str, Any]) -> None:
    obs = _by_code(values)
    glucose = obs["2345-7"]
    assert glucose["valueQuantity"] == {"value": 182, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}
    assert glucose["interpretation"][0]["coding"][0] == {
        "system": V3_INTERPRETATION,
        "code": "H",
        "display": "High",
    }
    assert glucose["referenceRange"][0]["low"]["value"] == 70
    assert glucose["referenceRange"][0]["high"]["value"] == 99
    # OBX-6 without a coding system, but UCUM: still coded
    assert obs["2823-3"]["valueQuantity"] == {
        "value": Decimal("3.1"),
        "unit": "mmol/L",
        "system": UCUM,
        "code": "mmol/L",
    }
    assert obs["2823-3"]["interpretation"][0]["coding"][0]["code"] == "L"
    # local, non-UCUM units: text only
    assert obs["8867-4"]["valueQuantity"] == {"value": 72, "unit": "beats per minute"}
    assert obs["5778-6"]["valueString"] == "Straw"
    assert obs["22637-3"]["valueString"] == (
        "Benign fibroadipose tissue.\nNo malignancy identified.\nSee comment & addendum."
    )
    assert obs["600-7"]["valueCodeableConcept"]["coding"] == [
        {"system": "http://snomed.info/sct", "code": "3092008", "display": "Staphylococcus aureus"}
    ]
    assert obs["600-7"]["interpretation"][0]["coding"][0]["code"] == "A"


def test_structured_numeric_and_date_values(values: dict[str, Any]) -> None:
    obs = _by_code(values)
    assert obs["2160-0"]["valueQuantity"] == {
        "value": Decimal("0.5"),
        "comparator": "<",
        "unit": "mg/dL",
        "system": UCUM,
        "code": "mg/dL",
    }
    assert obs["5803-2"]["valueRange"] == {"low": {"value": 5}, "high": {"value": 7}}
    assert obs["5370-2"]["valueRatio"] == {"numerator": {"value": 1}, "denominator": {"value": 128}}
    assert obs["8665-2"]["valueDateTime"] == "2024-03-15"
    assert obs["33882-2"]["valueDateTime"] == "2024-04-10T08:30:00-05:00"
    for code in ("5803-2", "5370-2", "8665-2"):
        assert not [
            k
            for k in obs[code]
            if k.startswith("value") and k not in ("valueRange", "valueRatio", "valueDateTime")
        ]


def test_status_corrected_cancelled_notes_and_effective_zone(values: dict[str, Any]) -> None:
    obs = _by_code(values)
    sodium = obs["2951-2"]
    assert sodium["status"] == "corrected"
    assert sodium["note"] == [{"text": "Corrected: previously reported as 150 mmol/L."}]
    assert sodium["valueQuantity"]["unit"] == "millimole per liter"
    bilirubin = obs["1975-2"]
    assert bilirubin["status"] == "cancelled"
    assert not any(k.startswith("value") for k in bilirubin)
    assert bilirubin["dataAbsentReason"]["coding"][0]["code"] == "cannot-be-obtained"
    # OBX-14 absent: OBR-7, which has no zone and takes MSH-7's
    assert obs["5778-6"]["effectiveDateTime"] == "2024-04-10T08:30:00-05:00"
    report = one(values, "DiagnosticReport")
    assert report["category"] == [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                    "code": "CH",
                    "display": "Chemistry",
                }
            ]
        }
    ]
    assert report["extension"][0]["valueAnnotation"] == {"text": "Specimen slightly hemolyzed."}
    assert report["issued"] == "2024-04-10T11:30:00-05:00"
    request = by_ref(values, report["basedOn"][0]["reference"])
    assert "note" not in request  # result comments stay on the report


def test_performers(values: dict[str, Any]) -> None:
    glucose = _by_code(values)["2345-7"]
    who = [by_ref(values, p["reference"]) for p in glucose["performer"]]
    assert who[0]["resourceType"] == "Practitioner" and who[0]["name"][0]["family"] == "REYES"
    assert who[1]["resourceType"] == "Organization"
    assert who[1]["name"] == "NORTHWIND CLINICAL LAB"
    assert who[1]["identifier"] == [{"system": "urn:oid:2.16.840.1.113883.4.7", "value": "05D0000001"}]
    assert who[1]["address"][0]["city"] == "EASTBROOK"


def test_corrected_result_updates_the_same_observation(values: dict[str, Any]) -> None:
    text = raw("oru_r01__value_types.hl7").decode()
    original = next(line for line in text.split("\r") if line.startswith("OBX|1|"))
    corrected = original.replace("||182|", "||175|").replace("|H|||F|", "|H|||C|")
    assert corrected != original
    resent = text.replace(original, corrected).replace("NWG-ORU01-0002", "NWG-ORU01-0003")
    bundle = convert(resent.encode())
    assert_valid(bundle)
    before, after = _by_code(values)["2345-7"], _by_code(bundle)["2345-7"]
    assert after["id"] == before["id"]
    assert after["status"] == "corrected"
    assert after["valueQuantity"]["value"] == 175
    assert one(bundle, "DiagnosticReport")["id"] == one(values, "DiagnosticReport")["id"]
    assert {o["id"] for o in of_type(bundle, "Observation")} == {
        o["id"] for o in of_type(values, "Observation")
    }


def test_result_points_at_the_service_request_of_its_order() -> None:
    order = convert(raw("oml_o21__lab_order.hl7"))
    requests = {r["code"]["coding"][0]["code"]: r for r in of_type(order, "ServiceRequest")}
    result = (
        "MSH|^~\\&|NW_LAB|NORTHWIND_LAB|NW_EMR|NORTHWIND_GEN|20240412150000-0500||ORU^R01|LAB-R-1|P|2.5.1\r"
        "PID|1||NW741300^^^NWG^MR||HALVORSEN^INGRID^M||19620721|F\r"
        "OBR|1|ORD-570001^NW_EMR|LAB-91001^NW_LAB|2093-3^Cholesterol^LN|||20240412092000-0500"
        "|||||||||||||||20240412143000-0500|||F\r"
        "OBX|1|NM|2093-3^Cholesterol^LN||212|mg/dL|<200|H|||F\r"
    )
    bundle = convert(result.encode())
    assert_valid(bundle)
    report = one(bundle, "DiagnosticReport")
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{requests['2093-3']['id']}"}]
    request = one(bundle, "ServiceRequest")
    assert request["status"] == "completed"  # no ORC: from OBR-25 F
    assert one(bundle, "Patient")["id"] == one(order, "Patient")["id"]
    cholesterol = one(bundle, "Observation")
    assert cholesterol["referenceRange"] == [{"text": "<200"}]
    assert "encounter" not in cholesterol


def test_observation_outside_an_order_and_repeated_values() -> None:
    message = (
        "MSH|^~\\&|DEV|WARD|GW|GW|20240501100000+0200||ORU^R01|DEV-1|P|2.5.1\r"
        "PID|1||P-9^^^HOSP^MR||DOE^JANE\r"
        "OBX|1|NM|8867-4^Heart rate^LN||60~72|/min^^UCUM|||||F|||20240501095500+0200\r"
        "OBX|2|NA|8867-4^Heart rate^LN||60^61^62|/min|||||F\r"
    )
    bundle = convert(message.encode())
    assert_valid(bundle)
    first, second = of_type(bundle, "Observation")
    assert [c["valueQuantity"]["value"] for c in first["component"]] == [60, 72]
    assert first["component"][0]["code"]["coding"][0]["code"] == "8867-4"
    assert first["effectiveDateTime"] == "2024-05-01T09:55:00+02:00"
    assert second["dataAbsentReason"]["coding"][0]["code"] == "unsupported"
    assert of_type(bundle, "DiagnosticReport") == []


def test_status_table_is_site_overridable(tmp_path: Path) -> None:
    (tmp_path / "0085.json").write_text(
        json.dumps({"system": "http://hl7.org/fhir/observation-status", "codes": {"F": {"code": "amended"}}})
    )
    bundle = convert(raw("oru_r01__cbc_20_obx.hl7"), tables=Tables.load(tmp_path))
    assert {o["status"] for o in of_type(bundle, "Observation")} == {"amended"}


@pytest.mark.parametrize(
    ("units", "expected"),
    [
        ("mg/dL", True),
        ("mg/dl", True),
        ("10*3/uL", True),
        ("/100{WBCs}", True),
        ("%", True),
        ("kg/m2", True),
        ("mm[Hg]", True),
        ("{cells}/uL", True),
        ("tera.l-1", False),
        ("beats/min", False),
        ("mIU/mL", False),
        ("cells per uL", False),
        ("", False),
    ],
)
def test_ucum_recognition(units: str, expected: bool) -> None:
    assert is_ucum(context(), units) is expected


# -- the FHIR-Converter corpus ---------------------------------------------------------------

ORDER_AND_RESULT_TYPES = {"ORU^R01", "ORM^O01", "OML^O21"}


@pytest.mark.corpus
def test_every_oru_orm_oml_message_of_the_corpus_converts_and_validates(corpora_dir: Path) -> None:
    folder = corpora_dir.joinpath(*CORPUS)
    done: Counter[str] = Counter()
    for path in sorted(folder.glob("*.hl7")):
        data = path.read_bytes()
        try:
            kind = message_type(er7.parse(data))
        except er7.ER7Error:
            continue
        if kind not in ORDER_AND_RESULT_TYPES:
            continue
        converted_both_ways(data)
        done[kind] += 1
    # OML-O21-02.hl7 says ORM^O01 in its MSH-9
    assert done["ORU^R01"] >= 5 and done["ORM^O01"] >= 8 and done["OML^O21"] >= 4


def test_a_message_too_large_for_one_bundle_is_refused() -> None:
    """More resources than one Bundle may hold: refused with a code (the FHIR API would refuse the Bundle)."""
    from adapters.fhir.bundle import MAX_ENTRIES
    from adapters.hl7.to_fhir import ConversionError

    head = (
        "MSH|^~\\&|LAB|H|GW|G|20240313090000+0000||ORU^R01^ORU_R01|BIG-1|P|2.5.1\r"
        "PID|1||M1^^^H^MR||DOE^JANE\rOBR|1||F1|718-7^Hemoglobin^LN|||20240313083000+0000\r"
    )
    obx = "".join(
        f"OBX|{n}|NM|718-7^Hemoglobin^LN|{n}|13.5|g/dL^^UCUM|||||F\r" for n in range(1, MAX_ENTRIES + 5)
    )
    with pytest.raises(ConversionError) as caught:
        convert((head + obx).encode())
    assert caught.value.code == "too_large"
