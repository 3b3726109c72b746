"""The CapabilityStatement (``GET /fhir/metadata``), generated from what the API implements.

Nothing here is written by hand per resource: the interactions come from the
API's route table, the resource types from the R4B models the server validates
with, and the search parameters from the search engine's parameter table.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any, Final, Protocol

from adapters.fhir import search
from adapters.fhir.patch import JSON_PATCH, MERGE_PATCH
from adapters.fhir.resources import RESOURCE_TYPES

FHIR_VERSION = "4.0.1"
_NOT_RESOURCES = frozenset({"Bundle", "OperationOutcome", "Parameters"})


class Implemented(Protocol):
    @property
    def code(self) -> str: ...
    @property
    def level(self) -> str: ...


@cache
def _search_params(rtype: str) -> tuple[dict[str, str], ...]:
    params = {**search.COMMON_PARAMS, **search.params_of(rtype)}
    return tuple(
        {"name": name, "type": p.kind, **({"documentation": p.description} if p.description else {})}
        for name, p in sorted(params.items())
    )


def _revincludes() -> dict[str, list[str]]:
    """Per resource type, the ``Source:param`` reference parameters that can refer to it."""
    out: dict[str, list[str]] = {}
    for source in sorted(RESOURCE_TYPES - _NOT_RESOURCES):
        for name, p in sorted(search.params_of(source).items()):
            if p.kind == "reference":
                for target in p.targets or sorted(RESOURCE_TYPES - _NOT_RESOURCES):
                    out.setdefault(target, []).append(f"{source}:{name}")
    return out


_REVINCLUDES: Final = _revincludes()


def capability_statement(interactions: Sequence[Implemented], base_url: str) -> dict[str, Any]:
    """The server's CapabilityStatement: every resource type with the interactions, search parameters
    and conditional operations implemented, and the system interactions (transaction, batch, history)."""
    instance = sorted({i.code for i in interactions if i.level in ("instance", "type")})
    codes = set(instance)
    resource_entries = []
    for rtype in sorted(RESOURCE_TYPES - _NOT_RESOURCES):
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": [{"code": c} for c in instance if not c.startswith("conditional-")],
            "versioning": "versioned-update",
            "readHistory": "vread" in codes,
            "updateCreate": "update" in codes,
            "conditionalCreate": "create" in codes,
            "conditionalRead": "not-supported",
            "conditionalUpdate": "conditional-update" in codes,
            "conditionalDelete": "single" if "conditional-delete" in codes else "not-supported",
            "referencePolicy": ["literal", "logical"],
            "searchParam": list(_search_params(rtype)),
        }
        includes = sorted(
            f"{rtype}:{name}" for name, p in search.params_of(rtype).items() if p.kind == "reference"
        )
        if includes:
            entry["searchInclude"] = includes
        if rtype in _REVINCLUDES:
            entry["searchRevInclude"] = _REVINCLUDES[rtype]
        resource_entries.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "kind": "instance",
        "software": {"name": "connector-gateway"},
        "implementation": {"description": "Connector gateway FHIR API", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "application/fhir+xml"],
        "patchFormat": [JSON_PATCH, MERGE_PATCH],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "description": "An API key as a Bearer token; scopes fhir:read and fhir:write, or "
                    "SMART system scopes per resource type (system/Patient.read)."
                },
                "resource": resource_entries,
                "interaction": [
                    {"code": c} for c in sorted({i.code for i in interactions if i.level == "system"})
                ],
            }
        ],
    }
