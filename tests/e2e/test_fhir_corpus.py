"""End to end: real-world FHIR Bundles (Synthea, via google/fhir-data-pipes) load through POST /fhir
and every resource reads back equal, meta and server ids aside.

The hospital and practitioner batches (ifNoneExist conditional creates) load
first; the patient transactions then use ``urn:uuid:`` references between their
entries and conditional references (``Practitioner?identifier=...``) to them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import Gateway

pytestmark = pytest.mark.e2e

KEY = "fhir-corpus-0123456789abcdef"


def _references(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            yield value
        for child in value.values():
            yield from _references(child)
    elif isinstance(value, list):
        for child in value:
            yield from _references(child)


def _without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("meta", "id")}


def test_synthea_bundles_load_and_read_back_equal(tmp_path: Path, corpora_dir: Path) -> None:
    folder = corpora_dir / "fhir" / "google-fhir-data-pipes" / "synthea-hiv" / "sample_data"
    setup = sorted(folder.glob("hospitalInformation*.json")) + sorted(
        folder.glob("practitionerInformation*.json")
    )
    patients = sorted(p for p in folder.glob("*.json") if p not in setup)
    assert len(setup) == 2 and len(patients) == 8
    gw = Gateway(
        tmp_path,
        {"auth": {"api_keys": [{"name": "loader", "key": KEY, "scopes": ["fhir:read", "fhir:write"]}]}},
    )
    gw.start()
    try:
        h = httpx.Client(
            base_url=f"{gw.http_url}/fhir", headers={"Authorization": f"Bearer {KEY}"}, timeout=300
        )
        expected: dict[tuple[str, str], dict[str, Any]] = {}
        for path in setup:
            bundle = json.loads(path.read_bytes())
            r = h.post("", content=path.read_bytes(), headers={"Content-Type": "application/fhir+json"})
            assert r.status_code == 200, r.text[:500]
            answers = r.json()["entry"]
            assert len(answers) == len(bundle["entry"])
            for sent, got in zip(bundle["entry"], answers, strict=True):
                status = got["response"]["status"]
                assert status in ("201 Created", "200 OK"), status
                if status.startswith("201"):
                    rtype, rid = got["response"]["location"].split("/")[:2]
                    expected[(rtype, rid)] = sent["resource"]
        conditional: dict[str, str] = {}

        def resolve(ref: str) -> str:
            if ref not in conditional:
                rtype, query = ref.split("?", 1)
                found = h.get(f"/{rtype}?{query}").json()
                assert found["total"] == 1, ref
                conditional[ref] = f"{rtype}/{found['entry'][0]['resource']['id']}"
            return conditional[ref]

        for path in patients:
            bundle = json.loads(path.read_bytes())
            r = h.post("", content=path.read_bytes(), headers={"Content-Type": "application/fhir+json"})
            assert r.status_code == 200, (path.name, r.text[:500])
            answers = r.json()["entry"]
            assert [a["response"]["status"] for a in answers] == ["201 Created"] * len(bundle["entry"])
            assigned = {
                sent["fullUrl"]: "/".join(got["response"]["location"].split("/")[:2])
                for sent, got in zip(bundle["entry"], answers, strict=True)
            }
            for sent, got in zip(bundle["entry"], answers, strict=True):
                resource = sent["resource"]
                for ref in _references(resource):
                    target = ref["reference"]
                    ref["reference"] = assigned.get(target) or (resolve(target) if "?" in target else target)
                rtype, rid = got["response"]["location"].split("/")[:2]
                expected[(rtype, rid)] = resource

        by_type: dict[str, list[str]] = defaultdict(list)
        for rtype, rid in expected:
            by_type[rtype].append(rid)
        seen = 0
        for rtype, ids in by_type.items():
            for start in range(0, len(ids), 100):  # _id takes at most 100 values
                chunk = ids[start : start + 100]
                page = h.get(f"/{rtype}", params={"_id": ",".join(chunk), "_count": "100"}).json()
                assert page["total"] == len(chunk)
                for entry in page["entry"]:
                    got = entry["resource"]
                    assert _without_meta(got) == _without_meta(expected[(rtype, got["id"])]), (
                        rtype,
                        got["id"],
                    )
                    assert got["meta"]["versionId"] == "1"
                    seen += 1
        sent = sum(len(json.loads(p.read_bytes())["entry"]) for p in [*setup, *patients])
        assert seen == len(expected) == sent  # every entry of every Bundle made a resource of its own
        one = next(iter(expected))
        single = h.get(f"/{one[0]}/{one[1]}")
        assert _without_meta(single.json()) == _without_meta(expected[one])
    finally:
        h.close()
        assert gw.stop() == 0
