"""VXU^V04 → Patient, RelatedPerson, Encounter and one Immunization per ORC/RXA group (the IG's RXA,
RXR and ORC[Immunization] maps, with the CDC IIS conventions for RXA-9 and the OBX under an RXA).

Message structure: PID, PD1, NK1 and PV1/PV2 go through the existing mappers
(:mod:`.patient`, :mod:`.encounter`). Each RXA starts an order group with the
ORC just before it (an RXA without its own ORC, as older versions allow, has
none); the RXR, OBX and NTE segments after the RXA belong to that group.

Immunization (one per group):

- ``identifier`` ORC-2 (``PLAC``) and ORC-3 (``FILL``); the resource is keyed by
  the filler order number ORC-3, else the placer order number ORC-2, else the
  patient + vaccine code + RXA-3, so that a resent or corrected VXU updates the
  same Immunization.
- ``status`` RXA-21 ``D`` → ``entered-in-error``; else RXA-20 through table
  ``0322`` (CP → completed, RE/NA → not-done, PA → completed with
  ``isSubpotent``); not valued (or a code not in the table) → completed, as the IG
  assigns. ``statusReason`` RXA-18.
- ``vaccineCode`` RXA-5 (CVX, NDC … through ``coding_systems``),
  ``occurrenceDateTime`` RXA-3, ``recorded`` RXA-22, else ORC-9, else RXA-3.
- ``doseQuantity`` RXA-6 with the units RXA-7; the CDC value ``999`` (amount
  unknown) leaves it out.
- ``lotNumber`` RXA-15, ``expirationDate`` RXA-16, ``manufacturer`` RXA-17
  (an Organization with the MVX code as identifier, keyed by it).
- ``performer`` RXA-10 (function ``AP``) and ORC-12 (``OP``), table ``0443``.
- ``location`` RXA-27 (PL), else RXA-11 (LA2, whose first components are a PL's),
  as the chain of Locations :func:`.encounter.location` makes.
- ``route`` RXR-1 (table ``0162``: IM, ID, IV, PO, SC, TD go to
  v3-RouteOfAdministration as the IG's ConceptMap says), ``site`` RXR-2 (``0163``).
- ``reasonCode`` RXA-19.
- RXA-9: the repetition coded in NIP001 (or a bare two-digit code) is the
  information source: ``00`` (new record) → ``primarySource: true``, any other →
  ``primarySource: false`` and ``reportOrigin`` = that code. Other repetitions
  are administration notes and become ``note``, with NTE-3 of the group.
- OBX under the RXA, by OBX-3 through the ``immunization_observations`` table:
  64994-7 → ``programEligibility``, 30963-3 → ``fundingSource``, and the VIS
  observations grouped by OBX-4 into one ``education`` each: 69764-9 (the VIS
  document type; its code, the GS1 string, is the ``documentType``), 30956-7
  (vaccine type; its text is the ``documentType`` when no 69764-9 is given),
  29768-9 ``publicationDate``, 29769-7 ``presentationDate``. An education group
  with neither a document type nor a vaccine type is dropped (FHIR's imm-1).
  NTEs after these OBX are the Immunization's ``note``.
- Any other OBX under the RXA is an Observation (the results module's OBX map, the IG's
  ORDER.OBSERVATION → OBX[Observation]) with ``partOf`` the Immunization and the NTEs after it as
  its ``note``; ``reaction`` is not filled. The OBX before the first ORC/RXA (the
  PERSON_OBSERVATION group) are Observations of the patient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from adapters.hl7.er7 import Segment
from adapters.hl7.to_fhir import datatypes as dt
from adapters.hl7.to_fhir import encounter, patient, registry
from adapters.hl7.to_fhir.context import Composite, Context

__all__ = ["VXU_TYPES", "build_vxu", "immunization"]

VXU_TYPES = frozenset({"VXU^V04"})

UNKNOWN_AMOUNT = 999
_INFO_SOURCE = re.compile(r"\d{2}")


# -- groups ---------------------------------------------------------------------------------------


@dataclass
class _Group:
    orc: Segment | None
    rxa: Segment
    rxr: Segment | None = None
    obx: list[Segment] = field(default_factory=list)
    nte: list[Segment] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    """Every segment after the RXA, in order (its OBSERVATION groups)."""


def _groups(segments: list[Segment]) -> list[_Group]:
    groups: list[_Group] = []
    orc: Segment | None = None
    current: _Group | None = None
    for seg in segments:
        if seg.id == "ORC":
            orc, current = seg, None
        elif seg.id == "RXA":
            current = _Group(orc, seg)
            groups.append(current)
            orc = None  # the next RXA without an ORC of its own has none
        elif current is not None:
            current.segments.append(seg)
            if seg.id == "RXR" and current.rxr is None:
                current.rxr = seg
            elif seg.id == "OBX":
                current.obx.append(seg)
            elif seg.id == "NTE":
                current.nte.append(seg)
    return groups


# -- pieces ---------------------------------------------------------------------------------------


def _status(ctx: Context, rxa: Segment) -> tuple[str, bool]:
    if ctx.value(rxa, 21).upper() == "D":
        return "entered-in-error", False
    entry = ctx.tables.entry("0322", ctx.value(rxa, 20))
    if entry and entry.get("code"):
        return entry["code"], entry.get("subpotent") == "true"
    return "completed", False


def _manufacturer(ctx: Context, cwe: Composite) -> str | None:
    code, name = cwe.get(1), cwe.get(2)
    if not code and not name:
        return None
    system = dt.code_system(ctx, cwe.get(3))
    res: dict[str, Any] = {"resourceType": "Organization"}
    if code:
        ident = {"system": system, "value": code} if system else {"value": code}
        res["identifier"] = [ident]
    res["name"] = name or code
    key = f"manufacturer|{system or ''}|{code}" if code else f"manufacturer|name|{name}"
    return ctx.add(res, key)


def _performers(ctx: Context, reps: list[Composite], function: str) -> list[dict[str, Any]]:
    out = []
    coding = ctx.tables.coding("0443", function) or {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0443",
        "code": function,
    }
    for rep in reps:
        who = dt.practitioner(ctx, rep)
        if who:
            out.append({"function": {"coding": [coding]}, "actor": {"reference": who}})
    return out


def _origin(ctx: Context, rxa: Segment) -> tuple[bool | None, dict[str, Any] | None, list[str]]:
    """RXA-9 → (primarySource, reportOrigin, administration notes)."""
    primary: bool | None = None
    origin: dict[str, Any] | None = None
    notes: list[str] = []
    for rep in ctx.reps(rxa, 9):
        code = rep.get(1)
        is_source = rep.get(3).upper() == "NIP001" or (not rep.get(3) and bool(_INFO_SOURCE.fullmatch(code)))
        if is_source and primary is None:
            primary = code == "00"
            if not primary:
                origin = dt.codeable_concept(ctx, rep)
        else:
            text = rep.get(9) or rep.get(2) or code
            if text:
                notes.append(text)
    return primary, origin, notes


def _observations(ctx: Context, obxs: list[Segment], res: dict[str, Any]) -> None:
    """The OBX under an RXA → programEligibility, fundingSource, education (see the module docstring)."""
    eligibility: list[dict[str, Any]] = []
    education: dict[str, dict[str, str]] = {}
    for position, obx in enumerate(obxs, 1):
        code = ctx.field(obx, 3)
        entry = ctx.tables.entry("immunization_observations", code.get(1)) or ctx.tables.entry(
            "immunization_observations", code.get(4)
        )
        target = entry.get("target", "") if entry else ""
        value = ctx.field(obx, 5)
        if not target or not value:
            continue
        if target == "programEligibility":
            concept = dt.codeable_concept(ctx, value)
            if concept:
                eligibility.append(concept)
        elif target == "fundingSource":
            concept = dt.codeable_concept(ctx, value)
            if concept and "fundingSource" not in res:
                res["fundingSource"] = concept
        elif target.startswith("education."):
            group = education.setdefault(ctx.value(obx, 4) or f"#{position}", {})
            part = target.removeprefix("education.")
            if part == "documentType":
                text = value.get(1) or value.get(2)
            elif part == "vaccineType":
                text = value.get(2) or value.get(1)
            else:
                text = dt.date_time(ctx, value) or ""
            if text:
                group.setdefault(part, text)
    if eligibility:
        res["programEligibility"] = eligibility
    out = []
    for group in education.values():
        document = group.get("documentType") or group.get("vaccineType")
        if not document:
            continue
        item = {"documentType": document}
        for part in ("publicationDate", "presentationDate"):
            if group.get(part):
                item[part] = group[part]
        out.append(item)
    if out:
        res["education"] = out


def _key(ctx: Context, orc: Segment | None, rxa: Segment, vaccine: dict[str, Any]) -> str:
    filler, placer = ctx.field(orc, 3), ctx.field(orc, 2)
    if filler.get(1):
        return "filler|" + dt.ei_key(ctx, filler, sender_fallback=True)
    if placer.get(1):
        return "placer|" + dt.ei_key(ctx, placer, sender_fallback=True)
    first = (vaccine.get("coding") or [{}])[0]
    code = f"{first.get('system', '')}|{first.get('code', '')}" if first else vaccine.get("text", "")
    return f"administered|{ctx.patient_key}|{code}|{ctx.value(rxa, 3)}"


# -- the resource -------------------------------------------------------------------------------


def immunization(
    ctx: Context,
    orc: Segment | None,
    rxa: Segment,
    rxr: Segment | None = None,
    obx: list[Segment] | None = None,
    nte: list[Segment] | None = None,
) -> str | None:
    """One ORC/RXA group → an Immunization of the current patient; returns its reference
    (``None`` when there is no patient or RXA-5 has no vaccine code)."""
    vaccine = dt.codeable_concept(ctx, ctx.field(rxa, 5))
    if ctx.patient is None or vaccine is None:
        return None
    status, subpotent = _status(ctx, rxa)
    res: dict[str, Any] = {"resourceType": "Immunization"}
    idents = dt.order_identifiers(ctx, ctx.field(orc, 2), ctx.field(orc, 3))
    if idents:
        res["identifier"] = idents
    res["status"] = status
    refusal = dt.codeable_concept(ctx, ctx.field(rxa, 18))
    if refusal:
        res["statusReason"] = refusal
    res["vaccineCode"] = vaccine
    res["patient"] = {"reference": ctx.patient}
    if ctx.encounter:
        res["encounter"] = {"reference": ctx.encounter}
    res["occurrenceDateTime"] = dt.date_time(ctx, ctx.field(rxa, 3))
    if res["occurrenceDateTime"] is None:
        del res["occurrenceDateTime"]
        res["occurrenceString"] = "unknown"
    recorded = (
        dt.date_time(ctx, ctx.field(rxa, 22))
        or dt.date_time(ctx, ctx.field(orc, 9))
        or dt.date_time(ctx, ctx.field(rxa, 3))
    )
    if recorded:
        res["recorded"] = recorded
    primary, origin, notes = _origin(ctx, rxa)
    if primary is not None:
        res["primarySource"] = primary
    if origin:
        res["reportOrigin"] = origin
    where = ctx.field(rxa, 27) or ctx.field(rxa, 11)
    place = encounter.location(ctx, where) if where else None
    if place:
        res["location"] = {"reference": place}
    maker = _manufacturer(ctx, ctx.field(rxa, 17))
    if maker:
        res["manufacturer"] = {"reference": maker}
    lot = ctx.value(rxa, 15)
    if lot:
        res["lotNumber"] = lot
    expires = dt.date(ctx, ctx.field(rxa, 16))
    if expires:
        res["expirationDate"] = expires
    site = dt.codeable_concept(ctx, ctx.field(rxr, 2), "0163")
    if site:
        res["site"] = site
    route = dt.codeable_concept(ctx, ctx.field(rxr, 1), "0162")
    if route:
        res["route"] = route
    dose = dt.quantity(ctx, ctx.value(rxa, 6), ctx.field(rxa, 7))
    if dose and dose["value"] != UNKNOWN_AMOUNT:
        res["doseQuantity"] = dose
    performers = _performers(ctx, ctx.reps(orc, 12), "OP") + _performers(ctx, ctx.reps(rxa, 10), "AP")
    if performers:
        res["performer"] = performers
    notes += [text for seg in nte or [] if (text := ctx.value(seg, 3))]
    if notes:
        res["note"] = [{"text": text} for text in notes]
    reasons = [c for c in (dt.codeable_concept(ctx, r) for r in ctx.reps(rxa, 19)) if c]
    if reasons:
        res["reasonCode"] = reasons
    if subpotent:
        res["isSubpotent"] = True
    _observations(ctx, obx or [], res)
    ref = ctx.add(res, _key(ctx, orc, rxa, vaccine))
    ctx.focus.append(ref)
    return ref


def _mapped_here(ctx: Context, obx: Segment) -> bool:
    """Whether the ``immunization_observations`` table maps this OBX into the Immunization."""
    code = ctx.field(obx, 3)
    entry = ctx.tables.entry("immunization_observations", code.get(1)) or ctx.tables.entry(
        "immunization_observations", code.get(4)
    )
    return bool(entry and entry.get("target"))


def build_vxu(ctx: Context) -> None:
    """VXU^V04: the patient, next of kin, the visit, the person's observations, and an Immunization
    per ORC/RXA group with the Observations of its other OBX."""
    from adapters.hl7.to_fhir import results  # results builds on orders, which builds on patient

    patient.patient(ctx, ctx.segment("PID"), ctx.segment("PD1"))
    pv1 = ctx.segment("PV1")
    if pv1 is not None:
        encounter.encounter(ctx, pv1, ctx.segment("PV2"))
    for n, nk1 in enumerate(ctx.message.segments_named("NK1"), 1):
        patient.related_person(ctx, nk1, n)
    segments = ctx.message.segments
    first_order = next((i for i, s in enumerate(segments) if s.id in ("ORC", "RXA")), len(segments))
    results.patient_observations(ctx, results.collect(segments[:first_order]))
    for group in _groups(segments):
        found = results.collect(group.segments)
        own = [r for r in found if not _mapped_here(ctx, r.obx)]
        theirs = [id(nte) for r in own for nte in r.notes]
        notes = [nte for nte in group.nte if id(nte) not in theirs]
        ref = immunization(ctx, group.orc, group.rxa, group.rxr, group.obx, notes)
        if ref is None:
            continue
        for result in own:
            results.observation(ctx, result, parent=ref, part_of=ref)


registry.register(VXU_TYPES, build_vxu)
