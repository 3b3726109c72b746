"""HL7 v2 datatypes → FHIR datatypes (the IG's datatype maps: CX, XPN, XAD, XTN, CWE, XCN, TS/DTM, NM).

Every function takes the conversion :class:`~adapters.hl7.to_fhir.context.Context`
and one raw field repetition (a string, still escaped; or a
:class:`~adapters.hl7.to_fhir.context.Composite`), and returns the FHIR value
as a dict, or ``None`` when the HL7 value is empty: an empty or HL7-null (``""``)
value never produces an empty object.

Choices where the IG leaves room (documented here once):

- **Local identifier systems.** CX.4 / XCN.9 (HD) give ``urn:oid:<HD.2>`` when
  HD.3 is ``ISO``, ``HD.2`` itself for ``URI``/``URL``, ``urn:uuid:<HD.2>`` for
  ``UUID``; otherwise the namespace id HD.1 is looked up in the
  ``identifier_systems`` table (``USSSA`` → ``http://hl7.org/fhir/sid/us-ssn``),
  and failing that becomes ``urn:connector-gateway:identifier:<HD.1>``
  (percent-encoded), with ``assigner.display`` = HD.1 as well.
- **Local code systems.** CWE.3 / CWE.6 go through the ``coding_systems`` table
  (HL7 table 0396 names → URIs); ``HL7nnnn`` / ``HLnnnn`` become
  ``http://terminology.hl7.org/CodeSystem/v2-nnnn``; any other name (``L``,
  ``99zzz``, a site's own) keeps its name as
  ``urn:connector-gateway:code-system:<name>`` (percent-encoded), so the
  original system is never lost.
- **Time zones.** FHIR requires a zone on any dateTime with a time. A DTM
  without one takes the zone of MSH-7 (the sender's zone, as HL7 v2 defines
  it); when MSH-7 has none either, the value is cut back to its date (the
  precision FHIR can state without inventing a zone). ``HHMM`` gets ``:00``
  seconds, ``HH`` gets ``:00:00``.
"""

from __future__ import annotations

import re
from datetime import date as _date
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from adapters.hl7.to_fhir.context import Composite, Context

__all__ = [
    "LOCAL_CODE_SYSTEM",
    "LOCAL_IDENTIFIER_SYSTEM",
    "address",
    "code_system",
    "codeable_concept",
    "coding_from_table",
    "contact_point",
    "date",
    "date_time",
    "driver_licence",
    "dtm",
    "hd_system",
    "human_name",
    "identifier",
    "instant",
    "organization",
    "period",
    "practitioner",
    "quantity",
]

LOCAL_IDENTIFIER_SYSTEM = "urn:connector-gateway:identifier:"
LOCAL_CODE_SYSTEM = "urn:connector-gateway:code-system:"
V2_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-"

_DTM = re.compile(
    r"(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?"
    r"(?:\.(?P<f>\d{1,4}))?(?P<z>[+-]\d{4})?"
)
_HL7_TABLE = re.compile(r"HL7?(\d{4})", re.IGNORECASE)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")


def _of(ctx: Context, value: str | Composite) -> Composite:
    return value if isinstance(value, Composite) else Composite(ctx, value)


