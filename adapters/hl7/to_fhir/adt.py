"""The ADT family: builders for ADT^A01 … A40 on top of the PID/PV1/NK1/AL1/DG1/PR1/IN1/MRG maps.

- :func:`build_visit` (A01-A08, A11-A14, A16, A25-A27 …): Patient (PID, PD1),
  RelatedPerson per NK1, Encounter (PV1, PV2), AllergyIntolerance per AL1,
  Condition per DG1, Procedure per PR1, Coverage (+ payor) per IN1.
- :func:`build_person` (A28, A31 and the other person-level events): the
  same without the Encounter (their PV1, when sent, is a placeholder).
- :func:`build_merge` (A40, A47): per PID/MRG pair, the surviving Patient from PID
  and the prior one from MRG-1, linked ``replaces`` / ``replaced-by``. For A47 (change patient
  identifier list) PID-3 carries the new identifier and MRG-1 the prior one: the Patient known
  by the prior identifier is made inactive and ``replaced-by`` the one known by the new identifier
  (the IG's MRG[Patient] map; with ids keyed by identifier, a changed identifier is a new Patient).
  A41 (merge account) and A45 (move visit) are not registered: they move an Account or an
  Encounter (MRG-3 / MRG-5), not a Patient, which this merge builder does not map.
- ROL segments (:mod:`.roles`): after PID / PD1 the primary care provider, after PV1 / PV2 an
  Encounter participant.

Each OBX (the OBSERVATION group, with the NTEs after it) becomes an Observation of the
patient through the results module's OBX map (:func:`.results.patient_observations`), linked to
the Encounter unless the event is one before the visit begins (its Encounter ``planned``).
"""

from __future__ import annotations

from adapters.hl7.er7 import Segment
from adapters.hl7.to_fhir import clinical, encounter, patient, results, roles
from adapters.hl7.to_fhir.context import Context

__all__ = ["MERGE_TYPES", "PERSON_TYPES", "VISIT_TYPES", "build_merge", "build_person", "build_visit"]

VISIT_TYPES = frozenset(
    f"ADT^{t}"
    for t in [
        "A01",
        "A02",
        "A03",
        "A04",
        "A05",
        "A06",
        "A07",
        "A08",
        "A09",
        "A10",
        "A11",
        "A12",
        "A13",
        "A14",
        "A15",
        "A16",
        "A21",
        "A22",
        "A25",
        "A26",
        "A27",
        "A32",
        "A33",
        "A38",
    ]
)
"""Visit events: ADT_A01 / ADT_A03 / ADT_A05 / ADT_A06 / ADT_A09 / ADT_A12 / ADT_A21 structures."""
PERSON_TYPES = frozenset({"ADT^A28", "ADT^A29", "ADT^A31"})
"""Person events (ADT_A05 / ADT_A27 structures without a visit)."""
MERGE_TYPES = frozenset({"ADT^A40", "ADT^A47"})


def _body(ctx: Context, with_visit: bool) -> None:
    segments = ctx.message.segments
    pid = ctx.segment("PID")
    patient.patient(ctx, pid, ctx.segment("PD1"))
    if with_visit:
        pv1 = ctx.segment("PV1")
        if pv1 is not None:
            encounter.encounter(ctx, pv1, ctx.segment("PV2"))
    clinical.about_the_patient(ctx, segments)
    roles.apply(ctx, segments)
    results.patient_observations(ctx, results.collect(segments))


def build_visit(ctx: Context) -> None:
    """A visit event: the patient, the encounter and what the message says about them."""
    _body(ctx, with_visit=True)


def build_person(ctx: Context) -> None:
    """A person event: the patient and what the message says about them, no encounter."""
    _body(ctx, with_visit=False)


def build_merge(ctx: Context) -> None:
    """A40 / A47: each PID and the MRG after it → surviving and prior Patients, linked."""
    current: Segment | None = None
    for seg in ctx.message.segments:
        if seg.id == "PID":
            current = seg
        elif seg.id == "MRG" and current is not None:
            patient.merge(ctx, patient.patient(ctx, current), seg)
    if ctx.patient is None:
        patient.patient(ctx, ctx.segment("PID"))
