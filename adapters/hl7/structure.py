"""HL7 v2 structure validation, compiled once per version from hl7apy's definitions.

hl7apy ships the message structures, segments, fields and data types of every
HL7 v2 version as Python tables (``hl7apy/v2_x/messages.py``, ``segments.py``,
``fields.py``, ``datatypes.py``). Its own parse-and-validate takes 25-60 ms a
message. This module reads the same tables and compiles them, lazily and once
per (version, structure) and (version, segment), into flat rules; validating a
parsed 1.5 KB ADT^A01 (:mod:`adapters.hl7.er7`) then takes ~35 µs
(``bench/hl7_validate.py``). The first message of a version pays 20-30 ms
(mostly the import of hl7apy's tables); a whole version compiles in 0.05-0.3 s
(:func:`compile_version`, for start-up), so no cache on disk is kept.

What is checked
---------------
* **Segment order and cardinality.** A message structure (segments and groups,
  ``sequence`` and ``choice``, min/max cardinalities, ``ANYHL7SEGMENT``
  wildcards) becomes a deterministic automaton over segment ids: a Glushkov
  automaton made deterministic by subset construction. It accepts what a
  regular expression over the ids would, at one dict lookup per segment, never
  backtracks, and knows where and why it stopped. There a breadth-first search
  finds the fewest segments whose insertion would let the message go on: when
  none of them occurs in the message they are reported as
  ``required_segment_missing`` (one issue each); otherwise the segment is out
  of order, or repeats more often than allowed (``segment_sequence_error``).
  The walk then recovers (it assumes the missing segments, or skips the
  misplaced one) and goes on, up to 10 order issues. Z-segments are allowed
  anywhere; segment ids the version does not define, or defined but absent
  from the structure, are ``unexpected_segment`` and skipped.
* **Fields**, in every segment the version defines, wherever it stands:
  required fields present (HL7 null ``""`` counts as present, a value made only
  of separators does not); maximum repetitions; maximum length where hl7apy has
  one (its fields carry none, so these are the limits of its primitive types,
  ST 199, IS 20, NM and SI 16, on leaf fields); non-empty fields beyond the
  last the version defines; and the format of the primitives DT, DTM, TM, NM and
  SI (and of TS's first component, even in versions where hl7apy types it ST),
  in leaf fields and in the components and subcomponents of composites, in
  every repetition. Fields the version withdrew (cardinality 0..0) are not
  checked: feeds still fill them with their older meaning. ``OBX-5`` (type
  ``varies``) is not checked. ID/IS values and coded components are checked
  against tables only for the tables passed in ``tables`` (default none, so
  off; :func:`builtin_tables` gives hl7apy's HL7-defined tables from v2.5 on).

Structures and versions
-----------------------
``structure`` is MSH-9.3. When the version does not define it (or it is
empty), the structure of MSH-9's event is used (:func:`resolve_structure`:
``ADT^A04`` → ``ADT_A01``, ``SIU^S25`` → ``SIU_S12``); an ``unknown_structure``
warning says so unless MSH-9.3 was empty or just ``CODE_EVENT`` (a common
sender habit). Without any known structure only the fields are checked (and
nothing is said for site-defined Z message types).

MSH-12 maps to hl7apy's libraries: ``2.1`` → ``v2_1`` … ``2.5.1`` → ``v2_5_1``
… ``2.8.2`` → ``v2_8_2``. hl7apy has no 2.7.1, so ``2.7.1`` (a technical
correction of 2.7 with the same structures) uses ``v2_7``. Another ``2.x``
uses the nearest lower library with an ``unsupported_version`` warning;
anything else gets that warning and no validation.

Severity policy
---------------
An *error* means the message is unusable or clearly wrong and is answered AE;
a *warning* is kept with the message (its issues, the validation outcome in
lineage) and the message is accepted, as Mirth and HAPI-based engines accept it;
the AA carries no ERR for it (ERR segments go with AE/AR only, since many
receivers read any ERR as a failure). The policy was set against 139
real-world-style messages (Microsoft FHIR-Converter's test data): none of them
has an error, 41 have no issue at all. Their warnings: hl7apy-required fields
left empty (145 in 66 messages, half of them OBX-4 in 2.8, then AL1-1, OBX-3,
OBX-11, MRG-1), data type errors (96 in 31: ``11:30:05`` in TQ1-4 (TM), a name
in OBR-35.2 (DTM), a DTM in a DT), segments of a later version (``PRT`` in
2.5.1) or of another structure (45 in 7), field_too_long (9), segments out of
order (8 in 6), required segments missing (7 in 5: EVN in an ADT^A04, ORC in
OML/ORM, NTE in RDS_O13), structures hl7apy's 2.8 lacks (5: ADT_A47, RDE_O25,
REF_I14). 221 fields beyond their version's last (OBX-29…) are information.

========================  ===========  ==================================================
code                      severity     when
========================  ===========  ==================================================
required_segment_missing  error        for :data:`KEY_SEGMENTS` (PID, MRG, MSA, QPD, SCH,
                                       TXA: the subject of the message)
required_segment_missing  warning      for the others (EVN, ORC … are often left out)
required_field_missing    error        in MSH and for :data:`KEY_FIELDS` (``PID-3`` …)
required_field_missing    warning      elsewhere: hl7apy marks many fields required
                                       (its conditional ones too) that feeds leave empty
data_type_error           error        in MSH
data_type_error           warning      elsewhere: a bad optional date is not fatal
segment_sequence_error    warning      the data is still readable
unexpected_segment        warning
too_many_repetitions      warning
field_too_long            warning      feeds exceed lengths often
table_value_not_found     warning      only with ``tables``
unknown_structure         warning
unsupported_version       warning
unexpected_field          information  feeds send the fields of later versions
========================  ===========  ==================================================

``severities`` overrides the severity of a code for every issue of that code
(for example ``{"segment_sequence_error": "error"}`` for a strict channel).
:data:`ERR_CODES` maps the codes to HL7 table 0357 (``adapters/hl7/err_codes.json``
is what the ACK uses; it agrees, and refines field_too_long to 104 from v2.6).

Locations are ``PID``, ``PID(2)`` (the second PID), ``PID-3``, ``PID-3[2]``
(second repetition), ``PID-7.1``, ``OBX(2)-5[3].7.1``; :func:`parse_location`
and ``er7.parse_path`` read them. Diagnostics name the rule and the field,
never a value; a segment id that is not a well-formed id is not echoed either.
"""

