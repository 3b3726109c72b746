"""Golden tests of the ADT conversion on our own fixtures (synthetic data only)."""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adapters.fhir.resources import write_json
from adapters.hl7.to_fhir import SUPPORTED, ConversionError, Tables, convert, register
from adapters.hl7.to_fhir.context import Context, resource_id
from tests.adapters.hl7.to_fhir.conftest import HL7, assert_valid, by_ref, of_type, one, raw

ADT_FIXTURES = sorted(p.name for p in HL7.glob("adt_*.hl7"))
V2 = "http://terminology.hl7.org/CodeSystem/v2-"
OID = "urn:oid:2.16.840.1.113883.3.999"


@pytest.fixture(scope="module")
def full() -> dict[str, Any]:
    return convert(raw("adt_a01__full.hl7"), envelope_id="01HZX3ENVELOPE", raw_sha256="ab" * 32)


@pytest.mark.parametrize("name", ADT_FIXTURES)
def test_every_adt_fixture_converts_validates_and_is_deterministic(name: str) -> None:
    first = convert(raw(name), envelope_id="env-1")
    second = convert(raw(name), envelope_id="env-1")
    assert write_json(first) == write_json(second)
    assert first["resourceType"] == "Bundle" and first["type"] == "transaction"
    assert_valid(first)
    entries = first["entry"]
    assert entries[0]["resource"]["resourceType"] == "MessageHeader"
    assert entries[-1]["resource"]["resourceType"] == "Provenance"
    for entry in entries:
        resource = entry["resource"]
        assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"
        assert entry["request"] == {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
    urls = [e["request"]["url"] for e in entries]
    assert len(urls) == len(set(urls))
    of_type(first, "Patient")  # at least the bundle parses into resources


def test_patient(full: dict[str, Any]) -> None:
    patient = one(full, "Patient")
    assert patient["identifier"][0] == {
        "type": {"coding": [{"system": V2 + "0203", "code": "MR", "display": "Medical record number"}]},
        "system": OID,
        "value": "NW700001",
        "assigner": {"display": "NWG"},
    }
    assert patient["identifier"][1]["system"] == "http://hl7.org/fhir/sid/us-ssn"
    assert patient["name"] == [
        {"use": "official", "family": "QUINTERO&VALE", "given": ["SOFIA", "ISABEL"], "prefix": ["MS"]}
    ]
    assert patient["birthDate"] == "1987-05-12"
    assert patient["gender"] == "female"
    assert patient["address"][0] == {
        "use": "home",
        "line": ["12 MAPLE & OAK ST^REAR", "APT 3"],
        "city": "SPRINGVALE",
        "state": "OR",
        "postalCode": "97321",
        "country": "USA",
    }
    assert patient["address"][1]["type"] == "postal"
    assert patient["telecom"] == [
        {"system": "phone", "value": "+1 (541) 5557001", "use": "home"},
        {"system": "email", "value": "sofia.q@example.org", "use": "home"},
        {"system": "phone", "value": "+1 (541) 5557002 ext. 12", "use": "work"},
    ]
    assert patient["maritalStatus"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
        "code": "M",
        "display": "Married",
    }
    assert patient["communication"][0]["language"]["coding"][0]["code"] == "SPA"
    assert patient["multipleBirthInteger"] == 2
    urls = {e["url"]: e for e in patient["extension"]}
    race = urls["http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"]["extension"]
    assert race[0] == {
        "url": "ombCategory",
        "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3", "display": "White"},
    }
    ethnicity = urls["http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"]["extension"]
    assert ethnicity[0]["valueCoding"]["code"] == "2135-2"
    assert (
        urls["http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"]["valueString"] == "MORALES"
    )
    gp = by_ref(full, patient["generalPractitioner"][0]["reference"])
    assert gp["name"][0]["family"] == "VANCE"


