"""PV1 / PV2 → Encounter, PL → Location (the IG's segment maps).

The Encounter is keyed by the visit number PV1-19 (authority + id; the
sending facility when CX.4 is empty), else by what the caller names (an SIU:
the appointment), else by the message's control id, so that A01, A08 and A03
for one visit update one Encounter.

Its status comes from the trigger event through the ``encounter_status``
table (the IG's ConceptMap of table 0003: A01/A02 in-progress, A03 finished,
A04/A05 planned, A11 cancelled, A13 in-progress …). For an event the table
marks ``from-visit`` (A08) or does not list, the status is read from the visit
instead: PV1-45 (discharge) → finished; else the patient class PV1-2 through
the ``patient_class_status`` table (the IG's PV1-2 map "IF PV1-45 NOT VALUED",
ConceptMap table-hl70004-to-encounter-status: E/I/O … in-progress, P planned,
U unknown); else PV1-44 (admit) → in-progress; else unknown. The IG's
``unknown`` for A08 would, with update-as-create, overwrite the status an A01
set; reading the visit keeps it.

Locations: PV1-3 (assigned, ``active``), PV1-6 (prior, ``completed``),
PV1-11 (temporary, ``active``), PV1-43 (prior temporary, ``completed``; the
IG's R4 PV1 map), PV1-42 (pending, ``planned``), PV2-1 (prior pending, ``planned``; the
IG's PV2 map). Each PL becomes
a chain of Locations, facility (PL.4, ``si``) ← building (PL.7, ``bu``) ←
floor (PL.8, ``lvl``) ← point of care (PL.1, ``wa``) ← room (PL.2, ``ro``) ←
bed (PL.3, ``bd``), each ``partOf`` the one before and keyed by its whole
path; the Encounter points at the most specific one. PV1-37 (discharged to)
is a Location of its own, ``hospitalization.destination``.

Participants: PV1-7 ATND, PV1-8 REF, PV1-9 CON, PV1-17 ADM, PV1-52 (other
healthcare provider) PART, PV2-13 (referral source) REF, as the IG's PV2 map says; the same
person in the same role is listed once. Identifiers: PV1-19 (type VN), then PV1-50
(alternate visit ids).
"""

from __future__ import annotations

from typing import Any

from adapters.hl7.er7 import Segment
from adapters.hl7.to_fhir import datatypes as dt
from adapters.hl7.to_fhir.context import Composite, Context

__all__ = ["encounter", "location", "site"]

PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
PHYSICAL_TYPE = "http://terminology.hl7.org/CodeSystem/location-physical-type"
NULL_FLAVOR = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
_LEVELS = (
    (4, "si", "Site"),
    (7, "bu", "Building"),
    (8, "lvl", "Level"),
    (1, "wa", "Ward"),
    (2, "ro", "Room"),
    (3, "bd", "Bed"),
)
_PARTICIPANTS = (
    (7, "ATND", "attender"),
    (8, "REF", "referrer"),
    (9, "CON", "consultant"),
    (17, "ADM", "admitter"),
    (52, "PART", "Participation"),
)


def location(ctx: Context, pl: Composite) -> str | None:
    """A PL → the chain of Locations it names; the reference of the most specific one."""
    parent: str | None = None
    path: list[str] = []
    for comp, code, display in _LEVELS:
        name = pl.get(comp) if comp != 4 else (pl.sub(4, 1) or pl.sub(4, 2))
        if not name:
            continue
        path.append(f"{code}={name}")
        res: dict[str, Any] = {
            "resourceType": "Location",
            "name": name,
            "mode": "instance",
            "physicalType": {"coding": [{"system": PHYSICAL_TYPE, "code": code, "display": display}]},
        }
        if parent:
            res["partOf"] = {"reference": parent}
        parent = ctx.add(res, "|".join(path))
    if parent and pl.get(9):
        found = ctx.resource(parent)
        if found is not None:
            found.setdefault("description", pl.get(9))
    return parent


def site(ctx: Context, hd: Composite) -> str | None:
    """A facility HD (EVN-7) → a site Location (the IG's HD[Location]): name HD.1 (else HD.2), the
    ISO/UUID universal id as identifier. Keyed as the site level of a PL chain, so a PL naming the same
    facility gives the same Location."""
    name = hd.get(1) or hd.get(2)
    if not name:
        return None
    code, display = _LEVELS[0][1:]
    res: dict[str, Any] = {
        "resourceType": "Location",
        "name": name,
        "mode": "instance",
        "physicalType": {"coding": [{"system": PHYSICAL_TYPE, "code": code, "display": display}]},
    }
    system = dt.hd_system(ctx, hd) if hd.get(2) else None
    if system and system.startswith(("urn:oid:", "urn:uuid:")):
        res["identifier"] = [{"system": "urn:ietf:rfc:3986", "value": system}]
    return ctx.add(res, f"{code}={name}")


def _discharge_location(ctx: Context, dld: Composite) -> str | None:
    """PV1-37 (DLD) → the Location discharged to (the IG's DLD[Location-Discharge]): type DLD.1;
    name its text (else its code), so that the Location reads without the code system."""
    where = dt.codeable_concept(ctx, dld.part(1))
    if where is None:
        return None
    cwe = dld.part(1)
    res: dict[str, Any] = {
        "resourceType": "Location",
        "name": cwe.get(2) or cwe.get(1) or where.get("text"),
        "type": [where],
    }
    return ctx.add(res, "discharge|" + "|".join(cwe.get(i) for i in (3, 1, 2)))


