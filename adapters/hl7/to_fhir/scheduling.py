"""SIU^S12-S17 and S26 → Appointment (the IG's SCH, AIS, AIG, AIL, AIP and NTE[Appointment-Comment] maps).

All these events share the SIU_S12 structure: SCH, TQ1*, NTE*, then the
patient (PID, PD1, PV1, PV2, OBX*, DG1*) and the resource groups (RGS, AIS,
AIG, AIL, AIP, each with its NTEs). One Appointment per message:

- **Key.** The filler appointment id SCH-2 (authority + id; the sending
  facility when SCH-2 has no authority), else the placer id SCH-1, else the
  message. So S13 (reschedule), S14 (modification), S15 (cancel) … for the
  appointment an S12 booked update that same Appointment; each entry is a
  ``PUT``, so the last message's picture of the appointment wins.
- ``identifier`` SCH-1 (``PLAC``), SCH-2 (``FILL``).
- ``status``: the ``siu_event_status`` table says, per trigger, whether the event
  decides (S15 and S16 cancelled, S17 entered-in-error, S26 noshow) or only
  gives the default (S12-S14 booked); otherwise SCH-25 through table ``0278``
  (the IG's FillerStatusCodes map: Booked → booked, Pending → pending,
  Cancelled → cancelled, Noshow → noshow, Complete → fulfilled, Started →
  checked-in, Waitlist → waitlist, Deleted → entered-in-error; we add
  Dc/Discontinued → cancelled and Overbook → booked, which the IG leaves open).
- ``start`` / ``end``: TQ1-7 / TQ1-8 (v2.5+), else SCH-11 TQ components 4 and 5,
  else the earliest resource start (AIS-4, AIG-8, AIL-6, AIP-6) plus its
  duration. A missing end is the start plus the duration when one is known;
  FHIR wants both or neither (app-2), so a start that cannot be paired is left
  to the participants' periods.
- ``minutesDuration``: SCH-9 in the SCH-10 units (table ``duration_units``:
  seconds, minutes, hours …), else the first AIS-7/AIS-8, else end - start.
- ``appointmentType`` SCH-7 (table ``0276``: FHIR R4 binds appointmentType to
  v2-0276), else SCH-8. SCH-6 (event reason) is ``cancelationReason`` when the
  appointment ends cancelled or noshow, else ``reasonCode`` when it is coded
  (has a text or a coding system: a bare event word such as ``Add`` says why the
  message was sent, not why the patient comes); each DG1 becomes a
  Condition (:func:`.clinical.condition`) named in ``reasonReference``.
- ``serviceType`` every AIS-3; ``comment`` the NTEs right after SCH/TQ1 (NTE-3,
  lines joined with newlines). NTEs of a resource are not mapped.
- ``participant``: the Patient (PID), each AIP-3 Practitioner (``type`` AIP-4,
  table ``0443``), AIL-3 Location chain (as PV1's), AIG-3 Device (deviceName
  AIG-3.2, identifier AIG-3.1, type AIG-4). A resource's period is its start
  (+ duration); its status its own filler status (AIS-10, AIG-14, AIL-12,
  AIP-12) through the ``participant`` member of table ``0278``, else the one
  the appointment status implies (``appointment_participant_status``).
  An actor named twice (one practitioner in several resource groups) is one
  participant.

- SCH-12 (placer contact), SCH-16 (filler contact) and SCH-20 (entered by) are
  Practitioner participants, as the IG's SCH[Appointment] map says: type text
  ``placer contact`` / ``filler contact`` (the IG names them as codes of
  participant-type, a code system without them, so only the text is sent) and
  ``enterer`` (provenance-participant-type) for SCH-20; a person already a
  participant (an AIP) is not added again.
- ``basedOn`` the ServiceRequests of SCH-26/SCH-27 (:func:`service_requests`, the IG's
  SCH[ServiceRequest], made only when one of them is valued).

The PATIENT group, as the IG's SIU_S12 map says: PV1/PV2 → the Encounter
(:func:`.encounter.encounter`), keyed by PV1-19, else by this Appointment's key,
so that S13, S14, S15 … for the appointment update one Encounter rather than
making one per message; its OBX (with the NTEs after them) → Observations of
the patient (:func:`.results.patient_observations`); DG1 → Conditions.

Not mapped: SCH-15/19/22 contact locations (the IG's SCH map has none), the
AIS[ServiceRequest] map (the IG leaves aligning AIS with repeating SCH-26/27 to the
implementer), start-time offsets (AIx-5/7).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from adapters.hl7.er7 import Segment
from adapters.hl7.to_fhir import clinical, encounter, patient, registry, results
from adapters.hl7.to_fhir import datatypes as dt
from adapters.hl7.to_fhir.context import Composite, Context
from adapters.hl7.to_fhir.encounter import location
from adapters.hl7.to_fhir.errors import ConversionError

__all__ = ["SIU_TYPES", "appointment", "build_siu"]

SIU_TYPES = frozenset(f"SIU^{t}" for t in ("S12", "S13", "S14", "S15", "S16", "S17", "S26"))

_RESOURCES = {
    # segment: (start, duration, duration units, filler status)
    "AIS": (4, 7, 8, 10),
    "AIG": (8, 11, 12, 14),
    "AIL": (6, 9, 10, 12),
    "AIP": (6, 9, 10, 12),
}
_BODY = frozenset({"PID", "PD1", "PV1", "PV2", "OBX", "DG1", "RGS", *_RESOURCES})
_RESOURCE_GROUPS = frozenset({"RGS", *_RESOURCES})
"""The segments that end the PATIENT group (whose OBX, with the NTEs after them, are Observations)."""
PROVENANCE_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


# -- times ----------------------------------------------------------------------------------------


def _seconds(ctx: Context, amount: str, units: Composite) -> int | None:
    """An amount in CNE units → seconds (``None`` when either is unknown)."""
    value = dt.number(amount)
    entry = ctx.tables.entry("duration_units", units.get(1))
    factor = dt.number(entry.get("seconds", "")) if entry else None
    if value is None or factor is None or value <= 0:
        return None
    return round(value * factor)


def _plus(start: str | None, seconds: int | None) -> str | None:
    """A FHIR dateTime with a time and zone plus ``seconds``, in the same zone; else ``None``."""
    if not start or seconds is None or "T" not in start:
        return None
    moment = datetime.fromisoformat(start) + timedelta(seconds=seconds)
    return moment.isoformat(timespec="seconds")


def _minutes_between(start: str, end: str) -> int | None:
    if "T" not in start or "T" not in end:
        return None
    seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    return int(seconds // 60) if seconds >= 60 else None


def _earlier(a: str | None, b: str | None) -> bool:
    """``a`` is a strictly earlier instant than ``b`` (both with times)."""
    if not a or not b or "T" not in a or "T" not in b:
        return False
    return datetime.fromisoformat(a) < datetime.fromisoformat(b)


# -- resources ------------------------------------------------------------------------------------


def _device(ctx: Context, cwe: Composite, kind: Composite) -> str | None:
    """AIG-3 (resource id) + AIG-4 (resource type) → a Device keyed by the resource id."""
    code, name = cwe.get(1), cwe.get(2)
    if not code and not name:
        return None
    system = dt.code_system(ctx, cwe.get(3))
    res: dict[str, Any] = {"resourceType": "Device"}
    if code:
        res["identifier"] = [{"system": system, "value": code} if system else {"value": code}]
    res["deviceName"] = [{"name": name or code, "type": "user-friendly-name"}]
    concept = dt.codeable_concept(ctx, kind)
    if concept:
        res["type"] = concept
    key = f"resource|{system or ''}|{code}" if code else f"resource|name|{name}"
    return ctx.add(res, key)


def _actor(ctx: Context, seg: Segment) -> tuple[str | None, dict[str, Any] | None]:
    """A resource segment → (its actor's reference, participant type)."""
    if seg.id == "AIP":
        who = dt.practitioner(ctx, ctx.field(seg, 3))
        return who, dt.codeable_concept(ctx, ctx.field(seg, 4), "0443")
    if seg.id == "AIL":
        where = ctx.field(seg, 3)
        return (location(ctx, where) if where else None), None
    if seg.id == "AIG":
        return _device(ctx, ctx.field(seg, 3), ctx.field(seg, 4)), None
    return None, None


def _period(ctx: Context, seg: Segment) -> tuple[str | None, str | None, int | None]:
    """A resource segment's (start, end, duration in seconds)."""
    at, length, units, _ = _RESOURCES[seg.id]
    start = dt.date_time(ctx, ctx.field(seg, at))
    seconds = _seconds(ctx, ctx.value(seg, length), ctx.field(seg, units))
    return start, _plus(start, seconds), seconds


def _participant_status(ctx: Context, filler: str, appointment_status: str) -> str:
    own = ctx.tables.entry("0278", filler)
    if own and own.get("participant"):
        return own["participant"]
    implied = ctx.tables.entry("appointment_participant_status", appointment_status)
    return implied.get("code", "needs-action") if implied else "needs-action"


def _status(ctx: Context, sch: Segment) -> str:
    event = ctx.tables.entry("siu_event_status", ctx.trigger) or {}
    if event.get("precedence") == "event" and event.get("code"):
        return event["code"]
    filler = ctx.tables.entry("0278", ctx.value(sch, 25))
    if filler and filler.get("code"):
        return filler["code"]
    return event.get("code") or "booked"


def _key(ctx: Context, sch: Segment) -> str:
    filler, placer = ctx.field(sch, 2), ctx.field(sch, 1)
    if filler.get(1):
        return "filler|" + dt.ei_key(ctx, filler, sender_fallback=True)
    if placer.get(1):
        return "placer|" + dt.ei_key(ctx, placer, sender_fallback=True)
    msh = ctx.segment("MSH")
    return "message|" + "|".join((ctx.field(msh, 3).raw, ctx.field(msh, 4).raw, ctx.value(msh, 10)))


# -- the resource ---------------------------------------------------------------------------------


_CONTACTS = (
    # SCH field, participant type (the IG's SCH[Appointment] map)
    (12, {"text": "placer contact"}),
    (16, {"text": "filler contact"}),
    (20, {"coding": [{"system": PROVENANCE_PARTICIPANT, "code": "enterer", "display": "Enterer"}]}),
)


def _contacts(ctx: Context, sch: Segment, status: str) -> list[dict[str, Any]]:
    """SCH-12 / SCH-16 / SCH-20 → participants (a Practitioner each; one person, one participant)."""
    out: dict[str, dict[str, Any]] = {}
    for n, kind in _CONTACTS:
        for rep in ctx.reps(sch, n):
            who = dt.practitioner(ctx, rep)
            if who is None:
                continue
            item = out.setdefault(
                who,
                {"type": [], "actor": {"reference": who}, "status": _participant_status(ctx, "", status)},
            )
            if kind not in item["type"]:
                item["type"].append(kind)
    return list(out.values())


def service_requests(ctx: Context, sch: Segment) -> list[str]:
    """SCH-26 / SCH-27 → a ServiceRequest per order number pair (the IG's SCH[ServiceRequest], made
    only when one of them is valued): identifier SCH-26 (``PLAC``) and SCH-27 (``FILL``) of the same
    repetition, ``status`` SCH-25 through the ``request`` member of table ``0278`` (``active`` when
    SCH-25 is not valued, as the IG assigns), ``intent`` ``order``, subject the patient. Keyed as the
    orders module keys an order (placer number, else filler number), so that the Appointment's
    ``basedOn`` is the ServiceRequest an ORM for that order made."""
    if ctx.patient is None:
        return []
    placers, fillers = ctx.reps(sch, 26), ctx.reps(sch, 27)
    filler_status = ctx.value(sch, 25)
    entry = ctx.tables.entry("0278", filler_status) or {}
    status = entry.get("request", "unknown") if filler_status else "active"
    refs: list[str] = []
    for i in range(max(len(placers), len(fillers))):
        placer = placers[i] if i < len(placers) else None
        filler = fillers[i] if i < len(fillers) else None
        idents = [
            dt.entity_identifier(ctx, ei, code)
            for ei, code in ((placer, "PLAC"), (filler, "FILL"))
            if ei is not None
        ]
        if not any(idents):
            continue
        if placer is not None and placer.get(1):
            key = "placer|" + dt.ei_key(ctx, placer)
        else:
            assert filler is not None
            key = "filler|" + dt.ei_key(ctx, filler)
        res: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "identifier": [i for i in idents if i],
            "status": status,
            "intent": "order",
            "subject": {"reference": ctx.patient},
        }
        ref = ctx.add(res, key)
        if ref not in refs:
            refs.append(ref)
    return refs


