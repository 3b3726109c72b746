"""HL7 v2 → FHIR: our converter against Microsoft FHIR-Converter's expected outputs, by key values.

Usage: ``python bench/hl7_fhir_compare.py [--corpus DIR] [--details]``

``DIR`` is the FHIR-Converter corpus (``messages/*.hl7`` and
``expected/<TYPE>/<name>-expected.json``; default
``../shared/corpora/hl7v2/microsoft-FHIR-Converter``, or a ``corpora`` root
that contains it). For every message with an expected Bundle it converts the
message with :func:`adapters.hl7.to_fhir.convert` and compares the two Bundles
on *key facts*, not on structure: per resource type, a set of normalised
``(field, value)`` pairs (identifier values, names, codes, dates, statuses;
see :data:`FIELDS`). Names and free text are case-folded, dates cut to
``YYYY-MM-DD`` (the two converters treat time zones differently), codes kept
without their system (systems differ legitimately between converters: how
often the systems of matching codes agree is reported as a secondary figure).

A sample *agrees* when every key resource type of the expected Bundle is
present in ours and every key fact of the expected side is present in ours;
facts only we produce are allowed (and counted). The report gives, per message
type (the expected output's folder, e.g. ``ADT_A01``), how many samples there
are, how many we support, convert and agree on, and the commonest differences;
``--details`` lists every sample's differences with their values (the corpus is
public synthetic data).

The functions (:func:`key_values`, :func:`compare`, :func:`run`,
:func:`report`) are importable; the tests load this file by path.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from adapters.hl7 import er7  # noqa: E402
from adapters.hl7.to_fhir import ConversionError, convert, message_type, registry  # noqa: E402

__all__ = [
    "FIELDS",
    "KEY_TYPES",
    "OPTIONAL_MODULES",
    "Comparison",
    "Fact",
    "Sample",
    "code_systems",
    "compare",
    "default_corpus",
    "fact_rate",
    "key_values",
    "load_optional_modules",
    "locate",
    "main",
    "report",
    "run",
    "supported_types",
]

Fact = tuple[str, str]
"""One key fact of a resource type: ``(field, normalised value)``, e.g. ``("family", "everyman")``."""

OPTIONAL_MODULES = ("results", "orders", "immunization", "scheduling", "documents")
"""Converter modules that register more message types; imported when present."""

DEFAULT_CORPUS = REPO.parent / "shared" / "corpora" / "hl7v2" / "microsoft-FHIR-Converter"

_DATE = re.compile(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?")
_SPACE = re.compile(r"\s+")


# --------------------------------------------------------------------------- normalisation


def _text(value: Any) -> str:
    """A name or free text: whitespace collapsed, stripped, case-folded."""
    if not isinstance(value, str):
        return ""
    return _SPACE.sub(" ", value).strip().casefold()


def _token(value: Any) -> str:
    """An identifier value, code or status: stripped, case kept."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return _number(value)
    return value.strip() if isinstance(value, str) else ""


def _number(value: Any) -> str:
    """A number as its shortest decimal string (``12.50`` → ``12.5``, ``1e2`` → ``100``)."""
    try:
        dec = Decimal(str(value).strip())
    except InvalidOperation:
        return _text(value)
    if not dec.is_finite():
        return _text(value)
    text = format(dec.normalize(), "f")
    return "0" if text in ("-0", "") else text


def _date(value: Any) -> str:
    """A FHIR date/dateTime/instant → its date part (``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``)."""
    if not isinstance(value, str):
        return ""
    match = _DATE.match(value.strip())
    if not match:
        return ""
    return "-".join(part for part in match.groups() if part)


def _codes(concept: Any) -> list[str]:
    """The codes of a CodeableConcept (or of a bare Coding)."""
    if not isinstance(concept, dict):
        return []
    codings = concept.get("coding") if "coding" in concept else [concept]
    out = [_token(c.get("code")) for c in codings or [] if isinstance(c, dict)]
    return [c for c in out if c]


def _codings(concept: Any) -> list[tuple[str, str]]:
    """``(code, system)`` of each coding of a CodeableConcept (system ``""`` when absent)."""
    if not isinstance(concept, dict):
        return []
    codings = concept.get("coding") if "coding" in concept else [concept]
    out: list[tuple[str, str]] = []
    for coding in codings or []:
        if isinstance(coding, dict) and _token(coding.get("code")):
            out.append((_token(coding.get("code")), _token(coding.get("system"))))
    return out


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _identifiers(resource: dict[str, Any], *extra: str) -> list[str]:
    out = [_token(i.get("value")) for i in _listed(resource.get("identifier")) if isinstance(i, dict)]
    for name in extra:
        ident = resource.get(name)
        if isinstance(ident, dict):
            out.append(_token(ident.get("value")))
    return [v for v in out if v]


