"""PID / PD1 → Patient, NK1 → RelatedPerson, MRG → Patient links (the IG's segment maps).

The Patient is keyed by the first PID-3 repetition with an id: its assigning authority
(CX.4, else the sending facility MSH-4) and its id, so every message about the
same patient from the same source updates one Patient. Without a PID-3 value
there is no patient identity, and :func:`patient` raises
``ConversionError("no_patient")``.

Because each entry is a ``PUT`` (the whole resource is replaced), a Patient
is always written from everything its PID carries, never partially.

Beyond PID-5, the patient aliases PID-9 are further names (the IG's ``name[2]``,
their use from XPN.7 only: an alias is not necessarily an old name); after
PID-2/3/4 and the SSN PID-19, the driver's licence PID-20 is an identifier of
type ``DL``. The mother's identifiers PID-21 make a RelatedPerson (MTH) of the
patient; a mother also sent as an NK1 stays a RelatedPerson of her own, as
nothing in the two segments says they are one person.
"""

from __future__ import annotations

from typing import Any

from adapters.hl7.er7 import Segment
from adapters.hl7.to_fhir import datatypes as dt
from adapters.hl7.to_fhir.context import Composite, Context
from adapters.hl7.to_fhir.errors import ConversionError

__all__ = ["merge", "patient", "patient_key", "related_person"]

US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
MAIDEN_NAME = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"
BIRTH_TIME = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"


def _sending_facility(ctx: Context) -> str:
    return dt.hd_key(ctx.field(ctx.segment("MSH"), 4))


def patient_key(ctx: Context, cx: Composite) -> str:
    """The key of the patient a CX (PID-3, MRG-1) identifies."""
    return dt.cx_key(ctx, cx, _sending_facility(ctx))


def _omb(ctx: Context, table: str, url: str, reps: list[Composite]) -> dict[str, Any] | None:
    """PID-10 / PID-22 → the US Core race / ethnicity extension (CDC codes; ``text`` always)."""
    subs: list[dict[str, Any]] = []
    texts: list[str] = []
    for rep in reps:
        code, display = rep.get(1), rep.get(2)
        entry = ctx.tables.entry(table, code)
        coding = ctx.tables.coding(table, code)
        if entry and coding:
            if display:
                coding.setdefault("display", display)
            subs.append({"url": entry.get("category", "detailed"), "valueCoding": coding})
        elif code and rep.get(3).upper() in ("CDCREC", "HL70005", "HL70189") and "-" in code:
            sub = {"system": "urn:oid:2.16.840.1.113883.6.238", "code": code}
            if display:
                sub["display"] = display
            subs.append({"url": "detailed", "valueCoding": sub})
        text = display or (coding or {}).get("display") or code
        if text and text not in texts:
            texts.append(text)
    if not texts:
        return None
    subs.append({"url": "text", "valueString": ", ".join(texts)})
    return {"url": url, "extension": subs}


def _identifiers(ctx: Context, pid: Segment) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n in (3, 2, 4):
        for rep in ctx.reps(pid, n):
            ident = dt.identifier(ctx, rep)
            if ident and ident not in out:
                out.append(ident)
    ssn = ctx.value(pid, 19)
    if ssn:
        ident = {
            "type": {"coding": [ctx.tables.coding("0203", "SS") or {"code": "SS"}]},
            "system": "http://hl7.org/fhir/sid/us-ssn",
            "value": ssn,
        }
        if not any(i.get("value") == ssn and i.get("system") == ident["system"] for i in out):
            out.append(ident)
    licence = dt.driver_licence(ctx, ctx.field(pid, 20))
    if licence and licence not in out:
        out.append(licence)
    return out


def _yes(value: str) -> bool | None:
    return {"Y": True, "N": False}.get(value.upper())


