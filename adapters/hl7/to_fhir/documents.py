"""MDM^T01/T02/T04/T05/T06/T08/T09/T10 → DocumentReference (the IG's TXA and OBX[DocumentReference] maps).

The Patient (PID) and the Encounter (PV1/PV2) come from the existing mappers;
each COMMON_ORDER group before the TXA (ORC, TQ1, OBR, NTE) is a ServiceRequest
through the orders module's ORC/OBR map (:func:`.orders.service_request`, keyed
as an ORM's), named in the document's ``context.related``, as the IG's MDM_T02 map
says. The OBX segments are the document's content (the IG maps them to
OBX[DocumentReference] only: no Observation is made); CON segments and the NTEs
after an OBX (NTE[DocumentReference] maps NTE-3 only) are not mapped. Per
message one DocumentReference, keyed by the unique document number TXA-12
(authority + id; the sending facility when it has no authority), else the file
name TXA-16, else the message:

- ``masterIdentifier`` TXA-12, ``identifier`` TXA-16.
- ``status`` TXA-19 through table ``0273`` (AV/UN → current, OB → superseded,
  CA → entered-in-error); not valued → current, as the IG assigns.
- ``docStatus`` TXA-17 through table ``0271`` (AU/LA → final; DI, DO, IN, IP,
  PA → preliminary).
- ``type`` TXA-2 (table ``0270``, v2-0270), plus OBX-3 of the first content OBX
  when it is a LOINC code (MDM senders put the LOINC document type there).
- ``date`` TXA-6 (origination), else TXA-4 (activity), as an instant, only when
  it has a time (the IG maps a date-only value to an R6 extension instead);
  ``context.period.start`` TXA-4; ``context.encounter`` the PV1 Encounter;
  ``context.related`` the ServiceRequests of the message's orders.
- ``author`` TXA-9 (originator) and TXA-5 (primary activity provider),
  ``authenticator`` TXA-10, else the person of TXA-22; all Practitioners.
- ``relatesTo`` TXA-13 (parent document): ``appends`` for an addendum
  (T05/T06), else ``replaces`` (table ``mdm_relates_to``); the target is the
  parent's DocumentReference by its deterministic id, with its identifier.
- ``securityLabel`` TXA-18 (table ``0272``), ``description`` TXA-25.
- ``content``: TX, FT and ST OBX values (each repetition a line; HL7 escapes
  decoded, ``\\.br\\`` a line break, FT formatting commands reduced to line
  breaks or dropped) are joined with ``\\n`` into one ``text/plain; charset=utf-8``
  attachment, base64 of the UTF-8 text. Each ED value becomes an attachment of
  its own: MIME type from ED.2 (table ``0191``: AP → application, IM → image,
  TX → text …) and ED.3, data from ED.5 by its encoding ED.4 (Base64 as sent,
  after checking it decodes; Hex and ASCII re-encoded). An RP value with a URL
  becomes an attachment ``url``. Other value types (HD, CE …) are not content.
  Every attachment carries ``creation`` TXA-6 and ``title`` TXA-25. A message
  without content (T01, T05, T09) gets one attachment holding only that
  metadata (``content`` is required).

Not registered: T03, T07 and T11 (status change, edit and cancel
*notifications*): they carry no content, and a ``PUT`` of the document without
it would erase the content an earlier T02 stored.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from adapters.hl7.er7 import Segment, unescape
from adapters.hl7.to_fhir import datatypes as dt
from adapters.hl7.to_fhir import encounter, orders, patient, registry
from adapters.hl7.to_fhir.context import HL7_NULL, Composite, Context, resource_id
from adapters.hl7.to_fhir.errors import ConversionError

__all__ = ["MDM_TYPES", "build_mdm", "document_reference"]

MDM_TYPES = frozenset(f"MDM^{t}" for t in ("T01", "T02", "T04", "T05", "T06", "T08", "T09", "T10"))

TEXT_TYPES = frozenset({"TX", "FT", "ST"})
TEXT_PLAIN = "text/plain; charset=utf-8"
LOINC = "http://loinc.org"
_FT_BREAK = r"{e}\.(?:sp\d*|sk\d*|ce){e}"
_FT_DROP = r"{e}(?:\.(?:fi|nf|in[+-]?\d+|ti[+-]?\d+)|H|N){e}"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")
_MIME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")


def _lines(ctx: Context, obx: Segment, kind: str) -> list[str]:
    """The repetitions of a TX / FT / ST OBX-5, unescaped, not stripped (indentation is text)."""
    d = ctx.message.delimiters
    out = []
    for raw in ctx.message.repetitions(obx, 5):
        if raw == HL7_NULL:
            continue
        if kind == "FT":
            e = re.escape(d.escape)
            raw = re.sub(_FT_BREAK.format(e=e), lambda _: f"{d.escape}.br{d.escape}", raw)
            raw = re.sub(_FT_DROP.format(e=e), "", raw)
        out.append(unescape(raw, d, ctx.message.encoding))
    return out


def _mime(ctx: Context, kind: str, subtype: str) -> str:
    entry = ctx.tables.entry("0191", kind) or {}
    top = entry.get("mime", "")
    sub = subtype.lower() if _MIME_PART.fullmatch(subtype) else entry.get("subtype", "")
    if top and sub:
        return f"{top}/{sub}"
    return "application/octet-stream"


def _ed(ctx: Context, ed: Composite) -> dict[str, Any]:
    """ED → Attachment (contentType, data)."""
    out: dict[str, Any] = {"contentType": _mime(ctx, ed.get(2), ed.get(3))}
    raw = ed.component(5)
    text = unescape(raw, ctx.message.delimiters, ctx.message.encoding) if raw else ""
    encoding = ed.get(4).upper()
    data: bytes | None = None
    try:
        if encoding in ("BASE64", "B64"):
            compact = re.sub(r"\s+", "", text)
            if compact:
                base64.b64decode(compact, validate=True)
                out["data"] = compact
        elif encoding == "HEX":
            data = bytes.fromhex(re.sub(r"\s+", "", text))
        elif text:
            data = text.encode("utf-8")
    except (binascii.Error, ValueError):
        data = None
    if data:
        out["data"] = base64.b64encode(data).decode("ascii")
    return out


def _rp(ctx: Context, rp: Composite) -> dict[str, Any] | None:
    """RP → Attachment (url, contentType) when the pointer is a URL."""
    pointer = rp.get(1)
    if not _URL.fullmatch(pointer):
        return None
    out: dict[str, Any] = {"url": pointer}
    if rp.get(3):
        out["contentType"] = _mime(ctx, rp.get(3), rp.get(4))
    return out


def _content(ctx: Context, obxs: list[Segment]) -> tuple[list[dict[str, Any]], Segment | None]:
    """The OBX values → attachments; and the first OBX that gave content."""
    lines: list[str] = []
    others: list[dict[str, Any]] = []
    first: Segment | None = None
    for obx in obxs:
        kind = ctx.value(obx, 2).upper()
        found: list[dict[str, Any]] = []
        if kind in TEXT_TYPES:
            new = _lines(ctx, obx, kind)
            lines += new
            if new and first is None:
                first = obx
            continue
        if kind == "ED":
            found = [_ed(ctx, rep) for rep in ctx.reps(obx, 5)]
        elif kind == "RP":
            found = [a for a in (_rp(ctx, rep) for rep in ctx.reps(obx, 5)) if a]
        if found and first is None:
            first = obx
        others += found
    attachments: list[dict[str, Any]] = []
    if lines:
        data = base64.b64encode("\n".join(lines).encode("utf-8")).decode("ascii")
        attachments.append({"contentType": TEXT_PLAIN, "data": data})
    return attachments + others, first


def _type(ctx: Context, txa: Segment, first: Segment | None) -> dict[str, Any] | None:
    kind = dt.codeable_concept(ctx, ctx.field(txa, 2), "0270")
    code = dt.codeable_concept(ctx, ctx.field(first, 3)) if first is not None else None
    loinc = [c for c in (code or {}).get("coding", []) if c.get("system") == LOINC]
    if not loinc:
        return kind
    out = dict(kind) if kind else {}
    out["coding"] = [*out.get("coding", []), *loinc[:1]]
    out.setdefault("text", (code or {}).get("text", ""))
    return {k: v for k, v in out.items() if v}


def _instant_with_time(ctx: Context, ts: Composite) -> str | None:
    value = dt.date_time(ctx, ts)
    return dt.instant(ctx, ts) if value and "T" in value else None


def _key(ctx: Context, txa: Segment) -> str:
    number = ctx.field(txa, 12)
    if number.get(1):
        return "document|" + dt.ei_key(ctx, number, sender_fallback=True)
    file_name = ctx.value(txa, 16)
    if file_name:
        return "file|" + dt.hd_key(ctx.field(ctx.segment("MSH"), 4)) + "|" + file_name
    msh = ctx.segment("MSH")
    return "message|" + "|".join((ctx.field(msh, 3).raw, ctx.field(msh, 4).raw, ctx.value(msh, 10)))


def _people(ctx: Context, reps: list[Composite]) -> list[str]:
    return [p for p in (dt.practitioner(ctx, r) for r in reps) if p]


def document_reference(
    ctx: Context, txa: Segment, obxs: list[Segment], related: list[str] | None = None
) -> str:
    """TXA + its OBX → the DocumentReference of the current patient (see the module docstring);
    ``related`` the references of the orders it is about (``context.related``)."""
    res: dict[str, Any] = {"resourceType": "DocumentReference"}
    master = dt.entity_identifier(ctx, ctx.field(txa, 12))
    if master:
        res["masterIdentifier"] = master
    file_name = ctx.value(txa, 16)
    if file_name:
        res["identifier"] = [{"value": file_name}]
    availability = ctx.tables.entry("0273", ctx.value(txa, 19))
    res["status"] = availability.get("code", "current") if availability else "current"
    completion = ctx.tables.entry("0271", ctx.value(txa, 17))
    if completion and completion.get("code"):
        res["docStatus"] = completion["code"]
    attachments, first = _content(ctx, obxs)
    kind = _type(ctx, txa, first)
    if kind:
        res["type"] = kind
    if ctx.patient:
        res["subject"] = {"reference": ctx.patient}
    date = _instant_with_time(ctx, ctx.field(txa, 6)) or _instant_with_time(ctx, ctx.field(txa, 4))
    if date:
        res["date"] = date
    authors = list(dict.fromkeys(_people(ctx, ctx.reps(txa, 9)) + _people(ctx, ctx.reps(txa, 5))))
    if authors:
        res["author"] = [{"reference": a} for a in authors]
    checker = _people(ctx, ctx.reps(txa, 10)) or _people(ctx, ctx.reps(txa, 22))
    if checker:
        res["authenticator"] = {"reference": checker[0]}
    parent = ctx.field(txa, 13)
    target = dt.entity_identifier(ctx, parent)
    if target:
        relation = ctx.tables.entry("mdm_relates_to", ctx.trigger)
        parent_id = resource_id(
            "DocumentReference", "document|" + dt.ei_key(ctx, parent, sender_fallback=True)
        )
        res["relatesTo"] = [
            {
                "code": relation.get("code", "replaces") if relation else "replaces",
                "target": {"reference": f"DocumentReference/{parent_id}", "identifier": target},
            }
        ]
    title = ctx.value(txa, 25)
    if title:
        res["description"] = title
    label = dt.codeable_concept(ctx, ctx.field(txa, 18), "0272")
    if label:
        res["securityLabel"] = [label]
    created = dt.date_time(ctx, ctx.field(txa, 6))
    extra = {k: v for k, v in (("title", title), ("creation", created)) if v}
    if not attachments:
        placeholder = extra or {"title": (kind or {}).get("text") or "document"}
        presentation = ctx.tables.entry("0191", ctx.value(txa, 3)) or {}
        if presentation.get("subtype"):
            placeholder = {"contentType": _mime(ctx, ctx.value(txa, 3), ""), **placeholder}
        attachments = [placeholder]
    res["content"] = [{"attachment": {**a, **extra}} for a in attachments]
    context: dict[str, Any] = {}
    if ctx.encounter:
        context["encounter"] = [{"reference": ctx.encounter}]
    activity = dt.date_time(ctx, ctx.field(txa, 4))
    if activity:
        context["period"] = {"start": activity}
    if related:
        context["related"] = [{"reference": ref} for ref in related]
    if context:
        res["context"] = context
    ref = ctx.add(res, _key(ctx, txa))
    ctx.focus.append(ref)
    return ref


def _orders(segments: list[Segment]) -> list[orders.Order]:
    """The COMMON_ORDER groups before the TXA: ORC, TQ1*, OBR, NTE* each (an OBR after an order
    that has one starts the next order, sharing the ORC)."""
    out: list[orders.Order] = []
    current: orders.Order | None = None
    for seg in segments:
        if seg.id == "TXA":
            break
        if seg.id == "ORC":
            current = orders.Order(len(out) + 1, orc=seg)
            out.append(current)
        elif current is None:
            continue
        elif seg.id == "OBR":
            if current.obr is not None:
                current = orders.Order(len(out) + 1, orc=current.orc)
                out.append(current)
            current.obr = seg
        elif seg.id == "TQ1":
            current.timing.append(seg)
        elif seg.id == "NTE":
            current.notes.append(seg)
    return out


def build_mdm(ctx: Context) -> None:
    """An MDM event: the patient, the visit, the orders, and the document the TXA (+ OBX) describes."""
    patient.patient(ctx, ctx.segment("PID"))
    pv1 = ctx.segment("PV1")
    if pv1 is not None:
        encounter.encounter(ctx, pv1, ctx.segment("PV2"))
    txa = ctx.segment("TXA")
    if txa is None:
        raise ConversionError("no_document", "The message has no document header segment (TXA).")
    placed = [orders.service_request(ctx, order) for order in _orders(ctx.message.segments)]
    related = list(dict.fromkeys(p.ref for p in placed if p))
    document_reference(ctx, txa, ctx.message.segments_named("OBX"), related)


registry.register(MDM_TYPES, build_mdm)
