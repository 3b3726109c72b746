"""The conversion context: one message being converted, and the Bundle entries produced so far.

A builder (see :mod:`adapters.hl7.to_fhir.registry`) reads segments through the
helpers here and adds resources with :meth:`Context.add`, which gives each one
a deterministic id: ``uuid5(NAMESPACE, f"{resourceType}|{key}")``. The key is
the resource's business identity (a patient's assigning authority and
identifier, a visit number, a practitioner's id …), never the time of
conversion, so converting the same message twice, or an A08 after the A01 for
the same patient, gives the same ids; each entry is a ``PUT Type/id``
(update-as-create), so a FHIR server updates rather than duplicates.

Field helpers return *unescaped* values: a raw field repetition is split into
components (and sub-components) first, and only then is each part unescaped
with :func:`adapters.hl7.er7.unescape`, so that an escaped ``\\S\\`` never
splits a component. The HL7 null ``""`` reads as empty.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from adapters.fhir.bundle import MAX_ENTRIES
from adapters.hl7.er7 import Message, Segment, unescape
from adapters.hl7.to_fhir.errors import ConversionError
from adapters.hl7.to_fhir.tables import Tables

__all__ = ["NAMESPACE", "Composite", "Context", "resource_id"]

NAMESPACE = uuid.UUID("6f1c1a52-3b0e-5d7a-9c55-0c6b7e2f4a11")
"""The fixed namespace of every resource id this converter mints (never change it: ids would move)."""

HL7_NULL = '""'


def resource_id(resource_type: str, key: str) -> str:
    """The deterministic id of the ``resource_type`` resource identified by ``key``."""
    return str(uuid.uuid5(NAMESPACE, f"{resource_type}|{key}"))


class Composite:
    """One raw field repetition (or component), split lazily; 1-based, unescaped accessors."""

    __slots__ = ("_comps", "_ctx", "raw")

    def __init__(self, ctx: Context, raw: str) -> None:
        self._ctx = ctx
        self.raw = raw
        self._comps = raw.split(ctx.message.delimiters.component) if raw else []

    def __bool__(self) -> bool:
        return any(s for i in range(1, len(self._comps) + 1) for s in self.subs(i))

    def component(self, i: int) -> str:
        """Raw component ``i`` (sub-components and escapes kept), ``""`` when absent."""
        return self._comps[i - 1] if 0 < i <= len(self._comps) else ""

    def get(self, i: int) -> str:
        """Component ``i``, first sub-component, unescaped and stripped; ``""`` when absent or HL7 null."""
        comp = self.component(i)
        if not comp:
            return ""
        first = comp.split(self._ctx.message.delimiters.subcomponent, 1)[0]
        return self._ctx.text(first)

    def subs(self, i: int) -> list[str]:
        """The unescaped sub-components of component ``i`` (positions kept; empty strings for absent)."""
        comp = self.component(i)
        if not comp:
            return []
        return [self._ctx.text(s) for s in comp.split(self._ctx.message.delimiters.subcomponent)]

    def sub(self, i: int, j: int) -> str:
        """Sub-component ``j`` of component ``i``, unescaped; ``""`` when absent."""
        parts = self.subs(i)
        return parts[j - 1] if 0 < j <= len(parts) else ""

    def part(self, i: int) -> Composite:
        """Component ``i`` read as a composite of its sub-components (for HD in CX.4, DR, …)."""
        comp = self.component(i)
        d = self._ctx.message.delimiters
        return Composite(self._ctx, comp.replace(d.component, "").replace(d.subcomponent, d.component))


@dataclass
class Context:
    """Everything a builder needs: the message, the tables, the envelope, and what was produced.

    ``patient`` / ``encounter`` hold the reference and key of the current
    patient and encounter once a builder has made them, so that later segments
    (AL1, DG1 …) can point at them; ``focus`` lists what the MessageHeader is about.
    """

    message: Message
    tables: Tables
    envelope_id: str = ""
    raw_sha256: str = ""
    message_type: str = ""
    """``ADT^A01`` style (MSH-9.1 ^ MSH-9.2)."""
    entries: list[dict[str, Any]] = field(default_factory=list)
    focus: list[str] = field(default_factory=list)
    patient: str | None = None
    patient_key: str = ""
    encounter: str | None = None
    encounter_key: str = ""
    _index: dict[tuple[str, str], int] = field(default_factory=dict)
    _by_ref: dict[str, int] = field(default_factory=dict)

    # -- resources -------------------------------------------------------------------------

    def add(self, resource: dict[str, Any], key: str) -> str:
        """Add ``resource`` as a ``PUT`` entry with its deterministic id; return ``"Type/id"``.

        Adding the same type and key again merges the new resource's members
        into the first one (members the first already has are kept) and
        returns the same reference.
        """
        rtype = str(resource["resourceType"])
        rid = resource_id(rtype, key)
        ref = f"{rtype}/{rid}"
        at = self._index.get((rtype, key))
        if at is not None:
            existing = self.entries[at]["resource"]
            for name, value in resource.items():
                existing.setdefault(name, value)
            return ref
        if len(self.entries) >= MAX_ENTRIES:
            raise ConversionError(
                "too_large",
                f"The message would make more than {MAX_ENTRIES} resources, more than one Bundle holds.",
            )
        body = {"resourceType": rtype, "id": rid}
        body.update((k, v) for k, v in resource.items() if k not in ("resourceType", "id"))
        self._index[(rtype, key)] = self._by_ref[ref] = len(self.entries)
        self.entries.append(
            {"fullUrl": f"urn:uuid:{rid}", "resource": body, "request": {"method": "PUT", "url": ref}}
        )
        return ref

    def resource(self, ref: str) -> dict[str, Any] | None:
        """The resource already added under ``"Type/id"``, to amend it; ``None`` if there is none."""
        at = self._by_ref.get(ref)
        if at is None:
            return None
        found: dict[str, Any] = self.entries[at]["resource"]
        return found

    def only_if_absent(self, ref: str) -> None:
        """Write ``ref`` only where it does not exist yet (``ifNoneMatch: *``): an order or a result
        names the patient to link to it, but its demographics are the ADT feed's to state."""
        at = self._by_ref.get(ref)
        if at is not None:
            self.entries[at]["request"]["ifNoneMatch"] = "*"

    def bundle(self) -> dict[str, Any]:
        """The transaction Bundle of every entry added."""
        return {"resourceType": "Bundle", "type": "transaction", "entry": self.entries}

    # -- reading ---------------------------------------------------------------------------

    @property
    def trigger(self) -> str:
        """The trigger event (``A01``) of :attr:`message_type`."""
        return self.message_type.partition("^")[2]

    def text(self, raw: str) -> str:
        """A raw primitive value unescaped and stripped; ``""`` for the HL7 null."""
        d = self.message.delimiters
        value = unescape(raw, d, self.message.encoding) if d.escape in raw else raw
        value = value.strip()
        return "" if value == HL7_NULL else value

    def reps(self, seg: Segment | None, n: int) -> list[Composite]:
        """The non-empty repetitions of SEG-n as composites (``[]`` for an absent segment)."""
        if seg is None:
            return []
        out = []
        for raw in self.message.repetitions(seg, n):
            comp = Composite(self, raw)
            if raw and raw != HL7_NULL and comp:
                out.append(comp)
        return out

    def field(self, seg: Segment | None, n: int) -> Composite:
        """The first repetition of SEG-n (an empty composite when absent)."""
        found = self.reps(seg, n)
        return found[0] if found else Composite(self, "")

    def value(self, seg: Segment | None, n: int, comp: int = 1) -> str:
        """Component ``comp`` of the first repetition of SEG-n, unescaped; ``""`` when absent."""
        return self.field(seg, n).get(comp)

    def segment(self, id: str) -> Segment | None:
        return self.message.segment(id)
