"""The FHIR R4 resource layer (``adapters.fhir.resources``): reading, validating and writing.

No resource value may ever reach an issue: every test that feeds a bad value
checks that it does not appear in what comes back.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from decimal import Decimal
from typing import Any

import fhir.resources.R4B as R4B
import pytest
from fhir.resources.R4B.resource import Resource
from lxml import etree

from adapters.fhir.outcome import FhirError
from adapters.fhir.resources import (
    FHIR_NS,
    JSON_MEDIA,
    MAX_JSON_DEPTH,
    RESOURCE_TYPES,
    XML_MEDIA,
    load_json,
    model_of,
    pretty_json,
    read_resource,
    serialize,
    validate,
    write_json,
    write_xml,
)
from gateway.adapter import Issue

JSON = "application/fhir+json"
XML = "application/fhir+xml"


def _codes(issues: list[Issue]) -> list[tuple[str, str]]:
    return [(i.code, i.location) for i in issues]


def _read_error(raw: bytes, content_type: str = JSON) -> FhirError:
    with pytest.raises(FhirError) as caught:
        read_resource(raw, content_type)
    return caught.value


# -- resource types --------------------------------------------------------------------------------


def test_resource_types_are_the_r4b_resources() -> None:
    assert {
        "Patient", "Observation", "Claim", "ExplanationOfBenefit", "DocumentReference", "PractitionerRole",
        "Provenance", "AuditEvent", "Bundle", "Parameters", "Binary", "OperationOutcome",
    } <= RESOURCE_TYPES  # fmt: skip
    assert not {"HumanName", "Resource", "DomainResource", "BackboneElement", "Extension"} & RESOURCE_TYPES


def test_resource_types_match_the_imported_model_classes() -> None:
    """The list read from the package's sources is exactly the classes based on Resource."""
    found: set[str] = set()
    for info in pkgutil.iter_modules(R4B.__path__):
        module = importlib.import_module(f"fhir.resources.R4B.{info.name}")
        found |= {
            name
            for name, value in vars(module).items()
            if isinstance(value, type) and issubclass(value, Resource) and value.__module__ == module.__name__
        }
    assert found - {"Resource", "DomainResource"} == RESOURCE_TYPES


def test_model_of_is_the_r4b_model_and_cached() -> None:
    model = model_of("Patient")
    assert model.__module__ == "fhir.resources.R4B.patient"
    assert model_of("Patient") is model
    with pytest.raises(KeyError):
        model_of("HumanName")


# -- reading JSON ---------------------------------------------------------------------------------


def test_json_is_read_whatever_the_charset_parameter() -> None:
    raw = b'{"resourceType": "Patient", "id": "p1", "active": true}'
    expected = {"resourceType": "Patient", "id": "p1", "active": True}
    assert read_resource(raw, "application/fhir+json; charset=utf-8") == expected
    assert read_resource(raw, "Application/JSON") == expected


@pytest.mark.parametrize(
    "raw",
    [
        b'{"resourceType": "Patient", "id": "p1", "id": "p2"}',
        b'{"resourceType": "Patient", "name": [{"family": "Secret-A", "family": "Secret-B"}]}',
    ],
)
def test_duplicate_member_names_are_refused(raw: bytes) -> None:
    error = _read_error(raw)
    assert (error.status, error.code) == (400, "structure")
    assert "twice" in error.issues[0].diagnostics
    assert "Secret" not in repr(error.issues) and "p2" not in repr(error.issues)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"resourceType": "Patient", "name": "Secret-Value"', "invalid"),
        (b"\xff\xfe{}", "invalid"),
        (b'{"resourceType": "Patient", "active": NaN}', "invalid"),
        (
            b'{"resourceType": "Patient", "active": 1e99999999999999999999}',
            "invalid",
        ),  # past Decimal's exponent
        (b'["Secret-Value"]', "structure"),
        (b'{"id": "Secret-Value"}', "structure"),
        (b'{"resourceType": 7}', "structure"),
    ],
)
def test_unreadable_json_is_refused_without_quoting_it(raw: bytes, code: str) -> None:
    error = _read_error(raw)
    assert (error.status, error.code) == (400, code)
    assert "Secret" not in repr(error.issues)


