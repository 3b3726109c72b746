"""FHIR write interactions as store effects: create, update, delete, and their conditional forms.

Each function runs inside the store transaction that also records the write's
envelope (an intake record's effect), so the version, its index rows and the
envelope commit together. Version ids are integers counted per resource; the
server owns ``meta.versionId`` and ``meta.lastUpdated``. Conditions
(``If-Match``, ``If-None-Exist``, a conditional update's search) are judged on
the transaction's own view, so two writers cannot both win.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from adapters.fhir import search
from adapters.fhir.adapter import mask_reference
from adapters.fhir.outcome import FhirError
from adapters.fhir.resources import load_json, write_json
from gateway.envelope import new_id
from gateway.lineage import EventDraft, Keyed
from gateway.store import resources
from gateway.store.resources import Version

ACTOR = "fhir"


@dataclass(frozen=True, slots=True)
class Written:
    """What a write did: the version it made (or found, for a conditional create that matched)."""

    type: str
    id: str
    version: int
    last_updated: str
    status: int
    """201 created, 200 updated or matched, 204 nothing to delete."""
    action: str
    """``created``, ``updated``, ``deleted``, or ``matched`` / ``unchanged`` when nothing was written."""
    body: Mapping[str, Any] | None = None

    @property
    def location(self) -> str:
        return f"{self.type}/{self.id}/_history/{self.version}"

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    def event(self, message_id: str, actor: str = ACTOR) -> EventDraft:
        """The lineage event of this write: which resource version (:func:`resource_details`), never a
        value of it."""
        return EventDraft(
            "ResourceWritten",
            message_id,
            actor,
            outcome=self.action,
            details={**resource_details(self.type, self.id), "version": self.version},
        )


def resource_details(rtype: str, rid: str) -> dict[str, Any]:
    """How a lineage event names a resource: ``resource_type``, ``resource`` the keyed pseudonym of
    ``Type/id`` (the store writes it, :class:`~gateway.lineage.Keyed`; it is the pseudonym the
    ``patient`` business key ``Patient/<id>`` gets, so a lineage search by that key finds these events)
    and ``masked_resource`` (``Patient/***7731``). Never the id itself: clients use MRNs as Patient ids,
    and the chain cannot forget what it holds once an erasure asks it to."""
    reference = f"{rtype}/{rid}"
    return {
        "resource_type": rtype,
        "resource": Keyed(reference),
        "masked_resource": mask_reference(reference),
    }


def instant() -> str:
    """Now, as the FHIR ``instant`` the store keeps (UTC, microseconds, ``Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_resource_id() -> str:
    """A server-assigned id: a ULID, so ids sort by creation time."""
    return new_id()


def body_of(v: Version) -> dict[str, Any]:
    """A stored version's resource (decimals exact, as they were written)."""
    body: dict[str, Any] = load_json(v.body)
    return body


def _put(
    conn: sqlite3.Connection,
    resource: Mapping[str, Any],
    rid: str,
    version: int,
    method: str,
    message_id: str,
) -> tuple[dict[str, Any], str]:
    rtype = resource["resourceType"]
    at = instant()
    meta = {
        k: v for k, v in dict(resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")
    }
    stored = {
        "resourceType": rtype,
        "id": rid,
        "meta": {"versionId": str(version), "lastUpdated": at, **meta},
    }
    stored.update((k, v) for k, v in resource.items() if k not in ("resourceType", "id", "meta"))
    resources.put(
        conn,
        Version(rtype, rid, version, at, False, message_id, write_json(stored), method),
        search.index_rows(rtype, stored),
    )
    return stored, at


def matches(conn: sqlite3.Connection, rtype: str, query: str, what: str) -> list[str]:
    """Ids (at most 2) of current ``rtype`` resources that the search ``query`` finds; a condition with
    no criteria would match everything, so it is refused."""
    found = search.parse_search(rtype, parse_qsl(query, keep_blank_values=True))
    if not found.args:
        raise FhirError(400, "invalid", f"The {what} has no search criteria.")
    return resources.matching_ids(conn, rtype, found.where, found.args, 2)


def create(
    conn: sqlite3.Connection,
    resource: Mapping[str, Any],
    message_id: str,
    *,
    rid: str | None = None,
    if_none_exist: str | None = None,
) -> Written:
    """Create ``resource`` under a new id (``rid`` when the caller minted it); with ``If-None-Exist``,
    one match is answered instead of a new resource, more than one is 412."""
    rtype = resource["resourceType"]
    if if_none_exist:
        ids = matches(conn, rtype, if_none_exist, "If-None-Exist condition")
        if len(ids) > 1:
            raise FhirError(412, "duplicate", "The If-None-Exist condition matches more than one resource.")
        if ids:
            cur = resources.current(conn, rtype, ids[0])
            assert cur is not None
            return Written(rtype, cur.id, cur.version, cur.last_updated, 200, "matched", body_of(cur))
    rid = rid or new_resource_id()
    stored, at = _put(conn, resource, rid, 1, "POST", message_id)
    return Written(rtype, rid, 1, at, 201, "created", stored)


def _content(resource: Mapping[str, Any]) -> dict[str, Any]:
    """What a version says, apart from what the server keeps (id, versionId, lastUpdated)."""
    meta = {
        k: v for k, v in dict(resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")
    }
    out = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    if meta:
        out["meta"] = meta
    return out


def update(
    conn: sqlite3.Connection,
    resource: Mapping[str, Any],
    rid: str,
    message_id: str,
    *,
    if_match: int | None = None,
    method: str = "PUT",
) -> Written:
    """Update (or create with the client's id) ``rtype/rid``; ``If-Match`` must name the current version.
    ``method`` is how history shows the new version (``PATCH`` for a patch)."""
    rtype = resource["resourceType"]
    cur = resources.current(conn, rtype, rid)
    live = cur is not None and not cur.deleted
    if if_match is not None and (not live or cur is None or cur.version != if_match):
        raise FhirError(
            412,
            "conflict",
            "The If-Match version is not the resource's current version; read it again and retry.",
        )
    if live and cur is not None:
        now = body_of(cur)
        if _content(now) == _content(resource):
            # the same content again (a redelivery, a replayed conversion): no new version, as HAPI does
            return Written(rtype, rid, cur.version, cur.last_updated, 200, "unchanged", now)
    version = cur.version + 1 if cur is not None else 1
    stored, at = _put(conn, resource, rid, version, method, message_id)
    return Written(rtype, rid, version, at, 200 if live else 201, "updated" if live else "created", stored)


def conditional_update(
    conn: sqlite3.Connection,
    resource: Mapping[str, Any],
    query: str,
    message_id: str,
    *,
    if_match: int | None = None,
) -> Written:
    """``PUT /Type?search``: no match creates, one match updates it, more than one is 412."""
    rtype = resource["resourceType"]
    ids = matches(conn, rtype, query, "conditional update")
    if len(ids) > 1:
        raise FhirError(412, "multiple-matches", "The conditional update matches more than one resource.")
    given = resource.get("id")
    if ids:
        if given is not None and given != ids[0]:
            raise FhirError(
                400, "invalid", "The resource id differs from the id of the resource the search matched."
            )
        return update(conn, resource, ids[0], message_id, if_match=if_match)
    if if_match is not None:
        raise FhirError(412, "conflict", "If-Match was given but the search matches no resource.")
    if isinstance(given, str):
        return update(conn, resource, given, message_id)
    return create(conn, resource, message_id)


def delete(
    conn: sqlite3.Connection, rtype: str, rid: str, message_id: str, *, if_match: int | None = None
) -> Written:
    """Delete softly: a tombstone version; later reads are 410. Deleting what is gone changes nothing.
    ``If-Match`` must name the current version."""
    cur = resources.current(conn, rtype, rid)
    if cur is None:
        raise FhirError(404, "not-found", f"No {rtype} has this id.")
    if if_match is not None and (cur.deleted or cur.version != if_match):
        raise FhirError(412, "conflict", "The If-Match version is not the resource's current version.")
    if cur.deleted:
        return Written(rtype, rid, cur.version, cur.last_updated, 204, "unchanged")
    at = instant()
    resources.put(conn, Version(rtype, rid, cur.version + 1, at, True, message_id, b"", "DELETE"), ())
    return Written(rtype, rid, cur.version + 1, at, 200, "deleted")


def events(written: Sequence[Written], message_id: str, actor: str = ACTOR) -> list[EventDraft]:
    """One lineage event per resource version the envelope wrote (``actor``: the API, or a sink)."""
    return [w.event(message_id, actor) for w in written if w.action not in ("matched", "unchanged")]