def patient(ctx: Context, pid: Segment | None, pd1: Segment | None = None) -> str:
    """PID (+ PD1) → Patient (and the mother of PID-21); sets ``ctx.patient`` / ``ctx.patient_key``
    and returns the reference."""
    ids = [rep for rep in ctx.reps(pid, 3) if rep.get(1)]
    if pid is None or not ids:
        raise ConversionError("no_patient", "The message has no patient identifier (PID-3).")
    key = patient_key(ctx, ids[0])
    res: dict[str, Any] = {"resourceType": "Patient"}
    extensions = [
        _omb(ctx, "0005", US_CORE + "us-core-race", ctx.reps(pid, 10)),
        _omb(ctx, "0189", US_CORE + "us-core-ethnicity", ctx.reps(pid, 22)),
    ]
    maiden = ctx.value(pid, 6)
    if maiden:
        extensions.append({"url": MAIDEN_NAME, "valueString": maiden})
    if any(extensions):
        res["extension"] = [e for e in extensions if e]
    res["identifier"] = _identifiers(ctx, pid)
    names = [n for n in (dt.human_name(ctx, r) for r in ctx.reps(pid, 5)) if n]
    for alias in (dt.human_name(ctx, r) for r in ctx.reps(pid, 9)):
        if alias and alias not in names:
            names.append(alias)
    if names:
        res["name"] = names
    telecom = [t for t in (dt.contact_point(ctx, r, "home") for r in ctx.reps(pid, 13)) if t]
    telecom += [t for t in (dt.contact_point(ctx, r, "work") for r in ctx.reps(pid, 14)) if t]
    if telecom:
        res["telecom"] = telecom
    gender = ctx.tables.coding("0001", ctx.value(pid, 8))
    if gender:
        res["gender"] = gender["code"]
    birth = ctx.field(pid, 7)
    birth_date = dt.date(ctx, birth)
    if birth_date:
        res["birthDate"] = birth_date
        birth_time = dt.date_time(ctx, birth)
        if birth_time and "T" in birth_time:
            res["_birthDate"] = {"extension": [{"url": BIRTH_TIME, "valueDateTime": birth_time}]}
    death = dt.date_time(ctx, ctx.field(pid, 29))
    deceased = _yes(ctx.value(pid, 30))
    if death:
        res["deceasedDateTime"] = death
    elif deceased is not None:
        res["deceasedBoolean"] = deceased
    addresses = [a for a in (dt.address(ctx, r) for r in ctx.reps(pid, 11)) if a]
    if addresses:
        res["address"] = addresses
    marital = dt.codeable_concept(ctx, ctx.field(pid, 16), "0002")
    if marital:
        res["maritalStatus"] = marital
    order = ctx.value(pid, 25)
    multiple = _yes(ctx.value(pid, 24))
    if order.isdigit() and int(order) > 0 and multiple is not False:
        res["multipleBirthInteger"] = int(order)
    elif multiple is not None:
        res["multipleBirthBoolean"] = multiple
    languages = [c for c in (dt.codeable_concept(ctx, r) for r in ctx.reps(pid, 15)) if c]
    if languages:
        res["communication"] = [{"language": lang} for lang in languages]
    gps = [p for p in (dt.practitioner(ctx, r) for r in ctx.reps(pd1, 4)) if p]
    if gps:
        res["generalPractitioner"] = [{"reference": p} for p in gps]
    ref = ctx.add(res, key)
    if ctx.patient is None:
        ctx.patient, ctx.patient_key = ref, key
        ctx.focus.append(ref)
    _mother(ctx, pid, ref, key)
    return ref


