"""FHIR R4 search: the parameter table, index rows written with each resource, and query parsing.

What lives here:

* :data:`SEARCH_PARAMS` / :data:`COMMON_PARAMS` / :func:`params_of` — the search parameters each
  resource type supports, as data (:class:`SearchParam`: name, kind, element paths, reference targets).
* :func:`index_rows` — at write time, the :class:`IndexRow` values of a resource (a plain FHIR JSON
  dict) for the ``fhir_index`` table: one row per searchable value, deduplicated.
* :func:`parse_search` — at search time, the query of ``GET /fhir/{type}?...`` as a :class:`Search`:
  a SQL boolean fragment over ``fhir_resources r`` (``?`` placeholders only), the ORDER BY, the page,
  ``_summary``, ``_elements``, ``_total``, ``_include``, ``_revinclude`` and the parameters as understood
  (for Bundle links).

Index rows (``fhir_index``: type, param, id, system, value, exact, low, high, num):

* **string** — ``value`` is the text case-folded with accents removed (NFKD, combining marks
  dropped), ``exact`` the text as written. HumanName and Address contribute each of their string
  parts. Default search is starts-with on ``value`` (a range, so the index is used; the upper bound
  is the prefix followed by U+10FFFF, so that characters outside the BMP stay inside the range),
  ``:contains`` a ``LIKE`` with ``%``/``_`` escaped, ``:exact`` equality on ``exact``.
* **token** — (``system``, ``value``) of Identifier and ContactPoint (``system``, ``value``),
  Coding and each coding of a CodeableConcept (``system``, ``code``), and code/boolean/string
  primitives (system ``''``). Codes match case-sensitively. ``:not`` finds resources with no matching
  row (including those without the element).
* **date** — ``low``/``high``: the value as an inclusive UTC range by its precision (``2020`` is the
  whole year); a dateTime without a zone is taken as UTC; a Period spans start..end, an open end
  reaching ``9999-12-31T23:59:59.999999Z`` and a missing start ``0001-01-01T00:00:00.000000Z``.
* **reference** — ``value`` is ``Type/id`` for relative references (``/_history/n`` dropped) and the
  URL for absolute ones; ``urn:uuid:``, ``#contained`` and conditional (``Type?...``) references are
  not indexed. A parameter with ``targets`` only indexes references to those types. A chained
  parameter (``subject:Patient.identifier``) finds the rows whose value is ``Patient/<id>`` for the
  ids that the chained parameter finds among Patients: one link deep, all in the index. ``_has``
  (``Patient?_has:Observation:patient:code=...``) goes the other way: the ids that the references of
  the Observations the parameter finds name.
* **quantity** — ``num`` the value, ``system`` and ``value`` the unit system and code (the unit
  when there is no code); when both a code and a different unit are given, a second row carries the
  unit with system ``''`` so that ``number||unit`` finds it too. **number** — ``num`` only.
* **uri** — ``value`` is the string as written.

Element paths are dotted (``participant.individual``); a step that meets a list fans out over its
items, a missing step yields nothing, and a step may carry a filter ``[key=value]`` (FHIRPath
``.where(key = 'value')``), as in ``telecom[system=phone]``.

Search semantics (http://hl7.org/fhir/R4/search.html), with resource range [L, H] and search range
[l, h] (the search value by its precision): ``eq`` L>=l and H<=h, ``ne`` not eq, ``gt`` H>h, ``lt``
L<l, ``ge`` H>=l, ``le`` L<=h, ``sa`` L>h, ``eb`` H<l, and ``ap`` is eq over the search range widened
on each side by a tenth of the time between that side and now (the spec's recommendation). ``ne``
(dates and numbers) is decided per index row: a resource without the element does not match it.
Numbers and quantities without a prefix match within the precision of the given number (``5.4`` is
[5.35, 5.45), ``1e2`` is [50, 150)); ``gt``/``lt``/``ge``/``le`` compare with the number as given,
``ap`` is within 10 %. A repeated parameter is AND, commas inside a value are OR (``\\,`` is a comma,
``\\|`` a bar, ``\\$`` a dollar, ``\\\\`` a backslash). A parameter with an empty value is ignored,
as the specification says. ``:missing=true|false`` works on every parameter but ``_id`` and
``_lastUpdated``, which are answered from the columns of ``fhir_resources``.

``_sort`` takes ``_lastUpdated``, ``_id`` and the type's date parameters (``-`` for descending);
on a date parameter it sorts by the lowest ``low`` ascending or the highest ``high`` descending,
resources without the element last, and ``r.id`` always breaks ties so that pages are stable.
``_count`` defaults to 20 and is capped at 1000. Diagnostics of bad input name the parameter, never
its value (values may be patient data).
"""

from __future__ import annotations

import calendar
import functools
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final, Literal

from adapters.fhir.outcome import FhirError
from adapters.fhir.resources import RESOURCE_TYPES

SearchKind = Literal["string", "token", "date", "reference", "quantity", "number", "uri"]

_DEFAULT_COUNT: Final = 20
_MAX_COUNT: Final = 1000
_LOW_MIN: Final = "0001-01-01T00:00:00.000000Z"
_HIGH_MAX: Final = "9999-12-31T23:59:59.999999Z"


@dataclass(frozen=True, slots=True)
class SearchParam:
    """One search parameter of a resource type: its kind and the elements it searches."""

    name: str
    kind: SearchKind
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True, slots=True)
class IndexRow:
    """One row of ``fhir_index`` for a resource (type and id are the caller's)."""

    param: str
    system: str = ""
    value: str = ""
    exact: str | None = None
    low: str | None = None
    high: str | None = None
    num: float | None = None


@dataclass(frozen=True, slots=True)
class Include:
    """``_include=source_type:param[:target_type]``; ``target_type`` ``''`` means any target."""

    source_type: str
    param: str
    target_type: str


@dataclass(frozen=True, slots=True)
class Search:
    """A parsed search: WHERE fragment over alias ``r`` with its args, ORDER BY, page and options."""

    resource_type: str
    where: str
    args: tuple[Any, ...]
    order_by: str
    order_args: tuple[Any, ...]
    count: int
    offset: int
    summary_count: bool
    total: bool
    includes: tuple[Include, ...]
    echo: tuple[tuple[str, str], ...]
    revincludes: tuple[Include, ...] = ()
    """``_revinclude``: resources of ``source_type`` whose ``param`` refers to a match."""
    chained: frozenset[str] = frozenset()
    """The other types the search reads (``subject:Patient.name``: Patient; ``_has:Observation:...``:
    Observation): the caller must be allowed to read them, as the search tells what they hold."""


# --- the resource types a reference may name --------------------------------------------------------