def test_an_unknown_resource_type_is_quoted_only_when_it_looks_like_one() -> None:
    error = _read_error(b'{"resourceType": "Pokemon"}')
    assert (error.status, error.code, error.issues[0].location) == (400, "not-supported", "resourceType")
    assert "Pokemon" in error.issues[0].diagnostics
    error = _read_error(b'{"resourceType": "<script>alert(1)</script>"}')
    assert error.code == "not-supported"
    assert "script" not in repr(error.issues)


def test_other_content_types_are_refused() -> None:
    error = _read_error(b'{"resourceType": "Patient"}', "text/plain")
    assert (error.status, error.code) == (415, "not-supported")


# -- reading XML ----------------------------------------------------------------------------------

PATIENT_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<Patient xmlns="http://hl7.org/fhir"><id value="p1"/>'
    '<meta><lastUpdated value="2026-01-15T09:30:00.000+01:00"/></meta>'
    '<name><family value="Dupré"/><given value="Zoë"/><given><extension url="http://example.org/q">'
    '<valueCode value="CL"/></extension></given></name>'
    '<birthDate value="1980-02-29"><extension url="http://hl7.org/fhir/StructureDefinition/patient-birthTime">'
    '<valueDateTime value="1980-02-29T06:15:00.500+01:00"/></extension></birthDate></Patient>'
).encode()


def test_xml_is_read_into_the_fhir_json_form() -> None:
    assert read_resource(PATIENT_XML, "application/fhir+xml; charset=utf-8") == {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"lastUpdated": "2026-01-15T09:30:00.000+01:00"},
        "name": [
            {
                "family": "Dupré",
                "given": ["Zoë", None],
                "_given": [None, {"extension": [{"url": "http://example.org/q", "valueCode": "CL"}]}],
            }
        ],
        "birthDate": "1980-02-29",
        "_birthDate": {
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                    "valueDateTime": "1980-02-29T06:15:00.500+01:00",
                }
            ]
        },
    }


def test_a_doctype_with_an_entity_is_refused_and_never_read() -> None:
    raw = (
        b'<?xml version="1.0"?>\n<!DOCTYPE Patient [<!ENTITY secret SYSTEM "file:///etc/hostname">'
        b'<!ENTITY inner "ENTITY-SECRET-4411">]>\n'
        b'<Patient xmlns="http://hl7.org/fhir"><id value="p1"/><name><family value="&inner;&secret;"/></name></Patient>'
    )
    error = _read_error(raw, XML)
    assert (error.status, error.code) == (400, "security")
    shown = repr(error.issues) + str(error)
    assert "ENTITY-SECRET-4411" not in shown and "/etc/hostname" not in shown


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'<Patient xmlns="http://hl7.org/fhir"><id value="Secret-1"/>', "invalid"),
        (b'<Patient xmlns="urn:not-fhir"><id value="Secret-1"/></Patient>', "structure"),
        (b'<Patient><id value="Secret-1"/></Patient>', "structure"),
        (b'<Pokemon xmlns="http://hl7.org/fhir"><id value="Secret-1"/></Pokemon>', "not-supported"),
        (b'<Patient xmlns="http://hl7.org/fhir"><nickname value="Secret-1"/></Patient>', "structure"),
    ],
)
def test_unreadable_xml_is_refused_without_quoting_it(raw: bytes, code: str) -> None:
    error = _read_error(raw, XML)
    assert (error.status, error.code) == (400, code)
    assert "Secret" not in repr(error.issues)


def test_an_invalid_value_in_xml_is_an_issue_at_its_path() -> None:
    raw = b'<Patient xmlns="http://hl7.org/fhir"><birthDate value="1999-99-99"/><active value="Secret"/></Patient>'
    error = _read_error(raw, XML)
    assert error.status == 400
    assert set(_codes(error.issues)) == {("value", "Patient.birthDate"), ("value", "Patient.active")}
    assert "1999-99-99" not in repr(error.issues) and "Secret" not in repr(error.issues)


# -- validating -----------------------------------------------------------------------------------


