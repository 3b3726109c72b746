"""Subsets of resources (``adapters.fhir.subset``): ``_summary`` and ``_elements`` as FHIR R4 defines them."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.fhir.outcome import FhirError
from adapters.fhir.subset import SUBSETTED, Subset, apply_subset, read_subset

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "meta": {"versionId": "2", "tag": [{"system": "urn:t", "code": "keep"}]},
    "text": {"status": "generated", "div": "<div xmlns='http://www.w3.org/1999/xhtml'>x</div>"},
    "status": "final",
    "_status": {"extension": [{"url": "urn:e", "valueString": "why"}]},
    "code": {"text": "glucose"},
    "subject": {"reference": "Patient/p1"},
    "valueQuantity": {"value": 5.4},
    "note": [{"text": "not a summary element"}],
    "interpretation": [{"text": "summary? no"}],
}


def cut(**params: str) -> dict[str, Any]:
    return apply_subset(OBSERVATION, read_subset(list(params.items())))


def test_summary_true_keeps_the_summary_and_mandatory_elements_and_says_so() -> None:
    out = cut(_summary="true")
    assert set(out) == {"resourceType", "id", "meta", "status", "_status", "code", "subject", "valueQuantity"}
    assert out["meta"]["tag"] == [{"system": "urn:t", "code": "keep"}, SUBSETTED]
    assert OBSERVATION["meta"]["tag"] == [{"system": "urn:t", "code": "keep"}]  # the input is left alone


def test_summary_text_and_data() -> None:
    assert set(cut(_summary="text")) == {"resourceType", "id", "meta", "text", "status", "_status", "code"}
    data = cut(_summary="data")
    assert "text" not in data and set(data) == set(OBSERVATION) - {"text"}


def test_elements_keep_what_is_named_and_what_is_mandatory() -> None:
    out = cut(_elements="subject, note,nonsense")
    assert set(out) == {"resourceType", "id", "meta", "subject", "note", "status", "_status", "code"}


def test_no_subset_keeps_everything_untagged() -> None:
    assert not read_subset([("_summary", "false")]) and not read_subset([("_summary", "count")])
    assert apply_subset(OBSERVATION, Subset()) == OBSERVATION


@pytest.mark.parametrize("params", [[("_summary", "some")], [("_summary", "true"), ("_elements", "id")]])
def test_what_fhir_does_not_define_is_400(params: list[tuple[str, str]]) -> None:
    with pytest.raises(FhirError) as caught:
        read_subset(params)
    assert caught.value.status == 400


def test_summary_true_trims_every_level() -> None:
    document = {
        "resourceType": "DocumentReference",
        "id": "d1",
        "status": "current",
        "content": [{"attachment": {"contentType": "text/plain", "data": "U2VjcmV0", "title": "note"}}],
        "contained": [{"resourceType": "Patient", "id": "c1", "photo": [{"data": "eA=="}], "gender": "male"}],
    }
    out = apply_subset(document, read_subset([("_summary", "true")]))
    assert out["content"] == [{"attachment": {"contentType": "text/plain", "title": "note"}}]  # no payload
    assert "contained" not in out  # not a summary element of a DocumentReference


def test_a_choice_is_named_by_its_base_name() -> None:
    assert "valueQuantity" in cut(_elements="value") and "valueQuantity" in cut(_elements="value[x]")


def test_elements_keep_what_changes_the_meaning_and_the_tag_is_not_doubled() -> None:
    tagged = {**OBSERVATION, "modifierExtension": [{"url": "urn:m", "valueBoolean": True}],
              "meta": {"tag": [{**SUBSETTED, "display": "subsetted"}]}}  # fmt: skip
    out = apply_subset(tagged, read_subset([("_elements", "subject")]))
    assert "modifierExtension" in out
    assert [t["code"] for t in out["meta"]["tag"]] == ["SUBSETTED"]


def test_an_empty_summary_is_no_summary() -> None:
    assert not read_subset([("_summary", "")])