from __future__ import annotations

import importlib
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from itertools import compress, count, repeat
from operator import contains
from types import ModuleType
from typing import Any, Final, Protocol

from gateway.adapter import Issue, Severity

__all__ = [
    "DEFAULT_SEVERITIES",
    "ERR_CODES",
    "KEY_FIELDS",
    "KEY_SEGMENTS",
    "SUPPORTED_VERSIONS",
    "builtin_tables",
    "compile_version",
    "library_for",
    "parse_location",
    "resolve_structure",
    "validate",
]


# --------------------------------------------------------------------------- message shape


class DelimitersLike(Protocol):
    """The delimiters of a parsed message (``adapters.hl7.er7.Delimiters``)."""

    @property
    def field(self) -> str: ...
    @property
    def component(self) -> str: ...
    @property
    def repetition(self) -> str: ...
    @property
    def escape(self) -> str: ...
    @property
    def subcomponent(self) -> str: ...


class SegmentLike(Protocol):
    """A parsed segment: ``fields[0]`` is the id, ``fields[n]`` is SEG-n (MSH-n for MSH)."""

    @property
    def id(self) -> str: ...
    @property
    def fields(self) -> Sequence[str]: ...


class MessageLike(Protocol):
    """A parsed message (``adapters.hl7.er7.Message``)."""

    @property
    def delimiters(self) -> DelimitersLike: ...
    @property
    def segments(self) -> Sequence[SegmentLike]: ...


# --------------------------------------------------------------------------- policy

DEFAULT_SEVERITIES: Final[Mapping[str, Severity]] = {
    "required_field_missing": "warning",  # raised to error for MSH and KEY_FIELDS
    "required_segment_missing": "warning",  # raised to error for KEY_SEGMENTS
    "segment_sequence_error": "warning",
    "unexpected_segment": "warning",
    "too_many_repetitions": "warning",
    "field_too_long": "warning",
    "unexpected_field": "information",
    "data_type_error": "warning",  # raised to error for MSH fields
    "table_value_not_found": "warning",
    "unknown_structure": "warning",
    "unsupported_version": "warning",
}
"""Default severity of each issue code (see the module docstring)."""

KEY_FIELDS: Final[frozenset[str]] = frozenset(
    {
        # Whatever hl7apy says about them, these make a message unusable when absent.
        "MSH-7",
        "MSH-9",
        "MSH-10",
        "MSH-11",
        "MSH-12",
        "PID-3",
        "MSA-1",
        "MSA-2",
    }
)
"""Fields whose absence (when the version requires them) is an error.

Every MSH field the version requires is a key field too; a data type error in any
MSH field is an error.
"""

KEY_SEGMENTS: Final[frozenset[str]] = frozenset({"PID", "MRG", "MSA", "QPD", "SCH", "TXA"})
"""Segments whose absence (where the structure requires them) is an error: the subject of
the message (patient, merge source, acknowledgement, query, appointment, document)."""

ERR_CODES: Final[Mapping[str, str]] = {  # keep in step with err_codes.json
    "segment_sequence_error": "100",
    "required_segment_missing": "100",
    "unexpected_segment": "100",
    "required_field_missing": "101",
    "data_type_error": "102",
    "too_many_repetitions": "102",
    "field_too_long": "102",
    "unexpected_field": "102",
    "table_value_not_found": "103",
    "unknown_structure": "200",
    "unsupported_version": "203",
}
"""Issue code → HL7 table 0357 (message error condition codes) for ERR-3 / ERR-1.4."""

_LIBRARIES: Final[Mapping[str, str]] = {
    "2.1": "v2_1",
    "2.2": "v2_2",
    "2.3": "v2_3",
    "2.3.1": "v2_3_1",
    "2.4": "v2_4",
    "2.5": "v2_5",
    "2.5.1": "v2_5_1",
    "2.6": "v2_6",
    "2.7": "v2_7",
    "2.7.1": "v2_7",  # hl7apy has no 2.7.1; 2.7.1 corrects 2.7 without changing structures
    "2.8": "v2_8",
    "2.8.1": "v2_8_1",
    "2.8.2": "v2_8_2",
}

SUPPORTED_VERSIONS: Final[tuple[str, ...]] = tuple(_LIBRARIES)
"""MSH-12 values validated against their own definitions."""

_VERSION_RE = re.compile(r"\d+(?:\.\d+){1,2}")
_SEGMENT_ID_RE = re.compile(r"[A-Z][A-Z0-9]{2}")
_STRUCTURE_RE = re.compile(r"[A-Z][A-Z0-9]{2}(?:_[A-Z0-9]{2,4})?")


def library_for(version: str) -> str | None:
    """The hl7apy library (``v2_5_1``) for an MSH-12 version id, or ``None``.

    Exact for :data:`SUPPORTED_VERSIONS`; another ``2.x[.y]`` maps to the nearest
    lower supported version (``2.9`` → ``v2_8_2``, ``2.5.2`` → ``v2_5_1``).
    """
    exact = _LIBRARIES.get(version)
    if exact is not None:
        return exact
    if not _VERSION_RE.fullmatch(version):
        return None
    wanted = tuple(int(p) for p in version.split("."))
    if wanted[0] != 2 or wanted < (2, 1):
        return None
    best: str | None = None
    for known, lib in _LIBRARIES.items():
        if tuple(int(p) for p in known.split(".")) <= wanted:
            best = lib
    return best


# --------------------------------------------------------------------------- formats