def _names(resource: dict[str, Any], parts: tuple[str, ...] = ("family", "given")) -> list[Fact]:
    out: list[Fact] = []
    for name in _listed(resource.get("name")):
        if not isinstance(name, dict):
            continue
        if "family" in parts and _text(name.get("family")):
            out.append(("family", _text(name.get("family"))))
        if "given" in parts:
            out += [("given", _text(g)) for g in _listed(name.get("given")) if _text(g)]
    return out


def _observation_values(res: dict[str, Any]) -> list[str]:
    """The value[x] of an Observation, normalised to strings (codes for a CodeableConcept)."""
    if "valueQuantity" in res:
        quantity = res["valueQuantity"] or {}
        return [_number(quantity.get("value"))] if quantity.get("value") is not None else []
    if "valueCodeableConcept" in res:
        concept = res["valueCodeableConcept"] or {}
        return _codes(concept) or ([_text(concept.get("text"))] if _text(concept.get("text")) else [])
    for name in ("valueDateTime", "valueDate", "valueInstant"):
        if name in res:
            return [_date(res[name])]
    if "valuePeriod" in res:
        return [_date((res["valuePeriod"] or {}).get("start"))]
    if "valueRatio" in res:
        ratio = res["valueRatio"] or {}
        num = _number((ratio.get("numerator") or {}).get("value"))
        den = _number((ratio.get("denominator") or {}).get("value"))
        return [f"{num}:{den}"]
    if "valueRange" in res:
        span = res["valueRange"] or {}
        low = _number((span.get("low") or {}).get("value")) if (span.get("low") or {}) else ""
        high = _number((span.get("high") or {}).get("value")) if (span.get("high") or {}) else ""
        return [f"{low}-{high}"]
    for name in ("valueInteger", "valueBoolean"):
        if name in res:
            return [_token(res[name])]
    for name in ("valueString", "valueTime"):
        if name in res:
            return [_text(res[name])]
    return []


def _effective(res: dict[str, Any]) -> str:
    for name in ("effectiveDateTime", "effectiveInstant"):
        if name in res:
            return _date(res[name])
    if "effectivePeriod" in res:
        return _date((res["effectivePeriod"] or {}).get("start"))
    return ""


def locate(message: er7.Message, value: str) -> list[str]:
    """The fields (``PID-20``) of ``message`` holding ``value`` in a component or sub-component.

    Names and codes compare case-folded; a ``YYYY-MM-DD`` date matches a DTM starting with its digits.
    Used to say where a missing key fact comes from; ``[]`` when nowhere (a mapped code, a status).
    """
    wanted = value.casefold()
    date = wanted.replace("-", "") if re.fullmatch(r"\d{4}(-\d{2}){0,2}", wanted) else ""
    d = message.delimiters
    found: list[str] = []
    for seg in message.segments:
        for n, raw in enumerate(seg.fields[1:], start=1):
            if seg.id == "MSH" and n <= 2:
                continue
            label = f"{seg.id}-{n}"
            if label in found:
                continue
            for rep in raw.split(d.repetition):
                parts = [sub for comp in rep.split(d.component) for sub in comp.split(d.subcomponent)]
                texts = [_SPACE.sub(" ", er7.unescape(p, d)).strip().casefold() for p in parts]
                if any(t == wanted or (date and t.startswith(date)) for t in texts if t):
                    found.append(label)
                    break
    return found


# --------------------------------------------------------------------------- key facts per type


def _patient(r: dict[str, Any]) -> Iterable[Fact]:
    yield from (("identifier", v) for v in _identifiers(r))
    yield from _names(r)
    yield ("birthDate", _date(r.get("birthDate")))
    yield ("gender", _token(r.get("gender")))


def _encounter(r: dict[str, Any]) -> Iterable[Fact]:
    yield from (("identifier", v) for v in _identifiers(r))
    yield from (("class", c) for c in _codes(r.get("class")))
    yield ("status", _token(r.get("status")))
    yield ("start", _date((r.get("period") or {}).get("start")))


def _observation(r: dict[str, Any]) -> Iterable[Fact]:
    yield from (("code", c) for c in _codes(r.get("code")))
    yield from (("value", v) for v in _observation_values(r))
    yield ("effective", _effective(r))
    yield ("status", _token(r.get("status")))


