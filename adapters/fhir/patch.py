"""The FHIR ``patch`` interaction's document: JSON Patch (RFC 6902) or JSON Merge Patch (RFC 7386).

``PATCH /{type}/{id}`` takes:

* ``application/json-patch+json``: JSON Patch, the format of FHIR R4
  §3.1.0.7.1 (as HAPI FHIR takes it). The operations are applied, with the
  ``jsonpatch`` library, one at a time to the resource's current version, so
  that a failure names the operation that failed (its number, ``op`` and
  ``path``, never a value: the library's own messages quote the values they
  compared, and a patch carries PHI like any resource).
* ``application/merge-patch+json``: JSON Merge Patch, members replaced
  (arrays whole) and ``null`` removing one; also a JSON object sent as
  ``application/json``, which is what clients such as fhirpy send for
  ``patch()``. An array sent as ``application/json`` is taken as JSON Patch.

FHIRPath Patch (a Parameters resource) is not supported: 415.

* A body that is not JSON, a JSON Patch that is not an array of operation
  objects, an unknown ``op``, a missing ``path``, ``value`` or ``from``, a
  merge patch that is not an object: 400 ``invalid``.
* An operation that cannot be applied (no such member, an index out of range)
  or a ``test`` that fails: 422 ``processing``, and nothing is written.
* A patch may not change ``resourceType`` or ``id``: 422 ``processing``.

The patched resource is then written as an update of the version it was
applied to, validated like any other write.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import jsonpatch
import jsonpointer

from adapters.fhir.outcome import FhirError
from adapters.fhir.resources import load_json, unwritable

JSON_PATCH: Final = "application/json-patch+json"
MERGE_PATCH: Final = "application/merge-patch+json"
PATCH_MEDIA: Final = frozenset({JSON_PATCH, MERGE_PATCH, "application/json"})
MAX_OPERATIONS: Final = 1000
"""A patch is a handful of edits; a longer list is refused before any work."""
_NEEDS: Final[Mapping[str, tuple[str, ...]]] = {
    "add": ("path", "value"),
    "remove": ("path",),
    "replace": ("path", "value"),
    "move": ("path", "from"),
    "copy": ("path", "from"),
    "test": ("path", "value"),
}


@dataclass(frozen=True, slots=True)
class Patch:
    """A patch document as read: JSON Patch operations, or a merge patch object."""

    operations: list[dict[str, Any]] | None = None
    merge: dict[str, Any] | None = None


def read_patch(raw: bytes, media: str) -> Patch:
    """The patch document in ``raw`` (decimals kept exact), sent as ``media``; 400 ``invalid`` when it is
    not one."""
    try:
        doc = load_json(raw)
    except (ValueError, RecursionError):  # (nesting deeper than the parser's stack)
        raise FhirError(400, "invalid", "The body is not JSON.") from None
    problem = unwritable(doc, raw=raw)  # what a patched resource could not be written back with
    if problem is not None:
        raise FhirError(400, "invalid", problem)
    if media == MERGE_PATCH or (media == "application/json" and isinstance(doc, dict)):
        if not isinstance(doc, dict):
            raise FhirError(400, "invalid", "A JSON Merge Patch document is an object.")
        return Patch(merge=doc)
    if not isinstance(doc, list) or not doc:
        raise FhirError(400, "invalid", "A JSON Patch document is a non-empty array of operations.")
    if len(doc) > MAX_OPERATIONS:
        raise FhirError(
            400, "too-costly", f"A JSON Patch document may hold at most {MAX_OPERATIONS} operations."
        )
    for n, op in enumerate(doc, 1):
        if not isinstance(op, dict) or not isinstance(op.get("op"), str) or op["op"] not in _NEEDS:
            raise FhirError(
                400, "invalid", f"Operation {n} must be an object whose op is one of {', '.join(_NEEDS)}."
            )
        missing = [k for k in _NEEDS[op["op"]] if k not in op]
        pointers = [op[k] for k in ("path", "from") if k in op]
        if missing or not all(isinstance(p, str) and (p == "" or p.startswith("/")) for p in pointers):
            raise FhirError(
                400,
                "invalid",
                f"Operation {n} ({op['op']}) needs {' and '.join(_NEEDS[op['op']])}, "
                "with JSON Pointers (empty, or starting with /).",
            )
    return Patch(operations=doc)


def apply_patch(resource: Mapping[str, Any], patch: Patch) -> dict[str, Any]:
    """``resource`` with ``patch`` applied (the input is left as it was)."""
    patched: Any = copy.deepcopy(dict(resource))
    if patch.merge is not None:
        patched = _merge(patched, patch.merge)
    for n, op in enumerate(patch.operations or (), 1):
        where = f"Operation {n} ({op['op']} at {_shown(op['path'])})"
        try:
            patched = jsonpatch.JsonPatch([op]).apply(patched, in_place=True)
        except jsonpatch.JsonPatchTestFailed:
            raise FhirError(422, "processing", f"{where}: the test failed; nothing was changed.") from None
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException):
            raise FhirError(
                422, "processing", f"{where} cannot be applied to the current version; nothing was changed."
            ) from None
    if not isinstance(patched, dict):
        raise FhirError(
            422, "processing", "The patch replaces the whole resource; use update (PUT) for that."
        )
    for key in ("resourceType", "id"):
        if patched.get(key) != resource.get(key):
            raise FhirError(422, "processing", f"A patch may not change the resource's {key}.")
    return patched


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386: an object patch merges member by member (``null`` removes one); anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


_STEP = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}|\d{1,6}|-")
"""A pointer step an error may show: a FHIR element name, an array index, or the end of an array."""


def _shown(pointer: str) -> str:
    """A pointer as an error may show it: only when every step is an element name or an index (a step
    could be anything the client typed, values included), and at most 120 characters."""
    if not pointer:
        return "the root"
    steps = pointer[1:].split("/")
    if len(pointer) > 120 or not all(_STEP.fullmatch(step) for step in steps):
        return "its path"
    return pointer