def appointment(
    ctx: Context, sch: Segment, conditions: list[str] | None = None, based_on: list[str] | None = None
) -> str:
    """SCH and the message's resource segments → the Appointment (see the module docstring)."""
    res: dict[str, Any] = {"resourceType": "Appointment"}
    idents = dt.order_identifiers(ctx, ctx.field(sch, 1), ctx.field(sch, 2))
    if idents:
        res["identifier"] = idents
    status = _status(ctx, sch)
    res["status"] = status
    event_reason = dt.codeable_concept(ctx, ctx.field(sch, 6))
    if event_reason and status in ("cancelled", "noshow"):
        res["cancelationReason"] = event_reason
    services: list[dict[str, Any]] = []
    participants: list[dict[str, Any]] = []
    actors: set[str] = set()
    first_start: tuple[str | None, int | None] = (None, None)
    comments: list[str] = []
    in_header = True
    for seg in ctx.message.segments:
        if seg.id in _BODY:
            in_header = False
        if seg.id == "NTE" and in_header:
            comments += [t for t in (r.get(1) for r in ctx.reps(seg, 3)) if t]
        if seg.id not in _RESOURCES:
            continue
        start, end, seconds = _period(ctx, seg)
        if start and (first_start[0] is None or _earlier(start, first_start[0])):
            first_start = (start, seconds)
        if seg.id == "AIS":
            service = dt.codeable_concept(ctx, ctx.field(seg, 3))
            if service and service not in services:
                services.append(service)
            continue
        who, kind = _actor(ctx, seg)
        if who is None or who in actors:
            continue
        actors.add(who)
        item: dict[str, Any] = {"actor": {"reference": who}}
        if kind:
            item["type"] = [kind]
        span = {k: v for k, v in (("start", start), ("end", end)) if v}
        if span:
            item["period"] = span
        item["status"] = _participant_status(ctx, ctx.value(seg, _RESOURCES[seg.id][3]), status)
        participants.append(item)
    if services:
        res["serviceType"] = services
    kind = dt.codeable_concept(ctx, ctx.field(sch, 7), "0276") or dt.codeable_concept(ctx, ctx.field(sch, 8))
    if kind:
        res["appointmentType"] = kind
    sch6 = ctx.field(sch, 6)
    if event_reason and "cancelationReason" not in res and (sch6.get(2) or sch6.get(3)):
        res["reasonCode"] = [event_reason]
    if conditions:
        res["reasonReference"] = [{"reference": ref} for ref in conditions]
    _times(ctx, sch, res, first_start)
    if comments:
        res["comment"] = "\n".join(comments)
    if ctx.patient:
        patient_item = {
            "actor": {"reference": ctx.patient},
            "status": _participant_status(ctx, "", status),
        }
        participants.insert(0, patient_item)
    for contact in _contacts(ctx, sch, status):
        if contact["actor"]["reference"] not in actors:
            actors.add(contact["actor"]["reference"])
            participants.append(contact)
    if based_on:
        res["basedOn"] = [{"reference": ref} for ref in based_on]
    res["participant"] = participants or [
        {"type": [{"text": "unknown"}], "status": _participant_status(ctx, "", status)}
    ]
    ref = ctx.add(res, _key(ctx, sch))
    ctx.focus.append(ref)
    return ref