def _diagnostic_report(r: dict[str, Any]) -> Iterable[Fact]:
    yield from (("code", c) for c in _codes(r.get("code")))
    yield ("status", _token(r.get("status")))


def _service_request(r: dict[str, Any]) -> Iterable[Fact]:
    yield from (("identifier", v) for v in _identifiers(r))
    yield from (("code", c) for c in _codes(r.get("code")))


def _code_only(r: dict[str, Any]) -> Iterable[Fact]:
    yield from (("code", c) for c in _codes(r.get("code")))


def _immunization(r: dict[str, Any]) -> Iterable[Fact]:
    yield from (("vaccine", c) for c in _codes(r.get("vaccineCode")))
    yield ("occurrence", _date(r.get("occurrenceDateTime")))
    yield ("lot", _token(r.get("lotNumber")))


def _appointment(r: dict[str, Any]) -> Iterable[Fact]:
    yield from (("identifier", v) for v in _identifiers(r))
    yield ("status", _token(r.get("status")))
    yield ("start", _date(r.get("start")))


def _document_reference(r: dict[str, Any]) -> Iterable[Fact]:
    yield from (("type", c) for c in _codes(r.get("type")))
    yield from (("identifier", v) for v in _identifiers(r, "masterIdentifier"))


def _related_person(r: dict[str, Any]) -> Iterable[Fact]:
    yield from _names(r)


def _practitioner(r: dict[str, Any]) -> Iterable[Fact]:
    yield from (("identifier", v) for v in _identifiers(r))
    yield from _names(r, ("family",))


def _coverage(r: dict[str, Any]) -> Iterable[Fact]:
    yield from (("identifier", v) for v in _identifiers(r))


def _named(r: dict[str, Any]) -> Iterable[Fact]:
    yield ("name", _text(r.get("name")))


FIELDS: dict[str, Callable[[dict[str, Any]], Iterable[Fact]]] = {
    "Patient": _patient,
    "Encounter": _encounter,
    "Observation": _observation,
    "DiagnosticReport": _diagnostic_report,
    "ServiceRequest": _service_request,
    "Condition": _code_only,
    "AllergyIntolerance": _code_only,
    "Immunization": _immunization,
    "Appointment": _appointment,
    "DocumentReference": _document_reference,
    "RelatedPerson": _related_person,
    "Practitioner": _practitioner,
    "Procedure": _code_only,
    "Coverage": _coverage,
    "Location": _named,
    "Organization": _named,
}
"""Resource type → the function listing its key facts (empty values are dropped)."""

KEY_TYPES: frozenset[str] = frozenset(FIELDS)
"""The resource types compared; any other type (Provenance, Account, Device …) is ignored."""

_CODE_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "Encounter": (("class", "class"),),
    "Observation": (("code", "code"), ("value", "valueCodeableConcept")),
    "DiagnosticReport": (("code", "code"),),
    "ServiceRequest": (("code", "code"),),
    "Condition": (("code", "code"),),
    "AllergyIntolerance": (("code", "code"),),
    "Procedure": (("code", "code"),),
    "Immunization": (("vaccine", "vaccineCode"),),
    "DocumentReference": (("type", "type"),),
}
"""Per type, the coded key facts: (fact field, FHIR element) — for the code-system agreement."""


