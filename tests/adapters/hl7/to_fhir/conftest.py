"""Helpers for the HL7 v2 → FHIR tests: fixtures by name, resources of a Bundle by type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters.fhir.resources import validate, write_json
from adapters.hl7 import er7
from adapters.hl7.to_fhir import convert, message_type
from adapters.hl7.to_fhir.context import Context
from adapters.hl7.to_fhir.tables import Tables, default_tables
from tests.conftest import FIXTURES

HL7 = FIXTURES / "hl7"
CORPUS = ("hl7v2", "microsoft-FHIR-Converter", "messages")
"""Where FHIR-Converter's sample messages lie under the shared corpora."""


def raw(name: str) -> bytes:
    return (HL7 / name).read_bytes()


def of_type(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def one(bundle: dict[str, Any], resource_type: str) -> dict[str, Any]:
    found = of_type(bundle, resource_type)
    assert len(found) == 1, f"{len(found)} {resource_type} resources"
    return found[0]


def assert_valid(bundle: dict[str, Any]) -> None:
    """Every resource of the Bundle validates against the R4B models (errors named by place and code)."""
    assert [(i.location, i.code) for i in validate(bundle) if i.severity in ("error", "fatal")] == []


def variant(name: str, *edits: tuple[str, str]) -> dict[str, Any]:
    """The fixture ``name`` with each ``(old, new)`` edit made (each ``old`` must be there), converted
    and checked valid."""
    text = raw(name).decode("ascii")
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    bundle = convert(text.encode("ascii"))
    assert_valid(bundle)
    return bundle


def converted_fixture(name: str) -> dict[str, Any]:
    """The fixture ``name`` converted: the same bytes when converted twice, valid, each entry's URL once."""
    first = convert(raw(name), envelope_id="env-1")
    assert write_json(first) == write_json(convert(raw(name), envelope_id="env-1"))
    assert_valid(first)
    urls = [e["request"]["url"] for e in first["entry"]]
    assert len(urls) == len(set(urls))
    return first


def corpus_messages(corpora_dir: Path, kind: str, pattern: str = "*.hl7") -> list[Path]:
    """FHIR-Converter's sample messages named like ``pattern`` whose MSH-9 type begins with ``kind``
    (``MDM^``, ``VXU^V04``), sorted."""
    folder = corpora_dir.joinpath(*CORPUS)
    return sorted(p for p in folder.glob(pattern) if message_type(er7.parse(p.read_bytes())).startswith(kind))


def converted_both_ways(data: bytes) -> list[dict[str, Any]]:
    """A corpus message as stored (LF segment ends) and with CR ones: each converted, valid, and the same
    again when converted twice; the two Bundles."""
    bundles = []
    for sent in (data, data.replace(b"\n", b"\r")):
        bundle = convert(sent, envelope_id="corpus")
        assert_valid(bundle)
        assert bundle == convert(sent, envelope_id="corpus")
        bundles.append(bundle)
    return bundles


def by_ref(bundle: dict[str, Any], ref: str) -> dict[str, Any]:
    for entry in bundle["entry"]:
        if entry["request"]["url"] == ref:
            resource: dict[str, Any] = entry["resource"]
            return resource
    raise AssertionError(f"no entry {ref}")


def context(msh7: str = "20240501103500-0500", tables: Tables | None = None, escape: str = "\\") -> Context:
    """A context over a minimal message, for datatype tests."""
    text = f"MSH|^~{escape}&|APP|FAC|RCV|RFAC|{msh7}||ADT^A01|C1|P|2.5.1\rPID|1||X1^^^NS^MR"
    return Context(er7.parse_text(text), tables or default_tables(), message_type="ADT^A01")
