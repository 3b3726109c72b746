"""Golden tests of the ORM^O01 / OML^O21 conversion (ORC/OBR → ServiceRequest) on our own fixtures."""

from __future__ import annotations

from typing import Any

import pytest

import adapters.hl7.to_fhir.orders  # registers ORM^O01, OML^O21
import adapters.hl7.to_fhir.results  # noqa: F401  (registers ORU^R01)
from adapters.hl7.to_fhir import convert, registry
from tests.adapters.hl7.to_fhir.conftest import assert_valid, by_ref, converted_fixture, of_type, one, raw

V2 = "http://terminology.hl7.org/CodeSystem/v2-"
FIXTURES = ["orm_o01__order.hl7", "oml_o21__lab_order.hl7"]


@pytest.fixture(scope="module")
def orm() -> dict[str, Any]:
    return convert(raw("orm_o01__order.hl7"), envelope_id="env-orm")


@pytest.fixture(scope="module")
def oml() -> dict[str, Any]:
    return convert(raw("oml_o21__lab_order.hl7"), envelope_id="env-oml")


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_converts_validates_and_is_deterministic(name: str) -> None:
    converted_fixture(name)
    assert {"ORM^O01", "OML^O21"} <= registry.supported()


def test_orm_service_request(orm: dict[str, Any]) -> None:
    request = one(orm, "ServiceRequest")
    patient = one(orm, "Patient")
    assert request["identifier"] == [
        {
            "type": {"coding": [{"system": V2 + "0203", "code": "PLAC", "display": "Placer Identifier"}]},
            "system": "urn:connector-gateway:identifier:NW_EMR",
            "value": "ORD-552410",
            "assigner": {"display": "NW_EMR"},
        }
    ]
    assert request["requisition"]["value"] == "GRP-9911"
    assert request["status"] == "active"  # ORC-5 SC
    assert request["intent"] == "order"
    assert request["priority"] == "routine"  # ORC-7.6 R
    assert request["code"]["coding"][0] == {
        "system": "http://www.ama-assn.org/go/cpt",
        "code": "93000",
        "display": "Electrocardiogram, complete",
    }
    assert request["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert request["encounter"] == {"reference": f"Encounter/{one(orm, 'Encounter')['id']}"}
    assert request["authoredOn"] == "2024-03-22T10:29:55+00:00"
    assert request["occurrenceDateTime"] == "2024-03-22T11:00:00+00:00"
    assert by_ref(orm, request["requester"]["reference"])["name"][0]["family"] == "SINGH"
    condition = by_ref(orm, request["reasonReference"][0]["reference"])
    assert condition["code"]["coding"][0]["code"] == "R00.2"
    assert condition["subject"] == request["subject"]


def test_oml_orders_timing_reasons_notes_specimen(oml: dict[str, Any]) -> None:
    cholesterol, a1c = of_type(oml, "ServiceRequest")
    assert cholesterol["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "2093-3",
        "display": "Cholesterol [Mass/volume] in Serum or Plasma",
    }
    assert cholesterol["status"] == "active"
    assert cholesterol["priority"] == "stat"  # TQ1-9
    assert cholesterol["occurrenceDateTime"] == "2024-04-12T10:00:00-05:00"  # TQ1-7
    assert cholesterol["authoredOn"] == "2024-04-12T09:10:00-05:00"
    assert cholesterol["reasonCode"][0]["coding"][0] == {
        "system": "http://hl7.org/fhir/sid/icd-10",
        "code": "R73.09",
        "display": "Other abnormal glucose",
    }
    assert by_ref(oml, cholesterol["reasonReference"][0]["reference"])["code"]["coding"][0]["code"] == "E78.5"
    assert cholesterol["note"] == [{"text": "Patient fasting since midnight."}]
    specimen = by_ref(oml, cholesterol["specimen"][0]["reference"])
    assert specimen["type"]["coding"][0]["code"] == "119364003"
    assert specimen["identifier"][0]["value"] == "SP-570001"
    assert specimen["collection"] == {"collectedDateTime": "2024-04-12T09:20:00-05:00"}
    answer = by_ref(oml, cholesterol["supportingInfo"][0]["reference"])
    assert answer["resourceType"] == "Observation"
    assert answer["valueString"] == "Fasting 12 hours"
    assert answer["status"] == "registered"  # OBX-11 O
    assert answer["specimen"] == {"reference": cholesterol["specimen"][0]["reference"]}
    assert a1c["identifier"][0]["value"] == "ORD-570002"
    assert a1c["priority"] == "routine"  # OBR-27.6
    assert a1c["occurrenceDateTime"] == "2024-04-13T08:00:00-05:00"  # OBR-27.4
    assert "note" not in a1c and "reasonReference" not in a1c
    assert cholesterol["id"] != a1c["id"]


@pytest.mark.parametrize(
    ("orc1", "orc5", "status"),
    [
        ("NW", "", "active"),
        ("CA", "", "active"),
        ("OC", "", "revoked"),
        ("NW", "CM", "completed"),
        ("XX", "", "unknown"),
    ],
)
def test_status_from_order_status_then_order_control(orc1: str, orc5: str, status: str) -> None:
    message = (
        "MSH|^~\\&|EMR|HOSP|LAB|LAB|20240301080000+0100||ORM^O01|C-1|P|2.3\r"
        "PID|1||P-1^^^HOSP^MR||ROE^RICHARD\r"
        f"ORC|{orc1}|PO-1^EMR|||{orc5}\r"
        "OBR|1|PO-1^EMR||1234-5^Test^LN\r"
    )
    bundle = convert(message.encode())
    assert_valid(bundle)
    assert one(bundle, "ServiceRequest")["status"] == status


def test_an_obr_without_its_own_orc_shares_the_previous_one() -> None:
    message = (
        "MSH|^~\\&|EMR|HOSP|LAB|LAB|20240301080000+0100||OML^O21|C-2|P|2.5.1\r"
        "PID|1||P-1^^^HOSP^MR||ROE^RICHARD\r"
        "ORC|NW|PO-7^EMR||||||||||123^WHO^DOC\r"
        "OBR|1|PO-7^EMR||1111-1^First^LN\r"
        "OBR|2|PO-7^EMR||2222-2^Second^LN\r"
    )
    bundle = convert(message.encode())
    assert_valid(bundle)
    first, second = of_type(bundle, "ServiceRequest")
    assert first["id"] != second["id"]
    assert second["status"] == "active" and second["requester"] == first["requester"]
    assert second["code"]["coding"][0]["code"] == "2222-2"


def test_obx_of_an_order_that_is_not_a_service_are_still_observations() -> None:
    """ORM_O01 ORDER_DETAIL.OBSERVATION → OBX[Observation] whatever the detail segment; an ORC with
    RXO and no OBR makes no ServiceRequest, so its OBX are Observations of the patient alone."""
    text = (
        "MSH|^~\\&|NW_PHARM|NORTHWIND_GEN|RX|NWG|20240503110000-0500||ORM^O01^ORM_O01|NWG-ORM-0901|P|2.5.1\r"
        "PID|1||NW440012^^^NWG^MR||HALE^RUTH||19660707|F\r"
        "PV1|1|I|3WEST^301^A^NWG||||||||||||||||V-9911^^^NWG^VN\r"
        "ORC|NW|RX-7001^NW_PHARM\r"
        "RXO|00049-3980^Zoloft 50mg^NDC|50||mg\r"
        "OBX|1|NM|3141-9^Body weight measured^LN||64|kg^kilogram^UCUM|||||F|||20240503103000\r"
        "NTE|1||Weighed before the first dose\r"
    )
    bundle = convert(text.encode())
    assert_valid(bundle)
    assert of_type(bundle, "ServiceRequest") == []
    obs, patient, encounter = one(bundle, "Observation"), one(bundle, "Patient"), one(bundle, "Encounter")
    assert obs["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert obs["encounter"] == {"reference": f"Encounter/{encounter['id']}"}
    assert obs["code"]["coding"][0]["code"] == "3141-9"
    assert obs["valueQuantity"]["value"] == 64
    assert obs["note"] == [{"text": "Weighed before the first dose"}]
    assert "basedOn" not in obs
    assert convert(text.encode()) == bundle
