"""Datatype maps: TS/DTM precision and zones, CX systems, XPN, XAD, XTN, CWE systems, XCN, NM."""

from __future__ import annotations

import pytest

from adapters.hl7.to_fhir import datatypes as dt
from tests.adapters.hl7.to_fhir.conftest import context


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2024", "2024"),
        ("202405", "2024-05"),
        ("20240501", "2024-05-01"),
        ("2024050110", "2024-05-01T10:00:00-05:00"),
        ("202405011030", "2024-05-01T10:30:00-05:00"),
        ("20240501103015", "2024-05-01T10:30:15-05:00"),
        ("20240501103015.123", "2024-05-01T10:30:15.123-05:00"),
        ("20240501103015+0200", "2024-05-01T10:30:15+02:00"),
        ("202405011030+0000", "2024-05-01T10:30:00+00:00"),
        ("20240501103015^S", "2024-05-01T10:30:15-05:00"),
        ("", None),
        ('""', None),
        ("20241301", None),
        ("20240230", None),
        ("2024-05-01", None),
        ("20240501256000", None),
    ],
)
def test_date_time_keeps_precision_and_zone(ts: str, expected: str | None) -> None:
    assert dt.date_time(context(), ts) == expected


def test_time_without_any_zone_is_cut_back_to_the_date() -> None:
    ctx = context(msh7="20240501103500")
    assert dt.date_time(ctx, "202405011030") == "2024-05-01"
    assert dt.date_time(ctx, "202405011030+0100") == "2024-05-01T10:30:00+01:00"


def test_date_and_instant() -> None:
    ctx = context()
    assert dt.date(ctx, "20240501103015+0200") == "2024-05-01"
    assert dt.date(ctx, "198705") == "1987-05"
    assert dt.instant(ctx, "20240501") == "2024-05-01T00:00:00-05:00"
    assert dt.instant(context(msh7="20240501"), "20240501") == "2024-05-01T00:00:00+00:00"


def test_cx_system_from_oid_namespace_and_table() -> None:
    ctx = context()
    oid = dt.identifier(ctx, "123^^^NWG&2.16.840.1.113883.3.999&ISO^MR^^20200101^20301231")
    assert oid == {
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                    "code": "MR",
                    "display": "Medical record number",
                }
            ]
        },
        "system": "urn:oid:2.16.840.1.113883.3.999",
        "value": "123",
        "period": {"start": "2020-01-01", "end": "2030-12-31"},
        "assigner": {"display": "NWG"},
    }
    local = dt.identifier(ctx, "A-1^^^GOOD HEALTH^XZ")
    assert local is not None
    assert local["system"] == "urn:connector-gateway:identifier:GOOD%20HEALTH"
    assert local["type"] == {"coding": [{"code": "XZ"}]}
    ssn = dt.identifier(ctx, "123456789^^^USSSA^SS")
    assert ssn is not None and ssn["system"] == "http://hl7.org/fhir/sid/us-ssn"
    assert dt.identifier(ctx, "^^^NWG^MR") is None
    assert dt.identifier(ctx, '""') is None


def test_xpn() -> None:
    ctx = context()
    assert dt.human_name(ctx, "O\\T\\BRIEN^MARY^ANNE^JR^DR^^L^^^^^20200101") == {
        "use": "official",
        "family": "O&BRIEN",
        "given": ["MARY", "ANNE"],
        "prefix": ["DR"],
        "suffix": ["JR"],
        "period": {"start": "2020-01-01"},
    }
    assert dt.human_name(ctx, "^^^^^^L") is None
    assert dt.human_name(ctx, "") is None


def test_xad() -> None:
    ctx = context()
    assert dt.address(ctx, "1 MAIN ST\\S\\REAR^APT 2^TOWN^OR^97000^USA^H^^LANE CO") == {
        "use": "home",
        "line": ["1 MAIN ST^REAR", "APT 2"],
        "city": "TOWN",
        "district": "LANE CO",
        "state": "OR",
        "postalCode": "97000",
        "country": "USA",
    }
    postal = dt.address(ctx, "PO BOX 1^^TOWN^^^^M")
    assert postal == {"type": "postal", "line": ["PO BOX 1"], "city": "TOWN"}
    assert dt.address(ctx, "^^^^^^H") is None


