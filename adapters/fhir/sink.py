"""The ``fhir`` sink: each FHIR write the gateway took is made again on another FHIR R4 server.

A route sends envelopes of the ``fhir`` protocol (what the ``/fhir`` API writes:
see :mod:`adapters.fhir.api`) to a sink of type ``fhir``; each delivery becomes
one write on the downstream server at ``base_url``, always in JSON
(``application/fhir+json``), whatever format the client used. The resource is
the envelope's parsed body when it has one, else its stored bytes read again
with :func:`adapters.fhir.resources.read_resource` (JSON or XML).

=====================================  ==============================================================
``interaction`` header                 request(s)
=====================================  ==============================================================
``create``, ``update``,                ``GET {base}/{type}/{id}``, then ``PUT {base}/{type}/{id}``
``conditional-update``                 with the gateway's id (``resource_id``, else the body's id):
                                       a retried delivery is an update, never a second resource.
                                       ``If-Match`` carries the ETag the GET answered (200); none
                                       after 404 or 410 (update as create)
``delete``                             ``DELETE {base}/{type}/{id}``
``bundle``                             ``POST {base}`` with the transaction or batch Bundle
=====================================  ==============================================================

The resource sent carries the gateway's id and no ``meta.versionId`` or
``meta.lastUpdated`` (the downstream keeps versions of its own). Requests carry
``Accept: application/fhir+json``, ``Prefer: return=minimal``,
``Idempotency-Key`` (the delivery id), ``X-Gateway-Envelope-Id``,
``X-Gateway-Attempt``, the configured headers and, with ``bearer_token_env``,
``Authorization: Bearer`` (read at ``open``; a missing variable is a
:class:`~gateway.errors.ConfigError`), as the ``http`` sink sends them.

Outcome of one attempt (the ``http`` sink's conventions, :mod:`gateway.sinks.http`):

==========================================  ========================================================
2xx (``PUT``, ``POST``); 2xx, 404, 410      delivered (a resource already gone is deleted)
(``DELETE``)
409 (a version conflict, or busy as HAPI    ``DeliveryRetryable("http_409")``
answers), 412 (changed downstream between
our GET and PUT: the next attempt reads
the new version)
408, 429, 5xx                               ``DeliveryRetryable("http_<status>")``, ``Retry-After``
                                            as the hint
3xx (redirects are not followed), other     ``DeliveryRejected("http_<status>")``
4xx (400, 401, 403, 404, 405, 422 ...),
also when the GET answers so
no status within ``timeout_s`` (for each    ``DeliveryRetryable``: ``timeout``, ``connect_timeout``,
request), network and TLS failures          ``connect_error``, ``tls_error``, ``network_error``,
                                            ``protocol_error``, ``transport_error``
an envelope this sink cannot deliver (not   ``DeliveryRejected``: ``not_fhir``, ``unreadable``,
``fhir``, unreadable, without type or id)   ``no_resource_type``, ``no_resource_id``,
                                            ``unsupported_interaction``
==========================================  ========================================================

Reasons name the sink, the method, the resource type, the status with its
standard phrase and the ``issue.code`` values of an OperationOutcome the
downstream answered: never a value of the resource, and never the
OperationOutcome's ``diagnostics`` or ``expression`` (a server may echo
patient data there). A response body is read up to
:data:`~gateway.sinks.http.MAX_RESPONSE_BYTES` and only an error's is parsed;
nothing is logged.

Deliveries of one resource should keep their order: give routes to this sink
``order_by: resource_id``. A Bundle is posted as it was received: the
downstream assigns its own ids to the entries it creates, so a Bundle
delivered twice (its answer lost) may create them twice.

``check`` is ``GET {base}/metadata`` answering 200. The sink never sleeps and
never retries: the delivery engine does.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import orjson
from yarl import URL

from adapters.fhir.outcome import FhirError
from adapters.fhir.resources import (
    ID_PATTERN,
    JSON_MEDIA,
    JSON_TYPES,
    RESOURCE_TYPES,
    XML_TYPES,
    load_json,
    media_type,
    read_resource,
    write_json,
)
from gateway.config import FHIRSinkConfig
from gateway.sink import Delivery, DeliveryError, DeliveryRejected, DeliveryRetryable
from gateway.sinks._net import CHECK_TIMEOUT_S, read_capped

# the http sink's own helpers: one way to name a status, a network failure and a Retry-After
from gateway.sinks.http import (
    MAX_RESPONSE_BYTES,
    _status_line,
    open_session,
    parse_retry_after,
    transport_error,
)

__all__ = ["FHIRSink"]

ACCEPT: Final = "application/fhir+json"
RESOURCE_WRITES: Final = frozenset({"create", "update", "conditional-update", "patch"})
"""Interactions whose envelope carries the whole resource as it now is (a patch: the patched resource)."""
DELETED: Final = frozenset({200, 202, 204, 404, 410})
"""What a DELETE may answer when the resource is gone afterwards (404, 410: it was gone already)."""
RETRYABLE_4XX: Final = frozenset({408, 409, 412, 429})
MAX_ISSUE_CODES: Final = 5

_ID = re.compile(ID_PATTERN)
_ISSUE_CODE = re.compile(r"[a-z][a-z0-9-]{0,39}")
"""What an OperationOutcome ``issue.code`` (a FHIR ``issue-type``) looks like: only such codes are quoted."""


@dataclass(frozen=True, slots=True)
class _Answer:
    """What one request got back: the status, the headers this sink reads, and the body (None when it
    was longer than the cap, broken, or not kept)."""

    status: int
    etag: str | None
    retry_after: str | None
    body: bytes | None


class FHIRSink:
    """Writes each delivered FHIR interaction to ``config.base_url``; see the module docstring."""

    def __init__(self, name: str, config: FHIRSinkConfig) -> None:
        self.name = name
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._base = URL(config.base_url)

    async def open(self) -> None:
        """Read the bearer token from the environment and create the pooled session."""
        if self._session is not None:
            return
        # an OperationOutcome is read as sent, never inflated
        self._session = open_session(
            self.name, self.config, {"Accept": ACCEPT, "Accept-Encoding": "identity"}
        )

    # -- one attempt ------------------------------------------------------------------------------

    async def send(self, delivery: Delivery) -> None:
        """Make the envelope's write once downstream; return when done, else raise (module docstring)."""
        if self._session is None:
            raise RuntimeError(f"sink {self.name!r} is not open")
        env = delivery.envelope
        if env.protocol != "fhir":
            if delivery.content_type.split(";")[0].strip() in JSON_TYPES:  # a route transform made FHIR
                await self._converted(delivery)
                return
            raise self._rejected(
                "not_fhir",
                "the message is neither a FHIR write nor converted to FHIR (transform hl7v2_to_fhir)",
            )
        interaction = env.headers.get("interaction", "")
        if interaction == "delete":
            await self._delete(delivery)
        elif interaction in RESOURCE_WRITES:
            await self._put(delivery)
        elif interaction == "bundle":
            await self._bundle(delivery)
        else:
            raise self._rejected(
                "unsupported_interaction",
                "the message's interaction is none of create, update, conditional-update, patch, delete, bundle",
            )

    async def _put(self, delivery: Delivery) -> None:
        resource = self._resource(delivery)
        rtype = self._type(delivery.envelope.headers, resource)
        rid = delivery.envelope.headers.get("resource_id") or resource.get("id")
        if not isinstance(rid, str) or not _ID.fullmatch(rid):
            raise self._rejected("no_resource_id", f"the {rtype} carries no valid resource id")
        url = self._base / rtype / rid
        current = await self._request("GET", url, delivery, what=f"GET {rtype}")
        headers = {"Content-Type": JSON_MEDIA, "Prefer": "return=minimal"}
        if current.status == 200:
            if current.etag:
                headers["If-Match"] = current.etag
        elif current.status not in (404, 410):
            raise self._failed(f"GET {rtype}", current)
        body = write_json(_outgoing(resource, rid))
        answer = await self._request("PUT", url, delivery, what=f"PUT {rtype}", data=body, headers=headers)
        if not 200 <= answer.status < 300:
            raise self._failed(f"PUT {rtype}", answer)

    async def _delete(self, delivery: Delivery) -> None:
        headers = delivery.envelope.headers
        rtype = headers.get("resource_type", "")
        rid = headers.get("resource_id", "")
        if rtype not in RESOURCE_TYPES:
            raise self._rejected("no_resource_type", "the delete names no FHIR resource type")
        if not _ID.fullmatch(rid):
            raise self._rejected("no_resource_id", f"the delete of a {rtype} names no valid resource id")
        answer = await self._request("DELETE", self._base / rtype / rid, delivery, what=f"DELETE {rtype}")
        if answer.status not in DELETED:
            raise self._failed(f"DELETE {rtype}", answer)

    async def _bundle(self, delivery: Delivery) -> None:
        resource = self._resource(delivery)
        if self._type(delivery.envelope.headers, resource) != "Bundle":
            raise self._rejected("no_resource_type", "the bundle interaction carries no Bundle")
        headers = {"Content-Type": JSON_MEDIA, "Prefer": "return=minimal"}
        answer = await self._request(
            "POST", self._base, delivery, what="POST Bundle", data=write_json(resource), headers=headers
        )
        if not 200 <= answer.status < 300:
            raise self._failed("POST Bundle", answer)

    async def _converted(self, delivery: Delivery) -> None:
        """A transaction Bundle a route transform made (HL7 v2 → FHIR), POSTed to the base as it is: its
        entries are PUTs with ids derived from business keys, so a redelivery changes nothing."""
        try:
            found = load_json(delivery.body)
        except (ValueError, RecursionError):
            raise self._rejected("unreadable", "the converted message is not FHIR JSON") from None
        if not isinstance(found, dict) or found.get("resourceType") != "Bundle":
            raise self._rejected("no_resource_type", "the converted message is not a FHIR Bundle")
        headers = {"Content-Type": JSON_MEDIA, "Prefer": "return=minimal"}
        answer = await self._request(
            "POST", self._base, delivery, what="POST Bundle", data=delivery.body, headers=headers
        )
        if not 200 <= answer.status < 300:
            raise self._failed("POST Bundle", answer)

    def _resource(self, delivery: Delivery) -> dict[str, Any]:
        """The envelope's resource: its parsed body, else its stored bytes read again."""
        body = delivery.envelope.body
        if isinstance(body, Mapping):
            return dict(body)
        raw = bytes(delivery.envelope.raw)
        try:
            return read_resource(raw, _media(raw, delivery.content_type))
        except FhirError as exc:
            raise self._rejected(
                "unreadable", f"the stored message cannot be read as a FHIR resource ({exc.code})"
            ) from None

    def _type(self, headers: Mapping[str, str], resource: Mapping[str, Any]) -> str:
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or rtype not in RESOURCE_TYPES:
            raise self._rejected("no_resource_type", "the message carries no FHIR resource type")
        if headers.get("resource_type", rtype) != rtype:
            raise self._rejected("no_resource_type", "the resource's type differs from the message's")
        return rtype

    # -- HTTP -------------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        url: URL,
        delivery: Delivery,
        *,
        what: str,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> _Answer:
        """One request within ``timeout_s``; once the status has come, a failure only costs the body."""
        session = self._session
        assert session is not None
        sent = {
            "Idempotency-Key": delivery.delivery_id,
            "X-Gateway-Envelope-Id": delivery.envelope.id,
            "X-Gateway-Attempt": str(delivery.attempt),
            **(headers or {}),
        }
        status: int | None = None
        etag = retry_after = None
        body: bytes | None = None
        try:
            async with asyncio.timeout(self.config.timeout_s):
                response = await session.request(method, url, data=data, headers=sent, allow_redirects=False)
                try:
                    status = response.status
                    etag = response.headers.get("ETag")
                    retry_after = response.headers.get("Retry-After")
                    body = await _read_capped(response)
                finally:
                    response.release()
        except (aiohttp.ClientError, ValueError) as exc:  # ValueError: a header aiohttp refuses to send
            if status is None:
                raise self._transport_error(exc, what) from None
        except TimeoutError:
            if status is None:
                raise self._retryable(
                    "timeout", f"{what}: no response within {self.config.timeout_s} s"
                ) from None
        assert status is not None
        return _Answer(status, etag, retry_after, body)

    def _failed(self, what: str, answer: _Answer) -> DeliveryError:
        """The error for an answer that is not a success: the module docstring's table."""
        status = answer.status
        code = f"http_{status}"
        text = f"{what} answered {_status_line(status)}"
        issues = _issue_codes(answer.body)
        if issues:
            text += f"; OperationOutcome issue codes: {', '.join(issues)}"
        if status == 412:
            text += "; the resource changed downstream since it was read, the next attempt reads it again"
        if status in RETRYABLE_4XX or status >= 500 or status < 200:
            return DeliveryRetryable(
                code, f"sink {self.name!r}: {text}", retry_after_s=parse_retry_after(answer.retry_after)
            )
        if 300 <= status < 400:
            text += "; redirects are not followed, configure the final base_url"
        return self._rejected(code, text)

    def _rejected(self, code: str, what: str) -> DeliveryRejected:
        return DeliveryRejected(code, f"sink {self.name!r}: {what}")

    def _retryable(self, code: str, what: str) -> DeliveryRetryable:
        return DeliveryRetryable(code, f"sink {self.name!r}: {what}")

    def _transport_error(self, exc: Exception, what: str) -> DeliveryRetryable:
        """A failure before any status arrived, coded as the http sink codes it; exception types only."""
        code, reason = transport_error(exc, self.config.timeout_s, self._base)
        return self._retryable(code, f"{what}: {reason}")

    # -- health and shutdown ----------------------------------------------------------------------

    async def check(self) -> bool:
        """True when ``GET {base}/metadata`` answers 200 within a short time; never raises."""
        session = self._session
        if session is None:
            return False
        try:
            async with asyncio.timeout(min(CHECK_TIMEOUT_S, self.config.timeout_s)):
                response = await session.get(self._base / "metadata", allow_redirects=False)
                try:
                    return response.status == 200
                finally:
                    response.close()  # the CapabilityStatement is not read: the status says enough
        except (aiohttp.ClientError, ValueError, TimeoutError):
            return False

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _media(raw: bytes, content_type: str) -> str:
    """The FHIR format to read ``raw`` as: the declared one, else sniffed (a stored message's content
    type is not kept, and ``<`` starts XML)."""
    kind = media_type(content_type)
    if kind in JSON_TYPES or kind in XML_TYPES:
        return kind
    head = raw[:64].removeprefix(b"\xef\xbb\xbf").lstrip()
    return "application/fhir+xml" if head.startswith(b"<") else "application/fhir+json"


