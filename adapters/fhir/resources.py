"""FHIR R4 resources: reading, validating and writing them in JSON and XML.

The models are ``fhir.resources.R4B`` (wire-compatible with R4 for the
resources this gateway takes), never the package's top-level R5 models. A
resource travels inside the gateway as the plain dict of its FHIR JSON form
(what ``orjson`` reads): the XML form is read through the R4B model into that
same dict, and written back from it through the model.

- :func:`read_resource` parses a request body (JSON or XML by media type).
  JSON must be one object with a string ``resourceType`` and no object naming
  the same member twice (parsers disagree which value wins), nested at most
  :data:`MAX_JSON_DEPTH` levels and without a lone surrogate escape (``\\uD800``:
  no character, and no writer takes it back); XML goes through
  the one hardened parser (:func:`gateway.xml.parse_xml`: no DOCTYPE, no
  entities, size and depth caps) before the model reads it, and its root must
  be in the FHIR namespace. Failures are :class:`~adapters.fhir.outcome.FhirError`.
- :func:`validate` lists every problem as an :class:`~gateway.adapter.Issue`
  with a FHIR ``issue-type`` code (``structure``, ``required``, ``value``,
  ``invalid``, ``not-supported``), a FHIRPath location and a sentence of our
  own: pydantic's messages and inputs (patient data) are never copied.
- :func:`write_json`, :func:`write_xml` and :func:`serialize` write a resource.

Decimals keep the digits they were written with (FHIR's decimal is exact: ``1.50``
is not ``1.5``): JSON is read into :class:`~decimal.Decimal` values (:func:`load_json`),
written back as the same digits, and carried to and from XML as written.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from decimal import Decimal, InvalidOperation
from importlib import resources as package_files
from typing import Any, Final, Literal

import orjson
from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from lxml import etree
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from adapters.fhir.outcome import FhirError
from gateway.adapter import Issue
from gateway.xml import DEFAULT_MAX_DEPTH, XMLRejected, hardened_parser, parse_xml

__all__ = [
    "FHIR_NS",
    "ID_PATTERN",
    "JSON_MEDIA",
    "JSON_TYPES",
    "MAX_JSON_DEPTH",
    "RESOURCE_TYPES",
    "XML_MEDIA",
    "XML_TYPES",
    "media_type",
    "model_of",
    "read_resource",
    "serialize",
    "unwritable",
    "validate",
    "write_json",
    "write_xml",
]

FHIR_NS: Final = "http://hl7.org/fhir"
JSON_TYPES: Final = frozenset({"application/fhir+json", "application/json", "application/json+fhir"})
XML_TYPES: Final = frozenset({"application/fhir+xml", "application/xml", "application/xml+fhir", "text/xml"})
JSON_MEDIA: Final = "application/fhir+json; charset=utf-8"
XML_MEDIA: Final = "application/fhir+xml; charset=utf-8"
ID_PATTERN: Final = r"[A-Za-z0-9\-\.]{1,64}"
"""A FHIR logical id (the ``id`` data type)."""
MAX_JSON_DEPTH: Final = 2 * DEFAULT_MAX_DEPTH
"""How deep a JSON body may nest objects and arrays: as deep as the XML form may nest elements (an object
each, a repeated one in an array too), and well within the 254 levels the JSON writer (orjson) takes."""

_ID = re.compile(ID_PATTERN)
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
"""A JSON escape of a surrogate, the one way a JSON text read as UTF-8 can hold one."""
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{0,63}")
"""What a resource type name looks like: only such a name is ever quoted back."""
_RESOURCE_CLASS = re.compile(
    r"^class ([A-Z][A-Za-z]*)\((?:domainresource\.DomainResource|resource\.Resource)\):", re.MULTILINE
)


def _resource_types() -> frozenset[str]:
    """Every resource the R4B package defines: the classes based directly on ``Resource`` or
    ``DomainResource``, found in the package's sources (importing all 190 modules takes about two
    seconds; a test checks this list against the imported classes)."""
    names: set[str] = set()
    for entry in package_files.files("fhir.resources.R4B").iterdir():
        if entry.name.endswith(".py"):
            names.update(_RESOURCE_CLASS.findall(entry.read_text(encoding="utf-8")))
    return frozenset(names - {"DomainResource", "Resource"})


RESOURCE_TYPES: Final[frozenset[str]] = _resource_types()
"""Every FHIR R4 (R4B) resource type: ``Patient`` … ``Bundle``, ``Parameters``, ``Binary``,
``OperationOutcome``; never a data type (``HumanName``) nor ``Resource``/``DomainResource``."""


@functools.cache
def model_of(resource_type: str) -> type[FHIRAbstractModel]:
    """The R4B model class of ``resource_type``; ``KeyError`` when it is not a resource type."""
    if resource_type not in RESOURCE_TYPES:
        raise KeyError(resource_type)
    return get_fhir_model_class(resource_type)


def media_type(content_type: str | None) -> str:
    """``application/fhir+json; charset=utf-8`` → ``application/fhir+json`` (lower case)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def _quoted(resource_type: object) -> str:
    """The resource type in a sentence, when it looks like one; otherwise nothing of it."""
    if isinstance(resource_type, str) and _TYPE_NAME.fullmatch(resource_type):
        return f" {resource_type}"
    return ""


