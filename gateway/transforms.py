"""Named transforms a route applies before delivery: the registry ``TRANSFORMS``.

A transform is a pure function of the envelope: it returns the bytes to send
and their content type (:class:`Transformed`), does no I/O and keeps no state,
so the delivery engine may run it again on every attempt and a replay sends
the same bytes. It never changes the stored envelope: raw bytes stay as
received (DESIGN.md §2, rule 6). A transform that cannot apply to an envelope
raises :class:`TransformError`; the delivery is then rejected, not retried.

Built in:

* ``hl7v2_without_z_segments``: the raw HL7 v2 bytes without Z-segments (site
  extensions such as ``ZPI``), for receivers that reject them; every other
  byte, segment terminators included, is kept as received.

Adapters add their own (``adapters.BUILTIN_TRANSFORMS``): ``hl7v2_to_fhir`` turns an
HL7 v2 message into a FHIR R4 transaction Bundle (``adapters/hl7/to_fhir``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeAlias

from gateway.envelope import Envelope

__all__ = ["HL7V2_CONTENT_TYPE", "TRANSFORMS", "Transform", "TransformError", "Transformed", "transforms"]

HL7V2_CONTENT_TYPE = "x-application/hl7-v2+er7"
"""The content type the HL7 v2 adapter gives ER7 bytes (the core knows adapters only by registry key)."""


@dataclass(frozen=True, slots=True)
class Transformed:
    """What a transform hands to the sink: the body to send and its content type."""

    body: bytes
    content_type: str


class TransformError(ValueError):
    """The transform cannot apply to this envelope (wrong protocol, unreadable content); never retried."""


Transform: TypeAlias = Callable[[Envelope], Transformed]

_BOM = b"\xef\xbb\xbf"
_TERMINATOR = re.compile(rb"(\r\n|\r|\n)")


def _field_separator(raw: bytes) -> bytes:
    head = raw[3:] if raw.startswith(_BOM) else raw
    head = head.lstrip()
    if head[:3] in (b"MSH", b"FHS", b"BHS") and len(head) > 3:
        return head[3:4]
    return b"|"


def _is_z_segment(segment: bytes, separator: bytes) -> bool:
    return (
        len(segment) >= 3
        and segment[:1] == b"Z"
        and segment[1:3].isalnum()
        and (len(segment) == 3 or segment[3:4] == separator)
    )


def hl7v2_without_z_segments(envelope: Envelope) -> Transformed:
    """The raw HL7 v2 message with every Z-segment (and its terminator) removed; all else byte-identical."""
    if envelope.protocol != "hl7v2":
        raise TransformError(f"hl7v2_without_z_segments applies to hl7v2 envelopes, not {envelope.protocol}")
    raw = envelope.raw
    separator = _field_separator(raw)
    pieces = _TERMINATOR.split(raw)  # segment, terminator, segment, terminator, ..., last segment
    kept: list[bytes] = []
    for i in range(0, len(pieces), 2):
        segment = pieces[i]
        terminator = pieces[i + 1] if i + 1 < len(pieces) else b""
        if not _is_z_segment(segment, separator):
            kept.append(segment)
            kept.append(terminator)
    return Transformed(body=b"".join(kept), content_type=HL7V2_CONTENT_TYPE)


TRANSFORMS: dict[str, Transform] = {
    "hl7v2_without_z_segments": hl7v2_without_z_segments,
}
"""The core's own transforms, by name."""


@functools.cache
def transforms() -> Mapping[str, Transform]:
    """Every transform a route may name: the core's own and the adapters' (``BUILTIN_TRANSFORMS``)."""
    from adapters import BUILTIN_TRANSFORMS  # the core knows adapters by registry only

    return MappingProxyType({**TRANSFORMS, **BUILTIN_TRANSFORMS})