_R4_ONLY_TYPES: Final = frozenset(
    """
    EffectEvidenceSynthesis MedicinalProduct MedicinalProductAuthorization MedicinalProductContraindication
    MedicinalProductIndication MedicinalProductIngredient MedicinalProductInteraction
    MedicinalProductManufactured MedicinalProductPackaged MedicinalProductPharmaceutical
    MedicinalProductUndesirableEffect RiskEvidenceSynthesis SubstanceNucleicAcid SubstancePolymer
    SubstanceProtein SubstanceReferenceInformation SubstanceSourceMaterial SubstanceSpecification
    """.split()  # noqa: SIM905 (a word list reads better than quoted strings)
)
"""The R4 resource types that R4B dropped: a reference stored by an R4 client may still name one."""
_RESOURCE_TYPES: Final = RESOURCE_TYPES | _R4_ONLY_TYPES
"""Every type a reference may name: the R4B types the server validates with, and the R4-only ones."""
_ANY_TARGET: Final = tuple(sorted(_RESOURCE_TYPES))


# --- the parameter table ----------------------------------------------------------------------------


def _sp(name: str, kind: SearchKind, *paths: str) -> SearchParam:
    return SearchParam(name, kind, paths)


def _ref(name: str, *paths: str, to: str = "") -> SearchParam:
    return SearchParam(name, "reference", paths, tuple(to.split()))


_IDENTIFIER = _sp("identifier", "token", "identifier")
_STATUS = _sp("status", "token", "status")
_ACTIVE = _sp("active", "token", "active")
_GENDER = _sp("gender", "token", "gender")
_CODE = _sp("code", "token", "code")
_CATEGORY = _sp("category", "token", "category")
_TYPE = _sp("type", "token", "type")
_INTENT = _sp("intent", "token", "intent")
_TELECOM = _sp("telecom", "token", "telecom")
_PHONE = _sp("phone", "token", "telecom[system=phone]")
_EMAIL = _sp("email", "token", "telecom[system=email]")
_NAME = _sp("name", "string", "name")
_ORG_NAME = _sp("name", "string", "name", "alias")
_FAMILY = _sp("family", "string", "name.family")
_GIVEN = _sp("given", "string", "name.given")
_ADDRESS = _sp("address", "string", "address")
_ADDRESS_CITY = _sp("address-city", "string", "address.city")
_BIRTHDATE = _sp("birthdate", "date", "birthDate")
_CLINICAL_STATUS = _sp("clinical-status", "token", "clinicalStatus")
_VERIFICATION_STATUS = _sp("verification-status", "token", "verificationStatus")
_SUBJECT = _ref("subject", "subject")
_PATIENT_SUBJECT = _ref("patient", "subject", to="Patient")
_PATIENT = _ref("patient", "patient", to="Patient")
_ENCOUNTER = _ref("encounter", "encounter", to="Encounter")
_PERFORMER = _ref("performer", "performer")
_BASED_ON = _ref("based-on", "basedOn")
_REQUESTER = _ref("requester", "requester")
_LOCATION = _ref("location", "location", to="Location")

# fmt: off
_TABLE: Final[dict[str, tuple[SearchParam, ...]]] = {
    "Patient": (
        _IDENTIFIER, _NAME, _FAMILY, _GIVEN, _BIRTHDATE, _GENDER, _ADDRESS, _ADDRESS_CITY,
        _sp("address-postalcode", "string", "address.postalCode"), _TELECOM, _PHONE, _EMAIL, _ACTIVE,
        _ref("general-practitioner", "generalPractitioner", to="Organization Practitioner PractitionerRole"),
        _ref("organization", "managingOrganization", to="Organization"),
        _sp("death-date", "date", "deceasedDateTime"),
        _ref("link", "link.other", to="Patient RelatedPerson"),
    ),
    "Practitioner": (_IDENTIFIER, _NAME, _FAMILY, _GIVEN, _GENDER, _ACTIVE, _TELECOM, _ADDRESS),
    "Organization": (
        _IDENTIFIER, _ORG_NAME, _TYPE, _ACTIVE, _ref("partof", "partOf", to="Organization"), _ADDRESS,
    ),
    "Location": (
        _IDENTIFIER, _ORG_NAME, _STATUS, _TYPE,
        _ref("organization", "managingOrganization", to="Organization"), _ADDRESS, _ADDRESS_CITY,
    ),
    "Encounter": (
        _IDENTIFIER, _STATUS, _sp("class", "token", "class"), _TYPE, _SUBJECT, _PATIENT_SUBJECT,
        _sp("date", "date", "period"),
        _ref("participant", "participant.individual"),
        _ref("practitioner", "participant.individual", to="Practitioner"),
        _ref("location", "location.location", to="Location"),
        _ref("service-provider", "serviceProvider", to="Organization"),
        _sp("reason-code", "token", "reasonCode"),
    ),
    "Observation": (
        _IDENTIFIER, _STATUS, _CODE, _CATEGORY, _SUBJECT, _PATIENT_SUBJECT, _ENCOUNTER,
        _sp("date", "date", "effectiveDateTime", "effectivePeriod", "effectiveInstant"),
        _sp("value-quantity", "quantity", "valueQuantity"),
        _sp("value-concept", "token", "valueCodeableConcept"),
        _sp("value-string", "string", "valueString"),
        _PERFORMER, _BASED_ON, _sp("component-code", "token", "component.code"),
    ),
    "DiagnosticReport": (
        _IDENTIFIER, _STATUS, _CODE, _CATEGORY, _SUBJECT, _PATIENT_SUBJECT, _ENCOUNTER,
        _sp("date", "date", "effectiveDateTime", "effectivePeriod"), _sp("issued", "date", "issued"),
        _ref("result", "result", to="Observation"), _PERFORMER, _BASED_ON,
    ),
    "Condition": (
        _IDENTIFIER, _CLINICAL_STATUS, _VERIFICATION_STATUS, _CATEGORY, _CODE, _SUBJECT, _PATIENT_SUBJECT,
        _ENCOUNTER, _sp("onset-date", "date", "onsetDateTime", "onsetPeriod"),
        _sp("recorded-date", "date", "recordedDate"),
        _sp("abatement-date", "date", "abatementDateTime", "abatementPeriod"),
    ),
    "AllergyIntolerance": (
        _IDENTIFIER, _CLINICAL_STATUS, _VERIFICATION_STATUS, _TYPE, _CATEGORY,
        _sp("criticality", "token", "criticality"), _sp("code", "token", "code", "reaction.substance"),
        _PATIENT, _sp("date", "date", "recordedDate"), _sp("onset", "date", "onsetDateTime", "onsetPeriod"),
    ),
    "MedicationRequest": (
        _IDENTIFIER, _STATUS, _INTENT, _CATEGORY, _sp("code", "token", "medicationCodeableConcept"),
        _ref("medication", "medicationReference", to="Medication"), _SUBJECT, _PATIENT_SUBJECT, _ENCOUNTER,
        _sp("authoredon", "date", "authoredOn"), _REQUESTER,
    ),
    "Immunization": (
        _IDENTIFIER, _STATUS, _sp("vaccine-code", "token", "vaccineCode"), _PATIENT,
        _sp("date", "date", "occurrenceDateTime"), _sp("lot-number", "string", "lotNumber"),
        _ref("performer", "performer.actor"), _LOCATION,
    ),
    "ServiceRequest": (
        _IDENTIFIER, _STATUS, _INTENT, _CATEGORY, _CODE, _SUBJECT, _PATIENT_SUBJECT, _ENCOUNTER,
        _sp("authored", "date", "authoredOn"), _REQUESTER, _PERFORMER, _BASED_ON,
    ),
    "Appointment": (
        _IDENTIFIER, _STATUS, _sp("service-type", "token", "serviceType"),
        _sp("appointment-type", "token", "appointmentType"), _sp("date", "date", "start"),
        _ref("actor", "participant.actor"), _ref("patient", "participant.actor", to="Patient"),
        _ref("practitioner", "participant.actor", to="Practitioner"),
        _ref("location", "participant.actor", to="Location"),
    ),
    "Procedure": (
        _IDENTIFIER, _STATUS, _CODE, _CATEGORY, _SUBJECT, _PATIENT_SUBJECT, _ENCOUNTER,
        _sp("date", "date", "performedDateTime", "performedPeriod"), _ref("performer", "performer.actor"),
        _LOCATION,
    ),
    "RelatedPerson": (
        _IDENTIFIER, _NAME, _PATIENT, _sp("relationship", "token", "relationship"), _GENDER, _BIRTHDATE,
        _TELECOM, _ADDRESS, _ACTIVE,
    ),
    "Provenance": (
        _ref("target", "target"), _ref("patient", "target", to="Patient"),
        _sp("recorded", "date", "recorded"), _ref("agent", "agent.who"), _ref("entity", "entity.what"),
    ),
    "AuditEvent": (
        _sp("date", "date", "recorded"), _TYPE, _sp("subtype", "token", "subtype"),
        _ref("agent", "agent.who"), _ref("entity", "entity.what"), _sp("action", "token", "action"),
        _sp("outcome", "token", "outcome"),
    ),
    "DocumentReference": (
        _IDENTIFIER, _STATUS, _TYPE, _CATEGORY, _SUBJECT, _PATIENT_SUBJECT, _sp("date", "date", "date"),
        _ref("encounter", "context.encounter"),
    ),
    "Claim": (_IDENTIFIER, _PATIENT, _STATUS, _sp("created", "date", "created")),
    "ExplanationOfBenefit": (_IDENTIFIER, _PATIENT, _STATUS, _sp("created", "date", "created")),
    "PractitionerRole": (
        _IDENTIFIER, _ref("practitioner", "practitioner", to="Practitioner"),
        _ref("organization", "organization", to="Organization"), _sp("role", "token", "code"), _ACTIVE,
        _ref("location", "location", to="Location"),
    ),
    "Coverage": (
        _IDENTIFIER, _ref("patient", "beneficiary", to="Patient"),
        _ref("beneficiary", "beneficiary", to="Patient"), _STATUS, _ref("payor", "payor"),
    ),
}
# fmt: on