def _unknown_type(resource_type: object) -> FhirError:
    return FhirError(
        400,
        "not-supported",
        f"The resource type{_quoted(resource_type)} is not a FHIR R4 resource type this server knows.",
        "resourceType",
    )


# -- reading -------------------------------------------------------------------------------------


class _Duplicate(ValueError):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise ValueError("NaN and Infinity are not JSON numbers")


def load_json(raw: bytes) -> Any:
    """JSON as FHIR needs it read: decimals as :class:`~decimal.Decimal` with the digits they were written
    with (``1.50`` stays ``1.50``), no NaN or Infinity, and an object that names a member twice refused
    (parsers disagree on which value wins). Raises ``ValueError`` (``_Duplicate`` for a repeated name)."""
    try:
        return json.loads(
            raw.decode("utf-8-sig" if raw[:3] == b"\xef\xbb\xbf" else "utf-8"),
            object_pairs_hook=_unique,
            parse_float=Decimal,
            parse_constant=_constant,
        )
    except InvalidOperation:  # an exponent past what Decimal holds (1e99999999999999999999)
        raise ValueError("a number out of the decimal range") from None


def _read_json(raw: bytes) -> dict[str, Any]:
    try:
        value = load_json(raw)
    except _Duplicate:
        raise FhirError(400, "structure", "An object in the body names the same member twice.") from None
    except (ValueError, RecursionError):
        raise FhirError(400, "invalid", "The body is not well-formed JSON in UTF-8.") from None
    if not isinstance(value, dict):
        raise FhirError(400, "structure", "The body must be one JSON object, a FHIR resource.")
    problem = unwritable(value, raw=raw)
    if problem is not None:
        raise FhirError(400, "invalid", problem)
    resource_type = value.get("resourceType")
    if not isinstance(resource_type, str):
        raise FhirError(
            400, "structure", "The JSON object has no resourceType string: it is not a FHIR resource."
        )
    if resource_type not in RESOURCE_TYPES:
        raise _unknown_type(resource_type)
    return value


def unwritable(value: Any, limit: int = MAX_JSON_DEPTH, *, raw: bytes | None = None) -> str | None:
    """Why ``value`` (read JSON) could not be written back as JSON: nested more than ``limit`` levels,
    or a string (a member name too) with a lone surrogate, which a ``\\uD800`` escape reads as and which
    is no Unicode character; ``None`` when it can be. With ``raw``, the bytes ``value`` was read from,
    strings are looked at only when those bytes hold such an escape (UTF-8 itself cannot carry one)."""
    strings = raw is None or _SURROGATE_ESCAPE.search(raw) is not None
    lone = "The body has a string with a lone surrogate escape (\\uD800 to \\uDFFF), which is no character."
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > limit:
            return f"The body nests objects and arrays deeper than {limit} levels."
        if isinstance(node, dict):
            if strings and any(_SURROGATE.search(name) for name in node):
                return lone
            node = node.values()
        for child in node:
            if isinstance(child, dict | list):
                pending.append((child, depth + 1))
            elif strings and isinstance(child, str) and _SURROGATE.search(child):
                return lone
    return None


