"""OBX → Observation, OBR → DiagnosticReport; the ORU^R01 builder (the IG's OBX[Observation],
OBX[Observation-Component], OBR[DiagnosticReport] and NTE maps).

Observation: code OBX-3; status OBX-11 (table ``0085``; ``unknown`` when
empty or unlisted); value by OBX-2 (below); interpretation OBX-8 (table
``0078`` → v3-ObservationInterpretation); referenceRange OBX-7; effective
OBX-14, else OBR-7; issued OBR-22; performer OBX-16 (Practitioners) and OBX-23
(Organization, address OBX-24); method OBX-17; bodySite OBX-20; identifier
OBX-21; note the NTEs after the OBX; subject/encounter the current ones;
basedOn the order's ServiceRequest; specimen the SPM the OBX follows (else the
order's only SPM).

Values (OBX-5 by OBX-2):

- ``NM`` → valueQuantity, units from OBX-6 (below). A value that is not a
  number but reads ``<5`` / ``>=10`` becomes a Quantity with that comparator;
  anything else is kept as valueString.
- ``SN`` → ``<>`` … valueString; separator ``:`` or ``/`` valueRatio (units on
  both terms, a comparator on the numerator); ``-`` valueRange; no separator
  valueQuantity with the comparator (``<``, ``>``, ``<=``, ``>=``; ``=`` is none);
  anything else (``+`` …) valueString ``"5.1 5.2 5.3 5.4 units"`` as the IG says.
- ``ST``, ``TX``, ``FT`` → valueString; the repetitions of OBX-5 are the lines
  of the text, joined with newlines (``\\.br\\`` escapes are newlines too).
- ``CE``, ``CWE``, ``CNE``, ``CF`` → valueCodeableConcept; ``IS``/``ID`` →
  valueCodeableConcept with the bare code.
- ``DT``, ``DTM``, ``TS`` → valueDateTime; ``TM`` → valueTime; ``DR`` →
  valuePeriod; ``NR`` → valueRange; ``CQ`` → valueQuantity.
- Any other type (``NA``, ``ED``, ``RP``, ``EI`` …) with a value: no value,
  ``dataAbsentReason`` ``unsupported``. When OBX-11 is ``X`` (cannot be
  obtained) or ``N`` (not asked), the value is left out for the
  ``dataAbsentReason`` the ``0085`` table names (the IG's map).
- OBX-5 repeating for a non-text type → one ``component`` per repetition
  (code OBX-3), as the IG's OBX[Observation-Component] map says.

Units: OBX-6 CWE; ``unit`` is CWE.2 else CWE.1. The Quantity gets
``system`` UCUM and ``code`` CWE.1 when CWE.3 names UCUM, or when CWE.3 is
empty and CWE.1 parses as a UCUM expression over the atoms and prefixes of the
``ucum_units`` table (``mg/dL``, ``10*3/uL``, ``/100{WBCs}`` do; ``tera.l-1``,
``beats/min`` do not); otherwise the units are text only.

Reference range OBX-7: always ``text``; ``low`` and ``high`` (in the value's
units) too when it reads ``low-high`` with ``low <= high``.

DiagnosticReport (one per OBR): identifier placer OBR-2 (else ORC-2) and filler
OBR-3 (else ORC-3); basedOn the ServiceRequest of the same ORC/OBR
(:func:`adapters.hl7.to_fhir.orders.service_request`); status OBR-25 (table
``0123``; ``unknown`` when empty or unlisted); category OBR-24 (table
``0074``); code OBR-4; effective OBR-7 (a period to OBR-8 when sent); issued
OBR-22; resultsInterpreter OBR-32; specimen the group's SPMs; result its
Observations, in order. NTEs after the OBR (before any OBX) go to the R5
``DiagnosticReport.note`` cross-version extension (R4 has no note there).

Keys (so that a corrected result updates what the first message made): a
report by its filler number OBR-3 (else ORC-3), else its placer number, else
the message and OBR-1; an Observation by its report's key, OBX-1 (else its
position), OBX-4 and its code. An OBX outside any order (PATIENT_OBSERVATION)
is keyed by the patient, its code and OBX-14 (else the message and OBX-1). An
OBX without OBX-3 has no identity and is not mapped. ``issued`` is set only
when OBR-22 has a time whose zone is known (explicitly or from MSH-7): an
instant needs one and none is invented.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from adapters.hl7.er7 import Segment
from adapters.hl7.to_fhir import datatypes as dt
from adapters.hl7.to_fhir import orders
from adapters.hl7.to_fhir.context import Composite, Context
from adapters.hl7.to_fhir.registry import register

__all__ = [
    "RESULT_TYPES",
    "build_results",
    "collect",
    "diagnostic_report",
    "is_ucum",
    "observation",
    "observation_value",
    "patient_observations",
    "units",
]

RESULT_TYPES = frozenset({"ORU^R01"})
"""The result messages :func:`build_results` converts."""

UCUM = "http://unitsofmeasure.org"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
REPORT_NOTE = "http://hl7.org/fhir/5.0/StructureDefinition/extension-DiagnosticReport.note"
_TEXT_TYPES = frozenset({"ST", "TX", "FT"})
_COMPARATORS = frozenset({"<", ">", "<=", ">="})
_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)"
_COMPARED = re.compile(rf"(<=|>=|<|>)\s*({_NUM})")
_RANGE = re.compile(rf"\s*({_NUM})\s*(?:-|\u2013|to)\s*({_NUM})\s*")
_UCUM_PART = re.compile(r"(?P<unit>[^{}]*?)(?P<exp>[+-]?\d+)?(?P<ann>\{[^{}]*\})?")
_FACTOR = re.compile(r"\d+|10[*^][+-]?\d+")
_TIME = re.compile(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?")


# -- units -------------------------------------------------------------------------------------


def _ucum_symbol(ctx: Context, symbol: str) -> bool:
    entry = ctx.tables.entry("ucum_units", symbol)
    if entry and entry.get("kind") == "atom" and symbol == symbol.strip():
        return True
    for size in (2, 1):
        prefix, rest = symbol[:size], symbol[size:]
        found = ctx.tables.entry("ucum_units", "prefix:" + prefix) if rest else None
        atom = ctx.tables.get("ucum_units").codes.get(rest)
        if found and atom and atom.get("kind") == "atom" and atom.get("metric") == "yes":
            return True
    return False


def is_ucum(ctx: Context, expression: str) -> bool:
    """Whether ``expression`` parses as UCUM over the ``ucum_units`` table (no parentheses)."""
    if not expression or any(ch.isspace() or ch in "()" for ch in expression):
        return False
    body = expression[1:] if expression.startswith("/") else expression
    parts = re.split(r"[./](?![^{]*\})", body)
    for part in parts:
        match = _UCUM_PART.fullmatch(part)
        if not part or match is None:
            return False
        unit, exp, ann = match["unit"], match["exp"], match["ann"]
        if not unit and (exp or ann):
            if exp and not _FACTOR.fullmatch(exp.lstrip("+")):
                return False
            continue
        if _FACTOR.fullmatch(unit + (exp or "")):
            continue
        if not _ucum_symbol(ctx, unit):
            return False
    return True


def units(ctx: Context, cwe: Composite) -> dict[str, Any]:
    """OBX-6 (CWE) → the unit members of a Quantity (``unit``, and ``system``/``code`` for UCUM)."""
    code, text, system_name = cwe.get(1), cwe.get(2), cwe.get(3)
    out: dict[str, Any] = {}
    if text or code:
        out["unit"] = text or code
    system = dt.code_system(ctx, system_name) if system_name else None
    if code and (system == UCUM or (not system_name and is_ucum(ctx, code))):
        out["system"] = UCUM
        out["code"] = code
    return out


def _quantity(value: int | Decimal, unit: dict[str, Any], comparator: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"value": value}
    if comparator in _COMPARATORS:
        out["comparator"] = comparator
    out.update(unit)
    return out


# -- values ------------------------------------------------------------------------------------


def _sn(ctx: Context, rep: Composite, unit: dict[str, Any]) -> tuple[str, Any] | None:
    comparator, n1, sep, n2 = rep.get(1), rep.get(2), rep.get(3), rep.get(4)
    v1, v2 = dt.number(n1), dt.number(n2)
    if comparator != "<>":
        if sep in (":", "/") and v1 is not None and v2 is not None:
            return "valueRatio", {
                "numerator": _quantity(v1, unit, comparator),
                "denominator": _quantity(v2, unit),
            }
        if sep == "-" and comparator in ("", "=") and (v1 is not None or v2 is not None):
            span = {k: _quantity(v, unit) for k, v in (("low", v1), ("high", v2)) if v is not None}
            return "valueRange", span
        if not sep and not n2 and v1 is not None and comparator in _COMPARATORS | {"", "="}:
            return "valueQuantity", _quantity(v1, unit, comparator)
    text = " ".join(p for p in (comparator, n1, sep, n2, unit.get("unit", "")) if p)
    return ("valueString", text) if text else None


def _nm(ctx: Context, raw: str, unit: dict[str, Any]) -> tuple[str, Any] | None:
    text = ctx.text(raw)
    value = dt.number(text)
    if value is not None:
        return "valueQuantity", _quantity(value, unit)
    compared = _COMPARED.fullmatch(text)
    if compared:
        number = dt.number(compared[2])
        if number is not None:
            return "valueQuantity", _quantity(number, unit, compared[1])
    return ("valueString", text) if text else None


def _time(value: str) -> str | None:
    match = _TIME.fullmatch(value)
    if not match or int(match[1]) > 23 or int(match[2] or 0) > 59 or int(match[3] or 0) > 59:
        return None
    return f"{match[1]}:{match[2] or '00'}:{match[3] or '00'}{match[4] or ''}"


def _one(ctx: Context, kind: str, rep: Composite, unit: dict[str, Any]) -> tuple[str, Any] | bool | None:
    """One OBX-5 repetition → ``(value[x] name, value)``; ``None`` when empty; ``False`` when the
    value type is not supported."""
    found: Any
    if kind == "NM":
        return _nm(ctx, rep.raw, unit)
    if kind == "SN":
        return _sn(ctx, rep, unit)
    if kind in ("CE", "CWE", "CNE", "CF"):
        found = dt.codeable_concept(ctx, rep)
        return ("valueCodeableConcept", found) if found else None
    if kind in ("IS", "ID"):
        return ("valueCodeableConcept", {"coding": [{"code": rep.get(1)}]}) if rep.get(1) else None
    if kind in ("DT", "DTM", "TS"):
        found = dt.date_time(ctx, rep)
        return ("valueDateTime", found) if found else None
    if kind == "TM":
        found = _time(rep.get(1))
        return ("valueTime", found) if found else None
    if kind == "DR":
        found = dt.period(ctx, rep.sub(1, 1), rep.sub(2, 1))
        return ("valuePeriod", found) if found else None
    if kind == "NR":
        low, high = dt.number(rep.get(1)), dt.number(rep.get(2))
        found = {k: {"value": v} for k, v in (("low", low), ("high", high)) if v is not None}
        return ("valueRange", found) if found else None
    if kind == "CQ":
        value = dt.number(rep.get(1))
        return ("valueQuantity", _quantity(value, units(ctx, rep.part(2)))) if value is not None else None
    return False if rep else None


def observation_value(
    ctx: Context, obx: Segment, code: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """OBX-5 by OBX-2 → ``(members to set, units)``: ``{"valueX": …}``, ``{"component": […]}``,
    ``{"dataAbsentReason": …}`` or ``{}`` (see the module docstring)."""
    kind = ctx.value(obx, 2).upper()
    unit = units(ctx, ctx.field(obx, 6))
    reps = ctx.reps(obx, 5)
    if not reps:
        return {}, unit
    if kind in _TEXT_TYPES:
        text = "\n".join(ctx.text(r.raw) for r in reps)
        return ({"valueString": text} if text.strip() else {}), unit
    values = [_one(ctx, kind, rep, unit) for rep in reps]
    if any(v is False for v in values):
        return {"dataAbsentReason": _absent("unsupported", "Unsupported")}, unit
    found = [v for v in values if isinstance(v, tuple)]
    if len(found) == 1:
        return {found[0][0]: found[0][1]}, unit
    if found:
        return {"component": [{"code": code, name: value} for name, value in found]}, unit
    return {}, unit


def _absent(code: str, display: str = "") -> dict[str, Any]:
    coding = {"system": DATA_ABSENT, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def _reference_range(ctx: Context, obx: Segment, unit: dict[str, Any]) -> list[dict[str, Any]]:
    text = ctx.value(obx, 7)
    if not text:
        return []
    out: dict[str, Any] = {}
    match = _RANGE.fullmatch(text)
    if match:
        low, high = dt.number(match[1]), dt.number(match[2])
        if low is not None and high is not None and low <= high:
            out = {"low": _quantity(low, unit), "high": _quantity(high, unit)}
    out["text"] = text
    return [out]


def _organization(ctx: Context, xon: Composite, xad: Composite) -> str | None:
    """XON (OBX-23: name XON.1, id XON.10 else XON.3, authority XON.6) + XAD → Organization."""
    name, ident_value = xon.get(1), xon.get(10) or xon.get(3)
    if not name and not ident_value:
        return None
    res: dict[str, Any] = {"resourceType": "Organization"}
    authority = xon.part(6)
    if ident_value:
        ident: dict[str, Any] = {"value": ident_value}
        system = dt.hd_system(ctx, authority)
        if system:
            ident = {"system": system, **ident}
        res["identifier"] = [ident]
    if name:
        res["name"] = name
    where = dt.address(ctx, xad)
    if where:
        res["address"] = [where]
    key = "organization|" + (f"{dt.hd_key(authority)}|{ident_value}" if ident_value else f"name|{name}")
    return ctx.add(res, key)


def _code_key(code: dict[str, Any]) -> str:
    if code.get("coding"):
        coding = code["coding"][0]
        return f"{coding.get('system', '')}|{coding.get('code', '')}"
    return f"text|{code.get('text', '')}"


# -- Observation -------------------------------------------------------------------------------


def observation(
    ctx: Context,
    result: orders.Result,
    *,
    parent: str | None = None,
    obr: Segment | None = None,
    based_on: str | None = None,
    specimen: str | None = None,
    part_of: str | None = None,
    with_encounter: bool = True,
) -> str | None:
    """OBX (+ its NTEs) → Observation (see the module docstring); ``parent`` is the key of its
    report or order (``None``: a patient-level OBX); ``part_of`` the event it is part of (the
    Immunization of a VXU order); ``with_encounter=False`` leaves ``encounter`` out (an OBX sent
    before the visit began). Returns its reference, ``None`` without OBX-3."""
    obx = result.obx
    code = dt.codeable_concept(ctx, ctx.field(obx, 3))
    if code is None:
        return None
    set_id = ctx.value(obx, 1) or str(result.index)
    if parent is not None:
        key = f"{parent}|OBX|{set_id}|{ctx.value(obx, 4)}|{_code_key(code)}"
    elif ctx.value(obx, 14):
        key = f"patient|{ctx.patient_key}|{_code_key(code)}|{ctx.value(obx, 14)}"
    else:
        key = f"patient|{ctx.patient_key}|message|{orders.control_key(ctx)}|{set_id}|{_code_key(code)}"
    key = orders.fresh_key(ctx, "Observation", key)
    res: dict[str, Any] = {"resourceType": "Observation"}
    ident = dt.entity_identifier(ctx, ctx.field(obx, 21), "FILL")
    if ident:
        res["identifier"] = [ident]
    if based_on:
        res["basedOn"] = [{"reference": based_on}]
    if part_of:
        res["partOf"] = [{"reference": part_of}]
    status = ctx.tables.entry("0085", ctx.value(obx, 11)) or {}
    res["status"] = status.get("code", "unknown")
    res["code"] = code
    if ctx.patient:
        res["subject"] = {"reference": ctx.patient}
    if ctx.encounter and with_encounter:
        res["encounter"] = {"reference": ctx.encounter}
    effective = dt.date_time(ctx, ctx.field(obx, 14)) or dt.date_time(ctx, ctx.field(obr, 7))
    if effective:
        res["effectiveDateTime"] = effective
    issued = _issued(ctx, obr)
    if issued:
        res["issued"] = issued
    performers = [p for p in (dt.practitioner(ctx, r) for r in ctx.reps(obx, 16)) if p]
    org = _organization(ctx, ctx.field(obx, 23), ctx.field(obx, 24))
    if org:
        performers.append(org)
    if performers:
        res["performer"] = [{"reference": p} for p in dict.fromkeys(performers)]
    value, unit = observation_value(ctx, obx, code)
    if status.get("absent"):
        value = {"dataAbsentReason": _absent(status["absent"])}
    res.update(value)
    interpretation = [c for c in (dt.codeable_concept(ctx, r, "0078") for r in ctx.reps(obx, 8)) if c]
    if interpretation:
        res["interpretation"] = interpretation
    notes = [n for n in (orders.note(ctx, nte) for nte in result.notes) if n]
    if notes:
        res["note"] = notes
    site = dt.codeable_concept(ctx, ctx.field(obx, 20))
    if site:
        res["bodySite"] = site
    method = dt.codeable_concept(ctx, ctx.field(obx, 17))
    if method:
        res["method"] = method
    if specimen:
        res["specimen"] = {"reference": specimen}
    ranges = _reference_range(ctx, obx, unit if "valueQuantity" in value else {})
    if ranges:
        res["referenceRange"] = ranges
    return ctx.add(res, key)


def collect(segments: Iterable[Segment]) -> list[orders.Result]:
    """The OBX segments of ``segments``, each with the NTEs right after it (a PRT between them is
    skipped), as :class:`~adapters.hl7.to_fhir.orders.Result` numbered from 1: the OBSERVATION
    groups of an ADT, SIU or VXU message."""
    out: list[orders.Result] = []
    last: orders.Result | None = None
    for seg in segments:
        if seg.id == "OBX":
            last = orders.Result(seg, len(out) + 1)
            out.append(last)
        elif seg.id == "NTE" and last is not None:
            last.notes.append(seg)
        elif seg.id != "PRT":
            last = None
    return out


def patient_observations(ctx: Context, found: list[orders.Result]) -> list[str]:
    """OBX outside any order (the IG's OBX[Observation] of an ADT's OBSERVATION, an SIU's PATIENT or
    a VXU's PERSON_OBSERVATION group) → Observations of the current patient; their references.

    ``encounter`` is the current Encounter unless that is still ``planned`` (a pre-admit, a
    registration, a scheduled visit): the IG leaves the link to the implementer, except that an
    observation sent with an event before the encounter occurs is *not* about that encounter."""
    visit = ctx.resource(ctx.encounter) if ctx.encounter else None
    linked = visit is not None and visit.get("status") != "planned"
    refs = [observation(ctx, r, with_encounter=linked) for r in found]
    return [r for r in refs if r]


def _issued(ctx: Context, obr: Segment | None) -> str | None:
    when = ctx.field(obr, 22)
    stated = dt.date_time(ctx, when)
    return dt.instant(ctx, when) if stated and "T" in stated else None


# -- DiagnosticReport --------------------------------------------------------------------------


def report_key(ctx: Context, order: orders.Order) -> str:
    """The key of the order's DiagnosticReport, before de-duplication (see the module docstring)."""
    orc, obr = order.orc, order.obr
    filler = orders.first(ctx, (obr, 3), (orc, 3))
    if filler.get(1):
        return "report|filler|" + dt.ei_key(ctx, filler)
    placer = orders.first(ctx, (obr, 2), (orc, 2))
    if placer.get(1):
        return "report|placer|" + dt.ei_key(ctx, placer)
    return f"report|message|{orders.control_key(ctx)}|{ctx.value(obr, 1) or order.index}"


def diagnostic_report(ctx: Context, order: orders.Order, placed: orders.Placed | None) -> str | None:
    """OBR (+ its OBX/NTE/SPM) → DiagnosticReport with its Observations (see the module docstring)."""
    obr, orc = order.obr, order.orc
    if obr is None or ctx.patient is None:
        return None
    key = orders.fresh_key(ctx, "DiagnosticReport", report_key(ctx, order))
    based_on = placed.ref if placed else None
    found = [
        observation(
            ctx,
            r,
            parent=key,
            obr=obr,
            based_on=based_on,
            specimen=orders.specimen_of(placed, r) if placed else None,
        )
        for r in order.results
    ]
    res: dict[str, Any] = {"resourceType": "DiagnosticReport"}
    notes = [n for n in (orders.note(ctx, nte) for nte in order.notes) if n]
    if notes:
        res["extension"] = [{"url": REPORT_NOTE, "valueAnnotation": n} for n in notes]
    idents = dt.order_identifiers(
        ctx, orders.first(ctx, (obr, 2), (orc, 2)), orders.first(ctx, (obr, 3), (orc, 3))
    )
    if idents:
        res["identifier"] = idents
    if based_on:
        res["basedOn"] = [{"reference": based_on}]
    status = ctx.tables.coding("0123", ctx.value(obr, 25))
    res["status"] = status["code"] if status else "unknown"
    category = dt.codeable_concept(ctx, ctx.field(obr, 24), "0074")
    if category:
        res["category"] = [category]
    res["code"] = dt.codeable_concept(ctx, ctx.field(obr, 4)) or {
        "coding": [{"system": DATA_ABSENT, "code": "unknown", "display": "Unknown"}]
    }
    res["subject"] = {"reference": ctx.patient}
    if ctx.encounter:
        res["encounter"] = {"reference": ctx.encounter}
    span = dt.period(ctx, ctx.value(obr, 7), ctx.value(obr, 8))
    if span and "end" in span:
        res["effectivePeriod"] = span
    elif span:
        res["effectiveDateTime"] = span["start"]
    issued = _issued(ctx, obr)
    if issued:
        res["issued"] = issued
    interpreters = [p for p in (dt.practitioner(ctx, r.part(1)) for r in ctx.reps(obr, 32)) if p]
    if interpreters:
        res["resultsInterpreter"] = [{"reference": p} for p in dict.fromkeys(interpreters)]
    if placed and placed.specimens:
        res["specimen"] = [{"reference": r} for r in dict.fromkeys(ref for _, ref in placed.specimens)]
    refs = [r for r in found if r]
    if refs:
        res["result"] = [{"reference": r} for r in refs]
    return ctx.add(res, key)


def build_results(ctx: Context) -> None:
    """ORU^R01: per PATIENT_RESULT the Patient and Encounter; per ORDER_OBSERVATION, in order, the
    ServiceRequest (ORC/OBR) and a DiagnosticReport with an Observation per OBX; an OBX outside
    any order becomes an Observation of the patient alone."""
    for group in orders.groups(ctx.message, share_orc=False):
        orders.start_patient(ctx, group)
        for result in group.results:
            observation(ctx, result)
        for order in group.orders:
            if order.obr is None and order.other_detail:
                continue
            placed = orders.service_request(ctx, order, with_notes=False)
            report = diagnostic_report(ctx, order, placed)
            if report:
                ctx.focus.append(report)


register(RESULT_TYPES, build_results)