_DATE = r"\d{4}(?:(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])?)?"  # re.ASCII: \d is [0-9]
_TIME = r"(?:[01]\d|2[0-3])(?:[0-5]\d(?:[0-5]\d(?:\.\d{1,4})?)?)?"
_OFFSET = r"(?:[+-](?:[01]\d|2[0-3])[0-5]\d)?"
_FORMATS: Final[Mapping[str, Callable[[str], re.Match[str] | None]]] = {
    "DT": re.compile(_DATE, re.ASCII).fullmatch,
    "DTM": re.compile(
        r"\d{4}(?:(?:0[1-9]|1[0-2])(?:(?:0[1-9]|[12]\d|3[01])(?:" + _TIME + r")?)?)?" + _OFFSET, re.ASCII
    ).fullmatch,
    "TM": re.compile(_TIME + _OFFSET, re.ASCII).fullmatch,
    "NM": re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", re.ASCII).fullmatch,
    "SI": re.compile(r"\d+", re.ASCII).fullmatch,
}
_FORMAT_NAMES: Final[Mapping[str, str]] = {
    "DT": "a date (YYYY[MM[DD]])",
    "DTM": "a date/time (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])",
    "TM": "a time (HH[MM[SS[.S]]][+/-ZZZZ])",
    "NM": "a number",
    "SI": "a non-negative integer",
}
# hl7apy's limits for its primitive types (base_datatypes.py); applied to leaf fields only.
_MAX_LENGTHS: Final[Mapping[str, int]] = {"ST": 199, "IS": 20, "NM": 16, "SI": 16}


# --------------------------------------------------------------------------- compiled rules


@dataclass(frozen=True, slots=True)
class _Check:
    """One primitive inside a field: ``component``/``subcomponent`` 0 means "the whole"."""

    component: int
    subcomponent: int
    kind: str | None  # a key of _FORMATS, or None
    table: str | None
    fmt: Callable[[str], object] | None = None  # _FORMATS[kind]

    def __post_init__(self) -> None:
        if self.kind is not None:
            object.__setattr__(self, "fmt", _FORMATS[self.kind])


@dataclass(frozen=True, slots=True)
class _FieldRule:
    index: int
    label: str  # "PID-3 (Patient Identifier List)"
    required: bool
    max_reps: int  # 0 = unbounded
    leaf: bool
    max_length: int  # 0 = none
    key: bool  # required_field_missing is an error
    header: bool  # MSH: data_type_error is an error
    checks: tuple[_Check, ...]  # data type checks, sorted by position
    tables: tuple[_Check, ...]  # table checks, sorted by position
    first_component: int  # smallest component index in checks (0 for leaf)
    simple: Callable[[str], object] | None  # the format when the only check is the first primitive


@dataclass(frozen=True, slots=True)
class _SegmentRules:
    id: str
    known: bool
    count: int  # number of defined fields
    skip: int  # first field index to check (3 for MSH: MSH-1/2 are the delimiters)
    required: tuple[_FieldRule, ...]
    rep_slots: tuple[_FieldRule | None, ...]  # by field index - skip: rules limiting repetitions
    lengths: tuple[tuple[int, int, _FieldRule], ...]  # (index, max_length, rule)
    simple: tuple[tuple[int, Callable[[str], object], _FieldRule], ...]  # one primitive to check
    complex: tuple[_FieldRule, ...]  # data types inside composites
    tabled: tuple[_FieldRule, ...]


@dataclass(frozen=True, slots=True)
class _Automaton:
    structure: str
    alphabet: frozenset[str]
    wildcard: bool
    trans: tuple[dict[str, int], ...]
    accept: tuple[bool, ...]


_ANY = "*"
_UNKNOWN_SEGMENT = _SegmentRules("", False, 0, 1, (), (), (), (), (), ())


