"""ORC / OBR (+ TQ1, NTE, DG1, SPM) → ServiceRequest (and Specimen); the ORM^O01 and OML^O21 builders.

The segment grouping here (:func:`groups`) is shared with :mod:`.results`,
whose ORU^R01 builder makes the ServiceRequest of each ORDER_OBSERVATION with
:func:`service_request`, so that ``DiagnosticReport.basedOn`` points at the
same ServiceRequest an ORM/OML for that order produced.

Mapping (the IG's ORC[ServiceRequest], OBR[ServiceRequest], TQ1[ServiceRequest],
NTE and SPM[Specimen] maps):

- identifier: placer ORC-2 (else OBR-2, type ``PLAC``), filler ORC-3 (else
  OBR-3, type ``FILL``); requisition ORC-4 (``PGN``).
- status: ORC-5 through table ``0038``; when that gives nothing, ORC-1 through
  ``0119``; when that gives nothing either, the result status OBR-25 through
  ``result_request_status`` (an ORU without ORC: final results mean a
  completed order); else ``unknown``. intent ``order``.
- code OBR-4; priority TQ1-9 / OBR-27.6 / ORC-7.6 (table ``0485``);
  occurrence TQ1-7/8, else OBR-27.4/.5, else ORC-7.4/.5 (a period when there
  is an end); authoredOn ORC-9; requester ORC-12, else OBR-16; reasonCode
  OBR-31; reasonReference the Conditions of the group's DG1 segments (the
  :func:`~adapters.hl7.to_fhir.clinical.condition` map); note the NTEs after
  ORC/OBR; specimen the group's SPMs; supportingInfo the group's OBXs (ORM/OML:
  ask-at-order-entry answers, as Observations).

Choices where the IG leaves room:

- **Keys.** A ServiceRequest is keyed by its placer number (authority and id),
  else its filler number, else the message (MSH-3/4/10) and the order's
  position. The placer number comes first because an order gets its filler
  number only once the filler has it: the ORU that answers an ORM then updates
  the same ServiceRequest. A number without an assigning authority is keyed
  without one (not the sending facility: the ORM and the ORU come from
  different senders). When two orders of one message share a key, the later
  ones get ``#2``, ``#3`` … appended (deterministic for the same message).
- **An OBR without its own ORC.** In ORM/OML it belongs to a new order that
  shares the previous ORC (its status, dates and orderer); in ORU an
  ORDER_OBSERVATION's ORC is optional and is never shared.
- **Orders that are not services.** An ORC whose detail is RXO/RXE/RQD/RQ1/ODS/ODT
  (pharmacy, supply, diet) and has no OBR is not a ServiceRequest; it is not mapped. The
  OBX of its OBSERVATION group still become Observations of the patient (the IG's ORM_O01
  ORDER_DETAIL.OBSERVATION → OBX[Observation]), keyed under the order's key, without
  ``supportingInfo`` (there is no ServiceRequest to carry it).
- A message without a PID raises ``ConversionError("no_patient")`` (a
  ServiceRequest needs a subject).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adapters.hl7.er7 import Message, Segment
from adapters.hl7.to_fhir import clinical, encounter, patient
from adapters.hl7.to_fhir import datatypes as dt
from adapters.hl7.to_fhir.context import Composite, Context, resource_id
from adapters.hl7.to_fhir.registry import register

__all__ = [
    "ORDER_TYPES",
    "Order",
    "PatientGroup",
    "Placed",
    "Result",
    "build_orders",
    "fresh_key",
    "groups",
    "note",
    "service_request",
    "specimen_of",
    "start_patient",
]

ORDER_TYPES = frozenset({"ORM^O01", "OML^O21"})
"""The order messages :func:`build_orders` converts."""

_ORDER_DETAIL = frozenset({"RXO", "RXE", "RQD", "RQ1", "ODS", "ODT"})
_PATIENT_EXTRAS = frozenset({"NK1", "AL1", "IN1", "PR1"})


# -- grouping --------------------------------------------------------------------------------


@dataclass
class Result:
    """One OBX, the NTEs after it and the SPM it follows (if any); ``index`` is 1-based in its group."""

    obx: Segment
    index: int
    notes: list[Segment] = field(default_factory=list)
    specimen: Segment | None = None


@dataclass
class Order:
    """One ORC/OBR group: what becomes one ServiceRequest (and, in an ORU, one DiagnosticReport)."""

    index: int
    orc: Segment | None = None
    obr: Segment | None = None
    timing: list[Segment] = field(default_factory=list)
    notes: list[Segment] = field(default_factory=list)
    diagnoses: list[Segment] = field(default_factory=list)
    specimens: list[Segment] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    other_detail: bool = False


@dataclass
class PatientGroup:
    """A PID with its PD1/PV1/PV2, the segments about the patient, and the orders that follow it."""

    pid: Segment | None = None
    pd1: Segment | None = None
    pv1: Segment | None = None
    pv2: Segment | None = None
    extras: list[Segment] = field(default_factory=list)
    """NK1, AL1, PR1, IN1 of the patient (outside any order)."""
    diagnoses: list[Segment] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    """OBX segments outside any order (an ORU's PATIENT_OBSERVATION)."""
    orders: list[Order] = field(default_factory=list)


def groups(message: Message, *, share_orc: bool) -> list[PatientGroup]:
    """The message's segments grouped by patient and order (see the module docstring).

    ``share_orc``: an OBR that follows an order which already has an OBR starts a
    new order with the previous ORC (ORM/OML) or without an ORC (ORU).
    """
    out = [PatientGroup()]
    order: Order | None = None
    last: Result | None = None
    specimen: Segment | None = None
    n_orders = 0
    for seg in message.segments:
        sid, cur = seg.id, out[-1]
        if sid == "PID":
            if cur.pid is not None or cur.orders or cur.results:
                cur = PatientGroup()
                out.append(cur)
            cur.pid, order, last, specimen = seg, None, None, None
        elif sid in ("PD1", "PV1", "PV2") and order is None:
            name = sid.lower()
            if getattr(cur, name) is None:
                setattr(cur, name, seg)
        elif sid == "ORC":
            n_orders += 1
            order, last, specimen = Order(n_orders, orc=seg), None, None
            cur.orders.append(order)
        elif sid == "OBR":
            if order is None or order.obr is not None or order.other_detail:
                n_orders += 1
                shared = order.orc if (share_orc and order is not None) else None
                order = Order(n_orders, orc=shared)
                cur.orders.append(order)
            order.obr, last, specimen = seg, None, None
        elif sid == "TQ1" and order is not None:
            order.timing.append(seg)
        elif sid == "NTE":
            if last is not None:
                last.notes.append(seg)
            elif order is not None and specimen is None:
                order.notes.append(seg)
        elif sid == "DG1":
            (order.diagnoses if order is not None else cur.diagnoses).append(seg)
        elif sid == "SPM" and order is not None:
            order.specimens.append(seg)
            specimen, last = seg, None
        elif sid == "OBX":
            target = order.results if order is not None else cur.results
            last = Result(seg, len(target) + 1, specimen=specimen)
            target.append(last)
        elif sid in _ORDER_DETAIL and order is not None:
            order.other_detail, last = True, None
        elif sid in _PATIENT_EXTRAS and order is None:
            cur.extras.append(seg)
    return [g for g in out if g.pid is not None or g.orders or g.results]


def start_patient(ctx: Context, group: PatientGroup) -> None:
    """The group's Patient (PID/PD1) and Encounter (PV1/PV2), made current in ``ctx``, and the
    RelatedPersons, allergies, procedures, coverages and diagnoses sent about the patient."""
    ctx.patient, ctx.patient_key, ctx.encounter, ctx.encounter_key = None, "", None, ""
    patient.patient(ctx, group.pid, group.pd1)  # raises no_patient without a PID-3
    if group.pv1 is not None:
        encounter.encounter(ctx, group.pv1, group.pv2)
    clinical.about_the_patient(ctx, group.extras, ("NK1", "AL1", "PR1", "IN1"))
    for n, dg1 in enumerate(group.diagnoses, 1):
        clinical.condition(ctx, dg1, n)


# -- small datatypes -------------------------------------------------------------------------


def fresh_key(ctx: Context, resource_type: str, key: str) -> str:
    """``key``, or ``key#2``, ``key#3`` … when a ``resource_type`` with that key is already in ``ctx``."""
    candidate, n = key, 1
    while ctx.resource(f"{resource_type}/{resource_id(resource_type, candidate)}") is not None:
        n += 1
        candidate = f"{key}#{n}"
    return candidate


def note(ctx: Context, nte: Segment) -> dict[str, Any] | None:
    """NTE → Annotation: text NTE-3 (repetitions one per line), author NTE-5, time NTE-6."""
    lines = [ctx.text(raw) for raw in ctx.message.repetitions(nte, 3)]
    text = "\n".join(line for line in lines if line)
    if not text:
        return None
    out: dict[str, Any] = {}
    author = dt.practitioner(ctx, ctx.field(nte, 5)) if ctx.field(nte, 5) else None
    if author:
        out["authorReference"] = {"reference": author}
    when = dt.date_time(ctx, ctx.field(nte, 6))
    if when:
        out["time"] = when
    out["text"] = text
    return out


def control_key(ctx: Context) -> str:
    """The message as part of a key: sending application, facility and control id."""
    msh = ctx.segment("MSH")
    return "|".join((ctx.field(msh, 3).raw, ctx.field(msh, 4).raw, ctx.value(msh, 10)))


def first(ctx: Context, *fields: tuple[Segment | None, int]) -> Composite:
    """The first non-empty of the given fields (an empty composite when all are empty)."""
    for seg, n in fields:
        value = ctx.field(seg, n)
        if value.get(1):
            return value
    return Composite(ctx, "")


# -- ServiceRequest --------------------------------------------------------------------------


@dataclass
class Placed:
    """What :func:`service_request` made: its reference and key, and the Specimens of the order."""

    ref: str
    key: str
    specimens: list[tuple[Segment, str]] = field(default_factory=list)


def order_key(ctx: Context, order: Order) -> str:
    """The key of the order's ServiceRequest (see the module docstring), before de-duplication."""
    orc, obr = order.orc, order.obr
    placer = first(ctx, (orc, 2), (obr, 2))
    if placer.get(1):
        return "placer|" + dt.ei_key(ctx, placer)
    filler = first(ctx, (orc, 3), (obr, 3))
    if filler.get(1):
        return "filler|" + dt.ei_key(ctx, filler)
    set_id = ctx.value(obr, 1) if obr is not None else ""
    return f"message|{control_key(ctx)}|{order.index}|{set_id}"


def _status(ctx: Context, order: Order) -> str:
    for table, code in (("0038", ctx.value(order.orc, 5)), ("0119", ctx.value(order.orc, 1))):
        mapped = ctx.tables.coding(table, code)
        if mapped:
            return mapped["code"]
    mapped = ctx.tables.coding("result_request_status", ctx.value(order.obr, 25))
    return mapped["code"] if mapped else "unknown"


def _timing(ctx: Context, order: Order) -> tuple[dict[str, Any], str]:
    """``(occurrence member, priority code)`` from TQ1, else OBR-27, else ORC-7."""
    occurrence: dict[str, Any] = {}
    priority = ""
    candidates: list[tuple[str, str, str]] = [
        (ctx.value(tq1, 7), ctx.value(tq1, 8), ctx.value(tq1, 9)) for tq1 in order.timing
    ]
    for seg in (order.obr, order.orc):
        tq = ctx.field(seg, 27 if seg is order.obr else 7)
        candidates.append((tq.get(4), tq.get(5), tq.get(6)))
    for start, end, prio in candidates:
        if not occurrence:
            span = dt.period(ctx, start, end)
            if span and "end" in span:
                occurrence = {"occurrencePeriod": span}
            elif span:
                occurrence = {"occurrenceDateTime": span["start"]}
        priority = priority or prio
    mapped = ctx.tables.coding("0485", priority)
    return occurrence, mapped["code"] if mapped else ""


def specimen(ctx: Context, spm: Segment, parent_key: str, index: int) -> str | None:
    """SPM → Specimen: identifiers SPM-2 (placer, filler), type SPM-4, collected SPM-17, received
    SPM-18, the current patient. Keyed by its filler (else placer) id, else the order and SPM-1."""
    eip = ctx.field(spm, 2)
    placer, filler = eip.part(1), eip.part(2)
    idents = dt.order_identifiers(ctx, placer, filler)
    kind = dt.codeable_concept(ctx, ctx.field(spm, 4))
    if not idents and kind is None:
        return None
    res: dict[str, Any] = {"resourceType": "Specimen"}
    if idents:
        res["identifier"] = idents
    if kind:
        res["type"] = kind
    if ctx.patient:
        res["subject"] = {"reference": ctx.patient}
    received = dt.date_time(ctx, ctx.field(spm, 18))
    if received:
        res["receivedTime"] = received
    collected = ctx.field(spm, 17)
    span = dt.period(ctx, collected.get(1), collected.get(2))
    if span and "end" in span:
        res["collection"] = {"collectedPeriod": span}
    elif span:
        res["collection"] = {"collectedDateTime": span["start"]}
    if filler.get(1):
        key = "specimen|filler|" + dt.ei_key(ctx, filler)
    elif placer.get(1):
        key = "specimen|placer|" + dt.ei_key(ctx, placer)
    else:
        key = f"{parent_key}|SPM|{ctx.value(spm, 1) or index}|{index}"
    return ctx.add(res, key)


def service_request(ctx: Context, order: Order, *, with_notes: bool = True) -> Placed | None:
    """ORC/OBR (+ TQ1, NTE, DG1, SPM) → ServiceRequest of the current patient (see the module
    docstring); its Specimens and reason Conditions are added too. ``None`` without a patient.
    ``with_notes=False`` leaves the group's NTEs out (in an ORU they are about the results)."""
    if ctx.patient is None:
        return None
    orc, obr = order.orc, order.obr
    key = fresh_key(ctx, "ServiceRequest", order_key(ctx, order))
    res: dict[str, Any] = {"resourceType": "ServiceRequest"}
    idents = dt.order_identifiers(ctx, first(ctx, (orc, 2), (obr, 2)), first(ctx, (orc, 3), (obr, 3)))
    if idents:
        res["identifier"] = idents
    group = dt.entity_identifier(ctx, ctx.field(orc, 4), "PGN")
    if group:
        res["requisition"] = group
    res["status"] = _status(ctx, order)
    res["intent"] = "order"
    occurrence, priority = _timing(ctx, order)
    if priority:
        res["priority"] = priority
    code = dt.codeable_concept(ctx, ctx.field(obr, 4))
    if code:
        res["code"] = code
    res["subject"] = {"reference": ctx.patient}
    if ctx.encounter:
        res["encounter"] = {"reference": ctx.encounter}
    res.update(occurrence)
    authored = dt.date_time(ctx, ctx.field(orc, 9))
    if authored:
        res["authoredOn"] = authored
    requester = first(ctx, (orc, 12), (obr, 16))
    who = dt.practitioner(ctx, requester) if requester else None
    if who:
        res["requester"] = {"reference": who}
    reasons = [c for c in (dt.codeable_concept(ctx, r) for r in ctx.reps(obr, 31)) if c]
    if reasons:
        res["reasonCode"] = reasons
    conditions = [c for c in (clinical.condition(ctx, d, n) for n, d in enumerate(order.diagnoses, 1)) if c]
    if conditions:
        res["reasonReference"] = [{"reference": c} for c in dict.fromkeys(conditions)]
    placed = Placed("", key)
    for n, spm in enumerate(order.specimens, 1):
        ref = specimen(ctx, spm, key, n)
        if ref:
            placed.specimens.append((spm, ref))
    if placed.specimens:
        res["specimen"] = [{"reference": ref} for ref in dict.fromkeys(r for _, r in placed.specimens)]
    notes = [a for a in (note(ctx, nte) for nte in order.notes) if a] if with_notes else []
    if notes:
        res["note"] = notes
    placed.ref = ctx.add(res, key)
    return placed


def build_orders(ctx: Context) -> None:
    """ORM^O01 / OML^O21: per patient group the Patient, Encounter and what is said about the
    patient; per order a ServiceRequest, with its OBXs as supporting Observations."""
    from adapters.hl7.to_fhir import results  # results builds on this module: import it late

    for group in groups(ctx.message, share_orc=True):
        start_patient(ctx, group)
        for result in group.results:
            results.observation(ctx, result)
        for order in group.orders:
            if order.obr is None and order.other_detail:
                # not a ServiceRequest, but its OBX are still the patient's Observations
                parent = order_key(ctx, order)
                for r in order.results:
                    results.observation(ctx, r, parent=parent)
                continue
            placed = service_request(ctx, order)
            if placed is None:
                continue
            found = [
                results.observation(ctx, r, parent=placed.key, obr=order.obr, specimen=specimen_of(placed, r))
                for r in order.results
            ]
            refs = [r for r in found if r]
            request = ctx.resource(placed.ref)
            if refs and request is not None:
                request["supportingInfo"] = [{"reference": r} for r in refs]


def specimen_of(placed: Placed, result: Result) -> str | None:
    """The Specimen an OBX is about: the SPM it follows, else the order's only SPM."""
    for spm, ref in placed.specimens:
        if spm is result.specimen:
            return ref
    if result.specimen is None and len(placed.specimens) == 1:
        return placed.specimens[0][1]
    return None


register(ORDER_TYPES, build_orders)
