"""HTTP conventions of the FHIR API: content negotiation, OperationOutcome answers, version headers,
paging links and access scopes; what every ``/fhir`` route shares, apart from the routes themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Literal, Protocol
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import Response

from adapters.fhir.outcome import FhirError, operation_outcome
from adapters.fhir.resources import serialize
from gateway.bodies import BodyLimits, BodyRefused, read_limited
from gateway.security import Principal

log = logging.getLogger("gateway.fhir")

BASE = "/fhir"
MAX_PAGE = 1000


async def read_body(request: Request, limits: BodyLimits) -> bytes:
    """The request body within ``limits``; a :class:`FhirError` 413 (``too-costly``) or 408 (``timeout``)
    as soon as it breaks one."""
    try:
        return await read_limited(request, limits)
    except BodyRefused as exc:
        raise FhirError(exc.status, "too-costly" if exc.status == 413 else "timeout", exc.reason) from None


class Versioned(Protocol):
    @property
    def version(self) -> int: ...
    @property
    def last_updated(self) -> str: ...


Format = Literal["json", "xml"]
_FORMATS: dict[str, Format] = {
    "json": "json",
    "application/json": "json",
    "application/fhir+json": "json",
    "application/json+fhir": "json",
    "xml": "xml",
    "application/xml": "xml",
    "application/fhir+xml": "xml",
    "application/xml+fhir": "xml",
    "text/xml": "xml",
}


def response_format(request: Request) -> Format:
    """``json`` or ``xml``, from ``_format`` or ``Accept``; 406 when neither can be served."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        chosen = _FORMATS.get(fmt.split(";")[0].strip().lower())
        if chosen is None:
            raise FhirError(406, "not-supported", "_format must be json or xml (or a FHIR media type).")
        return chosen
    accept = request.headers.get("accept", "")
    if not accept.strip():
        return "json"
    wanted = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    for media in wanted:
        if media in _FORMATS:
            return _FORMATS[media]
        if media in ("*/*", "application/*", "text/*", "application/fhir"):
            return "json"
    raise FhirError(406, "not-supported", "Accept must allow application/fhir+json or application/fhir+xml.")


def outcome_response(exc: FhirError, fmt: Format = "json") -> Response:
    body, media = serialize(operation_outcome(exc.issues), fmt)
    return Response(body, status_code=exc.status, media_type=media, headers=exc.headers)


def peer(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else ""


def http_date(instant: str) -> str:
    return format_datetime(datetime.fromisoformat(instant.replace("Z", "+00:00")), usegmt=True)


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + BASE


def version_headers(v: Versioned) -> dict[str, str]:
    return {"ETag": f'W/"{v.version}"', "Last-Modified": http_date(v.last_updated)}


def allowed(who: Principal, rtype: str, access: str) -> bool:
    """Whether ``who`` may ``access`` (read or write) resources of ``rtype``: ``fhir:read`` /
    ``fhir:write``, ``admin``, or a SMART system scope (``system/Patient.read``, ``system/*.*``)."""
    scopes = who.scopes
    if "admin" in scopes or f"fhir:{access}" in scopes:
        return True
    return any(f"system/{t}.{a}" in scopes for t in (rtype, "*") for a in (access, "*"))


def instant(value: str | None) -> str | None:
    """``_since`` as the store's instant form; 400 unless it is an instant with a time zone."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise FhirError(
            400, "invalid", "_since must be an instant with a time zone, such as 2026-01-01T00:00:00Z."
        )
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def paging(query: Mapping[str, str]) -> tuple[int, int]:
    count, offset = query.get("_count", "20"), query.get("_offset", "0")
    if not (count.isdigit() and offset.isdigit() and len(count) <= 9 and len(offset) <= 12):
        raise FhirError(400, "invalid", "_count and _offset must be whole numbers, not too large.")
    return min(int(count), MAX_PAGE), int(offset)


def links(
    url: str,
    echo: Sequence[tuple[str, str]],
    count: int,
    offset: int,
    total: int | None,
    *,
    more: bool | None = None,
) -> list[dict[str, str]]:
    def at(off: int) -> str:
        return url + "?" + urlencode([*echo, ("_count", str(count)), ("_offset", str(off))])

    links = [{"relation": "self", "url": at(offset)}]
    has_next = (offset + count < total) if total is not None else bool(more)
    if count and has_next:
        links.append({"relation": "next", "url": at(offset + count)})
    if count and offset > 0:
        links.append({"relation": "previous", "url": at(max(0, offset - count))})
    return links


def unexpected(request: Request, exc: Exception) -> Response:
    """A failure the API did not foresee: logged by kind only (never a value), answered 500."""
    route = getattr(request.scope.get("route"), "path", "")  # the template (/fhir/{rtype}/{rid}), never ids
    log.error("fhir request failed", extra={"error": type(exc).__name__, "route": route})
    return outcome_response(
        FhirError(500, "exception", "The server could not process the request."), safe_format(request)
    )


def safe_format(request: Request) -> Format:
    try:
        return response_format(request)
    except FhirError:
        return "json"