class _Library:
    """The compiled rules of one hl7apy library (one HL7 version), filled lazily."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.version = name[1:].replace("_", ".")
        self.module: ModuleType = importlib.import_module(f"hl7apy.{name}")
        self.messages: Mapping[str, Any] = self.module.MESSAGES
        self.segment_defs: Mapping[str, Any] = self.module.SEGMENTS
        self.segments: dict[str, _SegmentRules] = {}
        self.automata: dict[str, _Automaton] = {}
        self._lock = threading.Lock()

    # Only ids the version defines are cached: ids taken from messages must not grow the caches.

    def segment(self, sid: str) -> _SegmentRules:
        rules = self.segments.get(sid)
        if rules is None:
            definition = self.segment_defs.get(sid)
            if definition is None or sid == "ANYHL7SEGMENT":
                return _UNKNOWN_SEGMENT
            rules = _compile_segment(sid, definition)
            self.segments[sid] = rules
        return rules

    def automaton(self, structure: str) -> _Automaton | None:
        automaton = self.automata.get(structure)
        if automaton is None:
            node = self.messages.get(structure)
            if node is None:
                return None
            with self._lock:
                automaton = self.automata.get(structure)
                if automaton is None:
                    automaton = _compile_structure(structure, node)
                    self.automata[structure] = automaton
        return automaton


_libraries: dict[str, _Library] = {}
_libraries_lock = threading.Lock()


def _library(name: str) -> _Library:
    lib = _libraries.get(name)
    if lib is None:
        with _libraries_lock:
            lib = _libraries.get(name)
            if lib is None:
                lib = _Library(name)
                _libraries[name] = lib
    return lib


def compile_version(version: str) -> float:
    """Compile every structure and segment of ``version`` now; return the seconds it took.

    Validation compiles lazily (the first message of a structure pays for it);
    call this at start-up to move that cost out of the first messages.
    """
    name = library_for(version)
    if name is None:
        raise ValueError(f"no hl7apy definitions for HL7 version {version!r}")
    started = time.perf_counter()
    lib = _library(name)
    for structure in lib.messages:
        lib.automaton(structure)
    for sid in lib.segment_defs:
        lib.segment(sid)
    return time.perf_counter() - started


# --------------------------------------------------------------------------- compiling segments


def _label(name: Any) -> str:
    if not isinstance(name, str) or not name:
        return ""
    words = " ".join(w.capitalize() for w in name.split("_") if w)
    return words.replace(" S ", "'s ")


def _children(definition: Any) -> tuple[Any, ...]:
    """The child entries of an hl7apy segment/group/datatype definition (tolerating its quirks)."""
    if not definition:
        return ()
    if isinstance(definition[0], str):  # ('sequence', (children...)) or ('sequence',)
        return tuple(definition[1]) if len(definition) > 1 and definition[1] else ()
    return tuple(definition)  # v2_1 ORO: the tuple of children itself


def _primitive(ref: Any) -> str:
    """The data type of the first primitive of a component definition (deeper levels are not separable)."""
    depth = 0
    while ref[0] != "leaf" and depth < 5:
        if ref[2] == "TS":
            return "DTM"
        children = ref[1] or ()
        if not children:
            return str(ref[2])
        ref = children[0][1]
        depth += 1
    return str(ref[2])


def _position_of(name: Any, fallback: int) -> int:
    """The 1-based position in an hl7apy child name (``XTN_2`` → 2); hl7apy omits withdrawn ones."""
    if isinstance(name, str):
        tail = name.rsplit("_", 1)[-1]
        if tail.isdigit():
            return int(tail)
    return fallback


def _component_checks(children: tuple[Any, ...], field_table: str | None) -> list[_Check]:
    checks: list[_Check] = []
    parent_ts = bool(children) and children[0][0] == "TS_1"
    for k, child in enumerate(children, 1):
        ci = _position_of(child[0], k)
        ref = child[1]
        if ref[0] == "leaf":
            dt = "DTM" if (parent_ts and ci == 1) else str(ref[2])
            table = ref[4] if isinstance(ref[4], str) else None
            if ci == 1 and table is None:
                table = field_table
            checks.append(_Check(ci, 0, dt if dt in _FORMATS else None, table))
            continue
        if ref[2] == "TS":
            checks.append(_Check(ci, 0, "DTM", None))
            continue
        for j, sub in enumerate(ref[1] or (), 1):
            si = _position_of(sub[0], j)
            sref = sub[1]
            dt = "DTM" if sub[0] == "TS_1" else _primitive(sref)
            table = sref[4] if sref[0] == "leaf" and isinstance(sref[4], str) else None
            checks.append(_Check(ci, si, dt if dt in _FORMATS else None, table))
        if ci == 1 and field_table:
            checks.append(_Check(1, 1, None, field_table))
    checks.sort(key=lambda c: (c.component, c.subcomponent))
    return checks


def _compile_field(index: int, entry: Any, sid: str) -> _FieldRule:
    _name, ref, card, _kind = entry
    lo, hi = int(card[0]), int(card[1])
    kind, struct, datatype = ref[0], ref[1], str(ref[2])
    long_name, table = ref[-3], ref[-2]  # v2_1 has a few 7-tuples: the name is always third from the end
    table = table if isinstance(table, str) else None
    where = f"{sid}-{index}"
    label = f"{where} ({_label(long_name)})" if _label(long_name) else where
    header = sid == "MSH"
    checks: list[_Check]
    leaf = kind == "leaf" or not struct
    if leaf:
        dt = datatype if datatype in _FORMATS else ("DTM" if datatype == "TS" else None)
        checks = [_Check(0, 0, dt, table)]
    else:
        checks = _component_checks(tuple(struct), table)
    typed = tuple(c for c in checks if c.kind is not None)
    tabled = tuple(c for c in checks if c.table is not None)
    return _FieldRule(
        index=index,
        label=label,
        required=lo >= 1,
        max_reps=hi if hi > 0 else 0,
        leaf=leaf,
        max_length=_MAX_LENGTHS.get(datatype, 0) if leaf else 0,
        key=where in KEY_FIELDS or (header and lo >= 1),
        header=header,
        checks=typed,
        tables=tabled,
        first_component=min((c.component for c in typed), default=0),
        simple=_FORMATS[typed[0].kind]
        if len(typed) == 1 and typed[0].component <= 1 and typed[0].kind
        else None,
    )


def _compile_segment(sid: str, definition: Any) -> _SegmentRules:
    rules: list[_FieldRule] = []
    count = 0
    for entry in _children(definition):
        name = entry[0]
        if not (isinstance(name, str) and name.startswith(sid + "_") and name[len(sid) + 1 :].isdigit()):
            continue
        index = int(name[len(sid) + 1 :])
        count = max(count, index)
        if entry[1] is None or int(entry[2][1]) == 0:
            continue  # (0, 0): withdrawn in this version; feeds still fill it with older meanings
        rules.append(_compile_field(index, entry, sid))
    skip = 3 if sid in ("MSH", "FHS", "BHS") else 1  # fields 1 and 2 are the delimiters
    rules = [r for r in rules if r.index >= skip]
    width = max(count + 1 - skip, 0)
    rep_slots: list[_FieldRule | None] = [None] * width
    for r in rules:
        if r.max_reps:
            rep_slots[r.index - skip] = r
    return _SegmentRules(
        id=sid,
        known=True,
        count=count,
        skip=skip,
        required=tuple(r for r in rules if r.required),
        rep_slots=tuple(rep_slots),
        lengths=tuple((r.index, r.max_length, r) for r in rules if r.max_length),
        simple=tuple((r.index, r.simple, r) for r in rules if r.simple is not None),
        complex=tuple(r for r in rules if r.checks and r.simple is None),
        tabled=tuple(r for r in rules if r.tables),
    )


# --------------------------------------------------------------------------- compiling structures


class _Glushkov:
    """Positions, follow sets and first/last sets of a structure's regular language."""

    def __init__(self) -> None:
        self.symbols: list[str] = []
        self.follow: list[set[int]] = []

    def _position(self, symbol: str) -> tuple[set[int], set[int], bool]:
        self.symbols.append(symbol)
        self.follow.append(set())
        p = len(self.symbols) - 1
        return {p}, {p}, False

    def _concat(
        self, a: tuple[set[int], set[int], bool], b: tuple[set[int], set[int], bool]
    ) -> tuple[set[int], set[int], bool]:
        for p in a[1]:
            self.follow[p] |= b[0]
        first = a[0] | b[0] if a[2] else set(a[0])
        last = b[1] | a[1] if b[2] else set(b[1])
        return first, last, a[2] and b[2]

    def _repeat(
        self, build: Callable[[], tuple[set[int], set[int], bool]], lo: int, hi: int
    ) -> tuple[set[int], set[int], bool]:
        if hi == 0:  # (0, 0): not used in this version
            return set(), set(), True
        if lo <= 1 and hi in (1, -1):
            first, last, nullable = build()
            if hi == -1:
                for p in last:
                    self.follow[p] |= first
            return first, last, nullable or lo == 0
        result: tuple[set[int], set[int], bool] = (set(), set(), True)
        for _ in range(max(lo, 1)):
            result = self._concat(result, build())
        if lo == 0:
            result = (result[0], result[1], True)
        if hi == -1:
            tail = self._repeat(build, 0, -1)
            return self._concat(result, tail)
        for _ in range(hi - max(lo, 1)):
            result = self._concat(result, self._repeat(build, 0, 1))
        return result

    def build(self, node: Any) -> tuple[set[int], set[int], bool]:
        kind = node[0]
        parts: list[tuple[set[int], set[int], bool]] = []
        for child in _children(node):
            name, ref, card, typ = child[0], child[1], child[2], child[3]
            lo, hi = int(card[0]), int(card[1])
            if typ == "GRP":

                def build_group(ref: Any = ref) -> tuple[set[int], set[int], bool]:
                    return self.build(ref)

                parts.append(self._repeat(build_group, lo, hi))
            else:
                symbol = _ANY if name == "ANYHL7SEGMENT" else str(name)

                def build_segment(symbol: str = symbol) -> tuple[set[int], set[int], bool]:
                    return self._position(symbol)

                parts.append(self._repeat(build_segment, lo, hi))
        if kind == "choice":
            first: set[int] = set()
            last: set[int] = set()
            nullable = not parts
            for f, la, n in parts:
                first |= f
                last |= la
                nullable = nullable or n
            return first, last, nullable
        result: tuple[set[int], set[int], bool] = (set(), set(), True)
        for part in parts:
            result = self._concat(result, part)
        return result