def test_encounter(full: dict[str, Any]) -> None:
    encounter = one(full, "Encounter")
    patient = one(full, "Patient")
    assert encounter["status"] == "in-progress"
    assert encounter["class"] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "code": "IMP",
        "display": "inpatient encounter",
    }
    assert encounter["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert encounter["identifier"][0]["value"] == "VN700001"
    # PV1-44 has no zone: it takes MSH-7's
    assert encounter["period"] == {"start": "2024-05-01T10:30:00-05:00"}
    assert encounter["type"][0]["coding"][0] == {"system": V2 + "0007", "code": "E", "display": "Emergency"}
    assert encounter["reasonCode"][0]["coding"][0]["code"] == "R07.9"
    roles = {
        p["type"][0]["coding"][0]["code"]: by_ref(full, p["individual"]["reference"])
        for p in encounter["participant"]
    }
    assert roles["ATND"]["name"][0]["family"] == "OKAFOR"
    assert roles["REF"]["name"][0]["family"] == "MENDEZ"
    assert roles["CON"]["name"][0]["family"] == "ITO"
    assert roles["ADM"]["identifier"][0]["value"] == "20417"
    bed = by_ref(full, encounter["location"][0]["location"]["reference"])
    assert bed["name"] == "B" and bed["physicalType"]["coding"][0]["code"] == "bd"
    assert bed["description"] == "3 WEST MED-SURG"
    room = by_ref(full, bed["partOf"]["reference"])
    ward = by_ref(full, room["partOf"]["reference"])
    assert (room["name"], ward["name"]) == ("312", "3WEST")


def test_related_people_allergies_conditions_procedures_coverage(full: dict[str, Any]) -> None:
    spouse, mother = of_type(full, "RelatedPerson")
    patient_ref = f"Patient/{one(full, 'Patient')['id']}"
    assert spouse["patient"] == {"reference": patient_ref}
    assert spouse["relationship"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
        "code": "SPS",
        "display": "spouse",
    }
    assert spouse["relationship"][-1]["coding"][0]["system"] == V2 + "0131"
    assert spouse["name"][0]["family"] == "QUINTERO"
    assert spouse["address"][0]["line"] == ["12 MAPLE & OAK ST"]
    assert mother["relationship"][0]["coding"][0]["code"] == "MTH"
    assert mother["telecom"][0]["use"] == "mobile"

    drug, food = of_type(full, "AllergyIntolerance")
    assert drug["code"]["coding"][0] == {
        "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
        "code": "7980",
        "display": "Penicillin",
    }
    assert drug["category"] == ["medication"] and drug["criticality"] == "high"
    assert drug["clinicalStatus"]["coding"][0]["code"] == "active"
    assert drug["reaction"][0]["manifestation"] == [{"text": "Hives & itching"}, {"text": "Wheezing"}]
    assert drug["onsetDateTime"] == "2011-06-05"
    assert drug["patient"] == {"reference": patient_ref}
    assert food["category"] == ["food"] and food["criticality"] == "low"
    assert food["code"]["coding"][0]["system"] == "http://snomed.info/sct"

    condition = one(full, "Condition")
    assert condition["code"]["coding"][0] == {
        "system": "http://hl7.org/fhir/sid/icd-10",
        "code": "I21.4",
        "display": "Non-ST elevation myocardial infarction",
    }
    assert condition["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
    assert condition["encounter"] == {"reference": f"Encounter/{one(full, 'Encounter')['id']}"}
    assert condition["onsetDateTime"] == "2024-05-01T11:00:00-05:00"

    procedure = one(full, "Procedure")
    assert procedure["code"]["coding"][0]["code"] == "4A023N7"
    assert procedure["performedDateTime"] == "2024-05-01T14:00:00-05:00"

    coverage = one(full, "Coverage")
    payor = by_ref(full, coverage["payor"][0]["reference"])
    assert payor["name"] == "NORTHWIND MUTUAL INSURANCE"
    assert coverage["beneficiary"] == {"reference": patient_ref}
    assert coverage["relationship"]["coding"][0]["code"] == "self"
    assert coverage["subscriberId"] == "MBR-700001"
    assert coverage["period"] == {"start": "2024-01-01", "end": "2024-12-31"}
    assert [c["value"] for c in coverage["class"]] == ["NWPPO", "GRP-44120"]


def test_message_header_and_provenance(full: dict[str, Any]) -> None:
    header = one(full, "MessageHeader")
    assert header["eventCoding"] == {"system": V2 + "0003", "code": "A01"}
    assert header["source"]["name"] == "NW_ADT"
    assert header["destination"][0]["name"] == "GW_INBOUND"
    sender = by_ref(full, header["sender"]["reference"])
    assert sender["name"] == "NORTHWIND_GEN"
    assert sender["identifier"] == [
        {"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.16.840.1.113883.3.999.1"}
    ]
    provenance = full["entry"][-1]["resource"]
    assert provenance["resourceType"] == "Provenance"
    others = [e["request"]["url"] for e in full["entry"][:-1]]
    assert [t["reference"] for t in provenance["target"]] == others
    assert provenance["recorded"] == "2024-05-01T10:35:00-05:00"
    assert provenance["occurredDateTime"] == "2024-05-01T10:30:00-05:00"
    assert provenance["activity"]["coding"][0]["code"] == "A01"
    assert provenance["entity"] == [
        {
            "role": "source",
            "what": {
                "identifier": {"system": "urn:connector-gateway:envelope", "value": "01HZX3ENVELOPE"},
                "display": "sha256:" + "ab" * 32,
            },
        }
    ]
    assert [a["type"]["coding"][0]["code"] for a in provenance["agent"]] == ["author", "enterer"]


def test_provenance_entity_omitted_without_envelope_and_digest_defaults_to_raw() -> None:
    bundle = convert(raw("adt_a01__basic.hl7"))
    assert "entity" not in bundle["entry"][-1]["resource"]
    import hashlib

    data = raw("adt_a01__basic.hl7")
    with_env = convert(data, envelope_id="e")
    display = with_env["entry"][-1]["resource"]["entity"][0]["what"]["display"]
    assert display == "sha256:" + hashlib.sha256(data).hexdigest()


def test_a08_updates_the_same_patient_and_a03_finishes_the_same_encounter(full: dict[str, Any]) -> None:
    a08 = convert(raw("adt_a08__full_update.hl7"))
    a03 = convert(raw("adt_a03__full_discharge.hl7"))
    admitted, updated, discharged = (one(b, "Patient") for b in (full, a08, a03))
    assert admitted["id"] == updated["id"] == discharged["id"]
    assert updated["address"][0]["line"] == ["77 HARBOR LIGHT RD"]
    enc1, enc8, enc3 = (one(b, "Encounter") for b in (full, a08, a03))
    assert enc1["id"] == enc8["id"] == enc3["id"]
    assert enc8["status"] == "in-progress"  # A08: read from the visit (admitted, not discharged)
    assert enc3["status"] == "finished"
    assert enc3["period"] == {"start": "2024-05-01T10:30:00-05:00", "end": "2024-05-04T15:45:00-05:00"}
    assert enc3["hospitalization"]["dischargeDisposition"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/discharge-disposition",
        "code": "home",
        "display": "Home",
    }
    # the same diagnosis in the same visit is the same Condition
    assert one(full, "Condition")["id"] == one(a03, "Condition")["id"]
    # each message has its own MessageHeader and Provenance
    assert one(full, "MessageHeader")["id"] != one(a08, "MessageHeader")["id"]


def test_existing_fixtures_a01_a08_a03_a04_a31() -> None:
    basic = convert(raw("adt_a01__basic.hl7"))
    patient = one(basic, "Patient")
    assert patient["identifier"][0]["value"] == "NW100234"
    assert patient["identifier"][0]["system"] == "urn:connector-gateway:identifier:NWG"
    assert patient["name"][0] == {"family": "HARTWELL", "given": ["JONAH", "MICHAEL"], "prefix": ["MR"]}
    assert patient["birthDate"] == "1978-04-14" and patient["gender"] == "male"
    assert one(basic, "AllergyIntolerance")["criticality"] == "low"
    assert one(basic, "Condition")["code"]["coding"][0]["code"] == "J18.9"
    discharge = one(convert(raw("adt_a03__discharge.hl7")), "Encounter")
    assert discharge["status"] == "finished"
    # this fixture puts its admit time one field early (PV1-43), so PV1-44 holds the discharge time
    assert discharge["period"] == {"start": "2024-03-15T16:00:00+00:00"}
    assert discharge["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "home"
    register_a04 = convert(raw("adt_a04__register.hl7"))
    assert one(register_a04, "Encounter")["class"]["code"] == "AMB"
    assert one(register_a04, "Encounter")["status"] == "planned"  # the IG's map of A04
    assert one(register_a04, "Patient")["telecom"] == [
        {"system": "phone", "value": "(541)555-0412", "use": "home"}
    ]
    person = convert(raw("adt_a31__update_person.hl7"))
    assert of_type(person, "Encounter") == []
    assert one(person, "Patient")["address"][0]["line"] == ["502 LAKESHORE DR", "UNIT 7"]


def test_escapes_encodings_and_line_endings() -> None:
    escaped = one(convert(raw("adt_a01__escape_sequences.hl7")), "Patient")
    assert escaped["address"][0]["line"] == ["MARKET & 2ND AVE^SUITE 200"]
    assert escaped["name"][0]["family"] == "O'NEILL"
    custom = one(convert(raw("adt_a01__custom_delimiters.hl7")), "Patient")
    assert custom["identifier"][0]["value"] == "NW1310518"
    assert custom["name"][0] == {"family": "YILMAZ", "given": ["DENIZ", "AYSE"]}
    latin1 = one(convert(raw("adt_a01__latin1.hl7")), "Patient")
    assert latin1["name"][0]["family"] == "MÜLLER"
    bom = one(convert(raw("adt_a01__bom.hl7")), "Patient")
    assert bom["name"][0]["family"] == "ŠIMUNOVIĆ"
    lf = raw("adt_a01__lf_endings.hl7")
    crlf = lf.replace(b"\n", b"\r\n")
    assert convert(lf) == convert(crlf) == convert(lf.replace(b"\n", b"\r"))


def test_a40_merge_links_both_patients() -> None:
    bundle = convert(raw("adt_a40__merge.hl7"))
    assert_valid(bundle)
    surviving, prior = of_type(bundle, "Patient")
    assert surviving["identifier"][0]["value"] == "NW700001"
    assert prior["identifier"][0]["value"] == "NW799999"
    assert prior["active"] is False
    assert prior["link"] == [{"other": {"reference": f"Patient/{surviving['id']}"}, "type": "replaced-by"}]
    assert surviving["link"] == [{"other": {"reference": f"Patient/{prior['id']}"}, "type": "replaces"}]
    full_patient = one(convert(raw("adt_a01__full.hl7")), "Patient")
    assert surviving["id"] == full_patient["id"]


def test_table_override_changes_the_mapping(tmp_path: Path) -> None:
    (tmp_path / "0001.json").write_text(
        json.dumps({"system": "http://example.org/sex", "codes": {"F": {"code": "unknown"}}}),
        encoding="utf-8",
    )
    (tmp_path / "0004.json").write_text(
        json.dumps(
            {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "codes": {"I": {"code": "ACUTE", "display": "inpatient acute"}},
            }
        ),
        encoding="utf-8",
    )
    tables = Tables.load(tmp_path)
    bundle = convert(raw("adt_a01__full.hl7"), tables=tables)
    assert one(bundle, "Patient")["gender"] == "unknown"
    assert one(bundle, "Encounter")["class"]["code"] == "ACUTE"
    # tables not overridden stay as built in
    assert one(bundle, "Condition")["code"]["coding"][0]["code"] == "I21.4"
    default = convert(raw("adt_a01__full.hl7"))
    assert one(default, "Patient")["gender"] == "female"


def test_builtin_tables_copied_as_overrides_change_nothing(tmp_path: Path) -> None:
    builtin = Path(__file__).resolve().parents[4] / "adapters" / "hl7" / "to_fhir" / "tables"
    for path in builtin.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    assert convert(raw("adt_a01__full.hl7"), tables=Tables.load(tmp_path)) == convert(
        raw("adt_a01__full.hl7")
    )


SECRET = "ZEBRA-SECRET-7741"


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (
            f"MSH|^~\\&|A|B|C|D|20240101||ZZZ^Z99|{SECRET}|P|2.5.1\rPID|1||{SECRET}^^^X^MR".encode(),
            "unsupported_message_type",  # a type no module registers
        ),
        (
            f"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|{SECRET}|P|2.5.1\rEVN|A01\rPV1|1|I|{SECRET}".encode(),
            "no_patient",
        ),
        (
            f"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|C1|P|2.5.1\rPID|1||^^^{SECRET}^MR||{SECRET}".encode(),
            "no_patient",
        ),
        (f"NOT HL7 {SECRET}".encode(), "unreadable"),
        (b"", "unreadable"),
        (f"MSH|^~\\&|A|B|C|D|||ADT^A01|{SECRET}|P|2.5.1\rPID|1||{SECRET}^^^X^MR".encode(), "no_message_time"),
    ],
)
def test_conversion_errors_have_codes_and_no_payload(message: bytes, code: str) -> None:
    with pytest.raises(ConversionError) as info:
        convert(message, envelope_id="e")
    assert info.value.code == code
    assert SECRET not in str(info.value) and SECRET not in repr(info.value.args)


def test_supported_and_register() -> None:
    expected = {f"ADT^A{n:02d}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13, 28, 31, 40)}
    assert expected <= SUPPORTED
    with pytest.raises(ValueError):
        register(["nonsense"], lambda ctx: None)


def test_register_adds_a_message_type() -> None:
    import adapters.hl7.to_fhir as to_fhir

    def build(ctx: Context) -> None:
        ctx.add({"resourceType": "Basic", "code": {"text": "test"}}, "k")

    register(["ZZZ^Z01"], build)
    try:
        assert "ZZZ^Z01" in to_fhir.SUPPORTED
        bundle = convert(b"MSH|^~\\&|A|B|C|D|20240101||ZZZ^Z01|C1|P|2.5.1")
        assert [e["resource"]["resourceType"] for e in bundle["entry"]][-2:] == ["Basic", "Provenance"]
        assert bundle["entry"][-2]["resource"]["id"] == resource_id("Basic", "k")
    finally:
        from adapters.hl7.to_fhir import registry

        registry._BUILDERS.pop("ZZZ^Z01", None)
        to_fhir.SUPPORTED = registry.supported()


# -- fields the IG maps beyond the basics (adt_a08__ig_extended_fields.hl7) --------------------

SNOMED = "http://snomed.info/sct"


@pytest.fixture(scope="module")
def extended() -> dict[str, Any]:
    bundle = convert(raw("adt_a08__ig_extended_fields.hl7"))
    assert_valid(bundle)
    return bundle


def _related(bundle: dict[str, Any], code: str) -> list[dict[str, Any]]:
    return [
        r
        for r in of_type(bundle, "RelatedPerson")
        if any(c["code"] == code for rel in r.get("relationship", []) for c in rel["coding"])
    ]


def test_pid9_alias_pid20_licence_and_pid21_mother(extended: dict[str, Any]) -> None:
    patient = one(extended, "Patient")
    patient_ref = f"Patient/{patient['id']}"
    # PID-9 → a second name, its use only from XPN.7 (empty here)
    assert patient["name"] == [
        {"use": "official", "family": "QUINTERO", "given": ["SOFIA", "ISABEL"]},
        {"family": "VALE", "given": ["SOFIA"]},
    ]
    # PID-20 (DLN) → identifier of type DL, system from DLN.2, expiry DLN.3
    licence = patient["identifier"][-1]
    assert licence["value"] == "D7340021"
    assert licence["type"]["coding"][0] == {
        "system": V2 + "0203",
        "code": "DL",
        "display": "Driver's license number",
    }
    assert licence["system"] == "urn:connector-gateway:identifier:OR"
    assert licence["period"] == {"end": "2029-05-12"}
    # PID-21 → the mother, a RelatedPerson of the patient with her identifier
    (mother,) = _related(extended, "MTH")
    assert mother["patient"] == {"reference": patient_ref}
    assert mother["relationship"] == [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                    "code": "MTH",
                    "display": "mother",
                }
            ]
        }
    ]
    assert mother["identifier"] == [
        {
            "type": {"coding": [{"system": V2 + "0203", "code": "MR", "display": "Medical record number"}]},
            "system": OID,
            "value": "NW600017",
            "assigner": {"display": "NWG"},
        }
    ]
    # the same patient in the full A01 has no PID-21: no mother from PID there
    assert mother["id"] not in {r["id"] for r in of_type(convert(raw("adt_a01__full.hl7")), "RelatedPerson")}


