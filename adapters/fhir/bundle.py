"""Transaction and batch Bundles (``POST /fhir``), run as one store effect.

A transaction is all or nothing: its entries are processed in the order the
specification gives (DELETE, POST, PUT and PATCH, GET), ``urn:uuid:`` and other
``fullUrl`` references are rewritten to the ids the server assigns, conditional
references (``Practitioner?identifier=...``) are resolved by search, and any
failure raises, so that the store keeps nothing of it. A batch processes each
entry on its own (a savepoint each): one entry's failure is reported in its
response entry and leaves the others alone. A PATCH entry carries its document
as a Binary (``contentType`` JSON Patch or JSON Merge Patch, the document in
``data``); the patched resource is validated when the entry is performed. The response Bundle reports each
entry's status, location, etag and last modified time, in request order.
"""

from __future__ import annotations

import base64
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any

from adapters.fhir import interactions
from adapters.fhir.interactions import Written
from adapters.fhir.outcome import FhirError, operation_outcome
from adapters.fhir.patch import JSON_PATCH, MERGE_PATCH, Patch, apply_patch, read_patch
from adapters.fhir.resources import RESOURCE_TYPES, validate
from gateway.adapter import Issue
from gateway.store import resources
from gateway.store.resources import Version

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3}
MAX_ENTRIES = 5000
"""Entries one Bundle may hold: a Bundle is one store transaction, which every other writer waits for."""
_ABSOLUTE = re.compile(r"https?://\S+/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_ETAG = re.compile(r'(?:W/)?"?([0-9]{1,18})"?')


@dataclass(slots=True)
class Entry:
    """One request entry of a transaction or batch Bundle, as understood."""

    index: int
    method: str
    type: str
    id: str | None = None
    query: str | None = None
    full_url: str = ""
    resource: dict[str, Any] | None = None
    if_none_exist: str | None = None
    if_match: int | None = None
    if_none_match: bool = False
    """A PUT with ``ifNoneMatch: *``: write only if the resource does not exist (HTTP's create-only)."""
    written: Written | None = None
    read: Version | None = None
    patch: Patch | None = None
    """A PATCH entry's document, from the Binary its resource is (FHIR R4 §3.1.0.7.1)."""


@dataclass(slots=True)
class Processed:
    """The response Bundle's entries (request order) and every version written."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    written: list[Written] = field(default_factory=list)
    read: list[Version] = field(default_factory=list)
    """The versions GET entries read (recorded as reads, like any other)."""

    @property
    def changed(self) -> bool:
        """Whether any entry wrote something (else the Bundle has nothing to route)."""
        return any(w.action not in ("matched", "unchanged") for w in self.written)


def if_match_version(value: str | None) -> int | None:
    """The version an ``If-Match`` (``W/"3"``) names; 400 when it names none."""
    if value is None or not value.strip():
        return None
    m = _ETAG.fullmatch(value.strip())
    if m is None:
        raise FhirError(400, "invalid", 'If-Match must be a version ETag such as W/"3".')
    return int(m.group(1))


def _entry(index: int, raw: Any) -> Entry:
    where = f"Bundle.entry[{index}]"
    if not isinstance(raw, Mapping):
        raise FhirError(400, "structure", "The entry is not an object.", where)
    request = raw.get("request")
    if not isinstance(request, Mapping):
        raise FhirError(400, "required", "The entry has no request.", f"{where}.request")
    method = str(request.get("method", "")).upper()
    url = request.get("url")
    if method not in ORDER or not isinstance(url, str) or not url:
        raise FhirError(
            400,
            "not-supported",
            "The entry's request needs a method (GET, POST, PUT, PATCH, DELETE) and a url.",
            f"{where}.request",
        )
    path, _, query = url.lstrip("/").partition("?")
    parts = path.split("/")
    rtype = parts[0]
    if rtype not in RESOURCE_TYPES or len(parts) > 2 or (len(parts) == 2 and not _ID.fullmatch(parts[1])):
        raise FhirError(
            400,
            "not-supported",
            "The entry's request url is not Type, Type/id or Type?search.",
            f"{where}.request.url",
        )
    entry = Entry(
        index,
        method,
        rtype,
        parts[1] if len(parts) == 2 else None,
        query or None,
        str(raw.get("fullUrl") or ""),
    )
    resource = raw.get("resource")
    if method in ("POST", "PUT"):
        if not isinstance(resource, Mapping) or resource.get("resourceType") != rtype:
            raise FhirError(
                400,
                "invalid",
                "The entry's resource is missing or not of the url's type.",
                f"{where}.resource",
            )
        entry.resource = dict(resource)
    if method == "PATCH":
        if not entry.id or entry.query:
            raise FhirError(
                400,
                "not-supported",
                "A PATCH entry's url names one resource (Type/id).",
                f"{where}.request.url",
            )
        entry.patch = _patch_of(resource, f"{where}.resource")
    if method == "POST" and (entry.id or entry.query):
        raise FhirError(
            400, "not-supported", "A POST entry's url is the resource type alone.", f"{where}.request.url"
        )
    if method in ("PUT", "DELETE") and not (entry.id or entry.query):
        raise FhirError(
            400,
            "not-supported",
            "A PUT or DELETE entry's url names a resource or a search.",
            f"{where}.request.url",
        )
    if method == "DELETE" and entry.query:
        raise FhirError(400, "not-supported", "Conditional delete is not supported.", f"{where}.request.url")
    if method == "GET" and (entry.query or not entry.id):
        raise FhirError(
            400, "not-supported", "A GET entry reads one resource (Type/id).", f"{where}.request.url"
        )
    if entry.resource is not None and entry.id and entry.resource.get("id", entry.id) != entry.id:
        raise FhirError(
            400, "invalid", "The entry's resource id differs from its url.", f"{where}.resource.id"
        )
    inm = request.get("ifNoneMatch")
    if inm is not None and (method != "PUT" or inm != "*"):
        raise FhirError(
            400,
            "not-supported",
            "ifNoneMatch is taken as * on a PUT (create only if absent).",
            f"{where}.request.ifNoneMatch",
        )
    entry.if_none_match = inm == "*"
    ine = request.get("ifNoneExist")
    entry.if_none_exist = ine if isinstance(ine, str) and ine else None
    entry.if_match = if_match_version(
        request.get("ifMatch") if isinstance(request.get("ifMatch"), str) else None
    )
    return entry


def _patch_of(resource: Any, where: str) -> Patch:
    """The patch document a PATCH entry carries: a Binary of a JSON Patch or JSON Merge Patch."""
    kind = resource.get("contentType") if isinstance(resource, Mapping) else None
    data = resource.get("data") if isinstance(resource, Mapping) else None
    if (
        not isinstance(resource, Mapping)
        or resource.get("resourceType") != "Binary"
        or kind not in (JSON_PATCH, MERGE_PATCH)
        or not isinstance(data, str)
    ):
        raise FhirError(
            400,
            "not-supported",
            f"A PATCH entry's resource is a Binary with contentType {JSON_PATCH} or {MERGE_PATCH} and the "
            "document in data (FHIRPath Patch is not supported).",
            where,
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raise FhirError(400, "invalid", "The Binary's data is not base64.", f"{where}.data") from None
    return read_patch(raw, kind)


def references(value: Any) -> Iterator[dict[str, Any]]:
    """Every object with a string ``reference`` inside ``value``."""
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            yield value
        for child in value.values():
            yield from references(child)
    elif isinstance(value, list):
        for child in value:
            yield from references(child)


class _Resolver:
    """Rewrites references: fullUrls of this Bundle to assigned ids, conditional ones by search."""

    def __init__(self, conn: sqlite3.Connection, assigned: Mapping[str, str]) -> None:
        self.conn = conn
        self.assigned = assigned
        self.found: dict[str, str] = {}

    def rewrite(self, resource: dict[str, Any], where: str, *, conditional: bool = True) -> None:
        """Rewrite ``resource``'s references in place; without ``conditional``, a conditional one is
        refused (a patch's values: the Bundle's scope check cannot see inside the Binary)."""
        for ref in references(resource):
            target = ref["reference"]
            if target in self.assigned:
                ref["reference"] = self.assigned[target]
            elif "?" in target and target.split("?", 1)[0] in RESOURCE_TYPES:
                if not conditional:
                    raise FhirError(
                        400, "not-supported", "A PATCH entry may not hold conditional references.", where
                    )
                ref["reference"] = self._conditional(target, where)

    def _conditional(self, target: str, where: str) -> str:
        if target not in self.found:
            rtype, query = target.split("?", 1)
            ids = interactions.matches(self.conn, rtype, query, "conditional reference")
            if len(ids) != 1:
                raise FhirError(
                    412 if ids else 404,
                    "multiple-matches" if ids else "not-found",
                    f"A conditional reference to {rtype} matches "
                    + ("more than one resource." if ids else "no resource."),
                    where,
                )
            self.found[target] = f"{rtype}/{ids[0]}"
        return self.found[target]


def _assign(conn: sqlite3.Connection, entry: Entry) -> None:
    """Decide which resource a POST or PUT entry writes (before references are rewritten)."""
    if entry.method == "POST":
        if entry.if_none_exist:
            ids = interactions.matches(conn, entry.type, entry.if_none_exist, "ifNoneExist condition")
            if len(ids) > 1:
                raise FhirError(
                    412,
                    "duplicate",
                    "The ifNoneExist condition matches more than one resource.",
                    f"Bundle.entry[{entry.index}].request.ifNoneExist",
                )
            if ids:
                cur = resources.current(conn, entry.type, ids[0])
                assert cur is not None
                entry.id = cur.id
                entry.written = Written(entry.type, cur.id, cur.version, cur.last_updated, 200, "matched")
                return
        entry.id = interactions.new_resource_id()
    elif entry.method == "PUT" and entry.query:
        ids = interactions.matches(conn, entry.type, entry.query, "conditional update")
        if len(ids) > 1:
            raise FhirError(
                412,
                "multiple-matches",
                "The conditional update matches more than one resource.",
                f"Bundle.entry[{entry.index}].request.url",
            )
        given = entry.resource.get("id") if entry.resource else None
        entry.id = ids[0] if ids else (given if isinstance(given, str) else interactions.new_resource_id())
        entry.query = None


def _perform(conn: sqlite3.Connection, entry: Entry, message_id: str, resolver: _Resolver) -> None:
    if entry.written is not None:  # an ifNoneExist that matched
        return
    assert entry.id is not None
    if entry.method == "DELETE":
        entry.written = interactions.delete(conn, entry.type, entry.id, message_id)
    elif entry.method == "POST":
        assert entry.resource is not None
        entry.written = interactions.create(conn, entry.resource, message_id, rid=entry.id)
    elif entry.method == "PUT":
        assert entry.resource is not None
        if entry.if_none_match:
            cur = resources.current(conn, entry.type, entry.id)
            if cur is not None and not cur.deleted:
                entry.written = Written(entry.type, cur.id, cur.version, cur.last_updated, 200, "matched")
                return
        entry.written = interactions.update(
            conn, entry.resource, entry.id, message_id, if_match=entry.if_match
        )
    else:
        cur = resources.current(conn, entry.type, entry.id)
        if cur is None:
            raise FhirError(404, "not-found", f"No {entry.type} has this id.")
        if cur.deleted:
            raise FhirError(410, "deleted", f"The {entry.type} was deleted.")
        if entry.patch is None:
            entry.read = cur
            return
        patched = apply_patch(interactions.body_of(cur), entry.patch)
        # urn:uuid and other fullUrls of this Bundle in the patch's values become the assigned ids
        resolver.rewrite(patched, f"Bundle.entry[{entry.index}].resource", conditional=False)
        issues = [i for i in validate(patched) if i.is_error]
        if issues:  # validated here: the Bundle's own validation saw only the Binary
            raise FhirError(422, issues[0].code, issues[0].diagnostics, issues=issues)
        entry.written = interactions.update(
            conn, patched, entry.id, message_id, if_match=entry.if_match, method="PATCH"
        )


def _status(code: int) -> str:
    return f"{code} {HTTPStatus(code).phrase}"


def _response(entry: Entry, representation: bool) -> dict[str, Any]:
    if entry.read is not None:
        v = entry.read
        return {
            "resource": interactions.body_of(v),
            "response": {"status": "200 OK", "etag": f'W/"{v.version}"', "lastModified": v.last_updated},
        }
    w = entry.written
    assert w is not None
    response: dict[str, Any] = {"status": _status(w.status), "etag": w.etag, "lastModified": w.last_updated}
    if w.action != "deleted":
        response["location"] = w.location
    out: dict[str, Any] = {"response": response}
    if entry.full_url:
        out["fullUrl"] = entry.full_url
    if representation and w.body is not None:
        out["resource"] = w.body
    return out


def _error_response(exc: FhirError) -> dict[str, Any]:
    return {"response": {"status": _status(exc.status), "outcome": operation_outcome(exc.issues)}}


def _entries(bundle: Mapping[str, Any]) -> list[Any]:
    raw = bundle.get("entry") or []
    if not isinstance(raw, list):
        raise FhirError(400, "structure", "Bundle.entry is not a list.", "Bundle.entry")
    if len(raw) > MAX_ENTRIES:
        raise FhirError(
            413, "too-costly", f"A Bundle may hold at most {MAX_ENTRIES} entries.", "Bundle.entry"
        )
    return raw


def transaction(
    conn: sqlite3.Connection, bundle: Mapping[str, Any], message_id: str, *, representation: bool = False
) -> Processed:
    """Process a transaction Bundle inside the caller's store transaction; any failure raises."""
    entries = [_entry(i, raw) for i, raw in enumerate(_entries(bundle))]
    seen: set[tuple[str, str]] = set()
    for entry in sorted(entries, key=lambda e: ORDER[e.method]):
        _assign(conn, entry)
        if entry.method != "GET" and entry.id is not None:
            key = (entry.type, entry.id)
            if key in seen:
                raise FhirError(
                    400,
                    "invalid",
                    "Two entries of the transaction write the same resource.",
                    f"Bundle.entry[{entry.index}]",
                )
            seen.add(key)
    assigned = _assigned(entries)
    resolver = _Resolver(conn, assigned)
    for entry in entries:
        if entry.resource is not None:
            resolver.rewrite(entry.resource, f"Bundle.entry[{entry.index}].resource")
    out = Processed()
    for entry in sorted(entries, key=lambda e: ORDER[e.method]):
        try:
            _perform(conn, entry, message_id, resolver)
        except FhirError as exc:
            exc.issues = [  # say which entry failed
                i if i.location else replace(i, location=f"Bundle.entry[{entry.index}]") for i in exc.issues
            ]
            raise
    for entry in entries:
        _done(out, entry, representation)
    return out


def _done(out: Processed, entry: Entry, representation: bool) -> None:
    out.entries.append(_response(entry, representation))
    if entry.written is not None:
        out.written.append(entry.written)
    if entry.read is not None:
        out.read.append(entry.read)


def _assigned(entries: Sequence[Entry]) -> dict[str, str]:
    """Each entry's ``fullUrl`` → the ``Type/id`` it was given; an absolute ``fullUrl`` such as
    ``http://example.org/fhir/Patient/p1`` also answers for the relative ``Patient/p1`` that other
    entries may use (the specification resolves those against the entry's base)."""
    out: dict[str, str] = {}
    for e in entries:
        if not e.full_url or not e.id:
            continue
        out[e.full_url] = f"{e.type}/{e.id}"
        m = _ABSOLUTE.fullmatch(e.full_url)
        if m is not None and m.group(1) in RESOURCE_TYPES:
            out.setdefault(f"{m.group(1)}/{m.group(2)}", f"{e.type}/{e.id}")
    return out


def batch(
    conn: sqlite3.Connection,
    bundle: Mapping[str, Any],
    message_id: str,
    *,
    representation: bool = False,
    invalid: Mapping[int, Sequence[Issue]] | None = None,
) -> Processed:
    """Process a batch Bundle: each entry on its own savepoint; failures become error entries.

    ``invalid``: entries whose resource did not validate, by index: answered 422 without processing.
    """
    out = Processed()
    refused = invalid or {}
    for i, raw in enumerate(_entries(bundle)):
        if i in refused:
            issues = refused[i]
            out.entries.append(_error_response(FhirError(422, issues[0].code, "", issues=issues)))
            continue
        conn.execute("SAVEPOINT batch_entry")
        try:
            entry = _entry(i, raw)
            _assign(conn, entry)
            resolver = _Resolver(conn, {})
            if entry.resource is not None:
                resolver.rewrite(entry.resource, f"Bundle.entry[{i}].resource")
            _perform(conn, entry, message_id, resolver)
        except (FhirError, sqlite3.Error) as exc:
            conn.execute("ROLLBACK TO batch_entry")
            conn.execute("RELEASE batch_entry")
            if isinstance(exc, sqlite3.Error):  # this entry cannot be done; the others still are
                exc = FhirError(500, "exception", "The entry could not be processed.", f"Bundle.entry[{i}]")
            out.entries.append(_error_response(exc))
            continue
        conn.execute("RELEASE batch_entry")
        _done(out, entry, representation)
    return out


Process = Callable[..., Processed]
KINDS: Mapping[str, Process] = {"transaction": transaction, "batch": batch}
"""Bundle types ``POST /fhir`` takes, and how each is processed."""