_START = -1


def _compile_structure(structure: str, node: Any) -> _Automaton:
    g = _Glushkov()
    first, last, nullable = g.build(node)
    symbols = g.symbols
    alphabet = frozenset(s for s in symbols if s != _ANY)
    wildcard = _ANY in symbols
    start: frozenset[int] = frozenset({_START})
    index: dict[frozenset[int], int] = {start: 0}
    order: list[frozenset[int]] = [start]
    trans: list[dict[str, int]] = []
    accept: list[bool] = []
    i = 0
    while i < len(order):
        state = order[i]
        i += 1
        moves: dict[str, set[int]] = {}
        for p in state:
            for q in first if p == _START else g.follow[p]:
                moves.setdefault(symbols[q], set()).add(q)
        anywhere = moves.get(_ANY, set())
        row: dict[str, int] = {}
        targets: dict[str, set[int]] = {s: qs | anywhere for s, qs in moves.items() if s != _ANY}
        if anywhere:
            targets[_ANY] = set(anywhere)
            for s in alphabet:  # an alphabet symbol may also be taken by the wildcard
                targets.setdefault(s, set(anywhere))
        for s, qs in targets.items():
            key = frozenset(qs)
            if key not in index:
                index[key] = len(order)
                order.append(key)
            row[s] = index[key]
        trans.append(row)
        accept.append(any(p in last for p in state) or (nullable and _START in state))
    return _Automaton(structure, alphabet, wildcard, tuple(trans), tuple(accept))


# --------------------------------------------------------------------------- structure ids

_EVENT_STRUCTURES: dict[tuple[str, str], tuple[str, ...]] = {}


def _events(code: str, structures: tuple[str, ...], events: str) -> None:
    for event in events.split():
        _EVENT_STRUCTURES[(code, event)] = structures


# A fallback from HL7 table 0354 for messages without MSH-9.3, or whose MSH-9.3 names a
# structure the version does not define. Candidates are tried in order.
_events("ADT", ("ADT_A01",), "A01 A04 A08 A13")
_events("ADT", ("ADT_A05", "ADT_A01"), "A05 A14 A28 A31")
_events("ADT", ("ADT_A06",), "A06 A07")
_events("ADT", ("ADT_A09",), "A09 A10 A11")
_events("ADT", ("ADT_A12", "ADT_A09"), "A12")
_events("ADT", ("ADT_A21",), "A21 A22 A23 A25 A26 A27 A29 A32 A33")
_events("ADT", ("ADT_A30",), "A30 A34 A35 A36 A46 A47 A48 A49")
_events("ADT", ("ADT_A39",), "A39 A40 A41 A42")
_events("ADT", ("ADT_A44", "ADT_A43"), "A44")
_events("ADT", ("ADT_A50",), "A50 A51")
_events("ADT", ("ADT_A52",), "A52 A53 A55")
_events("ADT", ("ADT_A61",), "A61 A62")
_events("SIU", ("SIU_S12",), " ".join(f"S{n}" for n in range(12, 27)))
_events("SRM", ("SRM_S01",), " ".join(f"S{n:02d}" for n in range(1, 12)))
_events("SRR", ("SRR_S01",), " ".join(f"S{n:02d}" for n in range(1, 12)))
_events("MDM", ("MDM_T01",), "T01 T03 T05 T07 T09 T11")
_events("MDM", ("MDM_T02",), "T02 T04 T06 T08 T10")
_events("BAR", ("BAR_P01",), "P01 P05")
_events("ORU", ("ORU_R30",), "R30 R31 R32")
_events("PPR", ("PPR_PC1",), "PC1 PC2 PC3")
_events("PPG", ("PPG_PCG",), "PCG PCH PCJ")
_events("PPP", ("PPP_PCB",), "PCB PCC PCD")


def resolve_structure(version: str, code: str, event: str, declared: str = "") -> str | None:
    """The message structure id to validate against, or ``None`` when none fits.

    ``declared`` (MSH-9.3) wins when the version defines it; then ``CODE_EVENT``;
    then HL7 table 0354's mapping of events to shared structures (``ADT^A04`` →
    ``ADT_A01``, ``SIU^S14`` → ``SIU_S12``); ``ACK`` for any acknowledgement.
    """
    name = library_for(version)
    if name is None:
        return None
    messages = _library(name).messages
    candidates = [declared, f"{code}_{event}", *_EVENT_STRUCTURES.get((code, event), ())]
    if code == "ACK":
        candidates.append("ACK")
    for candidate in candidates:
        if candidate and candidate in messages:
            return candidate
    return None


# --------------------------------------------------------------------------- tables


