"""ROL → the patient's primary care provider or an Encounter participant (the IG's ROL maps).

Where a ROL stands in the message says what it is about (the IG's message maps):

- after PID / PD1 (the IG's ``ADT_A01:follow:PID.ROL``), a ROL whose role ROL-3 is ``PP``
  (primary care provider, table 0443) names the patient's primary care provider:
  ``Patient.generalPractitioner`` points at the Practitioner of ROL-4 (XCN, through
  :func:`.datatypes.practitioner`). The IG sends the other roles there to a RelatedPerson "if
  the implementation determines so"; nothing in the segment says when, so they are not mapped.
- after PV1 / PV2 (``ADT_A01.ROL`` of the visit), a ROL is an Encounter participant (the IG's
  ROL[PractitionerRole] to Encounter map): ``type`` from ROL-3 through the ``rol_participant_type``
  table (the IG's ConceptMap table-hl70443-to-v3-participationtype: AD → ADM, AT → ATND,
  CP → CON, RP → REF, PP → SNOMED 446050000; an unmapped role keeps its v2-0443 coding),
  ``individual`` the Practitioner of ROL-4, ``period`` ROL-5 / ROL-6.

In both places, when the ROL names a location (ROL-13, a PL: the same Location chain as PV1-3) or
an organization (ROL-14, XON), a PractitionerRole carries them with the role: ``code`` ROL-3,
``practitioner`` ROL-4, ``period`` ROL-5 / ROL-6, ``specialty`` ROL-9, ``telecom`` ROL-12,
``location`` ROL-13, ``organization`` ROL-14 (the IG's ROL[PractitionerRole] map). It is keyed by
the practitioner, the role and those two, so a later message naming the same role updates it.

A ROL in any other place (the PR1 group: procedure performers; the insurance group) is left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from adapters.hl7.er7 import Segment
from adapters.hl7.to_fhir import datatypes as dt
from adapters.hl7.to_fhir import encounter as enc
from adapters.hl7.to_fhir.context import Context

__all__ = ["PATIENT", "VISIT", "apply", "placement"]

PATIENT = "patient"
VISIT = "visit"
V2_0443 = "http://terminology.hl7.org/CodeSystem/v2-0443"

_ANCHORS = {"PID": PATIENT, "PD1": PATIENT, "PV1": VISIT, "PV2": VISIT}
_TRANSPARENT = frozenset({"ROL", "ARV"})
"""Segments that do not end the group a ROL belongs to (the IG's ``follow`` rules: ARV and ROL
repeat after PID / PD1 and after PV1 / PV2)."""


def placement(segments: Iterable[Segment]) -> list[tuple[Segment, str]]:
    """Each ROL with the group it follows (:data:`PATIENT` or :data:`VISIT`); ROLs elsewhere are left out."""
    out: list[tuple[Segment, str]] = []
    group = ""
    for seg in segments:
        if seg.id in _ANCHORS:
            group = _ANCHORS[seg.id]
        elif seg.id == "ROL":
            if group:
                out.append((seg, group))
        elif seg.id not in _TRANSPARENT:
            group = ""
    return out


def _role_code(ctx: Context, rol: Segment) -> str:
    return ctx.value(rol, 3).upper()


def _practitioner_role(ctx: Context, rol: Segment, who: str) -> str | None:
    """ROL → PractitionerRole, only when it names a location (ROL-13) or an organization (ROL-14)."""
    where = enc.location(ctx, ctx.field(rol, 13)) if ctx.field(rol, 13) else None
    org = dt.organization(ctx, ctx.field(rol, 14))
    if where is None and org is None:
        return None
    res: dict[str, Any] = {"resourceType": "PractitionerRole", "practitioner": {"reference": who}}
    code = dt.codeable_concept(ctx, ctx.field(rol, 3), "0443")
    if code:
        res["code"] = [code]
    span = dt.period(ctx, ctx.field(rol, 5).get(1), ctx.field(rol, 6).get(1))
    if span:
        res["period"] = span
    specialty = dt.codeable_concept(ctx, ctx.field(rol, 9))
    if specialty:
        res["specialty"] = [specialty]
    telecom = [t for t in (dt.contact_point(ctx, r, "work") for r in ctx.reps(rol, 12)) if t]
    if telecom:
        res["telecom"] = telecom
    if where:
        res["location"] = [{"reference": where}]
    if org:
        res["organization"] = {"reference": org}
    key = "|".join(("rol", who, _role_code(ctx, rol), where or "", org or ""))
    return ctx.add(res, key)


def _participant_type(ctx: Context, rol: Segment) -> dict[str, Any] | None:
    cwe = ctx.field(rol, 3)
    concept = dt.codeable_concept(ctx, cwe, "0443")
    mapped = ctx.tables.coding("rol_participant_type", cwe.get(1))
    if mapped is None:
        return concept
    codings = [mapped] + [
        c for c in (concept or {}).get("coding", []) if c.get("system") != mapped.get("system")
    ]
    out: dict[str, Any] = {"coding": codings}
    if concept and concept.get("text"):
        out["text"] = concept["text"]
    return out


def _general_practitioner(ctx: Context, rol: Segment) -> None:
    if ctx.patient is None or _role_code(ctx, rol) != "PP":
        return
    who = dt.practitioner(ctx, ctx.field(rol, 4))
    if who is None:
        return
    patient = ctx.resource(ctx.patient)
    if patient is not None:
        gps = patient.setdefault("generalPractitioner", [])
        if {"reference": who} not in gps:
            gps.append({"reference": who})
    _practitioner_role(ctx, rol, who)


def _participant(ctx: Context, rol: Segment) -> None:
    if ctx.encounter is None:
        return
    who = dt.practitioner(ctx, ctx.field(rol, 4))
    if who is None:
        return
    item: dict[str, Any] = {}
    kind = _participant_type(ctx, rol)
    if kind:
        item["type"] = [kind]
    span = dt.period(ctx, ctx.field(rol, 5).get(1), ctx.field(rol, 6).get(1))
    if span:
        item["period"] = span
    item["individual"] = {"reference": who}
    visit = ctx.resource(ctx.encounter)
    if visit is not None:
        participants = visit.setdefault("participant", [])
        if item not in participants:
            participants.append(item)
    _practitioner_role(ctx, rol, who)


def apply(ctx: Context, segments: Iterable[Segment]) -> None:
    """Every ROL of ``segments`` after PID / PD1 or PV1 / PV2, mapped as the module docstring says."""
    for rol, group in placement(segments):
        if group == PATIENT:
            _general_practitioner(ctx, rol)
        else:
            _participant(ctx, rol)