def test_xtn() -> None:
    ctx = context()
    assert dt.contact_point(ctx, "^PRN^PH^^1^541^5550147^12", "work") == {
        "system": "phone",
        "value": "+1 (541) 5550147 ext. 12",
        "use": "home",
    }
    assert dt.contact_point(ctx, "^NET^Internet^a@example.org") == {
        "system": "email",
        "value": "a@example.org",
    }
    assert dt.contact_point(ctx, "(541)555-0412", "home") == {
        "system": "phone",
        "value": "(541)555-0412",
        "use": "home",
    }
    assert dt.contact_point(ctx, "^PRN^CP^^1^541^5550614") == {
        "system": "phone",
        "value": "+1 (541) 5550614",
        "use": "mobile",
    }
    assert dt.contact_point(ctx, "^ORN^FX^^^^5550000")["system"] == "fax"  # type: ignore[index]
    assert dt.contact_point(ctx, "^PRN^PH") is None


@pytest.mark.parametrize(
    ("name", "system"),
    [
        ("LN", "http://loinc.org"),
        ("SCT", "http://snomed.info/sct"),
        ("SNM", "http://snomed.info/sct"),
        ("I10", "http://hl7.org/fhir/sid/icd-10"),
        ("I9C", "http://hl7.org/fhir/sid/icd-9-cm"),
        ("CVX", "http://hl7.org/fhir/sid/cvx"),
        ("UCUM", "http://unitsofmeasure.org"),
        ("RXNORM", "http://www.nlm.nih.gov/research/umls/rxnorm"),
        ("NDC", "http://hl7.org/fhir/sid/ndc"),
        ("HL70063", "http://terminology.hl7.org/CodeSystem/v2-0063"),
        ("99NWINS", "urn:connector-gateway:code-system:99NWINS"),
        ("L", "urn:connector-gateway:code-system:L"),
        ("MY LOCAL", "urn:connector-gateway:code-system:MY%20LOCAL"),
    ],
)
def test_cwe_coding_system_names(name: str, system: str) -> None:
    concept = dt.codeable_concept(context(), f"C1^Text^{name}")
    assert concept == {"coding": [{"system": system, "code": "C1", "display": "Text"}], "text": "Text"}


def test_cwe_two_triplets_original_text_and_table() -> None:
    ctx = context()
    concept = dt.codeable_concept(ctx, "8867-4^Heart rate^LN^HR^Pulse^L^2.74^^Heart rate (measured)")
    assert concept == {
        "coding": [
            {"system": "http://loinc.org", "version": "2.74", "code": "8867-4", "display": "Heart rate"},
            {"system": "urn:connector-gateway:code-system:L", "code": "HR", "display": "Pulse"},
        ],
        "text": "Heart rate (measured)",
    }
    assert dt.codeable_concept(ctx, "^Only text") == {"text": "Only text"}
    assert dt.codeable_concept(ctx, "") is None
    assert dt.codeable_concept(ctx, '""') is None
    mapped = dt.codeable_concept(ctx, "SPO^Spouse^HL70063", "0063")
    assert mapped is not None
    assert mapped["coding"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "SPS", "display": "spouse"},
        {"system": "http://terminology.hl7.org/CodeSystem/v2-0063", "code": "SPO", "display": "Spouse"},
    ]
    unmapped = dt.codeable_concept(ctx, "ZZ", "0063")
    assert unmapped == {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0063", "code": "ZZ"}]}


def test_coding_from_table() -> None:
    ctx = context()
    assert dt.coding_from_table(ctx, "0001", "F") == {
        "system": "http://hl7.org/fhir/administrative-gender",
        "code": "female",
        "display": "Female",
    }
    assert dt.coding_from_table(ctx, "0004", "e") == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "code": "EMER",
        "display": "emergency",
    }
    assert dt.coding_from_table(ctx, "0001", "Q") is None
    assert dt.coding_from_table(ctx, "9999", "F") is None


