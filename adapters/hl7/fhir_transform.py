"""The ``hl7v2_to_fhir`` route transform: an HL7 v2 message as a FHIR R4 transaction Bundle.

A transform is a pure function of the envelope (``gateway/transforms.py``):
the Bundle depends only on the message bytes, the envelope id and digest (for
its Provenance) and the mapping tables, so every attempt and every replay sends
the same bytes. The mapping tables are data files a site can override:
:func:`use_tables` points the transform at a folder of its own tables
(``convert.tables_dir`` in the configuration).
"""

from __future__ import annotations

from pathlib import Path

from adapters.fhir.resources import write_json
from adapters.hl7.to_fhir import ConversionError, Tables, convert
from gateway.envelope import Envelope
from gateway.transforms import Transformed, TransformError

FHIR_JSON = "application/fhir+json"

_tables: list[Tables | None] = [None]


def use_tables(override_dir: Path | None) -> None:
    """Convert with the built-in tables, overridden by the JSON tables in ``override_dir``."""
    _tables[0] = Tables.load(override_dir) if override_dir is not None else None


def tables() -> Tables | None:
    """The tables in use (``None``: the built-in ones)."""
    return _tables[0]


def hl7v2_to_fhir(envelope: Envelope) -> Transformed:
    """The envelope's HL7 v2 message as a FHIR R4 transaction Bundle (JSON)."""
    if envelope.protocol != "hl7v2":
        raise TransformError(f"hl7v2_to_fhir applies to hl7v2 envelopes, not {envelope.protocol}")
    try:
        converted = convert(
            envelope.raw, envelope_id=envelope.id, raw_sha256=envelope.raw_sha256, tables=_tables[0]
        )
    except ConversionError as exc:
        raise TransformError(f"hl7v2_to_fhir: {exc.code}") from None
    return Transformed(write_json(converted), FHIR_JSON)
