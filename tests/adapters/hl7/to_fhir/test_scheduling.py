"""Golden tests of the SIU → Appointment conversion (synthetic fixtures, then the FHIR-Converter corpus)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import adapters.hl7.to_fhir.scheduling  # noqa: F401  (registers SIU^S12-S17, S26)
from adapters.hl7 import er7
from adapters.hl7.to_fhir import ConversionError, convert, message_type, registry
from tests.adapters.hl7.to_fhir.conftest import (
    CORPUS,
    HL7,
    assert_valid,
    by_ref,
    converted_both_ways,
    converted_fixture,
    corpus_messages,
    of_type,
    one,
    raw,
    variant,
)

V2 = "http://terminology.hl7.org/CodeSystem/v2-"
LIFECYCLE = ("siu_s12__booked.hl7", "siu_s14__reschedule.hl7", "siu_s15__cancel.hl7")


def _apply(store: dict[str, dict[str, Any]], bundle: dict[str, Any]) -> None:
    """What a FHIR server does with our transaction: each entry is a PUT (update-as-create)."""
    for entry in bundle["entry"]:
        assert entry["request"]["method"] == "PUT"
        store[entry["request"]["url"]] = entry["resource"]


def test_siu_types_are_registered() -> None:
    assert {f"SIU^S{n}" for n in (12, 13, 14, 15, 16, 17, 26)} <= registry.supported()


@pytest.mark.parametrize("name", sorted(p.name for p in HL7.glob("siu_*.hl7")))
def test_every_siu_fixture_converts_validates_and_is_deterministic(name: str) -> None:
    first = converted_fixture(name)
    appointment = one(first, "Appointment")
    assert {"reference": f"Appointment/{appointment['id']}"} in first["entry"][0]["resource"]["focus"]


def test_booked_appointment() -> None:
    bundle = convert(raw("siu_s12__booked.hl7"))
    appt = one(bundle, "Appointment")
    patient = one(bundle, "Patient")
    assert appt["status"] == "booked"
    assert [(i["type"]["coding"][0]["code"], i["value"]) for i in appt["identifier"]] == [
        ("PLAC", "PL-7781"),
        ("FILL", "APT-50112"),
    ]
    assert appt["identifier"][1]["system"] == "urn:connector-gateway:identifier:NW_SCHED"
    # SCH-11 has no zone: the times take MSH-7's
    assert (appt["start"], appt["end"]) == ("2024-06-10T09:30:00-05:00", "2024-06-10T10:15:00-05:00")
    assert appt["minutesDuration"] == 45
    assert appt["appointmentType"]["coding"] == [
        {
            "system": V2 + "0276",
            "code": "CHECKUP",
            "display": "A routine check-up, such as an annual physical",
        }
    ]
    assert appt["reasonCode"][0]["coding"][0]["code"] == "ANNUAL"
    assert appt["serviceType"][0]["coding"][0]["code"] == "PHYS-ANNUAL"
    assert appt["comment"] == "New patient: arrive 15 minutes early"  # not the AIS note
    by_type = {by_ref(bundle, p["actor"]["reference"])["resourceType"]: p for p in appt["participant"]}
    assert appt["participant"][0] == {
        "actor": {"reference": f"Patient/{patient['id']}"},
        "status": "accepted",
    }
    doctor = by_type["Practitioner"]
    assert by_ref(bundle, doctor["actor"]["reference"])["name"][0]["family"] == "IBARRA"
    assert doctor["type"][0]["coding"][0] == {
        "system": V2 + "0443",
        "code": "AT",
        "display": "Attending Provider",
    }
    assert doctor["period"] == {"start": "2024-06-10T09:30:00-05:00", "end": "2024-06-10T10:15:00-05:00"}
    assert doctor["status"] == "accepted"
    room = by_ref(bundle, by_type["Location"]["actor"]["reference"])
    assert room["name"] == "ROOM12"
    assert by_ref(bundle, room["partOf"]["reference"])["name"] == "PRIMARY"
    device = by_ref(bundle, by_type["Device"]["actor"]["reference"])
    assert device["deviceName"] == [{"name": "ECG cart 2", "type": "user-friendly-name"}]
    assert device["identifier"][0]["value"] == "ECG-02"
    assert device["type"]["coding"][0]["code"] == "EQUIP"
    assert by_type["Device"]["period"]["start"] == "2024-06-10T09:30:00-05:00"


def test_s12_then_s14_then_s15_is_one_appointment_ending_cancelled_at_the_new_time() -> None:
    store: dict[str, dict[str, Any]] = {}
    ids = []
    for name in LIFECYCLE:
        bundle = convert(raw(name), envelope_id=name)
        assert_valid(bundle)
        ids.append(one(bundle, "Appointment")["id"])
        _apply(store, bundle)
        if name == "siu_s14__reschedule.hl7":
            moved = store[f"Appointment/{ids[-1]}"]
            assert moved["status"] == "booked"
            assert moved["start"] == "2024-06-12T14:00:00-05:00"
            assert moved["comment"] == "Moved to 12 June at the patient's request"
    assert len(set(ids)) == 1
    appointments = [r for r in store.values() if r["resourceType"] == "Appointment"]
    assert len(appointments) == 1
    (final,) = appointments
    assert final["status"] == "cancelled"
    assert (final["start"], final["end"]) == ("2024-06-12T14:00:00-05:00", "2024-06-12T14:45:00-05:00")
    assert final["cancelationReason"]["coding"][0]["code"] == "PATCAN"
    assert "reasonCode" not in final
    assert {p["status"] for p in final["participant"]} == {"declined"}
    assert len([r for r in store.values() if r["resourceType"] == "Patient"]) == 1


@pytest.mark.parametrize(
    ("trigger", "filler_status", "expected"),
    [
        ("S12", "Pending", "pending"),
        ("S12", "Complete", "fulfilled"),
        ("S14", "Noshow", "noshow"),
        ("S14", "Waitlist", "waitlist"),
        ("S12", "", "booked"),
        ("S15", "Booked", "cancelled"),  # the event decides
        ("S17", "Booked", "entered-in-error"),
        ("S26", "Booked", "noshow"),
    ],
)
def test_status(trigger: str, filler_status: str, expected: str) -> None:
    bundle = variant(
        "siu_s12__booked.hl7",
        ("SIU^S12^", f"SIU^{trigger}^"),
        ("|Booked^Booked^HL70278", f"|{filler_status}"),
    )
    assert one(bundle, "Appointment")["status"] == expected


def test_times_from_the_resources_and_durations_in_other_units() -> None:
    bundle = variant(
        "siu_s12__booked.hl7",
        ("|45|min|^^45^20240610093000^20240610101500|", "|1|h||"),
        ("|20240610093000|||45|min||Booked\rNTE", "|20240610091500|||45|min||Booked\rNTE"),
    )
    appt = one(bundle, "Appointment")
    # the earliest resource start (AIS-4), and SCH-9/10 (1 h) for the end
    assert (appt["start"], appt["end"]) == ("2024-06-10T09:15:00-05:00", "2024-06-10T10:15:00-05:00")
    assert appt["minutesDuration"] == 60


def test_without_a_filler_id_the_placer_id_is_the_key() -> None:
    placer_only = one(variant("siu_s12__booked.hl7", ("|APT-50112^NW_SCHED|", "||")), "Appointment")
    resent = one(
        variant("siu_s12__booked.hl7", ("|APT-50112^NW_SCHED|", "||"), ("SIU-0001", "SIU-0077")),
        "Appointment",
    )
    assert placer_only["id"] == resent["id"] != one(convert(raw("siu_s12__booked.hl7")), "Appointment")["id"]


def test_without_sch_the_message_is_refused() -> None:
    text = raw("siu_s12__booked.hl7").decode("ascii")
    text = "\r".join(s for s in text.split("\r") if not s.startswith("SCH"))
    with pytest.raises(ConversionError) as caught:
        convert(text.encode("ascii"))
    assert caught.value.code == "no_schedule"


def test_existing_fixture() -> None:
    bundle = convert(raw("siu_s12__appointment.hl7"))
    appt = one(bundle, "Appointment")
    assert appt["status"] == "booked"
    assert (appt["start"], appt["end"]) == ("2024-04-02T09:00:00+00:00", "2024-04-02T09:30:00+00:00")
    assert appt["appointmentType"]["coding"][0]["code"] == "ROUTINE"
    kinds = [by_ref(bundle, p["actor"]["reference"])["resourceType"] for p in appt["participant"]]
    assert kinds == ["Patient", "Location", "Practitioner"]


@pytest.mark.corpus
def test_every_corpus_siu_converts_and_validates(corpora_dir: Path) -> None:
    paths = corpus_messages(corpora_dir, "SIU^", "SIU*.hl7")
    assert len(paths) >= 15
    for path in paths:
        data = path.read_bytes()
        assert message_type(er7.parse(data)) in registry.supported(), path.name
        for bundle in converted_both_ways(data):
            one(bundle, "Appointment")


@pytest.mark.corpus
def test_corpus_siu_key_values_agree_with_fhir_converter(corpora_dir: Path) -> None:
    folder = corpora_dir.joinpath(*CORPUS)
    appt = one(convert((folder / "SIU-S12-01.hl7").read_bytes()), "Appointment")
    assert [i["value"] for i in appt["identifier"]] == ["12345", "36996"]
    assert appt["status"] == "booked"
    # FHIR-Converter writes 12:45+05:30 and 13:35+05:30: the same instants
    assert (appt["start"], appt["end"]) == ("2021-09-24T09:30:00+02:15", "2021-09-24T10:20:00+02:15")
    assert appt["minutesDuration"] == 1
    assert appt["comment"] == "Appointment booked for emergency procedure"
    assert appt["appointmentType"]["coding"][0] == {
        "system": V2 + "0276",
        "code": "EMERGENCY",
        "display": "Emergency appointment",
    }
    # patient, device, location, AIP practitioner; SCH-12 = SCH-16 (one person) and SCH-20
    assert len(appt["participant"]) == 6
    ids = {
        one(convert((folder / f"SIU-{e}-01.hl7").read_bytes()), "Appointment")["id"]
        for e in ("S12", "S14", "S15")
    }
    assert len(ids) == 1
    statuses = {
        e: one(convert((folder / f"SIU-{e}-02.hl7").read_bytes()), "Appointment")["status"]
        for e in ("S15", "S16", "S17", "S26")
    }
    assert statuses == {"S15": "cancelled", "S16": "cancelled", "S17": "entered-in-error", "S26": "noshow"}
    assert of_type(convert((folder / "SIU-S12-01.hl7").read_bytes()), "Condition")


# -- the patient group and the orders of an SIU (the IG's SIU_S12 message map) ------------------

ORDERS = "siu_s12__orders_visit_obx.hl7"


def test_siu_pv1_is_an_encounter_keyed_by_the_appointment_when_it_has_no_visit_number() -> None:
    bundle = convert(raw(ORDERS))
    assert_valid(bundle)
    encounter, patient = one(bundle, "Encounter"), one(bundle, "Patient")
    assert encounter["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert encounter["class"]["code"] == "AMB"
    # PV1-3 (active) and PV2-1 (prior pending location: planned)
    names = [by_ref(bundle, p["location"]["reference"])["name"] for p in encounter["location"]]
    assert names == ["EXAM3", "BAY1"]
    assert [p["status"] for p in encounter["location"]] == ["active", "planned"]
    # PV2-13 referral source: a REF participant
    (referrer,) = encounter["participant"]
    assert referrer["type"][0]["coding"][0]["code"] == "REF"
    assert by_ref(bundle, referrer["individual"]["reference"])["name"][0]["family"] == "IBARRA"
    # a reschedule of the same appointment (another message) updates the same Encounter
    moved = variant(ORDERS, ("SIU^S12^SIU_S12|NWG-SIU-0101", "SIU^S14^SIU_S12|NWG-SIU-0102"))
    assert one(moved, "Encounter")["id"] == encounter["id"]


def test_siu_patient_obx_is_an_observation_of_the_patient() -> None:
    bundle = convert(raw(ORDERS))
    obs, patient = one(bundle, "Observation"), one(bundle, "Patient")
    assert obs["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert obs["code"]["coding"][0]["code"] == "8480-6"
    assert obs["valueQuantity"]["value"] == 142
    assert obs["interpretation"][0]["coding"][0]["code"] == "H"
    assert "note" not in obs  # the NTE after the AIS is not about the OBX
    assert obs["effectiveDateTime"] == "2024-05-01T08:30:00-05:00"


def test_sch_26_27_are_service_requests_the_appointment_is_based_on() -> None:
    bundle = convert(raw(ORDERS))
    appt, patient = one(bundle, "Appointment"), one(bundle, "Patient")
    requests = of_type(bundle, "ServiceRequest")
    assert appt["basedOn"] == [{"reference": f"ServiceRequest/{r['id']}"} for r in requests]
    # repetition 1 pairs SCH-26 and SCH-27; repetition 2 has a placer number only
    assert [[(i["type"]["coding"][0]["code"], i["value"]) for i in r["identifier"]] for r in requests] == [
        [("PLAC", "ORD-4411"), ("FILL", "FIL-7700")],
        [("PLAC", "ORD-4412")],
    ]
    for request in requests:
        assert (request["status"], request["intent"]) == ("active", "order")
        assert request["subject"] == {"reference": f"Patient/{patient['id']}"}
    # the same resource an ORM for order ORD-4411 makes (keyed by the placer number)
    orm = convert(
        b"MSH|^~\\&|NW_EHR|NORTHWIND_GEN|LAB|NWG|20240501080000-0500||ORM^O01|O-1|P|2.5.1\r"
        b"PID|1||NW990011^^^NWG^MR||OKONJO^FELA\rORC|NW|ORD-4411^NW_EHR\rOBR|1|ORD-4411^NW_EHR||93000^ECG^C4"
    )
    assert one(orm, "ServiceRequest")["id"] == requests[0]["id"]
    # SCH-25 through table 0278's request member; neither SCH-26 nor SCH-27: no ServiceRequest
    cancelled = variant(ORDERS, ("Booked^Booked^HL70278", "Cancelled^Cancelled^HL70278"))
    assert {r["status"] for r in of_type(cancelled, "ServiceRequest")} == {"revoked"}
    none = variant(ORDERS, ("|ORD-4411^NW_EHR~ORD-4412^NW_EHR|FIL-7700^NW_LAB", "||"))
    assert of_type(none, "ServiceRequest") == [] and "basedOn" not in one(none, "Appointment")


def test_sch_contact_persons_are_participants() -> None:
    bundle = convert(raw(ORDERS))
    appt = one(bundle, "Appointment")
    people = {
        by_ref(bundle, p["actor"]["reference"])["name"][0]["family"]: p
        for p in appt["participant"]
        if p["actor"]["reference"].startswith("Practitioner/")
    }
    assert set(people) == {"OKAFOR", "LINDQVIST", "MARSH"}
    assert people["OKAFOR"]["type"] == [{"text": "placer contact"}]
    # SCH-16 names the AIP practitioner: one participant, with the AIP's role
    assert people["LINDQVIST"]["type"][0]["coding"][0]["code"] == "AT"
    assert people["MARSH"]["type"] == [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                    "code": "enterer",
                    "display": "Enterer",
                }
            ]
        }
    ]
    assert {p["status"] for p in people.values()} == {"accepted"}