def builtin_tables(version: str) -> dict[str, frozenset[str]]:
    """hl7apy's HL7 tables for ``version`` (v2.5 and later ship them), keyed ``HL70001``.

    They contain the HL7-defined values only; user-defined (IS) tables are empty
    or absent there, and real feeds extend many HL7 tables locally, so pass only
    the tables you mean to enforce.
    """
    name = library_for(version)
    if name is None:
        return {}
    try:
        module = importlib.import_module(f"hl7apy.{name}.tables")
    except ImportError:
        return {}
    out: dict[str, frozenset[str]] = {}
    for key, entry in module.TABLES.items():
        values = entry[1] if isinstance(entry, tuple) and len(entry) > 1 else ()
        if values:
            out[str(key)] = frozenset(str(v) for v in values)
    return out


# --------------------------------------------------------------------------- locations

_LOCATION_RE = re.compile(
    r"(?P<seg>[A-Z0-9]{3})(?:\((?P<occ>\d+)\))?"
    r"(?:-(?P<field>\d+)(?:\[(?P<rep>\d+)\])?(?:\.(?P<comp>\d+)(?:\.(?P<sub>\d+))?)?)?"
)


def parse_location(location: str) -> tuple[str, int, int | None, int | None, int | None, int | None] | None:
    """Split ``PID(2)-3[4].5.6`` into (segment, occurrence, field, repetition, component, subcomponent).

    Missing parts are ``None`` (occurrence defaults to 1); ``None`` for a location of
    another shape. The parts are what ERR-2 (ERL) carries.
    """
    m = _LOCATION_RE.fullmatch(location)
    if m is None:
        return None

    def num(group: str) -> int | None:
        value = m.group(group)
        return int(value) if value else None

    field = num("field")
    rep = num("rep")
    if field is not None and rep is None:
        rep = 1
    return m.group("seg"), num("occ") or 1, field, rep, num("comp"), num("sub")


def _field_location(run: _Run, pos: int, index: int, rep: int = 1, comp: int = 0, sub: int = 0) -> str:
    out = f"{run.where(pos)}-{index}"
    if rep > 1:
        out += f"[{rep}]"
    if comp:
        out += f".{comp}"
        if sub:
            out += f".{sub}"
    return out


# --------------------------------------------------------------------------- validation


MAX_ISSUES: Final = 100
"""Issues one message gets at most; then validation stops with a ``too_many_issues`` error (an ACK
carries one ERR per issue, and a small message of many bad segments must not cost more than that)."""


class _Run:
    """One validation: the message's segments, the issue list and the severity policy."""

    __slots__ = ("_occurrence", "full", "issues", "segments", "severities")

    def __init__(self, severities: Mapping[str, Severity] | None, segments: Sequence[SegmentLike]) -> None:
        self.issues: list[Issue] = []
        self.severities = severities
        self.segments = segments
        self.full = False
        """Set once :data:`MAX_ISSUES` were found: the checks stop."""
        self._occurrence: list[int] | None = None

    def add(self, code: str, location: str, diagnostics: str, key: bool = False) -> None:
        if self.full:
            return
        if len(self.issues) >= MAX_ISSUES:
            self.full = True
            self.issues.append(
                Issue(
                    "error",
                    "too_many_issues",
                    "",
                    f"Validation stopped after {MAX_ISSUES} issues; the rest of the message was not checked.",
                )
            )
            return
        severity: Severity | None = None
        if self.severities is not None:
            severity = self.severities.get(code)
        if severity is None:
            severity = "error" if key else DEFAULT_SEVERITIES.get(code, "warning")
        self.issues.append(Issue(severity, code, location, diagnostics))

    def where(self, pos: int) -> str:
        """``PID`` or ``PID(2)`` for the segment at ``pos`` (occurrences counted once per message)."""
        sid = self.segments[pos].id
        if not _SEGMENT_ID_RE.fullmatch(sid):
            return ""
        if self._occurrence is None:
            seen: dict[str, int] = {}
            occurrence = []
            for segment in self.segments:
                n = seen[segment.id] = seen.get(segment.id, 0) + 1
                occurrence.append(n)
            self._occurrence = occurrence
        n = self._occurrence[pos]
        return sid if n == 1 else f"{sid}({n})"


def _check_fields(
    run: _Run,
    segments: Sequence[SegmentLike],
    pos: int,
    rules: _SegmentRules,
    delimiters: DelimitersLike,
    tables: Mapping[str, AbstractSet[str]] | None,
) -> None:
    fields = segments[pos].fields
    n = len(fields)
    rep_sep = delimiters.repetition
    comp_sep = delimiters.component
    sub_sep = delimiters.subcomponent
    separators = comp_sep + rep_sep + sub_sep

    for rule in rules.required:
        i = rule.index
        if i < n:
            value = fields[i]
            if value and (value[0] not in separators or value.strip(separators)):
                continue
        run.add(
            "required_field_missing",
            _field_location(run, pos, i),
            f"{rule.label} is required but empty.",
            rule.key,
        )

    present = fields[rules.skip :]
    if rep_sep in "".join(present):  # most segments repeat nothing: one C-level test
        rep_slots = rules.rep_slots
        # the positions of the fields holding a repetition separator, found by C code
        for k in compress(count(), map(contains, present, repeat(rep_sep))):
            if k >= len(rep_slots):
                break
            limited = rep_slots[k]
            if limited is not None and present[k].count(rep_sep) >= limited.max_reps:
                run.add(
                    "too_many_repetitions",
                    _field_location(run, pos, limited.index),
                    f"{limited.label} allows at most {limited.max_reps} repetition(s) "
                    f"but has {present[k].count(rep_sep) + 1}.",
                )

    for i, limit, rule in rules.lengths:
        if i >= n:
            break
        if len(fields[i]) > limit:
            for r, rep_value in enumerate(fields[i].split(rep_sep), 1):
                if len(rep_value) > limit:
                    run.add(
                        "field_too_long",
                        _field_location(run, pos, i, r),
                        f"{rule.label} is longer than {limit} characters.",
                    )

    for i, fmt, rule in rules.simple:
        if i >= n:
            break
        value = fields[i]
        if value and fmt(value) is None and value != '""':
            _check_types(run, pos, rule, value, rep_sep, comp_sep, sub_sep)

    for rule in rules.complex:
        i = rule.index
        if i >= n:
            break
        value = fields[i]
        if (
            value
            and value != '""'
            and (rule.first_component <= 1 or value.count(comp_sep) + 1 >= rule.first_component)
        ):
            _check_types(run, pos, rule, value, rep_sep, comp_sep, sub_sep)

    defined = rules.count
    if n - 1 > defined and any(fields[defined + 1 :]):
        for i in range(defined + 1, n):
            if fields[i]:
                run.add(
                    "unexpected_field",
                    _field_location(run, pos, i),
                    f"{rules.id} defines {defined} fields in this version; field {i} is not one of them.",
                )
                break

    if tables:
        for rule in rules.tabled:
            i = rule.index
            if i >= n:
                break
            value = fields[i]
            if not value or value == '""':
                continue
            _check_tables(run, pos, rule, value, delimiters, tables)


