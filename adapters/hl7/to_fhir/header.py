"""MSH and EVN → MessageHeader and Provenance: the resources every converted message gets.

:func:`message_header` runs before the message type's builder (its entry is
the Bundle's first), :func:`provenance` after it (its entry is the last, and
its ``target`` lists every other entry). Both are keyed by the sender (MSH-3,
MSH-4) and the control id (MSH-10), so a resent message updates them.

The Provenance ties the output to the gateway's record of the input:
``entity[0]`` (``role: source``) has ``what.identifier`` =
``{system: "urn:connector-gateway:envelope", value: <envelope id>}`` and
``what.display`` = ``"sha256:<digest of the raw bytes>"`` (a display rather
than an extension: every FHIR reader shows it, and no profile is needed); the
entity is left out when there is no envelope id. ``recorded`` is MSH-7 as an
instant (never the conversion time, which would break determinism);
``occurredDateTime`` EVN-6 or EVN-2, ``reason`` EVN-4, the operator EVN-5 an
``enterer`` agent, the sending facility the ``author`` agent, ``location`` the
event facility EVN-7 (a site Location, the one a PL naming that facility gives).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from adapters.hl7.to_fhir import datatypes as dt
from adapters.hl7.to_fhir import encounter
from adapters.hl7.to_fhir.context import Composite, Context
from adapters.hl7.to_fhir.errors import ConversionError

__all__ = ["ENVELOPE_SYSTEM", "message_header", "provenance", "sender"]

ENVELOPE_SYSTEM = "urn:connector-gateway:envelope"
EVENT_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0003"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
UNKNOWN_ENDPOINT = "urn:connector-gateway:application:unknown"


def _endpoint(ctx: Context, hd: Composite) -> str | None:
    """An application or facility HD as a MessageHeader endpoint URI."""
    if not hd:
        return None
    system = dt.hd_system(ctx, hd)
    if system and not system.startswith(dt.LOCAL_IDENTIFIER_SYSTEM):
        return system
    return "urn:connector-gateway:application:" + quote(hd.get(1) or hd.get(2), safe="")


def _key(ctx: Context) -> str:
    msh = ctx.segment("MSH")
    return "|".join((ctx.field(msh, 3).raw, ctx.field(msh, 4).raw, ctx.value(msh, 10)))


def organization(ctx: Context, hd: Composite) -> str | None:
    """A facility HD (MSH-4, PL.4 …) → an Organization keyed by it; its reference."""
    if not hd:
        return None
    ident = None
    if hd.get(2):
        system = dt.hd_system(ctx, hd)
        if system and system.startswith(("urn:oid:", "urn:uuid:")):
            ident = {"system": "urn:ietf:rfc:3986", "value": system}
        else:
            ident = {"value": hd.get(2)}
    resource: dict[str, Any] = {"resourceType": "Organization"}
    if ident:
        resource["identifier"] = [ident]
    if hd.get(1):
        resource["name"] = hd.get(1)
    return ctx.add(resource, "facility|" + dt.hd_key(hd))


def sender(ctx: Context) -> str:
    """The sending facility (MSH-4) as an Organization, else the sending application (MSH-3) as a Device."""
    msh = ctx.segment("MSH")
    org = organization(ctx, ctx.field(msh, 4))
    if org:
        return org
    app = ctx.field(msh, 3)
    device: dict[str, Any] = {"resourceType": "Device"}
    if app.get(1) or app.get(2):
        device["deviceName"] = [{"name": app.get(1) or app.get(2), "type": "user-friendly-name"}]
    return ctx.add(device, "application|" + dt.hd_key(app))


def message_header(ctx: Context) -> str:
    """MSH → MessageHeader (event MSH-9 trigger, source MSH-3/4, destination MSH-5/6, sender MSH-4,
    ``responsible`` the Organization of MSH-22, ``destination.receiver`` that of MSH-23, else MSH-6)."""
    msh = ctx.segment("MSH")
    app, fac = ctx.field(msh, 3), ctx.field(msh, 4)
    source: dict[str, Any] = {"endpoint": _endpoint(ctx, app) or _endpoint(ctx, fac) or UNKNOWN_ENDPOINT}
    name = app.get(1) or fac.get(1)
    if name:
        source["name"] = name
    resource: dict[str, Any] = {
        "resourceType": "MessageHeader",
        "eventCoding": {"system": EVENT_SYSTEM, "code": ctx.trigger},
        "source": source,
    }
    ref = ctx.add(resource, _key(ctx))  # first, so that it is the Bundle's first entry
    added = ctx.resource(ref)
    if added is None:  # pragma: no cover - add() just stored it
        return ref
    rapp, rfac = ctx.field(msh, 5), ctx.field(msh, 6)
    endpoint = _endpoint(ctx, rapp) or _endpoint(ctx, rfac)
    # MSH-23 (receiving responsible organization, XON) is the receiver; MSH-6 only when it is empty
    receiver = dt.organization(ctx, ctx.field(msh, 23)) or organization(ctx, rfac)
    if endpoint or receiver:
        dest: dict[str, Any] = {"endpoint": endpoint or UNKNOWN_ENDPOINT}
        if rapp.get(1) or rfac.get(1):
            dest["name"] = rapp.get(1) or rfac.get(1)
        if receiver:
            dest["receiver"] = {"reference": receiver}
        added["destination"] = [dest]
    added["sender"] = {"reference": sender(ctx)}
    responsible = dt.organization(ctx, ctx.field(msh, 22))
    if responsible:
        added["responsible"] = {"reference": responsible}
    return ref


def provenance(ctx: Context, header_ref: str) -> str:
    """EVN and the envelope → the Provenance of everything added so far (call it last)."""
    msh, evn = ctx.segment("MSH"), ctx.segment("EVN")
    header = ctx.resource(header_ref)
    if header is not None and ctx.focus:
        header["focus"] = [{"reference": ref} for ref in dict.fromkeys(ctx.focus)]
    recorded = dt.instant(ctx, ctx.field(msh, 7)) or dt.instant(ctx, ctx.field(evn, 2))
    if recorded is None:
        raise ConversionError("no_message_time", "The message has no usable date/time of message (MSH-7).")
    agents: list[dict[str, Any]] = [
        {
            "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author"}]},
            "who": {"reference": sender(ctx)},
        }
    ]
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "recorded": recorded,
        "activity": {"coding": [{"system": EVENT_SYSTEM, "code": ctx.trigger}]},
    }
    occurred = dt.date_time(ctx, ctx.field(evn, 6)) or dt.date_time(ctx, ctx.field(evn, 2))
    if occurred:
        resource["occurredDateTime"] = occurred
    reason = dt.codeable_concept(ctx, ctx.field(evn, 4), "0062")
    if reason:
        resource["reason"] = [reason]
    for operator in ctx.reps(evn, 5):
        who = dt.practitioner(ctx, operator)
        if who:
            agents.append(
                {
                    "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "enterer"}]},
                    "who": {"reference": who},
                }
            )
    resource["agent"] = agents
    where = encounter.site(ctx, ctx.field(evn, 7))
    if where:
        resource["location"] = {"reference": where}
    # every entry, the operator added just now included
    resource["target"] = [{"reference": e["request"]["url"]} for e in ctx.entries]
    if ctx.envelope_id:
        what: dict[str, Any] = {"identifier": {"system": ENVELOPE_SYSTEM, "value": ctx.envelope_id}}
        if ctx.raw_sha256:
            what["display"] = f"sha256:{ctx.raw_sha256}"
        resource["entity"] = [{"role": "source", "what": what}]
    return ctx.add(resource, _key(ctx))
