"""The real-world corpus (Microsoft FHIR-Converter's 139 HL7 v2 samples): every message reads, as is and as CR.

The corpus lives outside the repository (``../shared/corpora``); without it these
tests skip, and fail instead when ``GATEWAY_REQUIRE_CORPORA=1``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.hl7 import er7
from adapters.hl7.adapter import HL7Adapter
from gateway.envelope import Receipt
from tests.conftest import require_or_skip

pytestmark = pytest.mark.corpus

EXPECTED_FILES = 139


@pytest.fixture(scope="module")
def corpus(corpora_dir: Path) -> list[Path]:
    folder = corpora_dir / "hl7v2" / "microsoft-FHIR-Converter" / "messages"
    files = sorted(folder.glob("*.hl7"))
    if not files:
        require_or_skip(f"no HL7 v2 corpus messages in {folder}")
    return files


def test_the_corpus_is_complete(corpus: list[Path]) -> None:
    assert len(corpus) == EXPECTED_FILES


def test_every_corpus_message_parses(corpus: list[Path]) -> None:
    adapter = HL7Adapter("structure")
    receipt = Receipt("test")
    for path in corpus:
        raw = path.read_bytes()
        for variant in (raw, raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r")):
            assert adapter.detect(variant, None), path.name
            assert adapter.split(variant) is None, path.name  # one message per file, MSH-in-a-field included
            env = adapter.parse(variant, receipt)
            assert env.message_type.count("^") == 1, path.name
            assert env.control_id, path.name
            assert env.version, path.name
            assert env.body.segments[0].id == "MSH"
            errors = [i for i in adapter.validate(env) if i.is_error]
            assert errors == [], (path.name, errors)


def test_corpus_edge_cases(corpus: list[Path]) -> None:
    by_name = {p.name: p for p in corpus}
    bom = by_name["ADT04-23.hl7"].read_bytes()
    assert bom.startswith(b"\xef\xbb\xbf")
    msg = er7.parse(bom)
    assert msg.get("MSH-9") == "ADT^A04" and msg.get("MSH-10") == "Q123456789T123456789X123456"
    assert msg.get("PID-17") == "MSH"  # a field whose value is MSH stays a field
    assert [s.id for s in msg.segments].count("MSH") == 1
    # a message with no line end after its last segment keeps its last segment
    no_end = next(p for p in corpus if not p.read_bytes().endswith((b"\n", b"\r")))
    last = no_end.read_bytes().replace(b"\r\n", b"\n").split(b"\n")[-1].decode("utf-8")
    assert er7.parse(no_end.read_bytes()).segments[-1].fields == last.split("|")