def test_nk1_30_contact_person_name(extended: dict[str, Any]) -> None:
    (contact,) = _related(extended, "FRND")  # NK1-2 empty: NK1-30 is the only name
    assert contact["name"] == [{"family": "ROSALES", "given": ["TERESA"]}]
    spouse = next(r for r in _related(extended, "SPS") if len(r["name"]) == 2)  # NK1-2 and NK1-30
    assert spouse["name"] == [
        {"family": "QUINTERO", "given": ["MATEO", "L"]},
        {"family": "QUINTERO", "given": ["MATT"]},
    ]


def test_pv1_52_37_43_50_and_status_from_patient_class(extended: dict[str, Any]) -> None:
    encounter = one(extended, "Encounter")
    # A08 without PV1-44/45: the status comes from PV1-2 (I → in-progress)
    assert encounter["status"] == "in-progress"
    assert [i["value"] for i in encounter["identifier"]] == ["VN700001", "ALT-551200"]
    part = encounter["participant"][-1]
    assert part["type"] == [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                    "code": "PART",
                    "display": "Participation",
                }
            ]
        }
    ]
    assert by_ref(extended, part["individual"]["reference"])["name"][0]["family"] == "PATEL"
    destination = by_ref(extended, encounter["hospitalization"]["destination"]["reference"])
    assert destination["name"] == "Skilled nursing facility"
    assert destination["type"][0]["coding"][0] == {
        "system": "urn:connector-gateway:code-system:99NWLOC",
        "code": "SNF",
        "display": "Skilled nursing facility",
    }
    assigned, prior_temporary = encounter["location"]
    assert assigned["status"] == "active"
    assert prior_temporary["status"] == "completed"
    room = by_ref(extended, prior_temporary["location"]["reference"])
    assert (room["name"], by_ref(extended, room["partOf"]["reference"])["name"]) == ("2", "CATH")


