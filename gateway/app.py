"""The HTTP API (FastAPI): ingest, messages, lineage and health.

Every endpoint requires an API key with the endpoint's scope, but ``/healthz``, the published JSON
schemas (``/api/schemas/{name}``), the OpenAPI document and its pages, the FHIR CapabilityStatement
(``/fhir/metadata``), and the webhook channels, which take the platform's signature instead.
Errors are JSON ``{"error": code, "detail": sentence}`` and never carry payload
values. Ingest bodies are read with a size limit of our own (uvicorn has none).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.adapter import Adapter
from gateway.bodies import BodyLimits, BodyRefused, CloseUnreadBodies, read_limited
from gateway.envelope import Receipt, utc_moment
from gateway.errors import AuthError, ConfigError, StoreError
from gateway.inventory import InventorySync, StockCount, inventory_view
from gateway.journey import journey, journey_png, journey_svg
from gateway.lineage import EventDraft, Verification
from gateway.metrics import Metrics
from gateway.openapi_doc import describe
from gateway.pipeline import Intake
from gateway.runtime import Runtime
from gateway.security import KeyRing, Principal
from gateway.store import EventQuery, Expunger, MessageFilter, Store
from gateway.store.subjects import BodyErased
from gateway.webhooks import Refusals, Signature

log = logging.getLogger("gateway.http")

ULID_SHAPE = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Ingest:
    """One HTTP ingest channel, ``POST /ingest/{adapter name}``.

    A channel takes an API key with scope ``ingest:{adapter name}``, or, for a
    webhook platform that cannot send one, a verified :class:`Signature`
    instead. ``attributes`` names the request headers copied into the receipt
    for the adapter (a webhook's topic and ids).
    """

    adapter: Adapter
    content_types: frozenset[str]
    media_hint: str
    """The 415 answer: which content types to send."""
    title: str
    description: str
    signature: Signature | None = None

    @property
    def attributes(self) -> frozenset[str]:
        """The adapter's ``transport_headers`` (lower-case), where it declares any."""
        return frozenset(getattr(self.adapter, "transport_headers", ()))


_JSON = frozenset({"application/json"})
_XML = frozenset({"application/xml", "text/xml"})


def ingest_channels(
    adapters: Mapping[str, Adapter], signatures: Mapping[str, Signature]
) -> dict[str, Ingest]:
    """The HTTP ingest channels of the given built-in adapters; webhook channels take their signature."""
    known: dict[str, Callable[[Adapter], Ingest]] = {
        "hl7v2": lambda a: Ingest(
            a,
            frozenset({"x-application/hl7-v2+er7", "application/hl7-v2", "text/plain"}),
            "Send HL7 v2 as x-application/hl7-v2+er7 or text/plain.",
            "an HL7 v2 message or batch",
            "Answers with the ACK: 200 for AA/CA, 4xx/503 otherwise.",
        ),
        "iso20022": lambda a: Ingest(
            a,
            _XML | {"application/iso20022+xml"},
            "Send ISO 20022 messages as application/xml or text/xml.",
            "an ISO 20022 message (pain, pacs, camt; optionally in a head.001 envelope)",
            "Answers with the status report: pain.002 for pain.001, pacs.002 for pacs.008 and pacs.004, "
            "admi.007 otherwise; 200 when accepted (ACCP/ACTC), 4xx/503 with RJCT.",
        ),
        "poslog": lambda a: Ingest(
            a,
            _XML,
            "Send POSLog as application/xml or text/xml.",
            "an ARTS POSLog document (one transaction or many)",
            "200 once every transaction is stored; 400/422 with the issues otherwise.",
        ),
        "pos_json": lambda a: Ingest(
            a,
            _JSON,
            "Send POS JSON as application/json.",
            "a POS sale, return, void or reservation in the pos_json/1 shape (GET /api/schemas/pos_json)",
            "200 once stored; 400/422 with the issues otherwise; 409 when the ticket was taken with other content.",
        ),
        "shopify": lambda a: Ingest(
            a,
            _JSON,
            "Shopify webhooks are application/json.",
            "a Shopify webhook (orders, refunds, inventory levels, products)",
            "Authenticated by X-Shopify-Hmac-Sha256, not an API key. 200 once stored (also for a redelivery); "
            "401 for a bad signature, with nothing stored.",
            signatures.get("shopify"),
        ),
        "square": lambda a: Ingest(
            a,
            _JSON,
            "Square webhooks are application/json.",
            "a Square webhook event (payments, orders, refunds, inventory counts)",
            "Authenticated by x-square-hmacsha256-signature, not an API key. 200 once stored (also for a "
            "redelivery); 401 for a bad signature, with nothing stored.",
            signatures.get("square"),
        ),
    }
    return {name: make(adapters[name]) for name, make in known.items() if name in adapters}


class SubjectErasure(BaseModel):
    """The data subject to erase, as the route's subject header carries it (FHIR: ``Patient/<id>``)."""

    model_config = ConfigDict(extra="forbid")
    subject: str = Field(min_length=1, max_length=512)


class APIError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


_REPLY = "The body is the protocol's own reply (an HL7 v2 ACK, an ISO 20022 status report …)"
INGEST_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": f"Accepted and stored (HL7 AA/CA). {_REPLY}."},
    400: {"description": f"Not valid (HL7 AE/CE), or an empty body. {_REPLY}, with the reason."},
    401: {
        "description": "No API key, one the gateway does not know, or a webhook signature that does not match."
    },
    403: {"description": "The API key lacks the channel's ingest scope."},
    408: {"description": "The body did not arrive within http.body_timeout_s."},
    413: {"description": "The body is larger than http.max_body_bytes."},
    415: {"description": "A content type the channel does not take."},
    422: {"description": f"Refused (HL7 AR/CR: an unsupported version or type). {_REPLY}, with the reason."},
    503: {"description": f"The store could not keep it durably (HL7 AR): send it again later. {_REPLY}."},
}


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