_KIND_WORDS: Final[Mapping[str, str]] = {
    "string": "Text",
    "token": "Code or identifier",
    "date": "Date",
    "reference": "Reference",
    "quantity": "Quantity",
    "number": "Number",
    "uri": "URI",
}
_FILTER_RE: Final = re.compile(r"\[(\w+)=([^\]]*)\]")


def _fhirpath(path: str) -> str:
    return _FILTER_RE.sub(r".where(\1 = '\2')", path)


def _described(rtype: str, p: SearchParam) -> SearchParam:
    if p.description:
        return p
    where = " or ".join(f"{rtype}.{_fhirpath(path)}" for path in p.paths)
    to = f" (to {', '.join(p.targets)})" if p.targets else ""
    return replace(p, description=f"{_KIND_WORDS[p.kind]} search on {where}{to}.")


SEARCH_PARAMS: Final[Mapping[str, Mapping[str, SearchParam]]] = MappingProxyType(
    {t: MappingProxyType({p.name: _described(t, p) for p in ps}) for t, ps in _TABLE.items()}
)
"""Resource type → parameter name → :class:`SearchParam` (indexed parameters)."""

COMMON_PARAMS: Final[Mapping[str, SearchParam]] = MappingProxyType(
    {
        "_id": SearchParam("_id", "token", ("id",), description="The logical id of the resource."),
        "_lastUpdated": SearchParam(
            "_lastUpdated",
            "date",
            ("meta.lastUpdated",),
            description="When the resource version was written.",
        ),
    }
)
"""Parameters of every type, answered from ``fhir_resources`` columns (never index rows)."""

_ALL_PARAMS: Final[Mapping[str, Mapping[str, SearchParam]]] = {
    t: MappingProxyType({**COMMON_PARAMS, **ps}) for t, ps in SEARCH_PARAMS.items()
}


def params_of(resource_type: str) -> Mapping[str, SearchParam]:
    """Every search parameter of ``resource_type``: its own and :data:`COMMON_PARAMS`."""
    return _ALL_PARAMS.get(resource_type, COMMON_PARAMS)


# --- index rows -------------------------------------------------------------------------------------

_Step = tuple[str, str, str]  # key, filter key ('' for none), filter value
_Rows = dict[IndexRow, None]  # insertion-ordered set
_Extractor = Callable[[SearchParam, list[Any], _Rows], None]

_STEP_RE: Final = re.compile(r"(\w+)(?:\[(\w+)=([^\]]*)\])?")
_STRING_PARTS: Final = (
    "text", "family", "given", "prefix", "suffix",  # HumanName
    "line", "city", "district", "state", "postalCode", "country",  # Address
)  # fmt: skip
_REL_REF_RE: Final = re.compile(
    r"([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?"
)
_ID_RE: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _compile_path(path: str) -> tuple[_Step, ...]:
    steps = []
    for part in path.split("."):
        m = _STEP_RE.fullmatch(part)
        if m is None:
            raise ValueError(f"bad search path {path}")
        steps.append((m[1], m[2] or "", m[3] or ""))
    return tuple(steps)


def _walk(resource: Mapping[str, Any], steps: tuple[_Step, ...]) -> list[Any]:
    """The values at ``steps`` inside ``resource``: lists fan out, missing steps yield nothing."""
    items: list[Any] = [resource]
    for key, fkey, fvalue in steps:
        found: list[Any] = []
        for item in items:
            if not isinstance(item, Mapping):
                continue
            value = item.get(key)
            if value is None:
                continue
            if isinstance(value, list):
                found.extend(value)
            else:
                found.append(value)
        if fkey:
            found = [v for v in found if isinstance(v, Mapping) and v.get(fkey) == fvalue]
        if not found:
            return found
        items = found
    return items