def _read_xml(raw: bytes) -> dict[str, Any]:
    try:
        root = parse_xml(raw)
    except XMLRejected as exc:
        raise FhirError(
            400, "security" if exc.code == "doctype_forbidden" else "invalid", exc.diagnostics
        ) from None
    name = etree.QName(root)
    if name.namespace != FHIR_NS:
        raise FhirError(400, "structure", f"The root element is not in the FHIR namespace {FHIR_NS}.")
    if name.localname not in RESOURCE_TYPES:
        raise _unknown_type(name.localname)
    try:
        model = model_of(name.localname).model_validate_xml(raw)
    except ValidationError as exc:
        raise FhirError(
            400, "invalid", "The resource is not valid.", issues=_issues(exc, name.localname)
        ) from None
    except KeyError:  # fhir.resources meets an element its model does not define
        raise FhirError(
            400, "structure", "The document has an element that FHIR R4 does not define at its place."
        ) from None
    except Exception:  # anything else fhir.resources' XML reader trips over: its message may quote content
        raise FhirError(400, "structure", "The document could not be read as a FHIR resource.") from None
    data = _json_form(model)
    _align(data, root, to_xml=False)
    return data


def _json_form(model: FHIRAbstractModel) -> dict[str, Any]:
    """A model as the dict of its FHIR JSON form (``_field`` for primitive extensions, no nulls
    except the positional ones of primitive arrays)."""
    data: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return data


