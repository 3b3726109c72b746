"""The FHIR R4 REST API at ``/fhir``: the routes, content negotiation, access scopes and replies.

Every write (create, update, delete, transaction, batch) is an envelope of the
``fhir`` protocol taken through :meth:`gateway.pipeline.Intake.commit`: routed
like any message and recorded in lineage, with the resource version it writes
committed in the same transaction. Reads run on the store's read connections and
are recorded as access events (who read which resource version, never a value).

:data:`INTERACTIONS` is the one list of what is implemented: the routes are
registered from it and the CapabilityStatement is generated from it. Every error
is an OperationOutcome with the status the specification gives. The routes
themselves are added by :func:`adapters.fhir.routes.mount`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from fastapi import Request
from fastapi.responses import Response

from adapters.fhir import bundle, http, interactions, search
from adapters.fhir.adapter import FhirAdapter, patients_of
from adapters.fhir.capability import capability_statement
from adapters.fhir.interactions import Written
from adapters.fhir.outcome import FhirError, operation_outcome
from adapters.fhir.patch import PATCH_MEDIA, Patch, apply_patch, read_patch
from adapters.fhir.resources import JSON_MEDIA, JSON_TYPES, RESOURCE_TYPES, XML_TYPES, serialize, write_json
from adapters.fhir.subset import Subset, apply_subset, read_subset
from gateway.adapter import Issue, ParseError
from gateway.bodies import BodyLimits
from gateway.envelope import Envelope, Receipt, new_id
from gateway.errors import AuthError, StoreUnavailable
from gateway.lineage import EventDraft
from gateway.pipeline import Intake
from gateway.security import KeyRing, Principal
from gateway.store import Applied, Store
from gateway.store import resources as stored
from gateway.store.resources import Version

log = logging.getLogger("gateway.fhir")

BASE = http.BASE
_ENTRY = re.compile(r"Bundle\.entry\[(\d+)\]")
RESOURCE_MEDIA = JSON_TYPES | XML_TYPES
FORM = frozenset({"application/x-www-form-urlencoded"})
RACE_RETRIES = 10
"""Times a patch or a conditional write is tried again when another write changed the resource (or what
the condition finds) between its read and its commit."""
CLIENT_HINTS = frozenset({"_totalMethod"})
"""Query parameters some clients add that change nothing here (fhirpy's count() sends _totalMethod)."""
MAX_TOTAL = 10_000
"""A search counts its matches up to this many to answer ``Bundle.total``; past it the total is left out
(the ``next`` link still pages on) unless ``_total=accurate`` or ``_summary=count`` asks for it."""
MAX_INCLUDED = 1000
"""Resources ``_include`` and ``_revinclude`` add to one page, at most (HAPI FHIR's default too)."""


@dataclass(frozen=True, slots=True)
class Interaction:
    """One REST interaction the API implements (FHIR ``restful-interaction`` code)."""

    code: str
    level: str
    """``instance``, ``type`` or ``system``: where it appears in the CapabilityStatement."""
    method: str
    path: str
    access: str
    """``read`` or ``write``."""


INTERACTIONS: tuple[Interaction, ...] = (
    Interaction("read", "instance", "GET", "/{rtype}/{rid}", "read"),
    Interaction("vread", "instance", "GET", "/{rtype}/{rid}/_history/{vid}", "read"),
    Interaction("update", "instance", "PUT", "/{rtype}/{rid}", "write"),
    Interaction("patch", "instance", "PATCH", "/{rtype}/{rid}", "write"),
    Interaction("delete", "instance", "DELETE", "/{rtype}/{rid}", "write"),
    Interaction("history-instance", "instance", "GET", "/{rtype}/{rid}/_history", "read"),
    Interaction("history-type", "type", "GET", "/{rtype}/_history", "read"),
    Interaction("create", "type", "POST", "/{rtype}", "write"),
    Interaction("search-type", "type", "GET", "/{rtype}", "read"),
    Interaction("search-type", "type", "POST", "/{rtype}/_search", "read"),
    Interaction("conditional-update", "type", "PUT", "/{rtype}", "write"),
    Interaction("conditional-patch", "type", "PATCH", "/{rtype}", "write"),
    Interaction("conditional-delete", "type", "DELETE", "/{rtype}", "write"),
    Interaction("transaction", "system", "POST", "", "write"),
    Interaction("batch", "system", "POST", "", "write"),
    Interaction("history-system", "system", "GET", "/_history", "read"),
)


class _Raced(Exception):
    """Another write changed the resource (or what a condition finds) between a read and the commit."""


async def _settled(attempt: Callable[[], Awaitable[Response]]) -> Response:
    """``attempt``'s answer, tried again each time another write raced it (:class:`_Raced`); 409 after
    :data:`RACE_RETRIES` races."""
    for _ in range(RACE_RETRIES):
        with contextlib.suppress(_Raced):
            return await attempt()
    raise FhirError(
        409, "conflict", "The resource kept changing while the request was applied; send it again."
    )


class FhirAPI:
    """The ``/fhir`` routes of one gateway (see the module docstring)."""

    def __init__(
        self,
        *,
        store: Store,
        intake: Intake,
        keyring: KeyRing,
        body_limits: BodyLimits,
        adapter: FhirAdapter | None = None,
    ) -> None:
        self.store = store
        self.intake = intake
        self.keyring = keyring
        self.body_limits = body_limits
        self.adapter = adapter or FhirAdapter()
        self.loop = asyncio.get_running_loop()

    # -- plumbing ---------------------------------------------------------------------------

    def authenticated(self, request: Request) -> Principal:
        """Who presented the request's API key; 401 without a valid one."""
        try:
            return self.keyring.from_headers(request.headers)
        except AuthError as exc:
            raise FhirError(401, "login", exc.reason, headers={"WWW-Authenticate": "Bearer"}) from None

    def principal(self, request: Request, rtype: str, access: str, who: Principal | None = None) -> Principal:
        """The authenticated caller, when it may ``access`` resources of ``rtype``; else 401 or 403."""
        who = who or self.authenticated(request)
        if not http.allowed(who, rtype, access):
            self.note(
                [
                    EventDraft(
                        "AccessDenied",
                        None,
                        f"user:{who.name}",
                        "forbidden",
                        details={"scope": f"fhir:{access}", "type": rtype},
                    )
                ]
            )
            raise FhirError(403, "forbidden", f"The API key may not {access} {rtype} resources.")
        return who

    def note(self, drafts: Sequence[EventDraft]) -> None:
        """Hand lineage events to the loop that owns the store (reads run in a thread pool)."""
        self.loop.call_soon_threadsafe(self.store.note_events, list(drafts))

    @staticmethod
    def known_type(rtype: str) -> str:
        if rtype not in RESOURCE_TYPES:
            raise FhirError(404, "not-supported", "This server has no such resource type.")
        return rtype

    async def body(self, request: Request, media_types: frozenset[str] = RESOURCE_MEDIA) -> tuple[bytes, str]:
        """The request body, read up to the size limit (413 beyond it), in one of ``media_types``."""
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in media_types:
            if media_types is FORM:
                raise FhirError(415, "not-supported", "POST _search takes application/x-www-form-urlencoded.")
            if media_types is PATCH_MEDIA:
                raise FhirError(
                    415,
                    "not-supported",
                    "PATCH takes JSON Patch (application/json-patch+json) or JSON Merge Patch "
                    "(application/merge-patch+json); FHIRPath Patch is not supported.",
                )
            raise FhirError(415, "not-supported", "Send application/fhir+json or application/fhir+xml.")
        raw = await http.read_body(request, self.body_limits)
        if not raw.strip():
            raise FhirError(400, "invalid", "The request body is empty.")
        return raw, media

    def reply(
        self,
        request: Request,
        resource: Mapping[str, Any] | None,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        fmt = http.response_format(request)
        if resource is None:
            return Response(status_code=status, headers=dict(headers or {}))
        body, media = serialize(resource, fmt)
        return Response(body, status_code=status, media_type=media, headers=dict(headers or {}))

    # -- writes -----------------------------------------------------------------------------

    async def write(
        self,
        env: Envelope,
        issues: Sequence[Issue],
        perform: Callable[[sqlite3.Connection, str], Written | bundle.Processed],
    ) -> Written | bundle.Processed:
        """Commit ``env`` with the write ``perform`` makes; refused writes are kept as rejected messages.

        ``issues``: what validation found (for a batch, only what is wrong with the Bundle itself)."""
        errors = [i for i in issues if i.is_error]
        if errors:
            await self._keep_refused(
                env, issues, FhirError(422, errors[0].code, errors[0].diagnostics, issues=errors)
            )

        def effect(conn: sqlite3.Connection) -> Applied:
            done = perform(conn, env.id)
            if isinstance(done, bundle.Processed):
                # filed under the patients of what it wrote, too (a PATCH entry's resource, a POSTed Patient)
                about = [p for w in done.written if w.body is not None for p in patients_of(w.body)]
                return Applied(done, interactions.events(done.written, env.id), done.changed, about)
            return Applied(
                done, interactions.events([done], env.id), routed=done.action not in ("matched", "unchanged")
            )

        try:
            decision, _ = await self.intake.commit(self.adapter, env, self._receipt(env), issues, effect)
        except FhirError as exc:
            await self._keep_refused(env, issues, exc)
            raise
        except StoreUnavailable:
            raise FhirError(
                503, "transient", "The gateway could not store the write; send it again later."
            ) from None
        if decision.outcome != "accepted" or decision.effect is None:
            raise FhirError(422, "processing", "The write was not accepted.")
        done: Written | bundle.Processed = decision.effect.value
        return done

    async def _keep_refused(self, env: Envelope, issues: Sequence[Issue], exc: FhirError) -> None:
        """Record a refused write as a rejected message (lineage shows it), then raise ``exc``."""
        try:
            await self.intake.commit(self.adapter, env, self._receipt(env), [*issues, *exc.issues])
        except StoreUnavailable:
            raise FhirError(
                503, "transient", "The gateway could not store the write; send it again later."
            ) from None
        raise exc

    async def envelope(
        self, request: Request, who: Principal, raw: bytes, media: str, interaction: str, rid: str = ""
    ) -> Envelope:
        receipt = Receipt(
            listener="fhir",
            peer=http.peer(request),
            client=who.name,
            content_type=media,
            attributes={"interaction": interaction, "resource_id": rid},
        )
        try:  # off the loop: a large Bundle takes a while to read, and every listener shares the loop
            env = await asyncio.to_thread(self.adapter.parse, raw, receipt)
        except ParseError as exc:
            issues = list(exc.issues) or [Issue("error", "structure", "", "The body is not a FHIR resource.")]
            status = 400
            if any(i.code == "not-supported" for i in issues):
                status = 404 if interaction != "bundle" else 400
            raise FhirError(status, issues[0].code, issues[0].diagnostics, issues=issues) from None
        return replace(env, receipt=receipt)

    def written_reply(self, request: Request, w: Written) -> Response:
        headers = http.version_headers(w)
        if w.action != "deleted":
            headers["Location"] = f"{http.base_url(request)}/{w.location}"
        prefer = request.headers.get("prefer", "")
        if "return=minimal" in prefer or w.body is None:
            return self.reply(request, None, w.status if w.status != 204 else 204, headers)
        if "return=OperationOutcome" in prefer:
            out = operation_outcome(
                [Issue("information", "informational", "", f"The {w.type} was {w.action}.")]
            )
            return self.reply(request, out, w.status, headers)
        return self.reply(request, w.body, w.status, headers)

    async def validated(self, env: Envelope) -> list[Issue]:
        """What validation finds in the envelope's resource (off the loop: a Bundle takes a while)."""
        return await asyncio.to_thread(self.adapter.validate, env)

    async def create(self, request: Request, rtype: str) -> Response:
        rtype = self.known_type(rtype)
        who = self.principal(request, rtype, "write")
        raw, media = await self.body(request)
        rid = interactions.new_resource_id()
        env = await self.envelope(request, who, raw, media, "create", rid)
        resource = env.body
        self._same_type(resource, rtype)
        # If-None-Exist, or the search in the query string (as fhirpy's create(**search) sends it)
        criteria = [(k, v) for k, v in request.query_params.multi_items() if k not in ("_format", "_pretty")]
        if_none_exist = request.headers.get("if-none-exist") or (urlencode(criteria) if criteria else None)
        self._condition_scopes(request, who, rtype, if_none_exist)

        def perform(conn: sqlite3.Connection, mid: str) -> Written:
            return interactions.create(conn, resource, mid, rid=rid, if_none_exist=if_none_exist)

        done = await self.write(env, await self.validated(env), perform)
        assert isinstance(done, Written)
        if done.action == "matched":  # the resource that was there: a read, for a key that may read it
            if not http.allowed(who, rtype, "read"):
                done = replace(done, body=None)
            else:
                self.note([self._read_event(who, done.type, done.id, done.version, env.id, "create")])
        return self.written_reply(request, done)

    async def update(self, request: Request, rtype: str, rid: str) -> Response:
        rtype = self.known_type(rtype)
        who = self.principal(request, rtype, "write")
        raw, media = await self.body(request)
        env = await self.envelope(request, who, raw, media, "update", rid)
        resource = env.body
        self._same_type(resource, rtype)
        if resource.get("id") != rid:
            raise FhirError(
                400, "invalid", "The resource id must be given and equal the id in the URL.", f"{rtype}.id"
            )
        if_match = bundle.if_match_version(request.headers.get("if-match"))

        def perform(conn: sqlite3.Connection, mid: str) -> Written:
            return interactions.update(conn, resource, rid, mid, if_match=if_match)

        done = await self.write(env, await self.validated(env), perform)
        assert isinstance(done, Written)
        return self.written_reply(request, done)

    async def patch(self, request: Request, rtype: str, rid: str) -> Response:
        """A JSON Patch or merge patch (:mod:`adapters.fhir.patch`) applied to the current version and written
        as its update.

        A patch reads what it changes (a failing ``test`` tells whether a value is there), so it needs read
        access to the type as well as write. With If-Match the patch is for that version only (412
        otherwise); without it, a write that lands between the read and the commit makes the patch apply
        again to the newer version, and after :data:`RACE_RETRIES` such races the answer is 409."""
        rtype = self.known_type(rtype)
        who = self._patcher(request, rtype)
        document = read_patch(*await self.body(request, PATCH_MEDIA))
        if_match = bundle.if_match_version(request.headers.get("if-match"))
        return await _settled(lambda: self._patch_once(request, who, rtype, rid, document, if_match))

    def _patcher(self, request: Request, rtype: str) -> Principal:
        who = self.principal(request, rtype, "write")
        return self.principal(request, rtype, "read", who)

    async def _patch_once(
        self,
        request: Request,
        who: Principal,
        rtype: str,
        rid: str,
        document: Patch,
        if_match: int | None,
        still: Callable[[sqlite3.Connection], bool] | None = None,
    ) -> Response:
        """One attempt at a patch; :class:`_Raced` when the resource changed (or, with ``still``, no longer
        is the one a condition finds) before the commit: nothing of the attempt is kept."""
        cur = self.store.read(lambda c: stored.current(c, rtype, rid))
        if cur is None:
            raise FhirError(404, "not-found", f"No {rtype} has this id.")
        if cur.deleted:
            raise FhirError(410, "deleted", f"The {rtype} was deleted.", headers=http.version_headers(cur))
        if if_match is not None and if_match != cur.version:
            raise FhirError(
                412,
                "conflict",
                "The If-Match version is not the resource's current version; read it again and retry.",
            )
        patched = apply_patch(interactions.body_of(cur), document)
        env = await self.envelope(request, who, write_json(patched), "application/fhir+json", "patch", rid)

        def perform(
            conn: sqlite3.Connection, mid: str, body: dict[str, Any] = env.body, base: int = cur.version
        ) -> Written:
            now = stored.current(conn, rtype, rid)
            if now is None or now.deleted or now.version != base or (still is not None and not still(conn)):
                raise _Raced
            return interactions.update(conn, body, rid, mid, method="PATCH")

        done = await self.write(env, await self.validated(env), perform)
        assert isinstance(done, Written)
        return self.written_reply(request, done)

    def _matched(
        self, request: Request, who: Principal, rtype: str, what: str
    ) -> tuple[str | None, Callable[[sqlite3.Connection], bool]]:
        """The id of the one current ``rtype`` the query string finds (None when none does; 412 when more
        than one does), and a test that it still is the one, for the write's transaction. The search
        discloses what matches: read access to the type, and to what it chains to, is needed too."""
        self.principal(request, rtype, "read", who)
        query = request.url.query
        self._condition_scopes(request, who, rtype, query)
        ids = self.store.read(lambda c: interactions.matches(c, rtype, query, what))
        if len(ids) > 1:
            raise FhirError(412, "multiple-matches", f"The {what} matches more than one {rtype}.")

        def still(conn: sqlite3.Connection) -> bool:
            return interactions.matches(conn, rtype, query, what) == ids

        return (ids[0] if ids else None), still

    async def conditional_patch(self, request: Request, rtype: str) -> Response:
        """``PATCH /Type?search``: the patch of the one resource the search finds (404 for none)."""
        rtype = self.known_type(rtype)
        who = self._patcher(request, rtype)
        document = read_patch(*await self.body(request, PATCH_MEDIA))
        if_match = bundle.if_match_version(request.headers.get("if-match"))

        async def attempt() -> Response:
            rid, still = self._matched(request, who, rtype, "conditional patch")
            if rid is None:
                raise FhirError(404, "not-found", f"The conditional patch matches no {rtype}.")
            return await self._patch_once(request, who, rtype, rid, document, if_match, still)

        return await _settled(attempt)

    async def conditional_delete(self, request: Request, rtype: str) -> Response:
        """``DELETE /Type?search``: the deletion of the one resource the search finds (single, as HAPI
        FHIR does by default); none found deletes nothing."""
        rtype = self.known_type(rtype)
        who = self.principal(request, rtype, "write")

        async def attempt() -> Response:
            rid, still = self._matched(request, who, rtype, "conditional delete")
            if rid is None:
                out = operation_outcome(
                    [Issue("information", "informational", "", f"No {rtype} matches; nothing was deleted.")]
                )
                return self.reply(request, out, 200)
            return await self._delete_once(request, who, rtype, rid, still)

        return await _settled(attempt)

    async def conditional_update(self, request: Request, rtype: str) -> Response:
        rtype = self.known_type(rtype)
        who = self.principal(request, rtype, "write")
        query = request.url.query
        self._condition_scopes(request, who, rtype, query)
        raw, media = await self.body(request)
        env = await self.envelope(request, who, raw, media, "conditional-update")
        resource = env.body
        self._same_type(resource, rtype)
        if_match = bundle.if_match_version(request.headers.get("if-match"))

        def perform(conn: sqlite3.Connection, mid: str) -> Written:
            return interactions.conditional_update(conn, resource, query, mid, if_match=if_match)

        done = await self.write(env, await self.validated(env), perform)
        assert isinstance(done, Written)
        return self.written_reply(request, done)

    async def delete(self, request: Request, rtype: str, rid: str) -> Response:
        rtype = self.known_type(rtype)
        who = self.principal(request, rtype, "write")
        return await self._delete_once(request, who, rtype, rid)

    async def _delete_once(
        self,
        request: Request,
        who: Principal,
        rtype: str,
        rid: str,
        still: Callable[[sqlite3.Connection], bool] | None = None,
    ) -> Response:
        if_match = bundle.if_match_version(request.headers.get("if-match"))
        receipt = Receipt(
            "fhir", http.peer(request), who.name, attributes={"interaction": "delete", "resource_id": rid}
        )
        env = self.adapter.deletion(rtype, rid, receipt)

        def perform(conn: sqlite3.Connection, mid: str) -> Written:
            if still is not None and not still(conn):
                raise _Raced
            return interactions.delete(conn, rtype, rid, mid, if_match=if_match)

        done = await self.write(env, [], perform)
        assert isinstance(done, Written)
        if done.action == "unchanged":
            return Response(status_code=204)
        out = operation_outcome([Issue("information", "informational", "", f"The {rtype} was deleted.")])
        return self.reply(request, out, 200, {"ETag": done.etag})

    def _condition_scopes(self, request: Request, who: Principal, rtype: str, query: str | None) -> None:
        """A conditional write's search tells what matches: the other types it reads through a chain or
        ``_has`` need read access, as they do in a search (the conditional type's own needs are the
        caller's to check)."""
        if not query or rtype not in RESOURCE_TYPES:
            return
        found = search.parse_search(rtype, parse_qsl(query, keep_blank_values=True))
        for other in sorted(found.chained):
            self.principal(request, other, "read", who)

    def _bundle_scopes(self, request: Request, who: Principal, resource: Mapping[str, Any]) -> None:
        """Every type a Bundle touches needs its scope: write for what it writes, read for what it
        reads, and read for the types its conditional references and conditions search (they disclose
        a match)."""
        for entry in resource.get("entry") or []:
            if not isinstance(entry, dict):
                continue
            request_of: dict[str, Any] = entry["request"] if isinstance(entry.get("request"), dict) else {}
            url = str(request_of.get("url", "")).lstrip("/")
            rtype = url.split("/")[0].split("?")[0]
            method = str(request_of.get("method", "")).upper()
            # a PATCH reads what it changes, like the PATCH interaction
            accesses = {"GET": ("read",), "PATCH": ("write", "read")}.get(method, ("write",))
            if rtype in RESOURCE_TYPES:
                for access in accesses:
                    self.principal(request, rtype, access, who)
                condition = request_of.get("ifNoneExist")
                for query in (url.partition("?")[2], condition if isinstance(condition, str) else ""):
                    self._condition_scopes(request, who, rtype, query)
            for ref in bundle.references(entry.get("resource")):
                target = ref["reference"]
                if "?" in target and target.split("?", 1)[0] in RESOURCE_TYPES:
                    self.principal(request, target.split("?", 1)[0], "read", who)
                    self._condition_scopes(request, who, *target.split("?", 1))

    async def system_bundle(self, request: Request) -> Response:
        who = self.authenticated(request)
        raw, media = await self.body(request)
        env = await self.envelope(request, who, raw, media, "bundle")
        resource = env.body
        kind = resource.get("type") if resource.get("resourceType") == "Bundle" else None
        if kind not in bundle.KINDS:
            raise FhirError(
                400, "not-supported", "POST to the base takes a Bundle of type transaction or batch."
            )
        self._bundle_scopes(request, who, resource)
        representation = "return=representation" in request.headers.get("prefer", "")
        issues = await self.validated(env)
        invalid: dict[int, list[Issue]] = {}
        if kind == "batch":  # a batch entry that does not validate fails alone
            whole = []
            for issue in issues:
                m = _ENTRY.match(issue.location)
                if m is not None and issue.is_error:
                    invalid.setdefault(int(m.group(1)), []).append(issue)
                else:
                    whole.append(issue)
            issues = whole

        def perform(conn: sqlite3.Connection, mid: str) -> bundle.Processed:
            if kind == "batch":
                return bundle.batch(conn, resource, mid, representation=representation, invalid=invalid)
            return bundle.transaction(conn, resource, mid, representation=representation)

        done = await self.write(env, issues, perform)
        assert isinstance(done, bundle.Processed)
        if done.read:
            self._access(who, "ResourceRead", done.read, {"interaction": kind})
        out = {"resourceType": "Bundle", "id": new_id(), "type": f"{kind}-response", "entry": done.entries}
        return self.reply(request, out, 200)

    @staticmethod
    def _receipt(env: Envelope) -> Receipt:
        assert env.receipt is not None
        return env.receipt

    @staticmethod
    def _same_type(resource: Mapping[str, Any], rtype: str) -> None:
        if resource.get("resourceType") != rtype:
            raise FhirError(
                400, "invalid", "The resource's type differs from the type in the URL.", "resourceType"
            )

    # -- reads ------------------------------------------------------------------------------

    @staticmethod
    def _read_event(
        who: Principal, rtype: str, rid: str, version: int, message_id: str, interaction: str
    ) -> EventDraft:
        return EventDraft(
            "ResourceRead",
            message_id,
            f"user:{who.name}",
            "ok",
            details={
                **interactions.resource_details(rtype, rid),
                "version": version,
                "interaction": interaction,
            },
        )

    def version_reply(self, request: Request, v: Version, subset: Subset) -> Response:
        """One stored version: JSON as stored (byte for byte, decimals as written), or XML; the part of
        it ``_summary`` or ``_elements`` asks for (:mod:`adapters.fhir.subset`)."""
        headers = http.version_headers(v)
        if subset:
            return self.reply(request, apply_subset(interactions.body_of(v), subset), 200, headers)
        if http.response_format(request) == "json":
            return Response(v.body, 200, headers, JSON_MEDIA)
        return self.reply(request, interactions.body_of(v), 200, headers)

    def _access(
        self, who: Principal, event: str, versions: Sequence[Version], details: Mapping[str, Any]
    ) -> None:
        self.note(
            [
                EventDraft(
                    event,
                    v.message_id,
                    f"user:{who.name}",
                    "ok",
                    details={**interactions.resource_details(v.type, v.id), "version": v.version, **details},
                )
                for v in versions
            ]
        )

    def read(self, request: Request, rtype: str, rid: str) -> Response:
        rtype = self.known_type(rtype)
        who = self.principal(request, rtype, "read")
        subset = read_subset(request.query_params.multi_items())  # a bad one is refused before any read
        v = self.store.read(lambda c: stored.current(c, rtype, rid))
        if v is None:
            raise FhirError(404, "not-found", f"No {rtype} has this id.")
        if v.deleted:
            raise FhirError(410, "deleted", f"The {rtype} was deleted.", headers=http.version_headers(v))
        self._access(who, "ResourceRead", [v], {"interaction": "read"})
        return self.version_reply(request, v, subset)

    def vread(self, request: Request, rtype: str, rid: str, vid: str) -> Response:
        rtype = self.known_type(rtype)
        who = self.principal(request, rtype, "read")
        subset = read_subset(request.query_params.multi_items())
        if not vid.isdigit() or len(vid) > 18:
            raise FhirError(404, "not-found", f"No {rtype} version has this id.")
        v = self.store.read(lambda c: stored.version_of(c, rtype, rid, int(vid)))
        if v is None:
            raise FhirError(404, "not-found", f"No {rtype} version has this id.")
        if v.deleted:
            raise FhirError(
                410,
                "deleted",
                f"This version of the {rtype} is its deletion.",
                headers=http.version_headers(v),
            )
        self._access(who, "ResourceRead", [v], {"interaction": "vread"})
        return self.version_reply(request, v, subset)

    def history(self, request: Request, rtype: str | None, rid: str | None) -> Response:
        if rtype is not None:
            rtype = self.known_type(rtype)
        who = self.principal(request, rtype or "*", "read")
        count, offset = http.paging(request.query_params)
        since = http.instant(request.query_params.get("_since"))
        subset = read_subset(request.query_params.multi_items())

        def run(conn: sqlite3.Connection) -> tuple[int, list[Version], bool]:
            with _snapshot(conn):
                total, versions = stored.history(conn, rtype, rid, since, count, offset)
                known = rid is None or total > 0 or stored.current(conn, rtype or "", rid) is not None
                return total, versions, known

        total, versions, known = self.store.read(run)
        if not known:
            raise FhirError(404, "not-found", f"No {rtype} has this id.")
        fmt = http.response_format(request)
        entries = []
        for v in versions:
            method = v.method or ("DELETE" if v.deleted else "PUT")
            entry: dict[str, Any] = {
                "fullUrl": f"{http.base_url(request)}/{v.type}/{v.id}",
                "request": {"method": method, "url": f"{v.type}/{v.id}" if method != "POST" else v.type},
                "response": {
                    "status": "200 OK" if method != "POST" else "201 Created",
                    "etag": f'W/"{v.version}"',
                    "lastModified": v.last_updated,
                },
            }
            if not v.deleted:
                entry["resource"] = _resource_of(v, fmt, subset)
            entries.append(entry)
        self._access(
            who, "ResourceHistoryRead", [v for v in versions if not v.deleted], {"interaction": "history"}
        )
        path = "/".join(p for p in (rtype, rid, "_history") if p)
        echo = [
            (k, v) for k, v in request.query_params.multi_items() if k in ("_since", "_summary", "_elements")
        ]
        out = {
            "resourceType": "Bundle",
            "id": new_id(),
            "type": "history",
            "total": total,
            "link": http.links(http.base_url(request) + "/" + path, echo, count, offset, total),
            "entry": entries,
        }
        return self.reply(request, out)

    def search(self, request: Request, rtype: str, params: Sequence[tuple[str, str]]) -> Response:
        rtype = self.known_type(rtype)
        who = self.principal(request, rtype, "read")
        lenient = "handling=lenient" in request.headers.get("prefer", "")
        params = [(k, v) for k, v in params if k not in CLIENT_HINTS]
        subset = read_subset(params)  # cuts the matches; what they include comes whole
        s = search.parse_search(rtype, params, strict=not lenient)
        for chained in sorted(s.chained):  # a chain reads the type it searches
            self.principal(request, chained, "read", who)

        fmt = http.response_format(request)

        def run(conn: sqlite3.Connection) -> tuple[int | None, list[Version], list[Version]]:
            with _snapshot(conn):  # the total and the page from one state of the store
                total: int | None = None
                if s.summary_count or ("_total", "accurate") in s.echo:
                    total = stored.count(conn, rtype, s.where, s.args)
                elif s.total:  # beyond MAX_TOTAL a count costs more than the page: the total is left out
                    total = stored.count(conn, rtype, s.where, s.args, MAX_TOTAL)
                    total = total if total <= MAX_TOTAL else None
                if s.summary_count or s.count == 0:
                    return total, [], []
                found = stored.search(
                    conn, rtype, s.where, s.args, s.order_by, s.order_args, s.count, s.offset
                )
                included = _included(conn, s.includes, found)
                seen = {(v.type, v.id) for v in included}
                revincluded = _revincluded(conn, s.revincludes, found)
                return total, found, included + [v for v in revincluded if (v.type, v.id) not in seen]

        total, found, included = self.store.read(run)
        # an included resource is read too: only the types this key may read come back
        included = [v for v in included if http.allowed(who, v.type, "read")]
        cut = len(included) > MAX_INCLUDED
        included = included[:MAX_INCLUDED]
        base = http.base_url(request)
        out: dict[str, Any] = {"resourceType": "Bundle", "id": new_id(), "type": "searchset"}
        if total is not None:
            out["total"] = total
        out["link"] = http.links(
            f"{base}/{rtype}", s.echo, s.count, s.offset, total, more=len(found) == s.count
        )
        out["entry"] = [
            {
                "fullUrl": f"{base}/{v.type}/{v.id}",
                "resource": _resource_of(v, fmt, subset if mode == "match" else Subset()),
                "search": {"mode": mode},
            }
            for mode, vs in (("match", found), ("include", included))
            for v in vs
        ]
        if cut:
            note = Issue(
                "warning",
                "too-costly",
                "",
                f"More resources are included than the {MAX_INCLUDED} one page may carry; "
                "ask for fewer matches per page (_count).",
            )
            out["entry"].append({"resource": operation_outcome([note]), "search": {"mode": "outcome"}})
        if not out["entry"]:
            del out["entry"]
        if found or included:
            self._access(who, "ResourceSearchRead", [*found, *included], {"interaction": "search-type"})
        else:
            self.note(
                [
                    EventDraft(
                        "ResourcesSearched", None, f"user:{who.name}", "0 found", details={"type": rtype}
                    )
                ]
            )
        return self.reply(request, out)

    def metadata(self, request: Request) -> Response:
        return self.reply(request, capability_statement(INTERACTIONS, http.base_url(request)))


@contextlib.contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """A read transaction: the statements inside see one state of the store."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def _resource_of(v: Version, fmt: http.Format, subset: Subset | None = None) -> Any:
    """A stored version inside a Bundle: for JSON its stored bytes as they are, for XML its resource; the
    part ``subset`` keeps, when it keeps a part."""
    if subset:
        return apply_subset(interactions.body_of(v), subset)
    return orjson.Fragment(v.body) if fmt == "json" else interactions.body_of(v)


def _included(
    conn: sqlite3.Connection, includes: Sequence[search.Include], found: Sequence[Version]
) -> list[Version]:
    """The resources that ``_include`` asks for, referenced by the matches (each once, none twice)."""
    if not includes or not found:
        return []
    wanted: list[tuple[str, str]] = []
    for inc in includes:
        param = search.params_of(inc.source_type).get(inc.param)
        if param is None or param.kind != "reference":
            raise FhirError(400, "not-supported", "_include names a parameter that is not a reference.")
        for v in found:
            if v.type != inc.source_type:
                continue
            for row in search.index_rows(v.type, interactions.body_of(v)):
                if row.param != inc.param or "/" not in row.value or "://" in row.value:
                    continue
                ttype, _, tid = row.value.partition("/")
                if not inc.target_type or ttype == inc.target_type:
                    wanted.append((ttype, tid))
    matched = {(v.type, v.id) for v in found}
    return stored.current_many(conn, [w for w in wanted if w not in matched])


def _revincluded(
    conn: sqlite3.Connection, revincludes: Sequence[search.Include], found: Sequence[Version]
) -> list[Version]:
    """The resources that ``_revinclude`` asks for: those whose reference parameter names a match (each
    once, none that is a match), one more than :data:`MAX_INCLUDED` at most, so that a cut is seen."""
    if not revincludes or not found:
        return []
    refs = [f"{v.type}/{v.id}" for v in found]
    wanted: dict[tuple[str, str], None] = {}
    for inc in revincludes:
        for ref in stored.referring(conn, inc.source_type, [inc.param], refs, MAX_INCLUDED + 1):
            wanted[ref] = None
    matched = {(v.type, v.id) for v in found}
    return stored.current_many(conn, [w for w in wanted if w not in matched][: MAX_INCLUDED + 1])


__all__ = ["FORM", "INTERACTIONS", "FhirAPI", "Interaction"]