def _normalise(text: str) -> str:
    """``text`` as string parameters compare it: accents removed (NFKD, combining marks dropped),
    case-folded."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _string_rows(p: SearchParam, values: list[Any], out: _Rows) -> None:
    for v in values:
        if isinstance(v, str):
            parts: list[Any] = [v]
        elif isinstance(v, Mapping):
            parts = []
            for key in _STRING_PARTS:
                part = v.get(key)
                if isinstance(part, list):
                    parts.extend(part)
                elif part is not None:
                    parts.append(part)
        else:
            continue
        for s in parts:
            if isinstance(s, str) and s:
                out[IndexRow(p.name, value=_normalise(s), exact=s)] = None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _coding_row(name: str, coding: Any, out: _Rows) -> None:
    if isinstance(coding, Mapping):
        code = coding.get("code")
        if isinstance(code, str) and code:
            out[IndexRow(name, system=_text(coding.get("system")), value=code)] = None


def _token_rows(p: SearchParam, values: list[Any], out: _Rows) -> None:
    for v in values:
        if isinstance(v, str):
            if v:
                out[IndexRow(p.name, value=v)] = None
        elif isinstance(v, bool):
            out[IndexRow(p.name, value="true" if v else "false")] = None
        elif isinstance(v, Mapping):
            codings = v.get("coding")
            if isinstance(codings, list):  # CodeableConcept
                for coding in codings:
                    _coding_row(p.name, coding, out)
            elif "code" in v:  # Coding
                _coding_row(p.name, v, out)
            else:  # Identifier, ContactPoint
                value = v.get("value")
                if isinstance(value, str) and value:
                    out[IndexRow(p.name, system=_text(v.get("system")), value=value)] = None
        elif isinstance(v, int | float):
            out[IndexRow(p.name, value=str(v))] = None


def _date_rows(p: SearchParam, values: list[Any], out: _Rows) -> None:
    for v in values:
        if isinstance(v, str):
            span = _date_range(v)
            if span is not None:
                out[IndexRow(p.name, low=span[0], high=span[1])] = None
        elif isinstance(v, Mapping):  # Period
            period = _period(v.get("start"), v.get("end"))
            if period is not None:
                out[IndexRow(p.name, low=period[0], high=period[1])] = None


def _period(start: Any, end: Any) -> tuple[str, str] | None:
    if start is None and end is None:
        return None
    low, high = _LOW_MIN, _HIGH_MAX
    if start is not None:
        span = _date_range(start) if isinstance(start, str) else None
        if span is None:
            return None
        low = span[0]
    if end is not None:
        span = _date_range(end) if isinstance(end, str) else None
        if span is None:
            return None
        high = span[1]
    return low, high


def _reference_key(ref: str) -> tuple[str, str] | None:
    """The stored form of a literal reference and the type it names (``''`` when unknown), or ``None``."""
    m = _REL_REF_RE.fullmatch(ref)
    if m is not None:
        return f"{m[1]}/{m[2]}", m[1]
    if "://" not in ref and not ref.startswith("urn:"):
        return None
    if ref.startswith("urn:uuid:") or "?" in ref:
        return None
    cut = ref.find("/_history/")
    if cut > 0:
        ref = ref[:cut]
    parts = ref.rsplit("/", 2)
    rtype = parts[1] if len(parts) == 3 and parts[1] in _RESOURCE_TYPES else ""
    return ref, rtype


def _reference_rows(p: SearchParam, values: list[Any], out: _Rows) -> None:
    for v in values:
        ref = v.get("reference") if isinstance(v, Mapping) else None
        if not isinstance(ref, str):
            continue
        key = _reference_key(ref)
        if key is not None and (not p.targets or key[1] in p.targets):
            out[IndexRow(p.name, value=key[0])] = None


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    return float(value)


def _quantity_rows(p: SearchParam, values: list[Any], out: _Rows) -> None:
    for v in values:
        if not isinstance(v, Mapping):
            continue
        num = _as_number(v.get("value"))
        if num is None:
            continue
        code, unit = _text(v.get("code")), _text(v.get("unit"))
        out[IndexRow(p.name, system=_text(v.get("system")), value=code or unit, num=num)] = None
        if code and unit and unit != code:
            out[IndexRow(p.name, value=unit, num=num)] = None


def _number_rows(p: SearchParam, values: list[Any], out: _Rows) -> None:
    for v in values:
        num = _as_number(v)
        if num is not None:
            out[IndexRow(p.name, num=num)] = None


def _uri_rows(p: SearchParam, values: list[Any], out: _Rows) -> None:
    for v in values:
        if isinstance(v, str) and v:
            out[IndexRow(p.name, value=v)] = None


_EXTRACTORS: Final[Mapping[str, _Extractor]] = {
    "string": _string_rows,
    "token": _token_rows,
    "date": _date_rows,
    "reference": _reference_rows,
    "quantity": _quantity_rows,
    "number": _number_rows,
    "uri": _uri_rows,
}

_Path = str | tuple[_Step, ...]  # a top-level element name, or steps to walk
_Plan = tuple[tuple[SearchParam, tuple[_Path, ...], _Extractor], ...]


def _plan(p: SearchParam) -> tuple[SearchParam, tuple[_Path, ...], _Extractor]:
    paths = tuple(
        path if _STEP_RE.fullmatch(path) and "[" not in path else _compile_path(path) for path in p.paths
    )
    return p, paths, _EXTRACTORS[p.kind]


_PLANS: Final[Mapping[str, _Plan]] = {
    t: tuple(_plan(p) for p in ps.values()) for t, ps in SEARCH_PARAMS.items()
}


def index_rows(resource_type: str, resource: Mapping[str, Any]) -> list[IndexRow]:
    """The ``fhir_index`` rows of ``resource`` for every parameter of its type, deduplicated."""
    out: _Rows = {}
    for param, paths, extract in _PLANS.get(resource_type, ()):
        values: list[Any] = []
        for path in paths:
            if isinstance(path, str):  # most parameters: one top-level element
                value = resource.get(path)
                if value is None:
                    continue
                if isinstance(value, list):
                    values.extend(value)
                else:
                    values.append(value)
            else:
                values.extend(_walk(resource, path))
        if values:
            extract(param, values, out)
    return list(out)


# --- dates ------------------------------------------------------------------------------------------

_DATE_RE: Final = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})"  # date
    r"(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,12}))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?",  # time, zone
    re.ASCII,
)


def _date_range(text: str) -> tuple[str, str] | None:
    """A FHIR date, dateTime or instant as its inclusive UTC range (instants in the store's format),
    or ``None`` when it is not one."""
    m = _DATE_RE.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    y = int(year)
    try:
        if y < 1:
            return None
        if month is None:
            return f"{year}-01-01T00:00:00.000000Z", f"{year}-12-31T23:59:59.999999Z"
        if day is None:
            last = calendar.monthrange(y, int(month))[1]
            return f"{year}-{month}-01T00:00:00.000000Z", f"{year}-{month}-{last:02d}T23:59:59.999999Z"
        if hour is None:
            datetime(y, int(month), int(day))  # validates the day
            date = f"{year}-{month}-{day}"
            return f"{date}T00:00:00.000000Z", f"{date}T23:59:59.999999Z"
        local = datetime(y, int(month), int(day), int(hour), int(minute))
        if second is not None and int(second) > 59:
            return None
        stem = f"{year}-{month}-{day}T{hour}:{minute}"
        if zone and zone not in ("Z", "+00:00", "-00:00"):
            stem = _utc_minute(local, zone)
    except ValueError:
        return None
    if second is None:  # minute precision
        low_s, high_s, low_us, high_us = "00", "59", "000000", "999999"
    else:
        digits = (fraction or "")[:6]
        low_s, high_s, low_us, high_us = second, second, digits.ljust(6, "0"), digits.ljust(6, "9")
    if stem in (_BEFORE, _AFTER):  # shifted out of the datetime range
        return (_LOW_MIN, _LOW_MIN) if stem == _BEFORE else (_HIGH_MAX, _HIGH_MAX)
    return f"{stem}:{low_s}.{low_us}Z", f"{stem}:{high_s}.{high_us}Z"


_BEFORE: Final = "before"
_AFTER: Final = "after"


@functools.cache
def _offset(zone: str) -> timedelta:
    """A UTC offset ``+hh:mm`` / ``-hh:mm`` (ValueError beyond ±14:59)."""
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError(zone)
    offset = timedelta(hours=hours, minutes=minutes)
    return -offset if zone[0] == "-" else offset


def _utc_minute(local: datetime, zone: str) -> str:
    """``YYYY-MM-DDThh:mm`` in UTC of the local minute at ``zone`` (offsets are whole minutes, so the
    seconds stay as written); :data:`_BEFORE` / :data:`_AFTER` when that is outside the datetime range."""
    offset = _offset(zone)
    try:
        return (local - offset).isoformat(timespec="minutes")
    except OverflowError:
        return _BEFORE if offset > timedelta(0) else _AFTER


def _shift(value: datetime, offset: timedelta) -> datetime:
    """Local time ``value`` at UTC ``offset`` as UTC, clamped to the datetime range."""
    try:
        return value - offset
    except OverflowError:
        return datetime.min if offset > timedelta(0) else datetime.max


def _instant(value: datetime) -> str:
    return value.isoformat(timespec="microseconds") + "Z"


# --- query values -----------------------------------------------------------------------------------

_Cond = tuple[str, tuple[Any, ...]]  # SQL over fhir_index columns, args
_TOP: Final = "\U0010ffff"
_PREFIXES: Final = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"})
_NUMBER_RE: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,4})?", re.ASCII)
_UNESCAPE_RE: Final = re.compile(r"\\([,|$\\])")
_SAFE_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_\-.:]{0,63}")
_DIGITS_RE: Final = re.compile(r"\d{1,9}", re.ASCII)
_LIKE_RE: Final = re.compile(r"([\\%_])")
_NUM_OPS: Final[Mapping[str, str]] = {"gt": ">", "lt": "<", "ge": ">=", "le": "<="}


def _invalid(diagnostics: str) -> FhirError:
    return FhirError(400, "invalid", diagnostics)


def _unsupported(diagnostics: str) -> FhirError:
    return FhirError(400, "not-supported", diagnostics)


def _split(text: str, sep: str) -> list[str]:
    """``text`` split on ``sep`` where it is not escaped by a backslash (escapes are kept)."""
    if "\\" not in text:
        return text.split(sep)
    parts, start, i = [], 0, 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == sep:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _unescape(text: str) -> str:
    return _UNESCAPE_RE.sub(r"\1", text) if "\\" in text else text


def _prefix(text: str) -> tuple[str, str]:
    if len(text) > 2 and text[:2] in _PREFIXES:
        return text[:2], text[2:]
    return "eq", text


def _string_cond(p: SearchParam, modifier: str, raw: str) -> _Cond:
    text = _unescape(raw)
    norm = _normalise(text)
    if modifier == "exact":
        return "value = ? AND exact = ?", (norm, text)
    if modifier == "contains":
        escaped = _LIKE_RE.sub(r"\\\1", norm)
        return "value LIKE ? ESCAPE '\\'", (f"%{escaped}%",)
    return "value >= ? AND value < ?", (norm, norm + _TOP)


def _token_cond(p: SearchParam, modifier: str, raw: str) -> _Cond:
    parts = _split(raw, "|")
    if len(parts) == 1:
        return "value = ?", (_unescape(raw),)
    if len(parts) != 2 or parts == ["", ""]:
        raise _invalid(f"A value of search parameter {p.name} is not code, system|code, |code or system|.")
    system, code = _unescape(parts[0]), _unescape(parts[1])
    if not code:
        return "system = ?", (system,)
    return "system = ? AND value = ?", (system, code)


def _date_cond(p: SearchParam, modifier: str, raw: str) -> _Cond:
    return _date_sql(p.name, raw, "low", "high")


def _date_sql(name: str, raw: str, low_col: str, high_col: str) -> _Cond:
    """The condition of one date value (with its prefix) over a resource range [low_col, high_col]."""
    prefix, text = _prefix(raw.replace(" ", "+"))  # a '+' of a zone that the URL decoded to a space
    span = _date_range(text)
    if span is None:
        raise _invalid(f"A value of search parameter {name} is not a date, dateTime or instant.")
    lo, hi = span
    if prefix == "ap":
        prefix, (lo, hi) = "eq", _widened(lo, hi)
    match prefix:
        case "eq":
            return f"{low_col} >= ? AND {high_col} <= ?", (lo, hi)
        case "ne":
            return f"NOT ({low_col} >= ? AND {high_col} <= ?)", (lo, hi)
        case "gt":
            return f"{high_col} > ?", (hi,)
        case "lt":
            return f"{low_col} < ?", (lo,)
        case "ge":
            return f"{high_col} >= ?", (lo,)
        case "le":
            return f"{low_col} <= ?", (hi,)
        case "sa":
            return f"{low_col} > ?", (hi,)
        case _:  # eb
            return f"{high_col} < ?", (lo,)


def _widened(lo: str, hi: str) -> tuple[str, str]:
    """``ap``: the range widened on each side by a tenth of its distance to now."""
    now = datetime.now(UTC).replace(tzinfo=None)
    low, high = datetime.fromisoformat(lo[:-1]), datetime.fromisoformat(hi[:-1])
    return _instant(_shift(low, abs(now - low) / 10)), _instant(_shift(high, -(abs(now - high) / 10)))


def _decimal(name: str, text: str) -> Decimal:
    if _NUMBER_RE.fullmatch(text) is None:
        raise _invalid(f"A value of search parameter {name} is not a number.")
    return Decimal(text)


def _number_sql(name: str, raw: str) -> _Cond:
    prefix, text = _prefix(raw)
    number = _decimal(name, text)
    exponent = number.as_tuple().exponent
    half = Decimal(5).scaleb((exponent if isinstance(exponent, int) else 0) - 1)
    if prefix in ("eq", "ne"):
        sql = "num >= ? AND num < ?" if prefix == "eq" else "num IS NOT NULL AND NOT (num >= ? AND num < ?)"
        return sql, (float(number - half), float(number + half))
    if prefix == "ap":
        margin = max(abs(number) / 10, half)
        return "num >= ? AND num <= ?", (float(number - margin), float(number + margin))
    op = _NUM_OPS.get(prefix)
    if op is None:
        raise _invalid(
            f"A value of search parameter {name} has a prefix (sa or eb) that numbers do not take."
        )
    return f"num {op} ?", (float(number),)


def _number_cond(p: SearchParam, modifier: str, raw: str) -> _Cond:
    return _number_sql(p.name, _unescape(raw))


def _quantity_cond(p: SearchParam, modifier: str, raw: str) -> _Cond:
    parts = _split(raw, "|")
    if len(parts) not in (1, 3):
        raise _invalid(
            f"A value of search parameter {p.name} is not number, number|system|code or number||code."
        )
    sql, args = _number_sql(p.name, _unescape(parts[0]))
    if len(parts) == 3:
        system, code = _unescape(parts[1]), _unescape(parts[2])
        if system:
            sql, args = f"{sql} AND system = ?", (*args, system)
        if code:
            sql, args = f"{sql} AND value = ?", (*args, code)
    return sql, args


def _reference_cond(p: SearchParam, modifier: str, raw: str) -> _Cond:
    text = _unescape(raw)
    key = _reference_key(text)
    if key is not None:
        if modifier and key[1] != modifier:
            raise _invalid(
                f"A value of search parameter {p.name} names another type than its :{modifier} modifier."
            )
        return "value = ?", (key[0],)
    if _ID_RE.fullmatch(text) is None:
        raise _invalid(f"A value of search parameter {p.name} is not an id, Type/id or an absolute URL.")
    types = (modifier,) if modifier else (p.targets or _ANY_TARGET)
    if len(types) == 1:
        return "value = ?", (f"{types[0]}/{text}",)
    return f"value IN ({', '.join('?' * len(types))})", tuple(f"{t}/{text}" for t in types)


def _uri_cond(p: SearchParam, modifier: str, raw: str) -> _Cond:
    return "value = ?", (_unescape(raw),)


_Matcher = Callable[[SearchParam, str, str], _Cond]
_MATCHERS: Final[Mapping[str, _Matcher]] = {
    "string": _string_cond,
    "token": _token_cond,
    "date": _date_cond,
    "reference": _reference_cond,
    "quantity": _quantity_cond,
    "number": _number_cond,
    "uri": _uri_cond,
}
_MODIFIERS: Final[Mapping[str, frozenset[str]]] = {
    "string": frozenset({"exact", "contains"}),
    "token": frozenset({"not"}),
}


# --- parse_search -----------------------------------------------------------------------------------

_IGNORED: Final = frozenset({"_format", "_pretty"})
_SUB: Final = "SELECT id FROM fhir_index WHERE type = ? AND param = ?"
_ROWS_OF_R: Final = (
    "SELECT 1 FROM fhir_index INDEXED BY fhir_index_resource WHERE type = ? AND param = ? AND id = r.id"
)
"""One resource's own index rows of one parameter: a check reads those few rows, never a whole
parameter's range (without statistics SQLite would pick the date index and scan it per resource)."""


def _shown(name: str) -> str:
    return name if _SAFE_NAME_RE.fullmatch(name) else "an unknown search parameter"


@dataclass(frozen=True, slots=True)
class _Clause:
    """One criterion, in the two forms the query may use: ``driver`` selects the ids that satisfy it
    (``r.id IN (SELECT id FROM fhir_index ...)``: its index rows are read once), ``check`` tests one
    resource (a correlated ``EXISTS`` on that resource's own rows). The most selective criterion drives
    and the others check, so that a broad criterion (a date range over a million Observations) is
    never materialised whole."""

    rank: int
    """Lower is more selective: ids, then references, tokens, strings, numbers, dates, presence."""
    driver: str
    driver_args: tuple[Any, ...]
    check: str
    check_args: tuple[Any, ...]


_RANK: Final[Mapping[str, int]] = {
    "reference": 1, "token": 2, "uri": 2, "string": 3, "quantity": 4, "number": 4, "date": 5,
}  # fmt: skip


def _simple(rank: int, sql: str, args: tuple[Any, ...]) -> _Clause:
    """A criterion on the resource row itself (``_id``, ``_lastUpdated``): one form serves both."""
    return _Clause(rank, sql, args, sql, args)


def _where(clauses: Sequence[_Clause]) -> tuple[str, tuple[Any, ...]]:
    """The WHERE fragment: the most selective clause drives, the others are checked per resource."""
    if not clauses:
        return "1", ()
    lead = min(range(len(clauses)), key=lambda i: clauses[i].rank)
    parts: list[str] = []
    args: list[Any] = []
    for i, c in enumerate(clauses):
        parts.append(c.driver if i == lead else c.check)
        args.extend(c.driver_args if i == lead else c.check_args)
    return " AND ".join(parts), tuple(args)


@dataclass(slots=True)
class _Query:
    """What :func:`parse_search` has understood so far."""

    rtype: str
    params: Mapping[str, SearchParam]
    clauses: list[_Clause]
    args: list[Any]  # unused: each clause carries its own arguments
    echo: list[tuple[str, str]]
    options: dict[str, tuple[str, str]]  # _sort/_summary/_elements/_total: (name, value) as given
    includes: list[tuple[Include, str]]
    count: int = _DEFAULT_COUNT
    offset: int = 0
    revincludes: list[tuple[Include, str]] = field(default_factory=list)
    chained: set[str] = field(default_factory=set)


MAX_ALTERNATIVES: Final = 100
"""Values one parameter may list (``_id=a,b,c``): more would outgrow SQLite's limits on one query."""
MAX_CRITERIA: Final = 30
"""Search parameters one query may give."""


def _alternatives(raw: str) -> list[str]:
    found = [a for a in _split(raw, ",") if a]
    if len(found) > MAX_ALTERNATIVES:
        raise FhirError(400, "too-costly", f"A search parameter may list at most {MAX_ALTERNATIVES} values.")
    return found


def _add_criterion(q: _Query, p: SearchParam, modifier: str) -> Callable[[str], None]:
    """The handler of one value of parameter ``p`` (with ``modifier``), adding its WHERE clause."""
    if modifier == "missing":
        return lambda raw: _add_missing(q, p, raw)
    if p.name == "_id":
        if modifier:
            raise _unsupported("Search parameter _id takes no modifier.")
        return lambda raw: _add_id(q, raw)
    if p.name == "_lastUpdated":
        if modifier:
            raise _unsupported("Search parameter _lastUpdated takes no modifier.")
        return lambda raw: _add_last_updated(q, raw)
    if modifier and modifier not in _MODIFIERS.get(p.kind, ()):
        if p.kind != "reference" or modifier not in _RESOURCE_TYPES:
            what = f"the modifier :{modifier}" if _SAFE_NAME_RE.fullmatch(modifier) else "the modifier given"
            raise _unsupported(f"Search parameter {p.name} does not support {what}.")
        if p.targets and modifier not in p.targets:
            raise _invalid(f"Search parameter {p.name} does not refer to {modifier}.")
    return lambda raw: _add_match(q, p, modifier, raw)


def _add_missing(q: _Query, p: SearchParam, raw: str) -> None:
    if p.name in COMMON_PARAMS:
        raise _unsupported(f"Search parameter {p.name} does not support :missing.")
    if raw not in ("true", "false"):
        raise _invalid(f"The value of {p.name}:missing must be true or false.")
    present = _ROWS_OF_R
    if raw == "true":
        q.clauses.append(_simple(9, f"NOT EXISTS ({present})", (q.rtype, p.name)))
    else:
        q.clauses.append(
            _Clause(8, f"r.id IN ({_SUB})", (q.rtype, p.name), f"EXISTS ({present})", (q.rtype, p.name))
        )


def _add_id(q: _Query, raw: str) -> None:
    ids = [_unescape(a) for a in _alternatives(raw)]
    q.clauses.append(_simple(0, f"r.id IN ({', '.join('?' * len(ids))})", tuple(ids)))


def _add_last_updated(q: _Query, raw: str) -> None:
    conds = [_date_sql("_lastUpdated", a, "r.last_updated", "r.last_updated") for a in _alternatives(raw)]
    joined = " OR ".join(f"({sql})" for sql, _ in conds)
    sql = f"({joined})" if len(conds) > 1 else conds[0][0]
    q.clauses.append(_simple(6, sql, tuple(arg for _, args in conds for arg in args)))


def _ids_finding(rtype: str, p: SearchParam, conds: Sequence[_Cond]) -> tuple[str, tuple[Any, ...]]:
    """The ids of the ``rtype`` resources whose index rows of ``p`` meet any of ``conds`` (one index range
    each, joined by UNION ALL), with the arguments."""
    sql = " UNION ALL ".join(f"{_SUB} AND {cond}" for cond, _ in conds)
    return sql, tuple(arg for _, args in conds for arg in (rtype, p.name, *args))


def _add_match(q: _Query, p: SearchParam, modifier: str, raw: str) -> None:
    matcher = _MATCHERS[p.kind]
    conds = [matcher(p, modifier, a) for a in _alternatives(raw)]
    either = " OR ".join(f"({sql})" for sql, _ in conds)
    check = f"EXISTS ({_ROWS_OF_R} AND ({either}))"
    check_args = (q.rtype, p.name, *(arg for _, args in conds for arg in args))
    if modifier == "not":
        q.clauses.append(_simple(9, f"NOT {check}", check_args))
        return
    subs, driver_args = _ids_finding(q.rtype, p, conds)
    q.clauses.append(_Clause(_RANK.get(p.kind, 7), f"r.id IN ({subs})", driver_args, check, check_args))


def _page_number(name: str, raw: str) -> int:
    if _DIGITS_RE.fullmatch(raw) is None:
        raise _invalid(f"{name} must be a whole number, 0 or more.")
    return int(raw)


def _set_count(q: _Query, raw: str) -> None:
    q.count = min(_page_number("_count", raw), _MAX_COUNT)


def _set_offset(q: _Query, raw: str) -> None:
    q.offset = _page_number("_offset", raw)


def _set_summary(q: _Query, raw: str) -> None:
    if raw not in ("count", "false", "true", "text", "data"):
        raise _invalid("_summary must be true, text, data, count or false.")
    q.options["_summary"] = ("_summary", raw)  # (true, text and data cut each match: adapters.fhir.subset)


def _set_elements(q: _Query, raw: str) -> None:
    q.options["_elements"] = ("_elements", raw)  # (cuts each match: adapters.fhir.subset)


def _set_total(q: _Query, raw: str) -> None:
    if raw not in ("none", "estimate", "accurate"):
        raise _invalid("_total must be none, estimate or accurate.")
    q.options["_total"] = ("_total", raw)


def _set_sort(q: _Query, raw: str) -> None:
    _order(q.rtype, q.params, raw)  # validates now; the ORDER BY is built at the end
    q.options["_sort"] = ("_sort", raw)


def _add_include(q: _Query, raw: str) -> None:
    if raw == "*":
        raise _unsupported("_include=* is not supported; name the parameter, as Type:param.")
    parts = raw.split(":")
    if len(parts) not in (2, 3) or parts[0] != q.rtype:
        raise _invalid(f"_include must be {q.rtype}:param or {q.rtype}:param:Type.")
    p = q.params.get(parts[1])
    if p is None or p.kind != "reference":
        raise _invalid(f"_include must name a reference search parameter of {q.rtype}.")
    target = parts[2] if len(parts) == 3 else ""
    if target and (target not in _RESOURCE_TYPES or (p.targets and target not in p.targets)):
        raise _invalid(f"The type that _include names is not one search parameter {p.name} can refer to.")
    q.includes.append((Include(q.rtype, p.name, target), raw))


def _add_revinclude(q: _Query, raw: str) -> None:
    if raw == "*":
        raise _unsupported("_revinclude=* is not supported; name the parameter, as Type:param.")
    parts = raw.split(":")
    if len(parts) not in (2, 3) or parts[0] not in RESOURCE_TYPES:
        raise _invalid(f"_revinclude must be Type:param or Type:param:{q.rtype}, Type a resource type.")
    p = params_of(parts[0]).get(parts[1])
    if p is None or p.kind != "reference":
        raise _invalid(f"_revinclude must name a reference search parameter of {parts[0]}.")
    if (p.targets and q.rtype not in p.targets) or (len(parts) == 3 and parts[2] != q.rtype):
        raise _invalid(f"Search parameter {parts[0]}:{p.name} cannot refer to a {q.rtype}.")
    q.revincludes.append((Include(parts[0], p.name, q.rtype), raw))


_CONTROLS: Final[Mapping[str, Callable[[_Query, str], None]]] = {
    "_count": _set_count,
    "_offset": _set_offset,
    "_summary": _set_summary,
    "_elements": _set_elements,
    "_total": _set_total,
    "_sort": _set_sort,
    "_include": _add_include,
    "_revinclude": _add_revinclude,
}


# Sorting on a date parameter looks up each result's own rows. ``+param`` and ``exact IS NULL`` (true
# of every date row) keep SQLite from the covering (type, param, ...) indexes, which would scan every
# row of the parameter for each result, so that it takes fhir_index_resource (type, id) of migration 10.
_SORT_DATE_ASC: Final = (
    "(SELECT min(low) FROM fhir_index WHERE type = ? AND id = r.id AND +param = ? AND exact IS NULL)"
    " ASC NULLS LAST"
)
_SORT_DATE_DESC: Final = (
    "(SELECT max(high) FROM fhir_index WHERE type = ? AND id = r.id AND +param = ? AND exact IS NULL)"
    " DESC NULLS LAST"
)


def _order(rtype: str, params: Mapping[str, SearchParam], raw: str) -> tuple[str, tuple[Any, ...]]:
    """The ORDER BY body and its args for a ``_sort`` value; ``r.id`` always breaks ties."""
    terms: list[str] = []
    args: list[Any] = []
    for item in raw.split(","):
        desc = item.startswith("-")
        key = item[1:] if desc else item
        if key == "_lastUpdated":
            terms.append("r.last_updated DESC" if desc else "r.last_updated")
        elif key == "_id":
            terms.append("r.id DESC" if desc else "r.id")
        elif key in params and key not in COMMON_PARAMS and params[key].kind == "date":
            terms.append(_SORT_DATE_DESC if desc else _SORT_DATE_ASC)
            args.extend((rtype, key))
        else:
            raise _invalid(
                "_sort takes _lastUpdated, _id or a date parameter of the type, each maybe with -."
            )
    if "r.id" not in terms and "r.id DESC" not in terms:
        terms.append("r.id")
    return ", ".join(terms), tuple(args)


def _linked(rtype: str, name: str, modifier: str, strict: bool, where: str) -> SearchParam | None:
    """The parameter of ``rtype`` that a chain or ``_has`` (``where``) searches by, with its modifier
    checked; ``None`` to ignore an unknown one when not ``strict``."""
    p = params_of(rtype).get(name)
    if p is None or p.name in ("_id", "_lastUpdated"):
        if not strict and p is None:
            return None
        raise _unsupported(f"Unknown search parameter {_shown(name)} for {rtype} in {where}.")
    if (modifier and modifier not in _MODIFIERS.get(p.kind, ())) or modifier in ("missing", "not"):
        raise _unsupported(f"Search parameter {p.name} takes no such modifier in {where}.")
    return p


def _chain(q: _Query, raw_name: str, strict: bool) -> Callable[[str], None] | None:
    """The handler of a chained parameter, ``ref[:Type].param[:modifier]``: the resources whose reference
    ``ref`` names a ``Type`` that ``param`` finds (one link; ``:Type`` may be left out when ``ref`` can
    name only one type). ``None`` to ignore an unknown one when not ``strict``."""
    head, _, tail = raw_name.partition(".")
    rname, _, rtype = head.partition(":")
    cname, _, cmodifier = tail.partition(":")
    ref = q.params.get(rname)
    if "." in tail:
        raise _unsupported("Chains of more than one link are not supported.")
    if ref is None or ref.kind != "reference":
        if not strict and ref is None:
            return None
        raise _invalid(f"Only reference search parameters of {q.rtype} chain; {_shown(rname)} is not one.")
    if rtype and (rtype not in RESOURCE_TYPES or (ref.targets and rtype not in ref.targets)):
        raise _invalid(f"Search parameter {ref.name} does not refer to {_shown(rtype)}.")
    targets = (rtype,) if rtype else ref.targets
    if len(targets) != 1:
        raise _invalid(f"Name the type {ref.name} refers to in the chain, as {ref.name}:Type.{_shown(tail)}.")
    target = targets[0]
    child = _linked(target, cname, cmodifier, strict, "the chain")
    if child is None:
        return None
    matcher = _MATCHERS[child.kind]
    q.chained.add(target)

    def add(raw: str) -> None:
        found, found_args = _ids_finding(
            target, child, [matcher(child, cmodifier, a) for a in _alternatives(raw)]
        )
        # the references that name a target the child parameter finds (values are stored as Type/id)
        named = f"SELECT ? || id FROM ({found})"  # noqa: S608 (placeholders)
        named_args = (f"{target}/", *found_args)
        q.clauses.append(
            _Clause(
                _RANK["reference"],
                f"r.id IN ({_SUB} AND value IN ({named}))",
                (q.rtype, ref.name, *named_args),
                f"EXISTS ({_ROWS_OF_R} AND value IN ({named}))",
                (q.rtype, ref.name, *named_args),
            )
        )

    return add


def _has(q: _Query, spec: str, strict: bool) -> Callable[[str], None] | None:
    """The handler of ``_has:Type:ref:param[:modifier]``: the resources that a ``Type`` refers to with its
    reference parameter ``ref``, among the ``Type`` resources that ``param`` finds (one level)."""
    parts = spec.split(":")
    if len(parts) not in (3, 4) or "_has" in parts:
        raise _unsupported("_has takes Type:reference:parameter, one level deep.")
    source, rname, cname = parts[:3]
    cmodifier = parts[3] if len(parts) == 4 else ""
    if source not in RESOURCE_TYPES:
        raise _invalid("_has must name a resource type first.")
    ref = params_of(source).get(rname)
    if ref is None or ref.kind != "reference" or (ref.targets and q.rtype not in ref.targets):
        raise _invalid(
            f"_has must name a reference search parameter of {source} that can refer to {q.rtype}."
        )
    child = _linked(source, cname, cmodifier, strict, "_has")
    if child is None:
        return None
    matcher = _MATCHERS[child.kind]
    q.chained.add(source)
    prefix = f"{q.rtype}/"

    def add(raw: str) -> None:
        found, found_args = _ids_finding(
            source, child, [matcher(child, cmodifier, a) for a in _alternatives(raw)]
        )
        # the ids that those resources' references name (stored as Type/id: a prefix range of the index)
        named = (
            "SELECT substr(f.value, ?) FROM fhir_index f INDEXED BY fhir_index_resource"  # noqa: S608
            f" WHERE f.type = ? AND f.id IN ({found}) AND f.param = ? AND f.value >= ? AND f.value < ?"
        )
        args = (len(prefix) + 1, source, *found_args, ref.name, prefix, prefix[:-1] + "0")
        q.clauses.append(_Clause(_RANK["reference"], f"r.id IN ({named})", args, f"r.id IN ({named})", args))

    return add


def _handler(q: _Query, name: str, modifier: str, strict: bool) -> Callable[[str], None] | None:
    """What to do with the values of query parameter ``name:modifier``; ``None`` to ignore it."""
    control = _CONTROLS.get(name)
    if control is not None:
        if modifier:
            raise _unsupported(f"{name} takes no modifier.")
        return lambda raw: control(q, raw)
    p = q.params.get(name)
    if p is not None:
        return _add_criterion(q, p, modifier)
    if strict:
        raise _unsupported(f"Unknown search parameter {_shown(name)} for {q.rtype}.")
    return None


def parse_search(resource_type: str, params: Sequence[tuple[str, str]], *, strict: bool = True) -> Search:
    """The query of ``GET /fhir/{resource_type}?...`` as a :class:`Search`; :class:`FhirError` 400 when
    it cannot be answered (unknown parameters only with ``strict``; otherwise they are ignored)."""
    q = _Query(resource_type, params_of(resource_type), [], [], [], {}, [])
    if len(params) > MAX_CRITERIA:
        raise FhirError(400, "too-costly", f"A search may give at most {MAX_CRITERIA} parameters.")
    for raw_name, raw_value in params:
        name, _, modifier = raw_name.partition(":")
        if name in _IGNORED:
            continue
        if name == "_has":
            handle: Callable[[str], None] | None = _has(q, modifier, strict)
        elif "." in raw_name:
            handle = _chain(q, raw_name, strict)
        else:
            handle = _handler(q, name, modifier, strict)
        if handle is None or not raw_value.strip(","):
            continue
        handle(raw_value)
        if name not in _CONTROLS:
            q.echo.append((raw_name, raw_value))
    order_by, order_args = (
        _order(resource_type, q.params, q.options["_sort"][1]) if "_sort" in q.options else ("r.id", ())
    )
    options = [q.options[k] for k in ("_sort", "_summary", "_elements", "_total") if k in q.options]
    includes = [("_include", raw) for raw in sorted({raw for _, raw in q.includes})]
    includes += [("_revinclude", raw) for raw in sorted({raw for _, raw in q.revincludes})]
    where, args = _where(q.clauses)
    return Search(
        resource_type=resource_type,
        where=where,
        args=args,
        order_by=order_by,
        order_args=order_args,
        count=q.count,
        offset=q.offset,
        summary_count=q.options.get("_summary", ("", ""))[1] == "count",
        total=q.options.get("_total", ("", ""))[1] != "none",
        includes=tuple(dict.fromkeys(i for i, _ in q.includes)),
        echo=(*sorted(q.echo), *options, *includes),
        revincludes=tuple(dict.fromkeys(i for i, _ in q.revincludes)),
        chained=frozenset(q.chained),
    )