def test_pydantic_errors_become_issues_without_the_input() -> None:
    patient = {
        "resourceType": "Patient",
        "birthDate": "1999-99-99",
        "name": [{"family": 918273645, "given": ["Ok"]}],
        "nickname": "Secret-Nick",
    }
    issues = validate(patient)
    assert _codes(issues) == [
        ("value", "Patient.birthDate"),
        ("value", "Patient.name[0].family"),
        ("structure", "Patient.nickname"),
    ]
    assert all(i.severity == "error" and i.diagnostics.endswith(".") for i in issues)
    shown = repr(issues)
    for value in ("1999-99-99", "918273645", "Secret-Nick"):
        assert value not in shown


def test_missing_required_elements_and_choice_conflicts() -> None:
    assert _codes(validate({"resourceType": "Observation", "code": {"text": "x"}})) == [
        ("required", "Observation.status")
    ]
    both = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "valueQuantity": {"value": 1},
        "valueString": "Secret-Value",
    }
    issues = validate(both)
    assert _codes(issues) == [("structure", "Observation.value[x]")]
    assert "Secret" not in repr(issues)
    issues = validate({"resourceType": "Patient", "deceasedBoolean": True, "deceasedDateTime": "2020-01-01"})
    assert _codes(issues) == [("structure", "Patient.deceased[x]")]


def test_nested_paths_use_indexes() -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "valueQuantity": {"value": "Secret-Value"},
        "component": [{"code": {"text": "a"}}, {"code": {"text": "b"}, "valueInteger": "Secret-Int"}],
    }
    issues = validate(obs)
    assert set(_codes(issues)) == {
        ("value", "Observation.valueQuantity.value"),
        ("value", "Observation.component[1].valueInteger"),
    }
    assert "Secret" not in repr(issues)


def test_the_id_must_be_a_fhir_id() -> None:
    assert _codes(validate({"resourceType": "Patient", "id": "bad id / Secret"})) == [("value", "Patient.id")]
    assert validate({"resourceType": "Patient", "id": "A-1.b"}) == []
    assert "Secret" not in repr(validate({"resourceType": "Patient", "id": "bad id / Secret"}))


def test_unknown_and_missing_resource_types() -> None:
    assert _codes(validate({"resourceType": "Pokemon"})) == [("not-supported", "resourceType")]
    assert _codes(validate({"id": "x"})) == [("required", "")]
    assert "<" not in repr(validate({"resourceType": "<b>"}))


def test_bundle_entries_and_contained_resources_are_validated_at_their_path() -> None:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "birthDate": "Secret-Date"}},
            {"resource": {"resourceType": "Pokemon"}},
            {"resource": {"resourceType": "Patient", "contained": [{"resourceType": "Nope"}], "bogus": 1}},
        ],
    }
    issues = validate(bundle)
    assert _codes(issues) == [
        ("value", "Bundle.entry[0].resource.birthDate"),
        ("not-supported", "Bundle.entry[1].resource.resourceType"),
        ("structure", "Bundle.entry[2].resource.bogus"),
        ("not-supported", "Bundle.entry[2].resource.contained[0].resourceType"),
    ]
    assert "Secret" not in repr(issues)


def test_validate_does_not_change_its_argument() -> None:
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": {"resourceType": "Patient"}}]}
    before = json.dumps(bundle)
    assert validate(bundle) == []
    assert json.dumps(bundle) == before


# -- writing --------------------------------------------------------------------------------------

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
    "effectiveDateTime": "2026-01-15T10:15:00.000Z",
    "issued": "2026-01-15T10:20:31.123456789+01:00",
    "valueQuantity": {"value": Decimal("68.4"), "unit": "kg"},
}


def test_serialize_gives_bytes_and_media_type() -> None:
    body, media = serialize(OBSERVATION, "json")
    assert media == JSON_MEDIA == "application/fhir+json; charset=utf-8"
    assert load_json(body) == OBSERVATION == load_json(write_json(OBSERVATION))
    body, media = serialize(OBSERVATION, "xml")
    assert media == XML_MEDIA == "application/fhir+xml; charset=utf-8"
    root = etree.fromstring(body)
    assert root.tag == f"{{{FHIR_NS}}}Observation"
    assert root.find(f"{{{FHIR_NS}}}status").get("value") == "final"  # type: ignore[union-attr]


def test_xml_keeps_date_times_as_written() -> None:
    """fhir.resources would write Python's form (``…31.123456+01:00``, ``+00:00``): the text is kept."""
    xml = write_xml(OBSERVATION)
    assert b'<issued value="2026-01-15T10:20:31.123456789+01:00"/>' in xml
    assert b'<effectiveDateTime value="2026-01-15T10:15:00.000Z"/>' in xml
    assert read_resource(xml, XML) == OBSERVATION


