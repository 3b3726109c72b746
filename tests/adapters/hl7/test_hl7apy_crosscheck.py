"""Our ER7 reader against hl7apy's own parser: the same segments and the same fields, for every fixture.

hl7apy's fields are rebuilt from the leaf values it read (its ``to_er7()``
re-escapes escape sequences it does not know, such as ``\\.br\\``). hl7apy drops
empty trailing components, sub-components, repetitions and fields
(``BROS^MARIO^^`` → ``BROS^MARIO``); both sides are normalised that way before
comparing. hl7apy needs ``\\r`` segment separators
and decoded text, so each fixture is decoded here independently of our reader
(latin-1 for the 8859/1 fixture, UTF-8 otherwise, BOM and LF/CRLF handled).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hl7apy.parser import parse_message

from adapters.hl7 import er7
from tests.conftest import FIXTURES

FILES = sorted(p for p in (FIXTURES / "hl7").glob("*.hl7") if not p.name.startswith("invalid__"))


def messages(path: Path) -> list[str]:
    """The fixture's messages as text with CR separators, decoded without our reader."""
    data = path.read_bytes()
    text = data.decode("latin-1") if b"8859/1" in data else data.decode("utf-8-sig")
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    lines = [line for line in text.split("\r") if line[:3] not in ("FHS", "BHS", "BTS", "FTS")]
    out: list[list[str]] = []
    for line in lines:
        if line.startswith("MSH"):
            out.append([])
        out[-1].append(line)
    return ["\r".join(m) for m in out]


def normalise(value: str, d: er7.Delimiters) -> str:
    components = [c.rstrip(d.subcomponent) for c in value.split(d.component)]
    while components and not components[-1]:
        components.pop()
    return d.component.join(components)


def _positions(children: list[Any]) -> list[int]:
    """Positions of an element's children: ``XAD_3`` → 3, or their order where hl7apy names them by
    type only (``ST``: Z-segments and other elements it has no definition for)."""
    suffixes = [c.name.rsplit("_", 1)[-1] if "_" in c.name else "" for c in children]
    if all(s.isdigit() for s in suffixes):
        return [int(s) for s in suffixes]
    return list(range(1, len(children) + 1))


def _join(parts: dict[int, str], sep: str) -> str:
    return sep.join(parts.get(i, "") for i in range(1, max(parts, default=0) + 1))


def _raw(element: Any, d: er7.Delimiters) -> str:
    """The ER7 text hl7apy holds for a field, from its leaf values as they were read.

    ``to_er7()`` re-escapes escape sequences hl7apy does not know (``\\.br\\``,
    ``\\Xhh\\``), so the leaves' own values are joined instead.
    """
    if not element.children:
        value = getattr(element.value, "value", element.value)
        # text keeps its escapes as read; dates and numbers are re-rendered by hl7apy
        return value if isinstance(value, str) else str(element.to_er7())
    seps = {"Field": d.component, "Component": d.subcomponent}
    sep = seps.get(type(element).__name__, d.subcomponent)
    children = list(element.children)
    return _join({p: _raw(c, d) for p, c in zip(_positions(children), children, strict=True)}, sep)


def hl7apy_fields(text: str, d: er7.Delimiters) -> list[tuple[str, dict[int, list[str]]]]:
    parsed = parse_message(text, find_groups=False)
    segments = []
    for segment in parsed.children:
        fields: dict[int, list[str]] = defaultdict(list)
        for field in segment.children:
            n = int(field.name.rsplit("_", 1)[1])
            fields[n].append(field.to_er7() if segment.name == "MSH" and n <= 2 else _raw(field, d))
        segments.append((segment.name, dict(fields)))
    return segments


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_fields_match_hl7apy(path: Path) -> None:
    texts = messages(path)
    ours_raw = path.read_bytes()
    batch = er7.split_batch(ours_raw)
    units = batch.units if batch is not None else [ours_raw]
    assert len(units) == len(texts)
    compared = 0
    for unit, text in zip(units, texts, strict=True):
        ours = er7.parse(unit)
        d = ours.delimiters
        theirs = hl7apy_fields(text, d)
        assert [s.id for s in ours.segments] == [name for name, _ in theirs]
        for segment, (name, fields) in zip(ours.segments, theirs, strict=True):
            for n in range(1, max(len(segment.fields), max(fields, default=0) + 1)):
                if name == "MSH" and n <= 2:
                    assert segment.fields[n] == fields[n][0], f"{name}-{n}"
                    continue
                mine = [normalise(r, d) for r in ours.repetitions(segment, n)]
                expected = [normalise(r, d) for r in fields.get(n, [])]
                while mine and not mine[-1]:
                    mine.pop()
                while expected and not expected[-1]:
                    expected.pop()
                assert mine == expected, f"{path.name} {name}-{n}"
                compared += 1
    assert compared > 0