def _status(ctx: Context, pv1: Segment) -> str:
    entry = ctx.tables.entry("encounter_status", ctx.trigger)
    status = entry.get("code", "") if entry else ""
    if status and status != "from-visit":
        return status
    if ctx.value(pv1, 45):
        return "finished"
    by_class = ctx.tables.entry("patient_class_status", ctx.value(pv1, 2))
    if by_class and by_class.get("code"):
        return by_class["code"]
    if ctx.value(pv1, 44):
        return "in-progress"
    return "unknown"


def _class(ctx: Context, pv1: Segment) -> dict[str, str]:
    code = ctx.value(pv1, 2)
    mapped = ctx.tables.coding("0004", code)
    if mapped:
        return mapped
    if code:
        return {"system": "http://terminology.hl7.org/CodeSystem/v2-0004", "code": code}
    return {"system": NULL_FLAVOR, "code": "UNK", "display": "unknown"}


def _concepts(ctx: Context, reps: list[Composite], table: str | None = None) -> list[dict[str, Any]]:
    return [c for c in (dt.codeable_concept(ctx, r, table) for r in reps) if c]


def encounter(
    ctx: Context, pv1: Segment, pv2: Segment | None = None, *, fallback_key: str = ""
) -> str | None:
    """PV1 (+ PV2) → Encounter of the current patient; sets ``ctx.encounter`` and returns its reference.

    ``fallback_key`` keys it when PV1-19 is empty (default: the message)."""
    if ctx.patient is None:
        return None
    msh = ctx.segment("MSH")
    visit = ctx.field(pv1, 19)
    if visit.get(1):
        key = "visit|" + dt.cx_key(ctx, visit, dt.hd_key(ctx.field(msh, 4)))
    elif fallback_key:
        key = fallback_key
    else:
        key = "message|" + "|".join((ctx.field(msh, 3).raw, ctx.field(msh, 4).raw, ctx.value(msh, 10)))
    res: dict[str, Any] = {
        "resourceType": "Encounter",
        "status": _status(ctx, pv1),
        "class": _class(ctx, pv1),
    }
    idents: list[dict[str, Any]] = []
    ident = dt.identifier(ctx, visit)
    if ident:
        ident.setdefault("type", {"coding": [ctx.tables.coding("0203", "VN") or {"code": "VN"}]})
        idents.append(ident)
    for alternate in ctx.reps(pv1, 50):
        other = dt.identifier(ctx, alternate)
        if other and not any(i.get("value") == other["value"] for i in idents):
            idents.append(other)
    if idents:
        res["identifier"] = idents
    types = _concepts(ctx, ctx.reps(pv1, 4), "0007") + _concepts(ctx, ctx.reps(pv1, 18), "0018")
    if types:
        res["type"] = types
    service = dt.codeable_concept(ctx, ctx.field(pv1, 10), "0069")
    if service:
        res["serviceType"] = service
    res["subject"] = {"reference": ctx.patient}
    participants: list[dict[str, Any]] = []
    people: list[tuple[Segment | None, int, str, str]] = [(pv1, n, c, d) for n, c, d in _PARTICIPANTS]
    people.append((pv2, 13, "REF", "referrer"))  # PV2-13 referral source (the IG's PV2 map)
    for seg, n, code, display in people:
        for rep in ctx.reps(seg, n):
            who = dt.practitioner(ctx, rep)
            if who:
                kind = {"coding": [{"system": PARTICIPATION, "code": code, "display": display}]}
                item = {"type": [kind], "individual": {"reference": who}}
                if item not in participants:
                    participants.append(item)
    if participants:
        res["participant"] = participants
    span = dt.period(ctx, ctx.field(pv1, 44).get(1), ctx.field(pv1, 45).get(1))
    if span:
        res["period"] = span
    reasons = _concepts(ctx, ctx.reps(pv2, 3))
    if reasons:
        res["reasonCode"] = reasons
    stay = {}
    admit_source = dt.codeable_concept(ctx, ctx.field(pv1, 14), "0023")
    if admit_source:
        stay["admitSource"] = admit_source
    readmission = dt.codeable_concept(ctx, ctx.field(pv1, 13), "0092")
    if readmission:
        stay["reAdmission"] = readmission
    disposition = dt.codeable_concept(ctx, ctx.field(pv1, 36), "0112")
    if disposition:
        stay["dischargeDisposition"] = disposition
    destination = _discharge_location(ctx, ctx.field(pv1, 37))
    if destination:
        stay["destination"] = {"reference": destination}
    if stay:
        res["hospitalization"] = stay
    places: list[dict[str, Any]] = []
    sources: list[tuple[Segment | None, int, str]] = [(pv1, 3, "active"), (pv1, 11, "active")]
    sources += [(pv1, 6, "completed"), (pv1, 43, "completed")]
    sources += [(pv1, 42, "planned"), (pv2, 1, "planned")]
    for seg, n, status in sources:
        for rep in ctx.reps(seg, n)[:1]:
            where = location(ctx, rep)
            if where and not any(p["location"]["reference"] == where for p in places):
                places.append({"location": {"reference": where}, "status": status})
    if places:
        res["location"] = places
    ref = ctx.add(res, key)
    if ctx.encounter is None:
        ctx.encounter, ctx.encounter_key = ref, key
        ctx.focus.append(ref)
    return ref