def test_decimals_keep_their_digits_in_json_and_xml() -> None:
    """FHIR decimals are exact: 1.50 stays 1.50 and a long decimal keeps every digit, both ways."""
    raw = (
        b'{"resourceType": "Observation", "status": "final", "code": {"text": "x"},'
        b' "valueQuantity": {"value": 1.50}, "component": [{"code": {"text": "y"},'
        b' "valueQuantity": {"value": 0.1000000000000000055511151231257827}}]}'
    )
    obs = read_resource(raw, JSON)
    assert b'"value":1.50' in write_json(obs)
    assert b'"value":0.1000000000000000055511151231257827' in write_json(obs)
    xml = write_xml(obs)
    assert b'<value value="1.50"/>' in xml and b'<value value="0.1000000000000000055511151231257827"/>' in xml
    assert write_json(read_resource(xml, XML)) == write_json(obs)


def test_a_decimal_written_without_a_point_keeps_its_digits_past_64_bits() -> None:
    """A decimal of 31 digits and no point reads as an integer, which the JSON writer only takes up to 64
    bits: it is written back as its digits (once, writing it failed)."""
    raw = (
        b'{"resourceType": "Observation", "status": "final", "code": {"text": "x"},'
        b' "valueQuantity": {"value": -1000000000000000000000000000000}, "component": [{"code": {"text": "y"},'
        b' "valueQuantity": {"value": 18446744073709551616}}, {"code": {"text": "z"}, "valueInteger": 7}]}'
    )
    obs = read_resource(raw, JSON)
    assert not [i for i in validate(obs) if i.is_error]
    written = write_json(obs)
    assert (
        b'"value":-1000000000000000000000000000000' in written and b'"value":18446744073709551616' in written
    )
    assert load_json(written) == load_json(raw)
    assert load_json(pretty_json(obs).encode()) == load_json(raw)
    assert serialize(obs, JSON_MEDIA)[0] == written


def test_json_nested_deeper_than_the_cap_is_refused() -> None:
    """Nested past MAX_JSON_DEPTH (here in extensions of extensions) a body is refused when read, as the
    XML form is past its depth cap: the JSON writer stops at 254 levels, and no resource goes that deep."""

    def nested(levels: int) -> bytes:
        extension: dict[str, Any] = {"url": "http://example.org/x", "valueString": "Secret-Value"}
        for _ in range(levels):
            extension = {"url": "http://example.org/x", "extension": [extension]}
        return json.dumps({"resourceType": "Patient", "extension": [extension]}).encode()

    error = _read_error(nested(300))
    assert (error.status, error.code) == (400, "invalid")
    assert "Secret" not in repr(error.issues)
    within = read_resource(nested(MAX_JSON_DEPTH // 2 - 2), JSON)
    assert load_json(write_json(within)) == within


@pytest.mark.parametrize(
    "raw",
    [
        b'{"resourceType": "Patient", "name": [{"text": "Secret-Value \\ud800"}]}',
        b'{"resourceType": "Patient", "\\udc00Secret": 1}',
        b'{"resourceType": "Patient", "name": [{"given": ["\\ude00\\ud83d"]}]}',  # a pair in the wrong order
    ],
    ids=["value", "member_name", "reversed_pair"],
)
def test_a_lone_surrogate_escape_is_refused(raw: bytes) -> None:
    """``\\uD800`` alone reads as a lone surrogate, no Unicode character, which no JSON writer can write
    back (writing such a resource once failed after intake): the body is refused when read."""
    error = _read_error(raw)
    assert (error.status, error.code) == (400, "invalid")
    assert "Secret" not in repr(error.issues)
    pair = read_resource(b'{"resourceType": "Patient", "name": [{"text": "\\ud83d\\ude00"}]}', JSON)
    assert write_json(pair) == '{"resourceType":"Patient","name":[{"text":"\U0001f600"}]}'.encode()


def test_write_xml_refuses_what_is_not_a_resource() -> None:
    with pytest.raises(FhirError) as caught:
        write_xml({"resourceType": "Pokemon"})
    assert caught.value.status == 500