def read_resource(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """Parse a request body (see the module docstring) into the dict of its FHIR JSON form.

    ``content_type`` picks the format (:data:`JSON_TYPES`, :data:`XML_TYPES`; parameters such as
    ``charset`` are ignored); any other type is refused with 415. Raises :class:`FhirError`.
    """
    kind = media_type(content_type)
    if kind in JSON_TYPES:
        return _read_json(raw)
    if kind in XML_TYPES:
        return _read_xml(raw)
    raise FhirError(
        415, "not-supported", "The content type is not a FHIR format: send application/fhir+json or +xml."
    )


def _groups(elem: etree._Element) -> dict[str, list[etree._Element]]:
    """The FHIR-namespace child elements of ``elem``, by local name, in document order."""
    out: dict[str, list[etree._Element]] = {}
    for child in elem:
        if isinstance(child.tag, str) and child.tag.startswith("{" + FHIR_NS + "}"):
            out.setdefault(child.tag[len(FHIR_NS) + 2 :], []).append(child)
    return out


def _align(data: Mapping[str, Any], elem: etree._Element, *, to_xml: bool) -> None:
    """Carry the text of string primitives between a resource's JSON form and its XML form.

    fhir.resources reads instants and date-times with a time into ``datetime`` and writes them back
    in Python's form (``…31.250`` becomes ``…31.250000``, ``.000Z`` becomes ``+00:00``, digits past
    the microsecond are lost). A FHIR server must keep what it was sent, so each string primitive is
    copied from the side that was received to the side that was made: from ``data`` into the ``value``
    attributes of ``elem`` (``to_xml``), or from the XML that was read into ``data`` (which must be a
    dict then). Both sides come from one resource, so their elements pair up in order. The narrative
    ``div`` read from XML loses the whitespace that followed it, which fhir.resources keeps.
    """
    groups = _groups(elem)
    for key, value in list(data.items()):
        if key == "resourceType":
            continue
        if key == "div" and isinstance(value, str) and not to_xml:
            data[key] = value.rstrip()  # type: ignore[index]  # fhir.resources keeps the element's tail
            continue
        elems = groups.get(key.removeprefix("_"), [])
        items = value if isinstance(value, list) else [value]
        for n, (item, child) in enumerate(zip(items, elems, strict=False)):
            if isinstance(item, dict):
                if "resourceType" in item:  # contained, entry.resource …: the resource is wrapped
                    inner = next((c for c in child if isinstance(c.tag, str)), None)
                    if inner is not None:
                        _align(item, inner, to_xml=to_xml)
                else:
                    _align(item, child, to_xml=to_xml)
            elif (
                isinstance(item, float | Decimal)
                and not key.startswith("_")
                and child.get("value") is not None
            ):  # a decimal keeps the digits it was written with (1.50 is not 1.5 in FHIR)
                if to_xml:
                    child.set("value", str(item))
                else:
                    number = Decimal(child.get("value", ""))
                    if isinstance(value, list):
                        value[n] = number
                    else:
                        data[key] = number  # type: ignore[index]
            elif isinstance(item, str) and not key.startswith("_") and child.get("value") is not None:
                if to_xml:
                    child.set("value", item)
                elif child.get("value") != item:
                    text = child.get("value", "")
                    if isinstance(value, list):
                        value[n] = text
                    else:
                        data[key] = text  # type: ignore[index]


# -- validating ----------------------------------------------------------------------------------

_PRIMITIVES = frozenset(
    {
        "Base64Binary", "Boolean", "Canonical", "Code", "Date", "DateTime", "Decimal", "Id", "Instant",
        "Integer", "Integer64", "Markdown", "Oid", "PositiveInt", "String", "Time", "UnsignedInt", "Uri",
        "Url", "Uuid", "Xhtml",
    }
)  # fmt: skip
_REGEX_ERROR = re.compile(r"([A-Za-z0-9]{1,20}) value string does not match spec regex")
_CHOICE_NAMES = re.compile(r"'([A-Za-z][A-Za-z0-9]{0,63})'")
_SEGMENT = re.compile(r"_?[A-Za-z][A-Za-z0-9_]{0,63}")

_SHAPE: dict[str, tuple[str, str]] = {
    "extra_forbidden": ("structure", "This element is not defined here in FHIR R4."),
    "missing": ("required", "A required element is missing."),
    "model_field_validation.missing": ("required", "A required element is missing."),
    "list_type": ("structure", "The element must be a JSON array of its items, none of them null."),
    "dict_type": ("structure", "The element must be a JSON object."),
    "model_type": ("structure", "The element must be a JSON object."),
    "model_attributes_type": ("structure", "The element must be a JSON object."),
    "model_validation_format": ("structure", "The element does not have the form its type requires."),
    "fhir-validation-wrong-resource-type": ("structure", "The resource type does not fit this element."),
    "string_type": ("value", "The value must be a JSON string."),
    "string_too_short": ("value", "The value must not be empty."),
    "string_too_long": ("value", "The value is longer than allowed."),
    "string_pattern_mismatch": ("value", "The value does not have the form its data type requires."),
    "bool_type": ("value", "The value must be true or false."),
    "bool_parsing": ("value", "The value must be true or false."),
    "int_type": ("value", "The value must be a whole number."),
    "int_parsing": ("value", "The value must be a whole number."),
    "int_from_float": ("value", "The value must be a whole number."),
    "float_type": ("value", "The value must be a number."),
    "float_parsing": ("value", "The value must be a number."),
    "decimal_type": ("value", "The value must be a decimal number."),
    "decimal_parsing": ("value", "The value must be a decimal number."),
    "finite_number": ("value", "The value must be a finite number."),
    "greater_than": ("value", "The value is smaller than its data type allows."),
    "greater_than_equal": ("value", "The value is smaller than its data type allows."),
    "less_than": ("value", "The value is larger than its data type allows."),
    "less_than_equal": ("value", "The value is larger than its data type allows."),
    "literal_error": ("value", "The value is not one of the codes allowed here."),
    "enum": ("value", "The value is not one of the codes allowed here."),
    "date_parsing": ("value", "The value is not a valid date."),
    "date_type": ("value", "The value is not a valid date."),
    "date_from_datetime_parsing": ("value", "The value is not a valid date."),
    "date_from_datetime_inexact": ("value", "The value is not a valid date."),
    "datetime_parsing": ("value", "The value is not a valid date-time."),
    "datetime_from_date_parsing": ("value", "The value is not a valid date-time."),
    "datetime_type": ("value", "The value is not a valid date-time."),
    "time_parsing": ("value", "The value is not a valid time."),
    "time_type": ("value", "The value is not a valid time."),
}
"""Per pydantic error type: the FHIR issue code and a fixed sentence (never pydantic's ``msg``)."""


def _segments(loc: tuple[int | str, ...]) -> Iterator[str]:
    for part in loc:
        if isinstance(part, int):
            yield f"[{part}]"
        elif part == "resource_type":
            yield ".resourceType"
        elif part != "root" and _SEGMENT.fullmatch(part):
            name = part.removeprefix("_").removesuffix("__ext").removesuffix("_fhir")
            yield f".{name}"


def _path(base: str, loc: tuple[int | str, ...]) -> str:
    """``("name", 0, "family")`` under ``Patient`` → ``Patient.name[0].family``."""
    return base + "".join(_segments(loc))


def _choice(message: str) -> str:
    """The ``value[x]`` name of a choice element from fhir.resources' one-of-many message (which
    names only element names): their common prefix, cut back to where the type names begin."""
    names = _CHOICE_NAMES.findall(message)
    if not names:
        return ""
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    while prefix and any(len(n) > len(prefix) and not n[len(prefix)].isupper() for n in names):
        prefix = prefix[:-1]
    return f"{prefix}[x]" if prefix else ""


def _value_error(error: ErrorDetails) -> tuple[str, str, str]:
    """Code, sentence and an extra location step for a ``value_error`` (fhir.resources' own checks)."""
    message = error.get("msg", "")
    if "but got multiple" in message:
        return "structure", "Only one data type may be given for a choice element.", _choice(message)
    if "Expect any of field value" in message:
        return "required", "A value is required for this choice element.", _choice(message)
    if "timezone aware" in message:
        return "value", "The date-time must have a time zone.", ""
    match = _REGEX_ERROR.search(message)
    if match and match.group(1) in _PRIMITIVES:
        return "value", f"The value is not a valid FHIR {match.group(1)[0].lower()}{match.group(1)[1:]}.", ""
    return "value", "The value does not have the form its data type requires.", ""


def _issue(error: ErrorDetails, base: str) -> Issue:
    kind = error.get("type", "")
    location = _path(base, tuple(error.get("loc", ())))
    if kind == "value_error":
        code, sentence, step = _value_error(error)
        if step:
            location = f"{location}.{step}"
    elif kind in _SHAPE:
        code, sentence = _SHAPE[kind]
    elif kind.endswith(("_parsing", "_type")):
        code, sentence = "value", "The value does not have the JSON type or form its data type requires."
    else:
        safe = re.sub(r"[^a-z0-9_.-]", "", kind.lower())[:40]
        code, sentence = "invalid", f"The element is not valid ({safe or 'unknown'})."
    return Issue("error", code, location, sentence)


def _issues(exc: ValidationError, base: str) -> list[Issue]:
    return [
        _issue(e, base) for e in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def _nested(resource: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """The resource without the resources it carries, and those as (FHIRPath step, resource):
    ``contained``, a Bundle's ``entry.resource`` and ``entry.response.outcome``, a Parameters'
    ``parameter.resource``. Each is validated on its own, so that a nested resource of an unknown
    type is one issue rather than an exception, and its issues have its own path."""
    shell = dict(resource)
    found: list[tuple[str, Any]] = []
    contained = shell.get("contained")
    if isinstance(contained, list):
        found += [(f".contained[{i}]", r) for i, r in enumerate(contained)]
        del shell["contained"]
    rtype = shell.get("resourceType")
    field = {"Bundle": "entry", "Parameters": "parameter"}.get(rtype) if isinstance(rtype, str) else None
    items = shell.get(field) if field else None
    if field and isinstance(items, list):
        stripped: list[Any] = []
        for i, item in enumerate(items):
            if isinstance(item, dict):
                item = dict(item)
                if "resource" in item:
                    found.append((f".{field}[{i}].resource", item.pop("resource")))
                response = item.get("response")
                if isinstance(response, dict) and "outcome" in response:
                    found.append((f".{field}[{i}].response.outcome", response["outcome"]))
                    item["response"] = {k: v for k, v in response.items() if k != "outcome"}
            stripped.append(item)
        shell[field] = stripped
    return shell, found


def _validate(resource: object, base: str | None) -> list[Issue]:
    """Issues of ``resource``; ``base`` is the FHIRPath of a nested resource (``None``: a root)."""
    if not isinstance(resource, Mapping):
        return [Issue("error", "structure", base or "", "A resource must be a JSON object.")]
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return [Issue("error", "required", base or "", "The resource has no resourceType string.")]
    if rtype not in RESOURCE_TYPES:
        return [
            Issue(
                "error",
                "not-supported",
                f"{base}.resourceType" if base else "resourceType",
                f"The resource type{_quoted(rtype)} is not a FHIR R4 resource type this server knows.",
            )
        ]
    where = base if base is not None else rtype
    issues: list[Issue] = []
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, Mapping) else None
    if isinstance(tags, list) and any(
        isinstance(t, Mapping) and t.get("system") == SUBSETTED_SYSTEM and t.get("code") == "SUBSETTED"
        for t in tags
    ):  # a part of a resource (_summary, _elements): writing it back would lose the rest
        issues.append(
            Issue(
                "error",
                "processing",
                f"{where}.meta.tag",
                "The resource is tagged SUBSETTED: it is a part of one; read it whole and write that.",
            )
        )
    rid = resource.get("id")
    if isinstance(rid, str) and not _ID.fullmatch(rid):
        issues.append(
            Issue("error", "value", f"{where}.id", "The id must be 1 to 64 letters, digits, '-' or '.'.")
        )
    shell, nested = _nested(resource)
    try:
        model_of(rtype).model_validate(shell)
    except ValidationError as exc:
        issues += _issues(exc, where)
    except (RecursionError, MemoryError):
        raise
    except Exception:  # fhir.resources trips over something it has no error for; its message may quote data
        issues.append(Issue("error", "invalid", where, "The resource could not be validated."))
    for step, inner in nested:
        issues += _validate(inner, where + step)
    return issues


SUBSETTED_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
"""The system of the ``SUBSETTED`` tag (:mod:`adapters.fhir.subset`), which no write may carry."""


def validate(resource: Mapping[str, Any]) -> list[Issue]:
    """Every issue of a resource in its FHIR JSON form (see the module docstring); never raises for
    content. Issues are unique by code and location."""
    seen: set[tuple[str, str]] = set()
    out: list[Issue] = []
    for issue in _validate(resource, None):
        if (issue.code, issue.location) not in seen:
            seen.add((issue.code, issue.location))
            out.append(issue)
    return out


# -- writing -------------------------------------------------------------------------------------


def _exact(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value).encode())
    raise TypeError


_INT64 = range(-(2**63), 2**64)
"""The integers orjson writes (int64 and uint64)."""


def _wide(value: Any) -> Any:
    """``value`` with every integer orjson cannot write as a fragment of its digits."""
    if isinstance(value, dict):
        return {k: _wide(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wide(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
        return orjson.Fragment(str(value).encode())
    return value


def _dumps(resource: Mapping[str, Any], option: int | None = None) -> bytes:
    data = resource if isinstance(resource, dict) else dict(resource)
    try:
        return orjson.dumps(data, default=_exact, option=option)
    except orjson.JSONEncodeError:  # "Integer exceeds 64-bit range"; anything else fails again
        return orjson.dumps(_wide(data), default=_exact, option=option)


def write_json(resource: Mapping[str, Any]) -> bytes:
    """The resource as compact UTF-8 JSON; decimals with the digits they were read with, and so are
    integers past 64 bits (a decimal written without a point reads as one)."""
    return _dumps(resource)


def pretty_json(resource: Mapping[str, Any]) -> str:
    """The resource as indented JSON text for people (decimals exact, non-ASCII as is), with a newline."""
    return _dumps(resource, orjson.OPT_INDENT_2).decode() + "\n"


def write_xml(resource: Mapping[str, Any]) -> bytes:
    """The resource as FHIR XML (namespace ``http://hl7.org/fhir``), through its R4B model.

    Raises :class:`FhirError` (500) for a resource the model cannot take: what is written has been
    validated before it was stored.
    """
    rtype = resource.get("resourceType")
    try:
        model = model_of(rtype if isinstance(rtype, str) else "").model_validate(dict(resource))
    except (KeyError, ValidationError):
        raise FhirError(500, "exception", "The resource could not be written as XML.") from None
    xml: object = model.model_dump_xml()  # typed str, but fhir.resources 8 returns UTF-8 bytes
    root = etree.fromstring(xml if isinstance(xml, bytes) else str(xml).encode(), hardened_parser())
    _align(resource, root, to_xml=True)
    out: bytes = etree.tostring(root, encoding="utf-8", xml_declaration=True)
    return out


def serialize(resource: Mapping[str, Any], fmt: Literal["json", "xml"]) -> tuple[bytes, str]:
    """The resource in ``fmt`` and the media type to send it with."""
    if fmt == "xml":
        return write_xml(resource), XML_MEDIA
    return write_json(resource), JSON_MEDIA