def _mother(ctx: Context, pid: Segment, patient_ref: str, patient_key: str) -> str | None:
    """PID-21 (mother's identifier) → the mother as a RelatedPerson of the patient (the IG's
    CX[RelatedPerson-Mother]): one identifier per repetition, relationship MTH (table 0063).
    Keyed by the patient, so every message about the patient updates the one mother."""
    idents = [i for i in (dt.identifier(ctx, r) for r in ctx.reps(pid, 21)) if i]
    if not idents:
        return None
    mother = ctx.tables.coding("0063", "MTH") or {
        "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
        "code": "MTH",
    }
    res: dict[str, Any] = {
        "resourceType": "RelatedPerson",
        "identifier": idents,
        "patient": {"reference": patient_ref},
        "relationship": [{"coding": [mother]}],
    }
    return ctx.add(res, f"{patient_key}|mother")


def related_person(ctx: Context, nk1: Segment, index: int) -> str | None:
    """NK1 → RelatedPerson of the current patient: name NK1-2 then the contact person's name NK1-30
    (the IG's name[1] and name[2]), relationship NK1-3 (table 0063)
    and NK1-7 (contact role, table 0131), address NK1-4, telecom NK1-5 (home) / NK1-6 (work),
    gender NK1-15, birth date NK1-16, identifiers NK1-33. Keyed by patient + NK1-1 (else position)."""
    if ctx.patient is None:
        return None
    res: dict[str, Any] = {"resourceType": "RelatedPerson", "patient": {"reference": ctx.patient}}
    idents = [i for i in (dt.identifier(ctx, r) for r in ctx.reps(nk1, 33)) if i]
    if idents:
        res["identifier"] = idents
    relationship = [c for c in (dt.codeable_concept(ctx, r, "0063") for r in ctx.reps(nk1, 3)) if c]
    relationship += [c for c in (dt.codeable_concept(ctx, r, "0131") for r in ctx.reps(nk1, 7)) if c]
    if relationship:
        res["relationship"] = relationship
    names = [n for n in (dt.human_name(ctx, r) for r in ctx.reps(nk1, 2)) if n]
    names += [n for n in (dt.human_name(ctx, r) for r in ctx.reps(nk1, 30)) if n and n not in names]
    if names:
        res["name"] = names
    telecom = [t for t in (dt.contact_point(ctx, r, "home") for r in ctx.reps(nk1, 5)) if t]
    telecom += [t for t in (dt.contact_point(ctx, r, "work") for r in ctx.reps(nk1, 6)) if t]
    if telecom:
        res["telecom"] = telecom
    gender = ctx.tables.coding("0001", ctx.value(nk1, 15))
    if gender:
        res["gender"] = gender["code"]
    birth = dt.date(ctx, ctx.field(nk1, 16))
    if birth:
        res["birthDate"] = birth
    addresses = [a for a in (dt.address(ctx, r) for r in ctx.reps(nk1, 4)) if a]
    if addresses:
        res["address"] = addresses
    if len(res) == 2:
        return None
    set_id = ctx.value(nk1, 1) or str(index)
    return ctx.add(res, f"{ctx.patient_key}|NK1|{set_id}")


def merge(ctx: Context, surviving: str, mrg: Segment) -> str | None:
    """MRG (A40 and kin) → the prior Patient (MRG-1) made inactive and ``replaced-by`` the surviving
    one, which gets a ``replaces`` link. Returns the prior Patient's reference."""
    prior_ids = ctx.reps(mrg, 1)
    if not prior_ids or not prior_ids[0].get(1):
        return None
    key = patient_key(ctx, prior_ids[0])
    idents = [i for i in (dt.identifier(ctx, r) for r in prior_ids) if i]
    old: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": idents,
        "active": False,
        "link": [{"other": {"reference": surviving}, "type": "replaced-by"}],
    }
    names = [n for n in (dt.human_name(ctx, r) for r in ctx.reps(mrg, 7)) if n]
    if names:
        old["name"] = names
    old_ref = ctx.add(old, key)
    if old_ref == surviving:
        return None
    current = ctx.resource(surviving)
    if current is not None:
        current.setdefault("link", []).append({"other": {"reference": old_ref}, "type": "replaces"})
    ctx.focus.append(old_ref)
    return old_ref