def _check_types(
    run: _Run,
    pos: int,
    rule: _FieldRule,
    value: str,
    rep_sep: str,
    comp_sep: str,
    sub_sep: str,
) -> None:
    """Check the data types inside one non-empty field value (all repetitions)."""
    checks = rule.checks
    first = rule.first_component
    for r, rep in enumerate(value.split(rep_sep) if rep_sep in value else (value,), 1):
        if not rep or rep == '""':
            continue
        if rule.leaf:
            primitive = rep
            if comp_sep in primitive:
                primitive = primitive[: primitive.index(comp_sep)]
            if sub_sep in primitive:
                primitive = primitive[: primitive.index(sub_sep)]
            check = checks[0]
            if primitive and primitive != '""' and check.fmt is not None and check.fmt(primitive) is None:
                _type_issue(run, pos, rule, check, r)
            continue
        if first > 1 and rep.count(comp_sep) + 1 < first:
            continue
        components = rep.split(comp_sep)
        count = len(components)
        for check in checks:
            ci = check.component
            if ci > count:
                break
            primitive = components[ci - 1]
            if not primitive:
                continue
            si = check.subcomponent
            if si:
                if sub_sep not in primitive:
                    if si > 1:
                        continue
                else:
                    subs = primitive.split(sub_sep)
                    if si > len(subs):
                        continue
                    primitive = subs[si - 1]
            elif sub_sep in primitive:
                primitive = primitive[: primitive.index(sub_sep)]
            if primitive and primitive != '""' and check.fmt is not None and check.fmt(primitive) is None:
                _type_issue(run, pos, rule, check, r)


def _type_issue(run: _Run, pos: int, rule: _FieldRule, check: _Check, rep: int) -> None:
    kind = check.kind or ""
    run.add(
        "data_type_error",
        _field_location(run, pos, rule.index, rep, check.component, check.subcomponent),
        f"{_part(rule, check.component, check.subcomponent)} must be {_FORMAT_NAMES[kind]} ({kind}).",
        rule.header,
    )


def _check_tables(
    run: _Run,
    pos: int,
    rule: _FieldRule,
    value: str,
    delimiters: DelimitersLike,
    tables: Mapping[str, AbstractSet[str]],
) -> None:
    """Check the coded values inside one non-empty field value against the tables given."""
    rep_sep, comp_sep, sub_sep = delimiters.repetition, delimiters.component, delimiters.subcomponent
    for r, rep in enumerate(value.split(rep_sep), 1):
        if not rep or rep == '""':
            continue
        components = [rep] if rule.leaf else rep.split(comp_sep)
        for check in rule.tables:
            table = check.table
            if table is None:
                continue
            allowed = tables.get(table)
            if allowed is None and table.startswith("HL7"):
                allowed = tables.get(table[3:])
            if allowed is None:
                continue
            ci, si = check.component, check.subcomponent
            if ci > len(components):
                break
            primitive = components[max(ci, 1) - 1]
            if rule.leaf:
                primitive = primitive.split(comp_sep, 1)[0]
            subs = primitive.split(sub_sep)
            if si > len(subs):
                continue
            primitive = subs[max(si, 1) - 1]
            if primitive and primitive != '""' and primitive not in allowed:
                run.add(
                    "table_value_not_found",
                    _field_location(run, pos, rule.index, r, ci, si),
                    f"{_part(rule, ci, si)} is not a value of table {table}.",
                )


def _part(rule: _FieldRule, comp: int, sub: int) -> str:
    if not comp:
        return rule.label
    return f"Component {comp}{f'.{sub}' if sub else ''} of {rule.label}"


def _shortest_path(automaton: _Automaton, state: int, goal: str | None) -> list[str] | None:
    """The fewest segments that, inserted, let ``goal`` follow (``None``: let the message end)."""
    trans, accept = automaton.trans, automaton.accept
    seen = {state}
    queue: deque[tuple[int, list[str]]] = deque([(state, [])])
    while queue:
        s, path = queue.popleft()
        if accept[s] if goal is None else goal in trans[s]:
            return path
        if len(path) >= _MAX_PATH:
            continue
        for symbol, nxt in sorted(trans[s].items()):
            if symbol != _ANY and nxt not in seen:
                seen.add(nxt)
                queue.append((nxt, [*path, symbol]))
    return None


_MAX_PATH = 12
_MAX_SEQUENCE_ISSUES = 10