def test_dg1_16_asserter_and_pr1_performers(extended: dict[str, Any]) -> None:
    condition = one(extended, "Condition")
    assert by_ref(extended, condition["asserter"]["reference"])["name"][0]["family"] == "VANCE"
    performers = one(extended, "Procedure")["performer"]
    assert [p.get("function", {}).get("coding", [{}])[0].get("code") for p in performers] == [
        "88189002",
        "304292004",
        None,
    ]
    assert performers[0]["function"]["coding"][0] == {
        "system": SNOMED,
        "code": "88189002",
        "display": "Anesthesiologist",
    }
    assert performers[1]["function"]["coding"][0]["display"] == "Surgeon"
    families = [by_ref(extended, p["actor"]["reference"])["name"][0]["family"] for p in performers]
    assert families == ["BRANDT", "OSEI", "LIND"]


def test_in1_policy_number_and_insured_related_person(extended: dict[str, Any]) -> None:
    coverage = one(extended, "Coverage")
    assert coverage["identifier"] == [{"value": "POL-88120", "assigner": coverage["payor"][0]}]
    assert coverage["relationship"]["coding"][0]["code"] == "spouse"
    insured = by_ref(extended, coverage["subscriber"]["reference"])
    assert insured["resourceType"] == "RelatedPerson"
    assert insured["patient"] == {"reference": f"Patient/{one(extended, 'Patient')['id']}"}
    assert insured["name"] == [{"family": "QUINTERO", "given": ["MATEO", "L"]}]
    assert insured["relationship"][0]["coding"][0]["code"] == "SPS"
    # IN1-17 SEL: the patient is the subscriber, no RelatedPerson for the insured
    full = convert(raw("adt_a01__full.hl7"))
    assert one(full, "Coverage")["subscriber"] == {"reference": f"Patient/{one(full, 'Patient')['id']}"}