def _clean(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without its empty members (``""``, ``[]``, ``{}``, ``None``)."""
    return {k: v for k, v in obj.items() if v not in ("", None) and v != [] and v != {}}


# -- dates and times -------------------------------------------------------------------------


def _zone(z: str) -> str:
    return f"{z[:3]}:{z[3:]}"


def _valid_zone(zone: str) -> bool:
    """A FHIR zone offset: ``+hh:mm`` up to ``13:59``, or ``14:00``."""
    return bool(zone) and ((zone[1:3] < "14" and zone[4:6] < "60") or zone[1:] == "14:00")


def _msh7_zone(ctx: Context) -> str:
    msh = ctx.message.segment("MSH")
    raw = ctx.value(msh, 7)
    match = _DTM.fullmatch(raw.strip())
    zone = _zone(match["z"]) if match and match["z"] else ""
    return zone if _valid_zone(zone) else ""


def dtm(ctx: Context, value: str) -> str | None:
    """An already-extracted DTM string → FHIR ``date``/``dateTime`` text (see the module docstring)."""
    match = _DTM.fullmatch(value.strip())
    if not match:
        return None
    y, mo, d, h, mi, s, f, z = (match[k] for k in ("y", "mo", "d", "h", "mi", "s", "f", "z"))
    try:
        _date(int(y), int(mo or 1), int(d or 1))
    except ValueError:
        return None
    if int(y) == 0:
        return None
    out = y
    if mo:
        out += f"-{mo}"
    if d:
        out += f"-{d}"
    if not (d and h):
        return out
    if int(h) > 23 or int(mi or 0) > 59 or int(s or 0) > 59:
        return None
    zone = _zone(z) if z else _msh7_zone(ctx)
    if not _valid_zone(zone):
        return out
    out += f"T{h}:{mi or '00'}:{s or '00'}"
    if f and s:
        out += f".{f}"
    return out + zone


def date_time(ctx: Context, ts: str | Composite) -> str | None:
    """TS / DTM (TS.1) → FHIR dateTime keeping the precision given; ``None`` when empty or invalid."""
    return dtm(ctx, _of(ctx, ts).get(1))


def date(ctx: Context, ts: str | Composite) -> str | None:
    """TS / DT / DTM → FHIR date (``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``)."""
    value = _of(ctx, ts).get(1)
    match = _DTM.fullmatch(value.strip())
    if not match:
        return None
    return dtm(ctx, "".join(match[k] or "" for k in ("y", "mo", "d")))


def instant(ctx: Context, ts: str | Composite) -> str | None:
    """TS → FHIR instant (full seconds and a zone): missing parts are zero, a missing zone is
    MSH-7's, else UTC (``+00:00``). Used where FHIR requires an instant (Provenance.recorded)."""
    match = _DTM.fullmatch(_of(ctx, ts).get(1).strip())
    if not match or dtm(ctx, match["y"] + (match["mo"] or "") + (match["d"] or "")) is None:
        return None
    zone = _zone(match["z"]) if match["z"] else ""
    zone = zone if _valid_zone(zone) else (_msh7_zone(ctx) or "+00:00")
    y, mo, d = match["y"], match["mo"] or "01", match["d"] or "01"
    h, mi, s = match["h"] or "00", match["mi"] or "00", match["s"] or "00"
    if int(h) > 23 or int(mi) > 59 or int(s) > 59:
        return None
    frac = f".{match['f']}" if match["f"] else ""
    return f"{y}-{mo}-{d}T{h}:{mi}:{s}{frac}{zone}"


def period(ctx: Context, start: str, end: str) -> dict[str, str] | None:
    """A Period from two DTM strings; ``None`` when both are empty."""
    out = _clean({"start": dtm(ctx, start), "end": dtm(ctx, end)})
    return out or None


# -- codes -----------------------------------------------------------------------------------


def code_system(ctx: Context, name: str) -> str | None:
    """A coding-system name from CWE.3/.6 → FHIR system URI (see the module docstring)."""
    if not name:
        return None
    entry = ctx.tables.entry("coding_systems", name)
    if entry and entry.get("system"):
        return entry["system"]
    table = _HL7_TABLE.fullmatch(name)
    if table:
        return V2_SYSTEM + table[1]
    return LOCAL_CODE_SYSTEM + quote(name, safe="")


def coding_from_table(ctx: Context, table: str, code: str) -> dict[str, str] | None:
    """The Coding ``code`` maps to in ``table`` (system, code, display); ``None`` when not there."""
    return ctx.tables.coding(table, code)


def _coding(ctx: Context, code: str, display: str, system_name: str, version: str = "") -> dict[str, str]:
    return _clean(
        {"system": code_system(ctx, system_name), "version": version, "code": code, "display": display}
    )


def codeable_concept(ctx: Context, cwe: str | Composite, table: str | None = None) -> dict[str, Any] | None:
    """CWE / CE / CNE → CodeableConcept.

    Codings from the triplets 1-3 and 4-6 (CWE.7/.8 versions); text from CWE.9,
    else CWE.2 (CWE.5 when there is no first triplet). With ``table``, a code
    found in that table is given first as the Coding it maps to (the original
    coding follows when it names a different system); a code not in the table
    and without a CWE.3 is kept with the table's own v2 system when ``table``
    is a numbered HL7 table, else with no system.
    """
    c = _of(ctx, cwe)
    codings: list[dict[str, str]] = []
    first = c.get(1)
    if table and first:
        mapped = coding_from_table(ctx, table, first)
        if mapped:
            codings.append(_clean({**mapped, "display": mapped.get("display") or c.get(2)}))
    for code_i, text_i, sys_i, ver_i in ((1, 2, 3, 7), (4, 5, 6, 8)):
        code = c.get(code_i)
        if not code:
            continue
        name = c.get(sys_i)
        if not name and code_i == 1 and table:
            if codings:
                continue  # the mapped coding says it all
            if table.isdigit():
                name = f"HL7{table}"
        coding = _coding(ctx, code, c.get(text_i), name, c.get(ver_i))
        if not any(x.get("system") == coding.get("system") and x.get("code") == code for x in codings):
            codings.append(coding)
    text = c.get(9) or c.get(2) or c.get(5)
    out = _clean({"coding": codings, "text": text})
    return out or None


def text_or_concept(ctx: Context, value: Composite) -> dict[str, Any] | None:
    """A value that is ST in old versions and CWE in new ones: plain text, or a CodeableConcept."""
    if ctx.message.delimiters.component not in value.raw:
        text = value.get(1)
        return {"text": text} if text else None
    return codeable_concept(ctx, value)


# -- identifiers -----------------------------------------------------------------------------


def hd_system(ctx: Context, hd: Composite) -> str | None:
    """An HD (namespace id, universal id, universal id type) → Identifier.system."""
    namespace, universal, kind = hd.get(1), hd.get(2), hd.get(3).upper()
    if universal:
        if kind == "ISO" and re.fullmatch(r"[0-2](\.(0|[1-9]\d*))+", universal):
            return f"urn:oid:{universal}"
        if kind in ("URI", "URL") and re.fullmatch(r"\S+", universal):
            return universal
        if kind == "UUID" and re.fullmatch(r"[0-9a-fA-F-]{36}", universal):
            return f"urn:uuid:{universal.lower()}"
    for name in (namespace, universal):
        if name:
            entry = ctx.tables.entry("identifier_systems", name)
            if entry and entry.get("system"):
                return entry["system"]
            return LOCAL_IDENTIFIER_SYSTEM + quote(name, safe="")
    return None


def hd_key(hd: Composite) -> str:
    """An assigning authority as part of a resource key (namespace and universal id)."""
    return "&".join(p for p in (hd.get(1), hd.get(2)) if p)


def _identifier(
    ctx: Context, value: str, authority: Composite, type_code: str, start: str = "", end: str = ""
) -> dict[str, Any] | None:
    if not value:
        return None
    kind = None
    if type_code:
        mapped = coding_from_table(ctx, "0203", type_code)
        kind = {"coding": [mapped or {"code": type_code}]}
    out = _clean(
        {
            "type": kind,
            "system": hd_system(ctx, authority),
            "value": value,
            "period": period(ctx, start, end),
            "assigner": {"display": authority.get(1)} if authority.get(1) else None,
        }
    )
    return out


def identifier(ctx: Context, cx: str | Composite) -> dict[str, Any] | None:
    """CX → Identifier: CX.1 value, CX.4 system, CX.5 type (table 0203), CX.7/CX.8 period."""
    c = _of(ctx, cx)
    return _identifier(ctx, c.get(1), c.part(4), c.get(5), c.get(7), c.get(8))


def driver_licence(ctx: Context, dln: str | Composite) -> dict[str, Any] | None:
    """DLN → Identifier (the IG's DLN[Identifier]): value DLN.1, type ``DL`` (table 0203), system
    from the issuing state/province/country DLN.2 (its code read as an assigning authority namespace,
    see the module docstring), period.end the expiration date DLN.3."""
    c = _of(ctx, dln)
    return _identifier(ctx, c.get(1), c.part(2), "DL", end=c.get(3))


def cx_key(ctx: Context, cx: Composite, fallback_authority: str = "") -> str:
    """A CX as a resource key: ``authority|id`` (the fallback authority when CX.4 is empty)."""
    return f"{hd_key(cx.part(4)) or fallback_authority}|{cx.get(1)}"


# -- names, addresses, telecoms --------------------------------------------------------------


def _name_use(ctx: Context, code: str) -> str | None:
    entry = ctx.tables.entry("0200", code)
    return entry.get("use") if entry else None


def _name(
    ctx: Context, family: str, given: list[str], suffix: list[str], prefix: list[str], use: str | None
) -> dict[str, Any] | None:
    out = _clean(
        {
            "use": use,
            "family": family,
            "given": [g for g in given if g],
            "prefix": [p for p in prefix if p],
            "suffix": [s for s in suffix if s],
        }
    )
    return out if set(out) - {"use"} else None


def human_name(ctx: Context, xpn: str | Composite) -> dict[str, Any] | None:
    """XPN → HumanName: family XPN.1.1, given XPN.2 and XPN.3, suffix XPN.4 and XPN.6, prefix XPN.5,
    use XPN.7 (table 0200), period XPN.12/XPN.13 (or the DR in XPN.10)."""
    c = _of(ctx, xpn)
    out = _name(
        ctx, c.get(1), [c.get(2), c.get(3)], [c.get(4), c.get(6)], [c.get(5)], _name_use(ctx, c.get(7))
    )
    if out is None:
        return None
    span = period(ctx, c.get(12) or c.sub(10, 1), c.get(13) or c.sub(10, 2))
    if span:
        out["period"] = span
    return out


def address(ctx: Context, xad: str | Composite) -> dict[str, Any] | None:
    """XAD → Address: lines XAD.1 (SAD parts) and XAD.2, city .3, state .4, postal code .5,
    country .6, use/type from XAD.7 (table 0190), district .9, period .13/.14 (or the DR in .12)."""
    c = _of(ctx, xad)
    street = " ".join(s for s in c.subs(1) if s)
    entry = ctx.tables.entry("0190", c.get(7)) or {}
    out = _clean(
        {
            "use": entry.get("use"),
            "type": entry.get("type"),
            "line": [x for x in (street, c.get(2)) if x],
            "city": c.get(3),
            "district": c.get(9),
            "state": c.get(4),
            "postalCode": c.get(5),
            "country": c.get(6),
        }
    )
    if not set(out) - {"use", "type"}:
        return None
    span = period(ctx, c.get(13) or c.sub(12, 1), c.get(14) or c.sub(12, 2))
    if span:
        out["period"] = span
    return out


def contact_point(
    ctx: Context, xtn: str | Composite, default_use: str | None = None
) -> dict[str, Any] | None:
    """XTN → ContactPoint: system from XTN.3 (table 0202) or XTN.2 (0201), use ``mobile`` for a cell
    phone (XTN.3 CP), else from XTN.2 (table 0201), else ``default_use``; value the e-mail XTN.4 for e-mail, else XTN.12 (unformatted), else XTN.1,
    else built from XTN.5-8 (``+1 (541) 5550147 ext. 12``); rank XTN.18, period XTN.13/14."""
    c = _of(ctx, xtn)
    use_entry = ctx.tables.entry("0201", c.get(2)) or {}
    equip_entry = ctx.tables.entry("0202", c.get(3)) or {}
    system = equip_entry.get("system") or use_entry.get("system")
    email = c.get(4)
    built = " ".join(
        x
        for x in (
            f"+{c.get(5)}" if c.get(5) else "",
            f"({c.get(6)})" if c.get(6) else "",
            c.get(7),
            f"ext. {c.get(8)}" if c.get(8) and c.get(7) else "",
        )
        if x
    )
    if system == "email":
        value = email or c.get(1)
    else:
        value = c.get(12) or c.get(1) or (built if c.get(7) else "") or email
        if not system and value:
            system = "email" if value == email or ("@" in value and " " not in value) else "phone"
    if not value:
        return None
    rank = c.get(18)
    out = _clean(
        {
            "system": system,
            "value": value,
            "use": equip_entry.get("use") or use_entry.get("use") or default_use,
            "rank": int(rank) if rank.isdigit() and int(rank) > 0 else None,
            "period": period(ctx, c.get(13), c.get(14)),
        }
    )
    return out


# -- practitioners and quantities ------------------------------------------------------------


def practitioner(ctx: Context, xcn: str | Composite) -> str | None:
    """XCN → a Practitioner (identifier XCN.1 with system from XCN.9 and type XCN.13; name XCN.2-7),
    added to the context keyed by assigning authority + id, else by the name; returns its reference."""
    c = _of(ctx, xcn)
    ident = _identifier(ctx, c.get(1), c.part(9), c.get(13))
    name = _name(ctx, c.get(2), [c.get(3), c.get(4)], [c.get(5), c.get(7)], [c.get(6)], None)
    if ident is None and name is None:
        return None
    if ident is not None:
        msh = ctx.message.segment("MSH")
        key = f"id|{hd_key(c.part(9)) or hd_key(ctx.field(msh, 4))}|{c.get(1)}"
    else:
        key = "name|" + "|".join(c.get(i) for i in range(2, 8))
    resource = {
        "resourceType": "Practitioner",
        "identifier": [ident] if ident else None,
        "name": [name] if name else None,
    }
    return ctx.add(_clean(resource), key)


def organization(ctx: Context, xon: str | Composite) -> str | None:
    """XON → an Organization (the IG's XON[Organization]): name XON.1, identifier XON.10 (else XON.3)
    with system from XON.6 and type XON.7 (table 0203). Added to the context keyed by assigning
    authority + id, else by the name; returns its reference (``None`` when the XON is empty)."""
    c = _of(ctx, xon)
    value = c.get(10) or c.get(3)
    ident = _identifier(ctx, value, c.part(6), c.get(7))
    name = c.get(1)
    if ident is None and not name:
        return None
    key = f"xon|{hd_key(c.part(6))}|{value}" if ident is not None else f"xon-name|{name}"
    resource = {"resourceType": "Organization", "identifier": [ident] if ident else None, "name": name}
    return ctx.add(_clean(resource), key)


def number(value: str) -> int | Decimal | None:
    """An NM string → a JSON number with the digits it was sent with (``1.50`` stays ``1.50``: FHIR
    decimals are exact), or ``None`` when it is not one."""
    value = value.strip()
    if not _NUMBER.fullmatch(value):
        return None
    if "." in value:
        return Decimal(value)
    return int(value)


def quantity(ctx: Context, nm: str, units_cwe: str | Composite) -> dict[str, Any] | None:
    """NM + units (CWE) → Quantity: unit CWE.2 else CWE.1; system and code when the units are UCUM."""
    value = number(ctx.text(nm))
    if value is None:
        return None
    u = _of(ctx, units_cwe)
    out: dict[str, Any] = {"value": value}
    unit = u.get(2) or u.get(1)
    if unit:
        out["unit"] = unit
    system = code_system(ctx, u.get(3)) if u.get(3) else None
    if u.get(1) and system == "http://unitsofmeasure.org":
        out["system"] = system
        out["code"] = u.get(1)
    return out


_EI_TYPE_DISPLAY = {"PLAC": "Placer Identifier", "FILL": "Filler Identifier", "PGN": "Placer Group Number"}


def ei_authority(ctx: Context, ei: Composite) -> Composite:
    """The assigning authority of an EI (EI.2 namespace, EI.3 universal id, EI.4 its type) as an HD."""
    sep = ctx.message.delimiters.component
    return Composite(ctx, sep.join((ei.component(2), ei.component(3), ei.component(4))))


def entity_identifier(ctx: Context, ei: Composite, type_code: str = "") -> dict[str, Any] | None:
    """EI → Identifier: value EI.1, system from the authority EI.2-4 (as for CX.4), assigner EI.2, and
    type ``type_code`` (table 0203, else v2-0203 with PLAC / FILL / PGN named) when given."""
    value = ei.get(1)
    if not value:
        return None
    out: dict[str, Any] = {}
    if type_code:
        kind = ctx.tables.coding("0203", type_code) or {
            "system": V2_SYSTEM + "0203",
            "code": type_code,
            "display": _EI_TYPE_DISPLAY.get(type_code, type_code),
        }
        out["type"] = {"coding": [kind]}
    authority = ei_authority(ctx, ei)
    system = hd_system(ctx, authority)
    if system:
        out["system"] = system
    out["value"] = value
    if authority.get(1):
        out["assigner"] = {"display": authority.get(1)}
    return out


def order_identifiers(ctx: Context, placer: Composite, filler: Composite) -> list[dict[str, Any]]:
    """A placer and a filler number (EI) → their Identifiers typed PLAC and FILL, the ones present, in
    that order."""
    return [i for i in (entity_identifier(ctx, placer, "PLAC"), entity_identifier(ctx, filler, "FILL")) if i]


def ei_key(ctx: Context, ei: Composite, *, sender_fallback: bool = False) -> str:
    """An EI as part of a resource key: ``authority|id``. Without an authority (EI.2-4 empty), the
    sending facility (MSH-4) with ``sender_fallback``; else none, so that numbers sent by different
    systems (an order's placer number in the ORM and again in the ORU) still meet."""
    authority = hd_key(ei_authority(ctx, ei))
    if not authority and sender_fallback:
        authority = hd_key(ctx.field(ctx.segment("MSH"), 4))
    return f"{authority}|{ei.get(1)}"