def _resources(bundle: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
            yield resource


def key_values(bundle: Mapping[str, Any]) -> dict[str, set[Fact]]:
    """Per key resource type present in ``bundle``, the set of its normalised key facts.

    Every key type the Bundle has a resource of is a key (with an empty set when
    none of its resources carries a key value), so that presence is visible.
    """
    out: dict[str, set[Fact]] = {}
    for resource in _resources(bundle):
        kind = resource["resourceType"]
        facts_of = FIELDS.get(kind)
        if facts_of is None:
            continue
        facts = out.setdefault(kind, set())
        facts.update((name, value) for name, value in facts_of(resource) if value)
    return out


def code_systems(bundle: Mapping[str, Any]) -> dict[tuple[str, str, str], set[str]]:
    """``(resource type, fact field, code)`` → the code systems the Bundle uses with that code."""
    out: dict[tuple[str, str, str], set[str]] = {}
    for resource in _resources(bundle):
        kind = resource["resourceType"]
        for fact_field, element in _CODE_FIELDS.get(kind, ()):
            for value in _listed(resource.get(element)):
                for code, system in _codings(value):
                    out.setdefault((kind, fact_field, code), set()).add(system)
    return out


# --------------------------------------------------------------------------- comparison


@dataclass
class Comparison:
    """How our Bundle's key facts compare with the expected Bundle's, per resource type."""

    ours_types: frozenset[str]
    expected_types: frozenset[str]
    agreed: dict[str, set[Fact]] = field(default_factory=dict)
    missing: dict[str, set[Fact]] = field(default_factory=dict)
    """Per shared type: the expected facts our Bundle lacks."""
    extra: dict[str, set[Fact]] = field(default_factory=dict)
    """Per shared type: the facts only our Bundle has (allowed)."""
    expected_facts: int = 0
    """All key facts of the expected side (of every key type, present in ours or not)."""
    systems_compared: int = 0
    """Agreeing coded facts whose system both sides state."""
    systems_agreed: int = 0
    """... of which both sides use the same system for the code."""

    @property
    def shared_types(self) -> frozenset[str]:
        return self.ours_types & self.expected_types

    @property
    def only_expected(self) -> frozenset[str]:
        """Key types the expected Bundle has and ours lacks."""
        return self.expected_types - self.ours_types

    @property
    def only_ours(self) -> frozenset[str]:
        return self.ours_types - self.expected_types

    @property
    def missing_count(self) -> int:
        return sum(len(v) for v in self.missing.values())

    @property
    def extra_count(self) -> int:
        return sum(len(v) for v in self.extra.values())

    @property
    def agreed_count(self) -> int:
        return sum(len(v) for v in self.agreed.values())

    @property
    def agrees(self) -> bool:
        """Every expected key type is present in ours, and every expected key fact too."""
        return not self.only_expected and self.missing_count == 0

    def type_agrees(self, resource_type: str, fields: Iterable[str] | None = None) -> bool:
        """``resource_type`` is on both sides or neither, and no expected fact of it (of ``fields``,
        when given) is missing from ours."""
        if resource_type in self.only_expected:
            return False
        wanted = set(fields) if fields is not None else None
        return not any(wanted is None or name in wanted for name, _ in self.missing.get(resource_type, ()))

    def differences(self) -> list[str]:
        """Labels of the differences that break agreement: ``type missing: X``, ``fact missing: X.field``."""
        labels = [f"type missing: {t}" for t in sorted(self.only_expected)]
        for kind in sorted(self.missing):
            labels += [f"fact missing: {kind}.{name}" for name in sorted({n for n, _ in self.missing[kind]})]
        return labels


def compare(ours: Mapping[str, Any], expected: Mapping[str, Any]) -> Comparison:
    """Compare two Bundles (ours first) on their :func:`key_values` and code systems."""
    mine, theirs = key_values(ours), key_values(expected)
    result = Comparison(
        ours_types=frozenset(mine),
        expected_types=frozenset(theirs),
        expected_facts=sum(len(facts) for facts in theirs.values()),
    )
    for kind in sorted(result.shared_types):
        result.agreed[kind] = mine[kind] & theirs[kind]
        if theirs[kind] - mine[kind]:
            result.missing[kind] = theirs[kind] - mine[kind]
        if mine[kind] - theirs[kind]:
            result.extra[kind] = mine[kind] - theirs[kind]
    our_systems, their_systems = code_systems(ours), code_systems(expected)
    for key, systems in their_systems.items():
        kind, fact_field, code = key
        if (fact_field, code) not in result.agreed.get(kind, set()) or key not in our_systems:
            continue
        theirs_stated, ours_stated = systems - {""}, our_systems[key] - {""}
        if theirs_stated and ours_stated:
            result.systems_compared += 1
            result.systems_agreed += bool(theirs_stated & ours_stated)
    return result


# --------------------------------------------------------------------------- the corpus run


def load_optional_modules() -> list[str]:
    """Import the converter modules that register more message types; the names that imported."""
    loaded = []
    for name in OPTIONAL_MODULES:
        try:
            importlib.import_module(f"adapters.hl7.to_fhir.{name}")
        except ImportError:
            continue
        loaded.append(name)
    return loaded


def supported_types() -> frozenset[str]:
    """Every message type with a builder, the optional modules included."""
    load_optional_modules()
    return registry.supported()


@dataclass
class Sample:
    """One corpus message and how it fared."""

    name: str
    folder: str
    """The expected output's folder (``ADT_A01``), or ``""`` when there is no expected output."""
    message_type: str
    """MSH-9 as our converter reads it (``ADT^A01``)."""
    supported: bool
    error: str = ""
    """The ConversionError code (or exception name) when conversion failed."""
    comparison: Comparison | None = None
    located: dict[tuple[str, str, str], list[str]] = field(default_factory=dict)
    """(resource type, fact field, value) of each missing fact → the message fields holding the value."""

    def sources(self, label: str) -> set[str]:
        """The message fields the missing facts of a :meth:`Comparison.differences` label come from."""
        out: set[str] = set()
        for (kind, name, _), where in self.located.items():
            if label == f"fact missing: {kind}.{name}":
                out.update(where)
        return out

    @property
    def converted(self) -> bool:
        return self.supported and not self.error


def default_corpus() -> Path:
    return DEFAULT_CORPUS


def _corpus_dir(path: Path) -> Path:
    if (path / "messages").is_dir():
        return path
    for inner in (path / "hl7v2" / "microsoft-FHIR-Converter", path / "microsoft-FHIR-Converter"):
        if (inner / "messages").is_dir():
            return inner
    raise FileNotFoundError(f"no FHIR-Converter corpus (messages/, expected/) at {path}")


def run(corpus: Path | None = None) -> list[Sample]:
    """Convert and compare every message of the corpus (those without an expected output too)."""
    root = _corpus_dir(corpus or DEFAULT_CORPUS)
    supported = supported_types()
    expected_of = {p.name.removesuffix("-expected.json"): p for p in root.glob("expected/*/*-expected.json")}
    samples: list[Sample] = []
    for path in sorted(root.glob("messages/*.hl7")):
        raw = path.read_bytes()
        try:
            kind = message_type(er7.parse(raw))
        except er7.ER7Error:
            kind = "?"
        expected_path = expected_of.get(path.stem)
        sample = Sample(
            name=path.stem,
            folder=expected_path.parent.name if expected_path else "",
            message_type=kind,
            supported=kind in supported,
        )
        samples.append(sample)
        if not sample.supported:
            continue
        try:
            ours = convert(raw, envelope_id="compare")
        except ConversionError as exc:
            sample.error = exc.code
            continue
        except Exception as exc:
            sample.error = f"{type(exc).__name__}: {exc}"
            continue
        if expected_path is not None:
            result = compare(ours, json.loads(expected_path.read_text(encoding="utf-8-sig")))
            sample.comparison = result
            message = er7.parse(raw)
            for kind, facts in result.missing.items():
                for name, value in facts:
                    sample.located[(kind, name, value)] = locate(message, value)
    return samples


# --------------------------------------------------------------------------- the report


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def fact_rate(comparisons: Iterable[Comparison]) -> float:
    """The share of the expected key facts that our Bundles have, over ``comparisons``."""
    found = total = 0
    for c in comparisons:
        found += c.agreed_count
        total += c.expected_facts
    return found / total if total else 1.0


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def report(samples: list[Sample], *, details: bool = False, top: int = 3) -> str:
    """The per-message-type table, the ranked differences and (``details``) each sample's."""
    with_expected = [s for s in samples if s.folder]
    folders = sorted({s.folder for s in with_expected})
    rows = [
        [
            "type",
            "samples",
            "supported",
            "converted",
            "agree",
            "Patient ok",
            "facts",
            "systems",
            "top differences",
        ]
    ]
    totals = Counter[str]()
    for folder in [*folders, "TOTAL"]:
        group = [s for s in with_expected if folder in ("TOTAL", s.folder)]
        compared = [s.comparison for s in group if s.comparison is not None]
        diffs = Counter(label for c in compared for label in c.differences())
        facts_ok = sum(c.agreed_count for c in compared)
        facts_all = sum(c.expected_facts for c in compared)
        sys_cmp = sum(c.systems_compared for c in compared)
        sys_ok = sum(c.systems_agreed for c in compared)
        counts = {
            "samples": len(group),
            "supported": sum(s.supported for s in group),
            "converted": sum(s.converted for s in group),
            "agree": sum(c.agrees for c in compared),
            "patient": sum(c.type_agrees("Patient", _PATIENT_CORE) for c in compared),
        }
        if folder != "TOTAL":
            totals.update(counts)
        top_diffs = "; ".join(
            f"{label} ({n})" for label, n in diffs.most_common(top if folder != "TOTAL" else 0)
        )
        rows.append(
            [
                folder,
                str(counts["samples"]),
                str(counts["supported"]),
                str(counts["converted"]),
                str(counts["agree"]),
                str(counts["patient"]),
                f"{facts_ok}/{facts_all} {_pct(facts_ok, facts_all)}" if facts_all else "-",
                f"{sys_ok}/{sys_cmp}" if sys_cmp else "-",
                top_diffs,
            ]
        )
    out = [
        "HL7 v2 → FHIR: key values against FHIR-Converter's expected outputs",
        "",
        _table(rows),
        "",
        "agree: every expected key type present and every expected key fact found in ours;",
        f"Patient ok: Patient present with the expected {', '.join(sorted(_PATIENT_CORE))};",
        "facts: expected key facts found in ours / all expected key facts (missing types included);",
        "systems: agreeing coded facts whose code system is the same on both sides / compared.",
    ]
    compared_all = [s.comparison for s in with_expected if s.comparison is not None]
    if compared_all:
        agree = sum(c.agrees for c in compared_all)
        out.append(
            f"Agreement over converted samples: {agree}/{len(compared_all)} ({_pct(agree, len(compared_all))})"
            f"; key facts: {fact_rate(compared_all):.1%}."
        )
        ranked = Counter(label for c in compared_all for label in c.differences())
        by_folder: dict[str, Counter[str]] = {}
        by_source: dict[str, Counter[str]] = {}
        for s in with_expected:
            if s.comparison is not None:
                for label in s.comparison.differences():
                    by_folder.setdefault(label, Counter())[s.folder.split("_")[0]] += 1
                    by_source.setdefault(label, Counter()).update(s.sources(label))
        out += [
            "",
            "Differences, by number of samples they affect (message families in brackets; then the",
            "message fields that hold the missing values, with the number of samples, when found):",
        ]
        for label, n in ranked.most_common():
            families = ", ".join(f"{f} {c}" for f, c in sorted(by_folder[label].items()))
            out.append(f"  {n:4d}  {label}  [{families}]")
            if by_source.get(label):
                where = ", ".join(f"{f} ({c})" for f, c in by_source[label].most_common(8))
                out.append(f"        from {where}")
        extra_types = Counter(t for c in compared_all for t in c.only_ours)
        if extra_types:
            out.append(
                "Key types only we produce (allowed): "
                + ", ".join(f"{t} ({n})" for t, n in extra_types.most_common())
            )
    failures = [s for s in samples if s.supported and s.error]
    if failures:
        out += ["", "Conversion failures:"] + [f"  {s.name} ({s.message_type}): {s.error}" for s in failures]
    no_expected = [s for s in samples if not s.folder]
    if no_expected:
        out += ["", "Without an expected output (not compared):"]
        out += [
            f"  {s.name} ({s.message_type}): " + ("unsupported" if not s.supported else s.error or "converts")
            for s in no_expected
        ]
    if details:
        out += ["", "Per-sample differences:"]
        for s in with_expected:
            c = s.comparison
            if c is None:
                state = "unsupported" if not s.supported else f"failed: {s.error}"
                out.append(f"- {s.folder}/{s.name} ({s.message_type}): {state}")
                continue
            verdict = "agrees" if c.agrees else "differs"
            out.append(
                f"- {s.folder}/{s.name} ({s.message_type}): {verdict}; "
                f"{sum(len(v) for v in c.agreed.values())} facts agree, "
                f"{c.missing_count} missing, {c.extra_count} extra"
            )
            for kind in sorted(c.only_expected):
                out.append(f"    type missing: {kind}")
            for kind in sorted(c.missing):
                facts = ", ".join(
                    f"{n}={v!r}"
                    + (f" ({'/'.join(s.located[(kind, n, v)])})" if s.located.get((kind, n, v)) else "")
                    for n, v in sorted(c.missing[kind])
                )
                out.append(f"    {kind} missing: {facts}")
            for kind in sorted(c.extra):
                facts = ", ".join(f"{n}={v!r}" for n, v in sorted(c.extra[kind]))
                out.append(f"    {kind} extra: {facts}")
            if c.only_ours:
                out.append(f"    types only ours: {', '.join(sorted(c.only_ours))}")
    return "\n".join(out)


_PATIENT_CORE = ("identifier", "family", "birthDate", "gender")
"""The Patient facts that must agree on every sample (the test holds them)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="the FHIR-Converter corpus")
    parser.add_argument("--details", action="store_true", help="list each sample's differences")
    args = parser.parse_args(argv)
    try:
        samples = run(args.corpus)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(report(samples, details=args.details))
    return 0


if __name__ == "__main__":
    sys.exit(main())
