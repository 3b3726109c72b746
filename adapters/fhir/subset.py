"""Parts of a resource a client asks for: ``_summary`` (``true``, ``text``, ``data``) and ``_elements``.

FHIR R4 search, sections 3.1.1.5.8 and 3.1.1.5.9. What each keeps:

* ``_summary=true``: the elements the specification marks as summary, at every
  level (an Attachment's ``data`` is not one, so a DocumentReference comes
  without its payload), and the mandatory ones; the flags are read from the
  ``fhir.resources`` R4B models, which carry them;
* ``_summary=text``: ``text``, ``id``, ``meta`` and the top-level mandatory elements;
* ``_summary=data``: everything but ``text``;
* ``_elements=a,b``: those top-level elements (a choice by its base name:
  ``value`` keeps ``valueQuantity``) and the mandatory ones; an unknown name
  keeps nothing more, and is no error, as the specification says.

``resourceType``, ``id`` and ``meta`` always stay, and with ``_elements`` also
``implicitRules`` and ``modifierExtension`` (they change what the rest means);
an element's ``_name`` companion (its id and extensions) stays with it. A subset
is marked with the ``SUBSETTED`` tag in ``meta.tag``, so that no client takes it
for the whole resource, and a write that carries the tag is refused (422) by
validation. ``_summary=count`` and ``false`` subset nothing here.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fhir.resources.R4B import get_fhir_model_class

from adapters.fhir.outcome import FhirError
from adapters.fhir.resources import SUBSETTED_SYSTEM

SUBSETTED: Final = {"system": SUBSETTED_SYSTEM, "code": "SUBSETTED"}
_ALWAYS: Final = frozenset({"resourceType", "id", "meta"})
_MODIFIERS: Final = frozenset({"implicitRules", "modifierExtension"})
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
        if name == "_summary" and value:
            if value not in _SUMMARIES:
                raise FhirError(400, "invalid", "_summary must be true, text, data, count or false.")
            summary = value
        elif name == "_elements":
            elements = tuple(e.strip() for e in value.split(",") if e.strip())
    if summary in ("true", "text", "data", "count") and elements:
        raise FhirError(400, "invalid", "_summary and _elements cannot be used together.")
    return Subset(summary, elements)


@dataclass(frozen=True, slots=True)
class _Flags:
    """What the model of one resource, backbone element or datatype says of its elements."""

    summary: frozenset[str]
    mandatory: frozenset[str]
    choices: Mapping[str, frozenset[str]]  # value → {valueQuantity, valueString, ...}
    types: Mapping[str, str]  # element → the model name of its type (for nested summaries)


def _type_name(annotation: Any) -> str:
    """``List[abc.AttachmentType]`` → ``Attachment``; ``''`` for a primitive or anything else."""
    for arg in typing.get_args(annotation) or (annotation,):
        if typing.get_args(arg):
            return _type_name(arg)
        name = getattr(arg, "__name__", "")
        if name.endswith("Type") and name[:1].isupper():
            return name[: -len("Type")]
    return ""


@functools.cache
def _flags(model: str) -> _Flags | None:
    try:
        cls = get_fhir_model_class(model)
    except (KeyError, ValueError):
        return None
    summary, mandatory, types = set(), set(), {}
    choices: dict[str, set[str]] = {}
    for name, field in cls.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        key = field.alias or name
        if extra.get("summary_element_property"):
            summary.add(key)
        if field.is_required() or extra.get("element_required") or extra.get("one_of_many_required"):
            mandatory.add(key)
        group = extra.get("one_of_many")
        if isinstance(group, str):
            choices.setdefault(group, set()).add(key)
        kind = _type_name(field.annotation)
        if kind:
            types[key] = kind
    return _Flags(
        frozenset(summary), frozenset(mandatory), {k: frozenset(v) for k, v in choices.items()}, types
    )


def _summarized(value: Any, model: str) -> Any:
    """``value`` (an element of type ``model``) with only its summary and mandatory parts, all the way down."""
    if isinstance(value, list):
        return [_summarized(v, model) for v in value]
    if not isinstance(value, dict):
        return value
    flags = _flags(str(value.get("resourceType") or model))  # (contained resources name their own type)
    if flags is None:
        return value
    keep = flags.summary | flags.mandatory | {"resourceType"}
    return {
        k: _summarized(v, flags.types.get(k, "")) for k, v in value.items() if k.removeprefix("_") in keep
    }


def apply_subset(resource: Mapping[str, Any], subset: Subset) -> dict[str, Any]:
    """``resource`` cut to ``subset`` and tagged ``SUBSETTED`` (the input is left as it was)."""
    if not subset:
        return dict(resource)
    rtype = str(resource.get("resourceType", ""))
    flags = _flags(rtype) or _Flags(frozenset(), frozenset(), {}, {})
    if subset.summary == "data":
        out = {k: v for k, v in resource.items() if k not in ("text", "_text")}
    elif subset.summary == "true":
        out = _summarized(dict(resource), rtype)
        out.update({k: resource[k] for k in _ALWAYS if k in resource})
    else:
        wanted = {"text"} if subset.summary == "text" else set(subset.elements) | _MODIFIERS
        for name in list(wanted):
            wanted |= flags.choices.get(name.removesuffix("[x]"), frozenset())
        keep = wanted | flags.mandatory | _ALWAYS
        out = {k: v for k, v in resource.items() if k.removeprefix("_") in keep}
    meta = dict(out.get("meta") or {})
    tags = [
        t
        for t in meta.get("tag") or []
        if not (
            isinstance(t, dict) and (t.get("system"), t.get("code")) == (SUBSETTED["system"], "SUBSETTED")
        )
    ]
    meta["tag"] = [*tags, SUBSETTED]
    out["meta"] = meta
    return out