def test_evn_7_event_facility_is_the_provenance_location(extended: dict[str, Any]) -> None:
    provenance = extended["entry"][-1]["resource"]
    site = by_ref(extended, provenance["location"]["reference"])
    assert site["name"] == "NORTHWIND_GEN"
    assert site["physicalType"]["coding"][0]["code"] == "si"
    assert site["identifier"] == [
        {"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.16.840.1.113883.3.999.1"}
    ]
    assert provenance["location"] in provenance["target"]
    # EVN-5, the operator, stays the enterer agent
    enterer = by_ref(extended, provenance["agent"][1]["who"]["reference"])
    assert enterer["name"][0]["family"] == "REYES"


def test_evn_7_and_pl_4_naming_one_facility_give_one_location() -> None:
    text = (
        "MSH|^~\\&|APP|FAC|RCV|RFAC|20240501103500-0500||ADT^A01|C7|P|2.5.1\r"
        "EVN|A01|20240501103500-0500|||||NWG\r"
        "PID|1||X1^^^NS^MR\r"
        "PV1|1|I|3WEST^312^B^NWG"
    )
    bundle = convert(text.encode())
    assert_valid(bundle)
    sites = [r for r in of_type(bundle, "Location") if r["name"] == "NWG"]
    assert len(sites) == 1
    assert bundle["entry"][-1]["resource"]["location"] == {"reference": f"Location/{sites[0]['id']}"}