def test_xcn_practitioner_is_added_once_and_keyed() -> None:
    ctx = context()
    first = dt.practitioner(ctx, "20417^OKAFOR^CHINEDU^^^DR^^^NWG")
    again = dt.practitioner(ctx, "20417^OKAFOR^CHINEDU")  # same sending facility, no authority
    other = dt.practitioner(ctx, "20417^OKAFOR^CHINEDU^^^DR^^^OTHER")
    by_name = dt.practitioner(ctx, "^SMITH^ANN")
    assert first is not None and first.startswith("Practitioner/")
    assert other != first and by_name not in (first, other)
    assert dt.practitioner(ctx, "") is None
    resource = ctx.resource(first)
    assert resource is not None
    assert resource["identifier"][0]["value"] == "20417"
    assert resource["name"] == [{"family": "OKAFOR", "given": ["CHINEDU"], "prefix": ["DR"]}]
    assert again != first  # XCN.9 NWG vs the sending facility FAC: two authorities


def test_quantity() -> None:
    ctx = context()
    assert dt.quantity(ctx, "92", "/min^beats per minute^UCUM") == {
        "value": 92,
        "unit": "beats per minute",
        "system": "http://unitsofmeasure.org",
        "code": "/min",
    }
    assert dt.quantity(ctx, "1.5", "mg") == {"value": 1.5, "unit": "mg"}
    assert dt.quantity(ctx, "high", "mg") is None


def test_escapes_decoded_per_component() -> None:
    ctx = context()
    name = dt.human_name(ctx, "A\\F\\B\\S\\C\\R\\D\\E\\^X")
    assert name == {"family": "A|B^C~D\\", "given": ["X"]}


def test_dln_driver_licence_identifier() -> None:
    ctx = context()
    assert dt.driver_licence(ctx, "D7340021^OR^20290512") == {
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                    "code": "DL",
                    "display": "Driver's license number",
                }
            ]
        },
        "system": "urn:connector-gateway:identifier:OR",
        "value": "D7340021",
        "period": {"end": "2029-05-12"},
        "assigner": {"display": "OR"},
    }
    assert dt.driver_licence(ctx, "D1") == {
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                    "code": "DL",
                    "display": "Driver's license number",
                }
            ]
        },
        "value": "D1",
    }
    assert dt.driver_licence(ctx, "^OR^20290512") is None
    assert dt.driver_licence(ctx, "") is None


def test_xon_organization_is_added_once_and_keyed() -> None:
    ctx = context()
    by_id = dt.organization(ctx, "NORTHWIND HEALTH^^^^^NWG&2.16.840.1.113883.3.999&ISO^XX^^^NWHS01")
    again = dt.organization(ctx, "Northwind^^^^^NWG&2.16.840.1.113883.3.999&ISO^XX^^^NWHS01")
    by_name = dt.organization(ctx, "REGIONAL HEALTH EXCHANGE")
    assert by_id is not None and by_id.startswith("Organization/")
    assert again == by_id and by_name not in (by_id, None)
    assert dt.organization(ctx, "") is None
    assert ctx.resource(by_id) == {
        "resourceType": "Organization",
        "id": by_id.split("/")[1],
        "identifier": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "code": "XX",
                            "display": "Organization identifier",
                        }
                    ]
                },
                "system": "urn:oid:2.16.840.1.113883.3.999",
                "value": "NWHS01",
                "assigner": {"display": "NWG"},
            }
        ],
        "name": "NORTHWIND HEALTH",
    }
    resource = ctx.resource(by_name or "")
    assert resource is not None and resource["name"] == "REGIONAL HEALTH EXCHANGE"
    assert "identifier" not in resource
    # XON.3 (the old ID number) when XON.10 is empty
    old = ctx.resource(dt.organization(ctx, "OLD CLINIC^^4410") or "")
    assert old is not None and old["identifier"] == [{"value": "4410"}]


def test_numbers_keep_the_digits_they_were_sent_with() -> None:
    """FHIR decimals are exact: an NM of 1.50 is written 1.50, not 1.5."""
    from decimal import Decimal

    from adapters.fhir.resources import write_json
    from adapters.hl7.to_fhir.datatypes import number

    assert number("1.50") == Decimal("1.50") and str(number("1.50")) == "1.50"
    assert number("7") == 7 and number("-0.020") == Decimal("-0.020")
    assert number("abc") is None
    assert write_json({"resourceType": "Observation", "valueQuantity": {"value": number("1.50")}}).endswith(
        b'"value":1.50}}'
    )