async def read_body(request: Request, limits: BodyLimits) -> bytes:
    """Read the request body within ``limits``: 413 as soon as it is too large, 408 when too slow."""
    try:
        return await read_limited(request, limits)
    except BodyRefused as exc:
        code = "payload_too_large" if exc.status == 413 else "request_timeout"
        raise APIError(exc.status, code, exc.reason) from None


def _peer(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else ""


MessageStatus = Literal["accepted", "rejected", "batch"]
TIME_HELP = "ISO 8601 date or date-time; UTC if it names no zone."


def _timestamp(value: str | None, name: str) -> str | None:
    """A query's time as UTC (see :func:`gateway.envelope.utc_moment`), or 400."""
    if value is None:
        return None
    try:
        return utc_moment(value)
    except ValueError:
        raise APIError(
            400, "bad_parameter", f"{name} must be an ISO 8601 date or date-time (UTC if it names no zone)."
        ) from None


def create_app(
    *,
    store: Store,
    intake: Intake,
    keyring: KeyRing,
    ingest_channels: Mapping[str, Ingest],
    body_limits: BodyLimits,
    runtime: Runtime | None = None,
    metrics: Metrics | None = None,
    verify: Callable[[], Verification] | None = None,
    schemas: Mapping[str, dict[str, Any]] | None = None,
    expungers: Sequence[Expunger] = (),
) -> FastAPI:
    schemas = dict(schemas or {})
    app = FastAPI(
        title="Connector gateway", version="0.1.0", docs_url="/api/docs", openapi_url="/api/openapi.json"
    )
    app.add_middleware(CloseUnreadBodies)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.detail)

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError) -> JSONResponse:
        code = "unauthorized" if exc.status == 401 else "forbidden"
        who = getattr(request.state, "principal", None)
        if exc.status == 403 and isinstance(who, Principal):
            target = request.path_params.get("message_id")
            # only an id of ours goes into lineage, never whatever text the caller put in the path
            audit(
                who,
                "AccessDenied",
                "",
                "forbidden",
                target if target and ULID_SHAPE.fullmatch(target) else None,
            )
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, code, exc.reason, headers)

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
        return _error(503, "store_unavailable", "The store cannot answer now.")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        names = sorted({".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]) for e in exc.errors()})
        return _error(400, "bad_parameter", "Invalid parameter: " + ", ".join(names) + ".")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http_error", str(exc.detail))

    loop = asyncio.get_running_loop()
    refusals = Refusals()

    def audit(who: Principal, event: str, scope: str, outcome: str, envelope_id: str | None = None) -> None:
        """Record a read of messages or lineage as a lineage event (who, which scope, what outcome).

        Endpoints run in a thread pool; the event is handed to the loop that owns the store.
        """
        draft = EventDraft(event, envelope_id, f"user:{who.name}", outcome=outcome, details={"scope": scope})
        loop.call_soon_threadsafe(store.note_events, [draft])

    def principal(request: Request) -> Principal:
        who = keyring.from_headers(request.headers)
        request.state.principal = who
        return who

    def scoped(scope: str) -> Any:
        def dep(request: Request) -> Principal:
            who = principal(request)
            KeyRing.require(who, scope)
            return who

        return Depends(dep)

    def json_body(model: type[M]) -> Any:
        """A JSON body as ``model``, read within the body limits only once the caller is authenticated
        (a body parameter of FastAPI's own would be read whole before any dependency runs)."""

        async def dep(request: Request, who: Principal = Depends(principal)) -> M:
            raw = await read_body(request, body_limits)
            try:
                return model.model_validate_json(raw)
            except ValidationError as exc:
                raise RequestValidationError(
                    [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_input=False)]
                ) from None

        return Depends(dep)

    def documented(model: type[BaseModel]) -> dict[str, Any]:
        """The OpenAPI request body of a route that reads ``model`` through :func:`json_body`."""
        schema = {"content": {"application/json": {"schema": model.model_json_schema()}}, "required": True}
        return {"requestBody": schema}

    def add_ingest(name: str, channel: Ingest) -> None:
        def media_type(request: Request) -> str:
            """The request's content type, or 415 when the channel does not take it."""
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type not in channel.content_types:
                raise APIError(415, "unsupported_media_type", channel.media_hint)
            return content_type

        async def deliver(request: Request, who: str, content_type: str, body: bytes) -> Response:
            if not body.strip():
                raise APIError(400, "empty_body", "The request body is empty.")
            receipt = Receipt(
                listener="http",
                peer=_peer(request),
                client=who,
                content_type=content_type,
                attributes={k: request.headers[k] for k in channel.attributes if k in request.headers},
            )
            result = await intake.receive(channel.adapter, body, receipt)
            reply = result.combined()
            intake.replied(result, must_answer=True)
            return Response(reply.body, status_code=reply.status, media_type=reply.content_type)

        async def with_key(request: Request, who: Principal = scoped(f"ingest:{name}")) -> Response:
            content_type = media_type(request)
            return await deliver(request, who.name, content_type, await read_body(request, body_limits))

        async def with_signature(request: Request) -> Response:
            signature = channel.signature
            assert signature is not None
            body = await read_body(request, body_limits)
            try:
                signature.verify(body, request.headers)  # before anything else: a refusal keeps nothing
            except AuthError as exc:
                log.warning("webhook refused", extra={"channel": name, "reason": exc.reason})
                draft = refusals.note(name, _peer(request), time.monotonic())
                if draft is not None:
                    store.note_events([draft])
                raise
            return await deliver(request, f"webhook:{name}", media_type(request), body)

        app.add_api_route(
            f"/ingest/{name}",
            with_key if channel.signature is None else with_signature,
            methods=["POST"],
            tags=["ingest"],
            summary=f"Take {channel.title}",
            description=channel.description,
            response_class=Response,
            responses=INGEST_RESPONSES,
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {t: {"schema": {"type": "string"}} for t in sorted(channel.content_types)},
                },
                **({"security": []} if channel.signature is not None else {}),
            },
        )

    for name, channel in ingest_channels.items():
        add_ingest(name, channel)

    @app.get("/api/messages", tags=["messages"])
    def list_messages(
        control_id: str | None = None,
        protocol: str | None = None,
        message_type: str | None = None,
        status: MessageStatus | None = None,
        since: Annotated[str | None, Query(description=TIME_HELP)] = None,
        until: Annotated[str | None, Query(description=TIME_HELP + " Exclusive.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before: Annotated[
            str | None, Query(pattern=f"^{ULID_SHAPE.pattern}$", description="A message id.")
        ] = None,
        who: Principal = scoped("messages:read"),
    ) -> dict[str, Any]:
        """Messages, newest first; page with ``before=<last id>``."""
        rows = store.list_messages(
            MessageFilter(
                control_id=control_id,
                protocol=protocol,
                message_type=message_type,
                status=status,
                since=_timestamp(since, "since"),
                until=_timestamp(until, "until"),
                limit=limit,
                before_id=before,
            )
        )
        items = [r.as_dict() for r in rows]
        audit(who, "MessagesSearched", "messages:read", f"{len(items)} found")
        return {"items": items, "next_before": items[-1]["id"] if len(items) == limit else None}

    @app.get("/api/messages/{message_id}", tags=["messages"])
    def get_message(message_id: str, who: Principal = scoped("messages:read")) -> dict[str, Any]:
        row = store.get_message(message_id)
        if row is None:
            raise APIError(404, "not_found", "No message has this id.")
        audit(who, "MessageRead", "messages:read", "ok", message_id)
        out = row.as_dict()
        out["deliveries"] = [d.as_dict() for d in store.deliveries_of(message_id)]
        out["lineage"] = [e.as_dict() for e in store.lineage_of(message_id)]
        return out

    @app.get("/api/deliveries", tags=["deliveries"])
    def list_deliveries(
        status: Annotated[str | None, Query(pattern="^(pending|delivered|dead)$")] = None,
        sink: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        who: Principal = scoped("messages:read"),
    ) -> dict[str, Any]:
        """Outbox rows, newest first: ``status=dead`` lists the dead letters."""
        return {"items": [d.as_dict() for d in store.list_deliveries(status, sink, limit)]}

    @app.post("/api/messages/{message_id}/replay", tags=["deliveries"])
    async def replay(message_id: str, who: Principal = scoped("admin")) -> dict[str, Any]:
        """Make the message's dead-lettered deliveries pending again (recorded as ``Replayed``)."""
        if store.get_message(message_id) is None:
            raise APIError(404, "not_found", "No message has this id.")
        count = await store.replay(message_id, None, f"user:{who.name}")
        if count == 0:
            raise APIError(409, "nothing_to_replay", "The message has no dead-lettered delivery.")
        if runtime is not None and runtime.engine is not None:
            runtime.engine.notify({d.sink for d in store.deliveries_of(message_id)})
        return {"replayed": count}

    @app.post("/api/subjects/erase", tags=["admin"], openapi_extra=documented(SubjectErasure))
    async def erase_subject(
        who: Principal = scoped("admin"), erasure: SubjectErasure = json_body(SubjectErasure)
    ) -> dict[str, Any]:
        """Erase a data subject, as ``gateway subjects erase`` does: their encrypted bodies become
        unreadable for good, their pending deliveries are dead-lettered, and for ``Patient/<id>`` the FHIR
        store's Patient and the resources about it are expunged. The value goes in the body, never in a
        URL that access logs would keep."""
        done = await store.erase_subject(erasure.subject, f"user:{who.name}", expungers)
        return {"bodies": done.bodies, "records": done.records}

    @app.post("/api/admin/reload", tags=["admin"])
    async def reload(who: Principal = scoped("admin")) -> dict[str, Any]:
        """Read the config file again and switch routing and sinks; an invalid file changes nothing."""
        if runtime is None:
            raise APIError(503, "not_available", "This gateway cannot reload.")
        try:
            settings = await runtime.reload()
        except ConfigError as exc:
            raise APIError(422, "invalid_config", str(exc)) from None
        return {"ok": True, "routes": len(settings.routes), "sinks": sorted(settings.sinks)}

    def sync() -> InventorySync:
        if runtime is None or runtime.inventory is None:
            raise APIError(404, "inventory_off", "This gateway keeps no inventory (no inventory section).")
        return runtime.inventory

    @app.get("/api/inventory/{sku}", tags=["inventory"])
    def inventory_show(
        sku: str,
        movements: Annotated[int, Query(ge=1, le=1000)] = 20,
        who: Principal = scoped("inventory:read"),
    ) -> dict[str, Any]:
        """A SKU's on hand, reserved and available-to-sell, per location, with its last movements and
        what each channel was last sent."""
        return inventory_view(store, sync().config, sku, movements)

    @app.put(
        "/api/inventory/{sku}/locations/{location}", tags=["inventory"], openapi_extra=documented(StockCount)
    )
    async def inventory_count(
        sku: str,
        location: str,
        who: Principal = scoped("inventory:write"),
        count: StockCount = json_body(StockCount),
    ) -> dict[str, Any]:
        """Set the counted quantity on hand at a location (a stock take); recorded as a movement."""
        inventory = sync()
        await store.adjust_stock(sku, location, count.on_hand, f"user:{who.name}")
        inventory.notify({sku})
        return inventory_view(store, inventory.config, sku, 20)

    @app.post("/api/inventory/reconcile", tags=["inventory"])
    async def inventory_reconcile(
        fix: bool = False, who: Principal = scoped("inventory:write")
    ) -> dict[str, Any]:
        """Compare the levels channels reported with the ledger; with ``fix=true`` push the ledger's level
        again to every channel that drifted."""
        drift = await sync().reconcile(fix, f"user:{who.name}")
        return {"fix": fix, "drift": [d.as_dict() for d in drift]}

    @app.get("/api/schemas/{name}", tags=["ingest"])
    def published_schema(name: str) -> dict[str, Any]:
        """The JSON Schema of a JSON ingest format (``pos_json``)."""
        schema = schemas.get(name)
        if schema is None:
            raise APIError(404, "not_found", "No published schema has this name.")
        return schema

    @app.get("/metrics", tags=["health"])
    def prometheus(who: Principal = scoped("metrics:read")) -> Response:
        """Prometheus text format."""
        if metrics is None:
            raise APIError(503, "not_available", "Metrics are off.")
        circuits = runtime.circuits() if runtime is not None else {}
        return Response(metrics.render(store.backlog(), circuits), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/messages/{message_id}/lineage", tags=["lineage"])
    def message_lineage(message_id: str, who: Principal = scoped("lineage:read")) -> dict[str, Any]:
        if store.get_message(message_id) is None:
            raise APIError(404, "not_found", "No message has this id.")
        events = [e.as_dict() for e in store.lineage_of(message_id)]
        audit(who, "LineageQueried", "lineage:read", "ok", message_id)
        return {"envelope_id": message_id, "events": events}

    @app.get("/api/lineage/messages/{message_id}", tags=["lineage"])
    def trace(message_id: str, who: Principal = scoped("lineage:read")) -> dict[str, Any]:
        """A message's journey: the message, what it carried or produced, its deliveries, every event."""
        row = store.get_message(message_id)
        if row is None:
            raise APIError(404, "not_found", "No message has this id.")
        out = {
            "message": row.as_dict(),
            "children": [c.as_dict() for c in store.children_of(message_id)],
            "deliveries": [d.as_dict() for d in store.deliveries_of(message_id)],
            "events": [e.as_dict() for e in store.lineage_of(message_id)],
        }
        audit(who, "LineageQueried", "lineage:read", "ok", message_id)
        return out

    @app.get("/api/lineage/messages/{message_id}/graph", tags=["lineage"])
    def trace_graph(
        message_id: str,
        fmt: Annotated[Literal["svg", "png"], Query(alias="format")] = "svg",
        who: Principal = scoped("lineage:read"),
    ) -> Response:
        """A message's journey as a picture for auditors (source, message, route, deliveries, parent and
        children, event timeline): SVG by default, or PNG. Never payload values."""
        j = journey(store, message_id)
        if j is None:
            raise APIError(404, "not_found", "No message has this id.")
        audit(who, "LineageQueried", "lineage:read", "ok", message_id)
        headers = {
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
            "X-Content-Type-Options": "nosniff",
        }
        if fmt == "png":
            return Response(journey_png(j), media_type="image/png", headers=headers)
        return Response(journey_svg(j), media_type="image/svg+xml", headers=headers)

    @app.post("/api/lineage/search", tags=["lineage"], openapi_extra=documented(EventQuery))
    def search_lineage(
        who: Principal = scoped("lineage:read"), query: EventQuery = json_body(EventQuery)
    ) -> dict[str, Any]:
        """Search lineage: by business key, control id, sender, protocol, type, route, sink, event,
        outcome and time range; page with ``after_seq`` = the returned ``next_after_seq``.

        Criteria travel in the body, not the URL, so that proxies never log a patient id; a key is
        looked up by its keyed pseudonym and never stored.
        """
        events = store.search_events(
            query.model_copy(
                update={"since": _timestamp(query.since, "since"), "until": _timestamp(query.until, "until")}
            )
        )
        audit(who, "LineageQueried", "lineage:read", f"{len(events)} events found")
        full = len(events) == query.limit
        return {"events": [e.as_dict() for e in events], "next_after_seq": events[-1].seq if full else None}

    @app.get("/api/messages/{message_id}/raw", tags=["messages"])
    def message_raw(message_id: str, who: Principal = scoped("admin")) -> Response:
        """The message bytes as stored: as received, or redacted where the adapter must not keep
        them (ISO 8583 card data); admin scope, as they carry PHI."""
        try:
            raw = store.get_raw(message_id)
        except BodyErased:
            audit(who, "MessageBodyRead", "admin", "erased", message_id)
            raise APIError(
                410, "erased", "The message's data subject was erased; its body cannot be read."
            ) from None
        if raw is None:
            raise APIError(404, "not_found", "No message has this id.")
        audit(who, "MessageBodyRead", "admin", "ok", message_id)
        return Response(raw, media_type="application/octet-stream")

    @app.get("/api/lineage/verify", tags=["lineage"])
    def verify_lineage(who: Principal = scoped("lineage:read")) -> dict[str, Any]:
        """Recompute the hash chain against the signed checkpoints: ``ok`` is false at the first
        altered, missing or moved event, a cut tail, or a rewritten one."""
        return (verify() if verify is not None else store.verify_lineage()).as_dict()

    @app.get("/healthz", tags=["health"])
    async def healthz() -> JSONResponse:
        """Store writability (decides the status) and each sink's circuit and backlog."""
        ok = await store.check()
        sinks = runtime.sink_states() if runtime is not None else {}
        body = {"ok": ok, "store": "writable" if ok else "unavailable", "sinks": sinks}
        return JSONResponse(body, status_code=200 if ok else 503)

    describe(app, open_paths={"/healthz", "/api/schemas/{name}"})  # (the other open routes mark themselves)
    return app