def test_msh_22_responsible_and_msh_23_receiver() -> None:
    text = (
        "MSH|^~\\&|APP|FAC|RCV|RFAC|20240501103500-0500||ADT^A01|C22|P|2.8|||||USA||en-US|||"
        "NORTHWIND HEALTH^^^^^NWG&2.16.840.1.113883.3.999&ISO^XX^^^NWHS01|REGIONAL HEALTH EXCHANGE\r"
        "PID|1||X1^^^NS^MR"
    )
    bundle = convert(text.encode())
    assert_valid(bundle)
    header = one(bundle, "MessageHeader")
    responsible = by_ref(bundle, header["responsible"]["reference"])
    assert responsible["name"] == "NORTHWIND HEALTH"
    assert responsible["identifier"][0]["value"] == "NWHS01"
    receiver = by_ref(bundle, header["destination"][0]["receiver"]["reference"])
    assert receiver == {
        "resourceType": "Organization",
        "id": receiver["id"],
        "name": "REGIONAL HEALTH EXCHANGE",
    }
    # without MSH-22/23: no responsible, and the receiving facility MSH-6 is the receiver
    plain = convert(b"MSH|^~\\&|APP|FAC|RCV|RFAC|20240501103500-0500||ADT^A01|C23|P|2.5.1\rPID|1||X1^^^NS^MR")
    plain_header = one(plain, "MessageHeader")
    assert "responsible" not in plain_header
    assert by_ref(plain, plain_header["destination"][0]["receiver"]["reference"])["name"] == "RFAC"
    # MSH-23 alone still gives a destination (its endpoint unknown)
    alone = convert(
        b"MSH|^~\\&|APP|FAC|||20240501103500-0500||ADT^A01|C24|P|2.8|||||||||||HIE\rPID|1||X1^^^NS^MR"
    )
    dest = one(alone, "MessageHeader")["destination"][0]
    assert dest["endpoint"] == "urn:connector-gateway:application:unknown"
    assert by_ref(alone, dest["receiver"]["reference"])["name"] == "HIE"


