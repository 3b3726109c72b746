"""``POST /api/convert/hl7v2-to-fhir``: convert one HL7 v2 message to a FHIR Bundle over HTTP, storing nothing.

The same conversion as the ``hl7v2_to_fhir`` route transform and ``gateway
convert``, for trying a mapping out: the answer is the transaction Bundle
(``application/fhir+json``), or an OperationOutcome saying why the message
cannot be converted (never quoting it). Scope ``ingest:hl7v2``.
"""

from __future__ import annotations

import asyncio

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from adapters.fhir.http import read_body
from adapters.fhir.outcome import FhirError, operation_outcome
from adapters.fhir.resources import write_json
from adapters.hl7 import fhir_transform
from adapters.hl7.er7 import split_batch
from adapters.hl7.to_fhir import ConversionError, convert
from gateway.bodies import BodyLimits
from gateway.envelope import sha256_hex
from gateway.errors import AuthError
from gateway.security import KeyRing

PATH = "/api/convert/hl7v2-to-fhir"
MEDIA = frozenset({"x-application/hl7-v2+er7", "application/hl7-v2", "text/plain"})
SCOPE = "ingest:hl7v2"


def _outcome(exc: FhirError) -> Response:
    return Response(
        orjson.dumps(operation_outcome(exc.issues)), exc.status, exc.headers, "application/fhir+json"
    )


def mount(app: FastAPI, keyring: KeyRing, body_limits: BodyLimits) -> None:
    """Add the conversion endpoint to ``app``."""

    async def convert_message(request: Request) -> Response:
        try:
            try:
                KeyRing.require(keyring.from_headers(request.headers), SCOPE)
            except AuthError as exc:
                code = "login" if exc.status == 401 else "forbidden"
                raise FhirError(exc.status, code, exc.reason) from None
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media not in MEDIA:
                raise FhirError(415, "not-supported", "Send one HL7 v2 message as x-application/hl7-v2+er7.")
            raw = await read_body(request, body_limits)
            batch = split_batch(raw)
            if batch is not None and len(batch.units) > 1:
                raise FhirError(400, "not-supported", "Send one message at a time, not a batch.")
            try:
                bundle = await asyncio.to_thread(  # off the loop: a large message takes a while
                    convert, raw, raw_sha256=sha256_hex(raw), tables=fhir_transform.tables()
                )
            except ConversionError as exc:
                raise FhirError(422, "processing", f"The message cannot be converted ({exc.code}).") from None
        except FhirError as exc:
            return _outcome(exc)
        return Response(write_json(bundle), 200, media_type="application/fhir+json")

    app.add_api_route(
        PATH,
        convert_message,
        methods=["POST"],
        tags=["fhir"],
        summary="Convert an HL7 v2 message to a FHIR R4 transaction Bundle (nothing is stored)",
    )
