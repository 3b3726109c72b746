"""HL7 v2 → FHIR R4 conversion: pure functions, no I/O, deterministic.

:func:`convert` reads one ER7 message and returns a FHIR R4 ``transaction``
Bundle: a MessageHeader (MSH) first, then what the message type's builder
produces, then one Provenance whose ``target`` lists every other entry and
whose ``entity`` names the gateway envelope and the digest of the raw bytes.
Every entry is ``PUT Type/<id>`` with an id derived from the resource's
business key (:mod:`~adapters.hl7.to_fhir.context`), so the same input always
gives the same Bundle, and a later message about the same patient or visit
updates the same resources.

Layout (each module small and single-purpose):

- :mod:`.context` — the Context (message, tables, entries, ``add``) and field helpers;
- :mod:`.datatypes` — CX, XPN, XAD, XTN, CWE, XCN, TS/DTM, NM → FHIR datatypes;
- :mod:`.tables` + ``tables/*.json`` — the v2 table → FHIR code maps (data, overridable);
- :mod:`.registry` — message type → builder (:func:`register`);
- :mod:`.header` — MSH/EVN → MessageHeader and Provenance (every message type);
- :mod:`.patient`, :mod:`.encounter`, :mod:`.clinical`, :mod:`.roles` (ROL) — segment maps;
- :mod:`.adt` — the ADT builders; :mod:`.orders` (ORM^O01, OML^O21), :mod:`.results` (ORU^R01),
  :mod:`.immunization` (VXU^V04), :mod:`.scheduling` (SIU^S12-S17, S26), :mod:`.documents` (MDM^T01-T10).

The mappings follow the HL7 v2-to-FHIR IG (https://build.fhir.org/ig/HL7/v2-to-fhir/);
the choices it leaves open are documented in the module that makes them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from adapters.hl7 import er7
from adapters.hl7.to_fhir import adt, documents, header, immunization, orders, registry, results, scheduling  # noqa: F401 - register at import
from adapters.hl7.to_fhir.context import Context
from adapters.hl7.to_fhir.errors import ConversionError
from adapters.hl7.to_fhir.registry import Builder
from adapters.hl7.to_fhir.tables import Tables, default_tables

__all__ = ["SUPPORTED", "Builder", "ConversionError", "Tables", "convert", "message_type", "register"]

SUPPORTED: frozenset[str] = frozenset()
"""Every message type :func:`convert` handles (``ADT^A01`` style); kept current by :func:`register`."""


def register(message_types: Iterable[str], builder: Builder) -> None:
    """Convert each of ``message_types`` with ``builder`` (see :mod:`.registry`); updates :data:`SUPPORTED`."""
    global SUPPORTED
    registry.register(message_types, builder)
    SUPPORTED = registry.supported()


register(adt.VISIT_TYPES, adt.build_visit)
register(adt.PERSON_TYPES, adt.build_person)
register(adt.MERGE_TYPES, adt.build_merge)
SUPPORTED = (
    registry.supported()
)  # with what orders, results, immunization, scheduling and documents registered


def message_type(message: er7.Message) -> str:
    """``MSH-9.1^MSH-9.2`` upper-cased; the trigger falls back to EVN-1 for an ADT without MSH-9.2."""
    code = message.get("MSH-9.1").strip().upper()
    trigger = message.get("MSH-9.2").strip().upper()
    if not trigger and code == "ADT":
        trigger = message.get("EVN-1").strip().upper()
    return f"{code}^{trigger}"


def convert(
    raw: bytes, *, envelope_id: str = "", raw_sha256: str = "", tables: Tables | None = None
) -> dict[str, Any]:
    """One HL7 v2 message (ER7 bytes; ``\\r``, ``\\n`` or ``\\r\\n`` endings; a BOM is fine) →
    a FHIR R4 transaction Bundle (a dict). ``raw_sha256`` defaults to the digest of ``raw``.

    The Patient and Encounter of a message that is not an ADT are written only where they do not exist
    yet (``ifNoneMatch: *``): an ORU's PID names the patient, it does not restate their demographics.

    Raises :class:`ConversionError` (``unreadable``, ``unsupported_message_type``,
    ``no_patient``, ``no_message_time``, ``too_large``).
    """
    try:
        message = er7.parse(raw)
    except er7.ER7Error:
        raise ConversionError("unreadable", "The bytes are not a readable HL7 v2 message.") from None
    kind = message_type(message)
    builder = registry.builder_for(kind)
    if builder is None:
        raise ConversionError(
            "unsupported_message_type", "No conversion to FHIR exists for this message type."
        )
    ctx = Context(
        message,
        tables if tables is not None else default_tables(),
        envelope_id=envelope_id,
        raw_sha256=raw_sha256 or hashlib.sha256(raw).hexdigest(),
        message_type=kind,
    )
    header_ref = header.message_header(ctx)
    builder(ctx)
    if not kind.startswith("ADT^"):  # who the patient is and where they stay: the ADT feed says that
        for ref in (ctx.patient, ctx.encounter):
            if ref is not None:
                ctx.only_if_absent(ref)
    header.provenance(ctx, header_ref)
    return ctx.bundle()
