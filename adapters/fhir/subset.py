"""Parts of a resource a client asks for: ``_summary`` (``true``, ``text``, ``data``) and ``_elements``.

FHIR R4 search §3.1.1.5.8 and 3.1.1.5.9. What each keeps of a resource's top-level elements:

* ``_summary=true``: the elements the specification marks as summary (read from
  the ``fhir.resources`` R4B models, which carry that flag) and the mandatory ones;
* ``_summary=text``: ``text``, ``id``, ``meta`` and the mandatory elements;
* ``_summary=data``: everything but ``text``;
* ``_elements=a,b``: those elements and the mandatory ones (an unknown name
  keeps nothing more: it is not an error, as the specification says).

``resourceType``, ``id`` and ``meta`` always stay, an element's ``_name``
companion (its id and extensions) stays with it, and a subset is marked with
the ``SUBSETTED`` tag in ``meta.tag`` so that no client takes it for the whole
resource (and writes it back). ``_summary=count`` and ``false`` are the
search's business and subset nothing here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from adapters.fhir.outcome import FhirError
from adapters.fhir.resources import model_of

SUBSETTED: Final = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
_ALWAYS: Final = frozenset({"resourceType", "id", "meta"})
_SUMMARIES: Final = ("true", "text", "data", "count", "false")


@dataclass(frozen=True, slots=True)
class Subset:
    """What part of each resource to answer with; the empty one keeps everything."""

    summary: str = ""
    elements: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.summary in ("true", "text", "data") or bool(self.elements)


def read_subset(params: Sequence[tuple[str, str]]) -> Subset:
    """The subset the query parameters ask for; 400 for a ``_summary`` that FHIR does not define."""
    summary = ""
    elements: tuple[str, ...] = ()
    for name, value in params:
        if name == "_summary":
            if value not in _SUMMARIES:
                raise FhirError(400, "invalid", "_summary must be true, text, data, count or false.")
            summary = value
        elif name == "_elements":
            elements = tuple(e.strip() for e in value.split(",") if e.strip())
    if summary in ("true", "text", "data", "count") and elements:
        raise FhirError(400, "invalid", "_summary and _elements cannot be used together.")
    return Subset(summary, elements)


@functools.cache
def _flags(rtype: str) -> tuple[frozenset[str], frozenset[str]]:
    """The JSON names of ``rtype``'s summary elements and of its mandatory ones."""
    summary, mandatory = set(), set()
    for name, field in model_of(rtype).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        key = field.alias or name
        if extra.get("summary_element_property"):
            summary.add(key)
        if field.is_required() or extra.get("element_required") or extra.get("one_of_many_required"):
            mandatory.add(key)
    return frozenset(summary), frozenset(mandatory)


def apply_subset(resource: Mapping[str, Any], subset: Subset) -> dict[str, Any]:
    """``resource`` cut to ``subset`` and tagged ``SUBSETTED`` (the input is left as it was)."""
    if not subset:
        return dict(resource)
    rtype = str(resource.get("resourceType", ""))
    try:
        summary, mandatory = _flags(rtype)
    except KeyError:  # not a resource type this server knows: nothing to go by
        summary, mandatory = frozenset(), frozenset()
    if subset.summary == "data":
        keep = {k for k in resource if k not in ("text", "_text")}
    else:
        wanted = set(subset.elements)
        if subset.summary == "true":
            wanted = set(summary)
        elif subset.summary == "text":
            wanted = {"text"}
        keep = {k for k in resource if k.removeprefix("_") in wanted | mandatory | _ALWAYS}
    out = {k: v for k, v in resource.items() if k in keep}
    meta = dict(out.get("meta") or {})
    tags = [t for t in meta.get("tag") or [] if t != SUBSETTED]
    meta["tag"] = [*tags, SUBSETTED]
    out["meta"] = meta
    return out
