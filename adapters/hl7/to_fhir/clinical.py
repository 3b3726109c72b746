"""AL1 → AllergyIntolerance, DG1 → Condition, PR1 → Procedure, IN1 → Coverage (the IG's segment maps).

Each resource belongs to the current patient (``ctx.patient``) and is keyed
by the patient, the code (system and code) and, where a code may repeat
meaningfully, the encounter (diagnoses and procedures) or the set id
(coverages), so that a re-sent or updated message updates the same resource.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from adapters.hl7.er7 import Segment
from adapters.hl7.to_fhir import datatypes as dt
from adapters.hl7.to_fhir import patient
from adapters.hl7.to_fhir.context import Context

__all__ = ["allergy", "condition", "coverage", "procedure"]

CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
COVERAGE_CLASS = "http://terminology.hl7.org/CodeSystem/coverage-class"
PERFORMER_FIELDS = (8, 11, 12)
"""The PR1 fields naming who performed the procedure (anesthesiologist, surgeon, practitioner)."""


def _code_key(code: dict[str, Any] | None, fallback: str) -> str:
    if code and code.get("coding"):
        first = code["coding"][0]
        return f"{first.get('system', '')}|{first['code']}"
    if code and code.get("text"):
        return f"text|{code['text']}"
    return f"set|{fallback}"


def allergy(ctx: Context, al1: Segment, index: int) -> str | None:
    """AL1 → AllergyIntolerance: code AL1-3, category/type AL1-2 (table 0127), criticality AL1-4
    (table 0128), reaction manifestations AL1-5, onset AL1-6; clinicalStatus active."""
    if ctx.patient is None:
        return None
    code = dt.codeable_concept(ctx, ctx.field(al1, 3))
    res: dict[str, Any] = {
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active", "display": "Active"}]},
    }
    kind = ctx.tables.entry("0127", ctx.value(al1, 2)) or {}
    if kind.get("type"):
        res["type"] = kind["type"]
    if kind.get("category"):
        res["category"] = [kind["category"]]
    criticality = ctx.tables.entry("0128", ctx.value(al1, 4))
    if criticality and criticality.get("code"):
        res["criticality"] = criticality["code"]
    if code:
        res["code"] = code
    res["patient"] = {"reference": ctx.patient}
    onset = dt.date_time(ctx, ctx.field(al1, 6))
    if onset:
        res["onsetDateTime"] = onset
    manifestations = [m for m in (dt.text_or_concept(ctx, r) for r in ctx.reps(al1, 5)) if m]
    if manifestations:
        res["reaction"] = [{"manifestation": manifestations}]
    if code is None and len(res) <= 3:
        return None
    key = f"{ctx.patient_key}|{_code_key(code, ctx.value(al1, 1) or str(index))}"
    return ctx.add(res, key)


def condition(ctx: Context, dg1: Segment, index: int) -> str | None:
    """DG1 → Condition (category encounter-diagnosis): code DG1-3 (text DG1-4 in old versions),
    onset DG1-5, asserter the diagnosing clinician DG1-16, the current encounter."""
    if ctx.patient is None:
        return None
    code = dt.codeable_concept(ctx, ctx.field(dg1, 3))
    description = ctx.value(dg1, 4)
    if code is None and description:
        code = {"text": description}
    if code is None:
        return None
    res: dict[str, Any] = {
        "resourceType": "Condition",
        "category": [
            {
                "coding": [
                    {
                        "system": CONDITION_CATEGORY,
                        "code": "encounter-diagnosis",
                        "display": "Encounter Diagnosis",
                    }
                ]
            }
        ],
        "code": code,
        "subject": {"reference": ctx.patient},
    }
    if ctx.encounter:
        res["encounter"] = {"reference": ctx.encounter}
    onset = dt.date_time(ctx, ctx.field(dg1, 5))
    if onset:
        res["onsetDateTime"] = onset
    clinicians = [p for p in (dt.practitioner(ctx, r) for r in ctx.reps(dg1, 16)) if p]
    if clinicians:  # asserter is 0..1 where DG1-16 repeats: the first diagnosing clinician
        res["asserter"] = {"reference": clinicians[0]}
    key = f"{ctx.patient_key}|{ctx.encounter_key}|{_code_key(code, ctx.value(dg1, 1) or str(index))}"
    return ctx.add(res, key)


def procedure(ctx: Context, pr1: Segment, index: int) -> str | None:
    """PR1 → Procedure (status completed): code PR1-3 (text PR1-4), performedDateTime PR1-5,
    performers PR1-8 / PR1-11 / PR1-12, the current encounter."""
    if ctx.patient is None:
        return None
    code = dt.codeable_concept(ctx, ctx.field(pr1, 3))
    description = ctx.value(pr1, 4)
    if code is None and description:
        code = {"text": description}
    if code is None:
        return None
    res: dict[str, Any] = {
        "resourceType": "Procedure",
        "status": "completed",
        "code": code,
        "subject": {"reference": ctx.patient},
    }
    if ctx.encounter:
        res["encounter"] = {"reference": ctx.encounter}
    performed = dt.date_time(ctx, ctx.field(pr1, 5))
    if performed:
        res["performedDateTime"] = performed
    performers = _performers(ctx, pr1)
    if performers:
        res["performer"] = performers
    key = f"{ctx.patient_key}|{ctx.encounter_key}|{_code_key(code, ctx.value(pr1, 1) or str(index))}"
    return ctx.add(res, key)


def _performers(ctx: Context, pr1: Segment) -> list[dict[str, Any]]:
    """PR1-8 (anesthesiologist), PR1-11 (surgeon), PR1-12 (procedure practitioner) → performers, the
    function from the ``procedure_performer_function`` table (the IG's SNOMED codes; none for PR1-12)."""
    out: list[dict[str, Any]] = []
    for n in PERFORMER_FIELDS:
        function = ctx.tables.coding("procedure_performer_function", f"PR1-{n}")
        for rep in ctx.reps(pr1, n):
            who = dt.practitioner(ctx, rep)
            if who:
                performer: dict[str, Any] = {"actor": {"reference": who}}
                if function:
                    performer = {"function": {"coding": [function]}, **performer}
                out.append(performer)
    return out


def _payor(ctx: Context, in1: Segment) -> str | None:
    """IN1-3 (company id) / IN1-4 (name) / IN1-5 (address) / IN1-7 (phone) → Organization."""
    ids = [i for i in (dt.identifier(ctx, r) for r in ctx.reps(in1, 3)) if i]
    name = ctx.value(in1, 4)
    if not ids and not name:
        return None
    res: dict[str, Any] = {"resourceType": "Organization"}
    if ids:
        res["identifier"] = ids
    if name:
        res["name"] = name
    telecom = [t for t in (dt.contact_point(ctx, r, "work") for r in ctx.reps(in1, 7)) if t]
    if telecom:
        res["telecom"] = telecom
    addresses = [a for a in (dt.address(ctx, r) for r in ctx.reps(in1, 5)) if a]
    if addresses:
        res["address"] = addresses
    first = ctx.field(in1, 3)
    key = "payor|" + (dt.cx_key(ctx, first) if first.get(1) else f"name|{name}")
    return ctx.add(res, key)


def _insured(ctx: Context, in1: Segment, index: int) -> str | None:
    """IN1-16 (name of insured) of an insured who is not the patient → a RelatedPerson of the
    patient, relationship IN1-17 (table 0063). Keyed by patient + IN1 set id."""
    names = [n for n in (dt.human_name(ctx, r) for r in ctx.reps(in1, 16)) if n]
    if not names or ctx.patient is None:
        return None
    res: dict[str, Any] = {"resourceType": "RelatedPerson", "patient": {"reference": ctx.patient}}
    relationship = dt.codeable_concept(ctx, ctx.field(in1, 17), "0063")
    if relationship:
        res["relationship"] = [relationship]
    res["name"] = names
    return ctx.add(res, f"{ctx.patient_key}|IN1|{ctx.value(in1, 1) or index}|insured")


def coverage(ctx: Context, in1: Segment, index: int) -> str | None:
    """IN1 → Coverage (status active) of the current patient, payor Organization from IN1-3/4,
    class plan IN1-2 and group IN1-8, period IN1-12/13, type IN1-15, relationship IN1-17,
    subscriber the patient (IN1-17 self) or a RelatedPerson named by IN1-16 (IN1-17 another
    relationship), identifier and subscriberId the policy number IN1-36. Keyed by patient + plan + set id."""
    if ctx.patient is None:
        return None
    payor = _payor(ctx, in1)
    if payor is None:
        return None
    res: dict[str, Any] = {"resourceType": "Coverage", "status": "active"}
    policy = ctx.value(in1, 36)
    if policy:  # the policy number, assigned by the insurer
        res["identifier"] = [{"value": policy, "assigner": {"reference": payor}}]
    kind = dt.codeable_concept(ctx, ctx.field(in1, 15))
    if kind:
        res["type"] = kind
    member = ctx.value(in1, 36)
    if member:
        res["subscriberId"] = member
    res["beneficiary"] = {"reference": ctx.patient}
    relation = ctx.tables.coding("subscriber_relationship", ctx.value(in1, 17))
    if relation:
        if relation["code"] == "self":
            res["subscriber"] = {"reference": ctx.patient}
        res["relationship"] = {"coding": [relation]}
    else:
        unmapped = dt.codeable_concept(ctx, ctx.field(in1, 17))
        if unmapped:
            res["relationship"] = unmapped
    if "subscriber" not in res and ctx.value(in1, 17):
        insured = _insured(ctx, in1, index)
        if insured:
            res["subscriber"] = {"reference": insured}
    span = dt.period(ctx, ctx.value(in1, 12), ctx.value(in1, 13))
    if span:
        res["period"] = span
    res["payor"] = [{"reference": payor}]
    classes = []
    plan = ctx.field(in1, 2)
    if plan.get(1):
        entry = {"type": {"coding": [{"system": COVERAGE_CLASS, "code": "plan"}]}, "value": plan.get(1)}
        if plan.get(2):
            entry["name"] = plan.get(2)
        classes.append(entry)
    group, group_name = ctx.value(in1, 8), ctx.value(in1, 9)
    if group:
        entry = {"type": {"coding": [{"system": COVERAGE_CLASS, "code": "group"}]}, "value": group}
        if group_name:
            entry["name"] = group_name
        classes.append(entry)
    if classes:
        res["class"] = classes
    key = f"{ctx.patient_key}|{plan.get(1)}|{ctx.value(in1, 1) or index}"
    return ctx.add(res, key)


ABOUT_THE_PATIENT: Mapping[str, Callable[[Context, Segment, int], Any]] = {
    "NK1": patient.related_person,
    "AL1": allergy,
    "DG1": condition,
    "PR1": procedure,
    "IN1": coverage,
}
"""The segments a message may send about its patient, and their maps."""


def about_the_patient(
    ctx: Context, segments: Iterable[Segment], kinds: Collection[str] = tuple(ABOUT_THE_PATIENT)
) -> None:
    """Map each segment of ``kinds`` among ``segments`` (NK1, AL1, DG1, PR1, IN1), in order, each
    numbered within its kind (the number keys resources that carry no id of their own)."""
    counts: dict[str, int] = {}
    for seg in segments:
        n = counts[seg.id] = counts.get(seg.id, 0) + 1
        if seg.id in kinds:
            ABOUT_THE_PATIENT[seg.id](ctx, seg, n)
