"""Golden tests of the MDM → DocumentReference conversion (synthetic fixtures, then the FHIR-Converter corpus)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

import adapters.hl7.to_fhir.documents  # noqa: F401  (registers MDM^T01/T02/T04/T05/T06/T08/T09/T10)
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
MULTILINE_TEXT = "\n".join(
    [
        "DISCHARGE SUMMARY",
        "Medications: aspirin 75 mg & atorvastatin 20 mg",
        "   - INR target 2^3 (ratio A|B)",
        "   - see C:\\records\\4410950",
        "Follow-up:",
        "clinic in 2 weeks ~ GP in 6 weeks",
        "Signed: Dr. Vance",
    ]
)


def _text(doc: dict[str, Any], index: int = 0) -> str:
    attachment = doc["content"][index]["attachment"]
    assert attachment["contentType"] == "text/plain; charset=utf-8"
    return base64.b64decode(attachment["data"]).decode("utf-8")


def test_mdm_types_are_registered() -> None:
    expected = {f"MDM^T{n:02d}" for n in (1, 2, 4, 5, 6, 8, 9, 10)}
    assert expected <= registry.supported()
    assert not {"MDM^T03", "MDM^T07", "MDM^T11"} & registry.supported()


@pytest.mark.parametrize("name", sorted(p.name for p in HL7.glob("mdm_*.hl7")))
def test_every_mdm_fixture_converts_validates_and_is_deterministic(name: str) -> None:
    first = converted_fixture(name)
    doc = one(first, "DocumentReference")
    assert {"reference": f"DocumentReference/{doc['id']}"} in first["entry"][0]["resource"]["focus"]


def test_consult_note() -> None:
    bundle = convert(raw("mdm_t02__document.hl7"))
    doc = one(bundle, "DocumentReference")
    assert doc["status"] == "current"
    assert doc["docStatus"] == "final"
    assert doc["masterIdentifier"]["value"] == "DOC-4410921"
    assert doc["type"]["coding"] == [
        {"system": V2 + "0270", "code": "CN", "display": "Consultation"},
        {"system": "http://loinc.org", "code": "11488-4", "display": "Consult note"},
    ]
    assert doc["subject"] == {"reference": f"Patient/{one(bundle, 'Patient')['id']}"}
    assert doc["context"]["encounter"] == [{"reference": f"Encounter/{one(bundle, 'Encounter')['id']}"}]
    assert doc["context"]["period"] == {"start": "2024-03-27T16:30:00+00:00"}
    assert doc["date"] == "2024-03-27T16:30:00+00:00"  # no TXA-6: the activity time
    assert by_ref(bundle, doc["author"][0]["reference"])["name"][0]["family"] == "VANCE"
    assert doc["authenticator"] == doc["author"][0]  # TXA-22
    assert _text(doc) == (
        "Patient seen for annual review. No acute complaints.\n"
        "Plan: continue current medication; follow up in twelve months."
    )


def test_multiline_text_with_escapes() -> None:
    bundle = convert(raw("mdm_t02__multiline.hl7"))
    doc = one(bundle, "DocumentReference")
    assert _text(doc) == MULTILINE_TEXT
    attachment = doc["content"][0]["attachment"]
    assert attachment["title"] == "Discharge summary"
    assert attachment["creation"] == "2024-04-02T10:00:00+01:00"
    assert doc["date"] == "2024-04-02T10:00:00+01:00"
    assert doc["docStatus"] == "final"  # LA
    assert doc["identifier"] == [{"value": "discharge_4410950.txt"}]
    assert doc["description"] == "Discharge summary"
    assert doc["securityLabel"][0]["coding"] == [
        {"system": V2 + "0272", "code": "R", "display": "Restricted"}
    ]
    assert by_ref(bundle, doc["authenticator"]["reference"])["name"][0]["family"] == "MORENO"
    # the parent (TXA-13) is the document mdm_t02__document.hl7 made
    parent = one(convert(raw("mdm_t02__document.hl7")), "DocumentReference")
    assert doc["relatesTo"] == [
        {
            "code": "replaces",
            "target": {
                "reference": f"DocumentReference/{parent['id']}",
                "identifier": {
                    "system": "urn:connector-gateway:identifier:NW_DICT",
                    "value": "DOC-4410921",
                    "assigner": {"display": "NW_DICT"},
                },
            },
        }
    ]


def test_the_document_number_is_the_key() -> None:
    first = one(convert(raw("mdm_t02__multiline.hl7")), "DocumentReference")
    amended = variant(
        "mdm_t02__multiline.hl7",
        ("NWG-MDM02-0002", "NWG-MDM02-0003"),
        ("Signed: Dr. Vance", "Signed: Dr. Vance (amended)"),
    )
    again = one(amended, "DocumentReference")
    assert again["id"] == first["id"]
    assert _text(again).endswith("(amended)")


@pytest.mark.parametrize(
    ("txa17", "txa19", "doc_status", "status"),
    [
        ("DI", "AV", "preliminary", "current"),
        ("IP", "", "preliminary", "current"),
        ("AU", "OB", "final", "superseded"),
        ("AU", "CA", "final", "entered-in-error"),
    ],
)
def test_statuses(txa17: str, txa19: str, doc_status: str, status: str) -> None:
    doc = one(variant("mdm_t02__multiline.hl7", ("|LA|R|AV|", f"|{txa17}|R|{txa19}|")), "DocumentReference")
    assert (doc["docStatus"], doc["status"]) == (doc_status, status)


def test_encapsulated_data() -> None:
    pdf = b"%PDF-1.4 synthetic"
    encoded = base64.b64encode(pdf).decode("ascii")
    bundle = variant(
        "mdm_t02__document.hl7",
        (
            "OBX|2|TX",
            f"OBX|3|ED|11488-4^Consult note^LN|3|NW_DICT^AP^PDF^Base64^{encoded}||||||F\r"
            "OBX|4|ED|11488-4^Consult note^LN|4|^TEXT^^Hex^48656C6C6F||||||F\r"
            "OBX|5|ED|11488-4^Consult note^LN|5|^IM^JPEG^Base64^not*base64||||||F\r"
            "OBX|6|RP|11488-4^Consult note^LN|6|https://docs.example.org/4410921.pdf^NW_DICT^AP^PDF||||||F\r"
            "OBX|2|TX",
        ),
    )
    doc = one(bundle, "DocumentReference")
    text, pdf_part, hex_part, bad_part, link = (c["attachment"] for c in doc["content"])
    assert base64.b64decode(text["data"]).decode().startswith("Patient seen")
    assert pdf_part["contentType"] == "application/pdf"
    assert base64.b64decode(pdf_part["data"]) == pdf
    assert hex_part == {"contentType": "text/plain", "data": base64.b64encode(b"Hello").decode()}
    assert bad_part["contentType"] == "image/jpeg" and "data" not in bad_part
    assert link["url"] == "https://docs.example.org/4410921.pdf"
    assert link["contentType"] == "application/pdf"


def test_addendum_notification_without_content() -> None:
    text = raw("mdm_t02__multiline.hl7").decode("ascii").replace("MDM^T02^MDM_T02", "MDM^T05^MDM_T01")
    bundle = convert("\r".join(s for s in text.split("\r") if not s.startswith("OBX")).encode("ascii"))
    assert_valid(bundle)
    doc = one(bundle, "DocumentReference")
    assert doc["relatesTo"][0]["code"] == "appends"
    # content is required: one attachment with what the TXA says about the document
    assert doc["content"] == [
        {
            "attachment": {
                "contentType": "text/plain",
                "title": "Discharge summary",
                "creation": "2024-04-02T10:00:00+01:00",
            }
        }
    ]


def test_notifications_that_would_erase_content_are_not_converted() -> None:
    with pytest.raises(ConversionError) as caught:
        convert(raw("mdm_t02__document.hl7").replace(b"MDM^T02^MDM_T02", b"MDM^T03^MDM_T01"))
    assert caught.value.code == "unsupported_message_type"


@pytest.mark.corpus
def test_every_corpus_mdm_converts_and_validates(corpora_dir: Path) -> None:
    paths = corpus_messages(corpora_dir, "MDM^", "MDM*.hl7")
    assert len(paths) >= 13
    for path in paths:
        data = path.read_bytes()
        assert message_type(er7.parse(data)) in registry.supported(), path.name
        for bundle in converted_both_ways(data):
            one(bundle, "DocumentReference")


@pytest.mark.corpus
def test_corpus_mdm_key_values_agree_with_fhir_converter(corpora_dir: Path) -> None:
    folder = corpora_dir.joinpath(*CORPUS)
    doc = one(convert((folder / "MDM-T02-02.hl7").read_bytes()), "DocumentReference")
    assert doc["masterIdentifier"] == {"value": "1.2.840.317.5947431.51.20080131160038"}
    assert doc["type"]["coding"][0]["code"] == "DI"
    assert doc["status"] == "current"
    assert doc["context"]["period"] == {"start": "2008-01-31T15:55:00+02:15"}  # FHIR-Converter: 19:10+05:30
    assert _text(doc).splitlines() == [
        "Toilet cylinder crackers model step-mother visor opening communication",
        "Columnist draft inn brown income ikebana circulation prince",
    ]
    long_note = one(convert((folder / "MDM-T02-03.hl7").read_bytes()), "DocumentReference")
    assert len(_text(long_note).splitlines()) == 29
    assert long_note["docStatus"] == "preliminary"  # IP


def test_orders_of_an_mdm_are_service_requests_the_document_is_related_to() -> None:
    """The IG's MDM_T02 map: each COMMON_ORDER (ORC, TQ1, OBR, NTE) → a ServiceRequest, named in
    DocumentReference.context.related; the OBX stay the document's content (no Observation)."""
    bundle = variant(
        "mdm_t02__document.hl7",
        (
            "\rTXA|",
            "\rORC|RE|ORD-5501^NW_EHR|FIL-8802^NW_DICT||CM||||20240327160000+0000|||30122^VANCE^ELEANOR^^^DR"
            "\rTQ1|1||||||20240327163000+0000||R"
            "\rOBR|1|ORD-5501^NW_EHR|FIL-8802^NW_DICT|11488-4^Consult note^LN"
            "\rNTE|1||Dictation requested by the clinic"
            "\rTXA|",
        ),
    )
    request, doc, patient = (
        one(bundle, "ServiceRequest"),
        one(bundle, "DocumentReference"),
        one(bundle, "Patient"),
    )
    assert doc["context"]["related"] == [{"reference": f"ServiceRequest/{request['id']}"}]
    assert [(i["type"]["coding"][0]["code"], i["value"]) for i in request["identifier"]] == [
        ("PLAC", "ORD-5501"),
        ("FILL", "FIL-8802"),
    ]
    assert request["status"] == "completed"  # ORC-5 CM through table 0038
    assert request["intent"] == "order"
    assert request["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "11488-4",
        "display": "Consult note",
    }
    assert request["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert request["encounter"] == {"reference": f"Encounter/{one(bundle, 'Encounter')['id']}"}
    assert request["occurrenceDateTime"] == "2024-03-27T16:30:00+00:00"
    assert request["priority"] == "routine"
    assert request["authoredOn"] == "2024-03-27T16:00:00+00:00"
    assert by_ref(bundle, request["requester"]["reference"])["name"][0]["family"] == "VANCE"
    assert request["note"] == [{"text": "Dictation requested by the clinic"}]
    assert of_type(bundle, "Observation") == []
    # without an ORC there is no ServiceRequest and no context.related
    plain = convert(raw("mdm_t02__document.hl7"))
    assert of_type(plain, "ServiceRequest") == []
    assert "related" not in one(plain, "DocumentReference")["context"]
