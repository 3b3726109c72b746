"""The FHIR patch documents (``adapters.fhir.patch``): JSON Patch and JSON Merge Patch, read and applied.

Failures name the operation and its path, never a value: every test that feeds
a value that must not come back checks the error text for it.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from adapters.fhir.outcome import FhirError
from adapters.fhir.patch import JSON_PATCH, MAX_OPERATIONS, MERGE_PATCH, apply_patch, read_patch
from adapters.fhir.resources import write_json

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {"versionId": "3"},
    "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
    "telecom": [{"system": "phone", "value": "555-0101"}],
    "extension": [{"url": "http://example.org/a/b", "valueString": "x"}],
}


def patched(ops: list[dict[str, Any]]) -> dict[str, Any]:
    return apply_patch(PATIENT, read_patch(json.dumps(ops).encode(), JSON_PATCH))


def error(raw: bytes, media: str = JSON_PATCH) -> FhirError:
    with pytest.raises(FhirError) as caught:
        apply_patch(PATIENT, read_patch(raw, media))
    return caught.value


def test_json_patch_operations_in_order_and_the_input_left_alone() -> None:
    out = patched(
        [
            {"op": "copy", "from": "/name/0", "path": "/name/-"},
            {"op": "replace", "path": "/name/1/family", "value": "Windsor"},
            {"op": "move", "from": "/telecom/0", "path": "/contact"},
            {"op": "remove", "path": "/telecom"},
            {"op": "test", "path": "/extension/0/url", "value": "http://example.org/a/b"},
            {"op": "add", "path": "/name/0/given/0", "value": "Pete"},
        ]
    )
    assert [n["family"] for n in out["name"]] == ["Chalmers", "Windsor"]
    assert out["name"][0]["given"] == ["Pete", "Peter", "James"] and out["contact"]["value"] == "555-0101"
    assert "telecom" not in out
    assert PATIENT["name"] == [{"family": "Chalmers", "given": ["Peter", "James"]}]  # deep-copied first


def test_a_failure_names_the_operation_and_never_a_value() -> None:
    failed = error(
        b'[{"op": "replace", "path": "/name/0/family", "value": "Secretone"},'
        b' {"op": "test", "path": "/telecom/0/value", "value": "Secrettwo"}]'
    )
    assert (failed.status, failed.code) == (422, "processing")
    assert "Operation 2 (test at /telecom/0/value)" in str(failed)
    assert "Secret" not in str(failed) and "555" not in str(failed)
    gone = error(b'[{"op": "remove", "path": "/address/0"}]')
    assert gone.status == 422 and "Operation 1 (remove at /address/0)" in str(gone)
    beyond = error(b'[{"op": "add", "path": "/name/5", "value": {"family": "Secretthree"}}]')
    assert beyond.status == 422 and "Secret" not in str(beyond)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"op": "add"}',
        b'[{"op": "frobnicate", "path": "/a"}]',
        b'[{"op": "add", "path": "/a"}]',  # no value
        b'[{"op": "move", "path": "/a"}]',  # no from
        b'[{"op": "add", "path": "a", "value": 1}]',  # not a JSON Pointer
        b'["add"]',
    ],
)
def test_documents_that_are_not_json_patches_are_400(raw: bytes) -> None:
    with pytest.raises(FhirError) as caught:
        read_patch(raw, JSON_PATCH)
    assert (caught.value.status, caught.value.code) == (400, "invalid")


def test_too_many_operations_are_refused_before_any_work() -> None:
    ops = [{"op": "test", "path": "/id", "value": "p1"}] * (MAX_OPERATIONS + 1)
    with pytest.raises(FhirError) as caught:
        read_patch(json.dumps(ops).encode(), JSON_PATCH)
    assert caught.value.code == "too-costly"


def test_a_patch_keeps_the_resource_type_and_id() -> None:
    assert error(b'[{"op": "replace", "path": "/id", "value": "p2"}]').status == 422
    assert error(b'[{"op": "remove", "path": "/resourceType"}]').status == 422
    assert error(b'[{"op": "replace", "path": "", "value": [1]}]').status == 422
    assert error(b'{"id": "p2"}', MERGE_PATCH).status == 422


def test_merge_patch_replaces_members_and_null_removes_one() -> None:
    doc = b'{"name": [{"family": "Windsor"}], "telecom": null, "meta": {"tag": [{"code": "t"}]}, "active": true}'
    out = apply_patch(PATIENT, read_patch(doc, MERGE_PATCH))
    assert out["name"] == [{"family": "Windsor"}]  # arrays are replaced whole
    assert "telecom" not in out and out["active"] is True
    assert out["meta"] == {"versionId": "3", "tag": [{"code": "t"}]}  # objects merge member by member
    assert apply_patch(PATIENT, read_patch(b'{"gender": "female"}', "application/json"))["gender"] == "female"
    as_json_patch = read_patch(b'[{"op": "remove", "path": "/telecom"}]', "application/json")
    assert "telecom" not in apply_patch(PATIENT, as_json_patch)
    with pytest.raises(FhirError) as caught:
        read_patch(b"[1]", MERGE_PATCH)
    assert caught.value.status == 400


def test_decimals_keep_their_digits() -> None:
    doc = b'[{"op": "add", "path": "/valueQuantity", "value": {"value": 7.10}}]'
    out = apply_patch({"resourceType": "Observation", "id": "o1"}, read_patch(doc, JSON_PATCH))
    assert out["valueQuantity"]["value"] == Decimal("7.10") and b"7.10" in write_json(out)


def test_a_path_is_shown_only_when_it_is_element_names_and_indexes() -> None:
    plain = error(b'[{"op": "remove", "path": "/address/0/line/-"}]')
    assert "Operation 1 (remove at /address/0/line/-)" in str(plain)
    for path in ("/Jane Doe", "/name/0/123-45-6789", "/name/0/Secret~1x", "/" + "a" * 130):
        hidden = error(json.dumps([{"op": "remove", "path": path}]).encode())
        assert "Operation 1 (remove at its path)" in str(hidden) and path[1:12] not in str(hidden)


@pytest.mark.parametrize(
    "raw",
    [
        b'[{"op": ["add"], "path": "/x"}]',
        b'[{"op": {"a": 1}, "path": "/x"}]',
        b"[" * 5000 + b"]" * 5000,
        b'[{"op": "add", "path": "/name/0/text", "value": "\\ud800"}]',  # no character: never written back
        b'[{"op": "add", "path": "/x", "value": 1e99999999999999999999}]',  # past Decimal's exponent
        b'[{"op": "add", "path": "/extension", "value": '
        + b"[" * 300
        + b"]" * 300
        + b"}]",  # past the depth cap
    ],
)
def test_odd_documents_are_400_not_a_crash(raw: bytes) -> None:
    with pytest.raises(FhirError) as caught:
        read_patch(raw, JSON_PATCH)
    assert caught.value.status == 400