def _outgoing(resource: Mapping[str, Any], rid: str) -> dict[str, Any]:
    """The resource as sent: the gateway's id, and no version of the gateway's in ``meta``."""
    out = dict(resource)
    out["id"] = rid
    meta = out.get("meta")
    if isinstance(meta, Mapping):
        kept = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        if kept:
            out["meta"] = kept
        else:
            del out["meta"]
    return out


def _issue_codes(body: bytes | None) -> list[str]:
    """The ``issue.code`` values of an OperationOutcome in JSON (at most a few, each once); nothing
    else of it, and nothing at all from anything that is not one."""
    if not body:
        return []
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(doc, dict) or doc.get("resourceType") != "OperationOutcome":
        return []
    issues = doc.get("issue")
    codes: dict[str, None] = {}
    for issue in issues if isinstance(issues, list) else []:
        code = issue.get("code") if isinstance(issue, dict) else None
        if isinstance(code, str) and _ISSUE_CODE.fullmatch(code):
            codes[code] = None
        if len(codes) >= MAX_ISSUE_CODES:
            break
    return list(codes)


async def _read_capped(response: aiohttp.ClientResponse) -> bytes | None:
    """The body, up to MAX_RESPONSE_BYTES; None (and the connection dropped) when longer or broken."""
    try:
        body = await read_capped(response, MAX_RESPONSE_BYTES)
    except (aiohttp.ClientError, TimeoutError):
        response.close()  # the status is what counts; a body cut short only costs the connection
        return None
    if len(body) > MAX_RESPONSE_BYTES:
        response.close()
        return None
    return body
