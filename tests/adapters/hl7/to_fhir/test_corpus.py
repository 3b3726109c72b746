"""The FHIR-Converter corpus: every ADT message of a supported type converts and validates."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from adapters.hl7 import er7
from adapters.hl7.to_fhir import SUPPORTED, convert, message_type
from tests.adapters.hl7.to_fhir.conftest import CORPUS, converted_both_ways

pytestmark = pytest.mark.corpus


def _messages(corpora_dir: Path) -> list[Path]:
    folder = corpora_dir.joinpath(*CORPUS)
    return sorted(folder.glob("ADT*.hl7"))


def test_every_supported_adt_message_converts_and_validates(corpora_dir: Path) -> None:
    paths = _messages(corpora_dir)
    assert paths, "no ADT messages in the corpus"
    done: Counter[str] = Counter()
    for path in paths:
        data = path.read_bytes()
        kind = message_type(er7.parse(data))
        if kind not in SUPPORTED:
            continue
        converted_both_ways(data)
        done[kind] += 1
    assert sum(done.values()) >= 45
    assert {"ADT^A01", "ADT^A03", "ADT^A04", "ADT^A08", "ADT^A40"} <= set(done)


def test_corpus_a01_key_values_agree_with_fhir_converter(corpora_dir: Path) -> None:
    """A spot check against what FHIR-Converter's expected output has for ADT-A01-02."""
    path = corpora_dir.joinpath(*CORPUS, "ADT-A01-02.hl7")
    bundle = convert(path.read_bytes())
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    values = {i["value"] for i in patient["identifier"]}
    assert {"PATID1234", "123456789", "1234567", "PATID567"} <= values
    assert patient["name"][0]["family"] == "EVERYMAN"
    assert patient["birthDate"] == "1988-08-18" and patient["gender"] == "male"
    assert patient["address"][0]["city"] == "Ann Arbor"
    encounter = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter")
    assert encounter["class"]["code"] == "PRENC"
    assert len(encounter["participant"]) == 5  # PV1-7, 8, 9, 17 and 52
