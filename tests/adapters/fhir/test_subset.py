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