class _Walk:
    """Diagnosis and recovery when the automaton cannot take a segment (the slow path)."""

    __slots__ = ("automaton", "issues", "present", "run", "segments")

    def __init__(self, run: _Run, automaton: _Automaton, segments: Sequence[SegmentLike]) -> None:
        self.run = run
        self.automaton = automaton
        self.segments = segments
        self.present = {segment.id for segment in segments}
        self.issues = 0

    def _missing(self, path: list[str], where: str) -> None:
        structure = self.automaton.structure
        for sid in path:
            if sid not in self.present:
                self.issues += 1
                self.run.add(
                    "required_segment_missing",
                    sid,
                    f"Required segment {sid} is missing {where} in the {structure} message.",
                    sid in KEY_SEGMENTS,
                )

    def stuck(self, state: int, pos: int, previous: int) -> int:
        """Report why the segment at ``pos`` cannot follow; return the state to go on from."""
        automaton, segments = self.automaton, self.segments
        trans = automaton.trans
        sid = segments[pos].id
        symbol = sid if sid in automaton.alphabet else _ANY
        where = self.run.where(pos)
        path = _shortest_path(automaton, state, symbol)
        if path is not None:
            self._missing(path, f"before {where}")
            displaced = [p for p in path if p in self.present]
            if displaced:
                self.issues += 1
                self.run.add(
                    "segment_sequence_error",
                    where,
                    f"{where} is out of sequence for {automaton.structure}: "
                    f"{' '.join(displaced)} should come before it.",
                )
            for p in path:
                state = trans[state][p]
            return trans[state][symbol]
        expected = sorted(s for s in trans[state] if s != _ANY)
        if previous >= 0 and segments[previous].id == sid:
            reason = f"{where} repeats more often than {automaton.structure} allows here"
        else:
            reason = f"{where} is out of sequence for {automaton.structure}"
        if expected and len(expected) <= 8:
            reason += f"; expected {' or '.join(expected)}"
        elif not expected:
            reason += "; the structure is complete before it"
        self.issues += 1
        self.run.add("segment_sequence_error", where, f"{reason}.")
        return state  # skip the segment

    def end(self, state: int) -> None:
        """Report the required segments missing at the end of the message."""
        path = _shortest_path(self.automaton, state, None)
        if path is None:  # cannot happen for hl7apy's structures; say something anyway
            self.run.add(
                "required_segment_missing",
                "",
                f"The {self.automaton.structure} message ends before its required segments.",
            )
            return
        self._missing(path, "at the end")


def _safe(text: str, pattern: re.Pattern[str], fallback: str) -> str:
    return text if pattern.fullmatch(text) else fallback


def _msh9(message: MessageLike) -> tuple[str, str, str]:
    segments = message.segments
    if not segments or segments[0].id != "MSH" or len(segments[0].fields) <= 9:
        return "", "", ""
    parts = segments[0].fields[9].split(message.delimiters.component)
    parts += ["", "", ""]
    return parts[0], parts[1], parts[2]


def validate(
    message: MessageLike,
    structure: str,
    version: str,
    *,
    tables: Mapping[str, AbstractSet[str]] | None = None,
    severities: Mapping[str, Severity] | None = None,
) -> list[Issue]:
    """Check ``message`` against HL7 ``version``'s definition of ``structure``; return every issue.

    ``structure`` is the message structure id (MSH-9.3, or derived from the
    event by :func:`resolve_structure`); when the version does not define it,
    the structure of MSH-9's event is used (an ``unknown_structure`` warning
    says so). ``version`` is MSH-12. ``tables`` maps table ids (``HL70001`` or
    ``0001``) to their allowed values and turns table checks on for those
    tables. ``severities`` overrides :data:`DEFAULT_SEVERITIES` per code. Never
    raises for content.
    """
    run = _Run(severities, message.segments)
    comp_sep = message.delimiters.component
    if comp_sep and comp_sep in version:
        version = version.split(comp_sep, 1)[0]
    version = version.strip()
    name = library_for(version)
    if name is None:
        if not version:
            run.add("required_field_missing", "MSH-12", "MSH-12 (Version ID) is required but empty.", True)
        else:
            run.add(
                "unsupported_version",
                "MSH-12",
                f"HL7 version {_safe(version, _VERSION_RE, 'in MSH-12')} is not supported; "
                "the message structure was not validated.",
            )
        return run.issues
    lib = _library(name)
    if version not in _LIBRARIES:
        run.add(
            "unsupported_version",
            "MSH-12",
            f"HL7 version {version} is not supported; validated against the {lib.version} definitions.",
        )

    automaton = lib.automaton(structure) if structure else None
    if automaton is None:
        code, event, _declared = _msh9(message)
        resolved = resolve_structure(lib.version, code, event, structure)
        automaton = lib.automaton(resolved) if resolved else None
        shown = _safe(structure, _STRUCTURE_RE, "")
        named = f"Message structure {shown}" if shown else "The message structure"
        where = "MSH-9.3" if structure else "MSH-9"
        if automaton is not None:
            # Many senders put CODE_EVENT in MSH-9.3 (ADT_A04): that is only a shared structure's alias.
            if structure and structure != f"{code}_{event}":
                run.add(
                    "unknown_structure",
                    where,
                    f"{named} is not defined in HL7 {lib.version}; validated as {automaton.structure}, "
                    "the structure of its event.",
                )
        elif not (code.startswith("Z") or event.startswith("Z") or structure.startswith("Z")):
            # (site-defined Z message types have no standard structure to check)
            run.add(
                "unknown_structure",
                where,
                f"{named} is not defined in HL7 {lib.version}; segment order was not checked.",
            )

    segments = message.segments
    delimiters = message.delimiters
    seg_rules = lib.segments
    walk: _Walk | None = None
    state = 0
    walking = automaton is not None
    previous = -1  # position of the last segment the automaton took
    trans = automaton.trans if automaton is not None else ()
    alphabet = automaton.alphabet if automaton is not None else frozenset()
    wildcard = automaton.wildcard if automaton is not None else False
    for pos, segment in enumerate(segments):
        if run.full:
            return run.issues
        sid = segment.id
        rules = seg_rules.get(sid)
        if rules is None:
            rules = lib.segment(sid)
        if rules.known:
            _check_fields(run, segments, pos, rules, delimiters, tables)
        if sid in alphabet or (wildcard and rules.known):
            if walking:
                nxt = trans[state].get(sid if sid in alphabet else _ANY)
                if nxt is None:
                    assert automaton is not None
                    if walk is None:
                        walk = _Walk(run, automaton, segments)
                    nxt = walk.stuck(state, pos, previous)
                    walking = walk.issues < _MAX_SEQUENCE_ISSUES
                previous = pos
                state = nxt
        elif sid[:1] == "Z":
            pass
        elif automaton is not None or not rules.known:
            where = run.where(pos)
            if not rules.known:
                text = (
                    f"Segment {sid} is not defined in HL7 {lib.version}."
                    if where
                    else f"Segment {pos + 1} has an invalid segment id."
                )
            else:
                text = (
                    f"Segment {sid} is not part of the {automaton.structure if automaton else ''} structure."
                )
            run.add("unexpected_segment", where, text)
    if walking and automaton is not None and not automaton.accept[state]:
        (walk or _Walk(run, automaton, segments)).end(state)
    return run.issues