@pytest.mark.parametrize(
    ("trigger", "pv1_2", "admit", "discharge", "status"),
    [
        ("A08", "E", "", "", "in-progress"),  # PV1-2 through table-hl70004-to-encounter-status
        ("A08", "O", "", "", "in-progress"),
        ("A08", "P", "202405011030", "", "planned"),  # PV1-2 before PV1-44
        ("A08", "U", "", "", "unknown"),
        ("A08", "I", "202405011030", "202405041545", "finished"),  # PV1-45 first
        ("A08", "", "202405011030", "", "in-progress"),  # no class: PV1-44 as before
        ("A08", "Z", "", "", "unknown"),  # a class the table does not know, nothing else
        ("A16", "P", "", "", "planned"),  # an event the trigger table does not list
        ("A03", "P", "", "", "finished"),  # the trigger decides: A03 stays finished
        ("A04", "I", "", "", "planned"),  # … and A04 planned
    ],
)
def test_encounter_status_fallback(trigger: str, pv1_2: str, admit: str, discharge: str, status: str) -> None:
    pv1 = ["PV1", "1", pv1_2, "3WEST^312^B^NWG"] + [""] * 40 + [admit, discharge]
    text = (
        f"MSH|^~\\&|APP|FAC|RCV|RFAC|20240501103500-0500||ADT^{trigger}|S{trigger}|P|2.5.1\r"
        "PID|1||X1^^^NS^MR\r" + "|".join(pv1)
    )
    encounter = one(convert(text.encode()), "Encounter")
    assert len(pv1) - 1 == 45 and encounter["status"] == status