def _times(ctx: Context, sch: Segment, res: dict[str, Any], first: tuple[str | None, int | None]) -> None:
    """start, end and minutesDuration (see the module docstring)."""
    tq1, timing = ctx.segment("TQ1"), ctx.field(sch, 11)
    start = dt.date_time(ctx, ctx.field(tq1, 7)) or dt.dtm(ctx, timing.get(4))
    end = dt.date_time(ctx, ctx.field(tq1, 8)) or (dt.dtm(ctx, timing.get(5)) if start else None)
    seconds = _seconds(ctx, ctx.value(sch, 9), ctx.field(sch, 10))
    if not start and first[0]:
        start, end = first[0], None
        seconds = seconds or first[1]
    if seconds is None and first[1] is not None:
        seconds = first[1]
    if start and not end:
        end = _plus(start, seconds)
    minutes = seconds // 60 if seconds is not None and seconds >= 60 else None
    if minutes is None and start and end:
        minutes = _minutes_between(start, end)
    if start and end:
        res["start"], res["end"] = start, end
    if minutes:
        res["minutesDuration"] = minutes


def build_siu(ctx: Context) -> None:
    """An SIU event: the patient (when PID is sent), the visit, their observations and diagnoses,
    the orders the appointment is for, and the Appointment."""
    sch = ctx.segment("SCH")
    if sch is None:
        raise ConversionError("no_schedule", "The message has no schedule activity segment (SCH).")
    pid = ctx.segment("PID")
    if pid is not None and any(rep.get(1) for rep in ctx.reps(pid, 3)):
        patient.patient(ctx, pid, ctx.segment("PD1"))
    pv1 = ctx.segment("PV1")
    if pv1 is not None:
        encounter.encounter(ctx, pv1, ctx.segment("PV2"), fallback_key="appointment|" + _key(ctx, sch))
    segments = ctx.message.segments
    start = next((i for i, s in enumerate(segments) if s.id == "PID"), len(segments))
    end = next((i for i, s in enumerate(segments) if i > start and s.id in _RESOURCE_GROUPS), len(segments))
    results.patient_observations(ctx, results.collect(segments[start:end]))
    conditions = [
        ref
        for n, dg1 in enumerate(ctx.message.segments_named("DG1"), 1)
        if (ref := clinical.condition(ctx, dg1, n))
    ]
    appointment(ctx, sch, conditions, service_requests(ctx, sch))


registry.register(SIU_TYPES, build_siu)