# -- OBX and PV2-1 / PV2-13 (the IG's ADT_A01 OBSERVATION group and PV2 map) --------------------

OBX_PV2 = "adt_a01__obx_pv2.hl7"


def test_adt_obx_are_observations_of_the_patient_and_the_visit() -> None:
    bundle = convert(raw(OBX_PV2))
    assert_valid(bundle)
    patient, encounter = one(bundle, "Patient"), one(bundle, "Encounter")
    weight, height = of_type(bundle, "Observation")
    for obs in (weight, height):
        assert obs["subject"] == {"reference": f"Patient/{patient['id']}"}
        assert obs["encounter"] == {"reference": f"Encounter/{encounter['id']}"}
        assert obs["status"] == "final"
    assert weight["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "29463-7",
        "display": "Body weight",
    }
    assert weight["valueQuantity"] == {
        "value": Decimal("82.5"),
        "unit": "kilogram",
        "system": "http://unitsofmeasure.org",
        "code": "kg",
    }
    assert weight["effectiveDateTime"] == "2024-05-02T08:05:00-05:00"
    assert height["valueString"] == "about 180 cm"
    assert convert(raw(OBX_PV2)) == bundle  # deterministic
    # a pre-admit (A05): the visit is planned, so the observation is not about it
    text = raw(OBX_PV2).replace(b"ADT^A01^ADT_A01", b"ADT^A05^ADT_A05").replace(b"EVN|A01", b"EVN|A05")
    pre_admit = convert(text)
    assert_valid(pre_admit)
    assert one(pre_admit, "Encounter")["status"] == "planned"
    assert all("encounter" not in obs for obs in of_type(pre_admit, "Observation"))
    # a person event (A28) has no Encounter, but still the Observations
    person = convert(raw(OBX_PV2).replace(b"ADT^A01^ADT_A01", b"ADT^A28^ADT_A05"))
    assert of_type(person, "Encounter") == [] and len(of_type(person, "Observation")) == 2


def test_pv2_prior_pending_location_and_referral_source() -> None:
    bundle = convert(raw(OBX_PV2))
    encounter = one(bundle, "Encounter")
    places = [
        (by_ref(bundle, p["location"]["reference"])["name"], p["status"]) for p in encounter["location"]
    ]
    assert places == [("B", "active"), ("A", "planned")]  # the beds of PV1-3 and PV2-1
    assert (
        by_ref(
            bundle, by_ref(bundle, encounter["location"][1]["location"]["reference"])["partOf"]["reference"]
        )["name"]
        == "401"
    )
    roles = {
        p["type"][0]["coding"][0]["code"]: by_ref(bundle, p["individual"]["reference"])["name"][0]["family"]
        for p in encounter["participant"]
    }
    assert roles == {"ATND": "MOREAU", "ADM": "MOREAU", "REF": "HALVORSEN"}
    referrer = next(p for p in encounter["participant"] if p["type"][0]["coding"][0]["code"] == "REF")
    assert (
        referrer["type"][0]["coding"][0]["system"]
        == "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
    )
    assert by_ref(bundle, referrer["individual"]["reference"])["identifier"][0]["value"] == "55120"
