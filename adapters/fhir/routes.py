"""The ``/fhir`` routes: every interaction of :data:`adapters.fhir.api.INTERACTIONS` on its handler.

:func:`mount` adds a route per (method, path) of the interactions, static paths
first (``/_history`` before ``/{rtype}``), and answers errors under ``/fhir``
with OperationOutcomes, FastAPI's own 404, 405 and 422 included. A handler's
:class:`~adapters.fhir.outcome.FhirError` becomes its OperationOutcome; anything
else a 500 that names no value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.fhir import http
from adapters.fhir.api import FORM, INTERACTIONS, FhirAPI
from adapters.fhir.outcome import FhirError

BASE = http.BASE


def mount(app: FastAPI, api: FhirAPI) -> None:
    """Add the ``/fhir`` routes, from :data:`INTERACTIONS`, and answer errors under ``/fhir`` with
    OperationOutcomes (FastAPI's own 404, 405 and 422 included)."""

    def guarded(handler: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
        if is_async:

            async def run_async(request: Request) -> Response:
                try:
                    http.response_format(request)  # a 406 before any work, never after a write
                    result: Response = await handler(request, **request.path_params)
                    return result
                except FhirError as exc:
                    return http.outcome_response(exc, http.safe_format(request))
                except Exception as exc:
                    return http.unexpected(request, exc)

            return run_async

        def run(request: Request) -> Response:
            try:
                http.response_format(request)
                result: Response = handler(request, **request.path_params)
                return result
            except FhirError as exc:
                return http.outcome_response(exc, http.safe_format(request))
            except Exception as exc:
                return http.unexpected(request, exc)

        return run

    async def search_post(request: Request, rtype: str) -> Response:
        api.principal(request, api.known_type(rtype), "read")  # before a byte of the body is read
        raw, _ = await api.body(request, FORM)
        params = [
            *request.query_params.multi_items(),
            *parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True),
        ]
        return await asyncio.to_thread(api.search, request, rtype, params)

    async def system_post(request: Request) -> Response:
        return await api.system_bundle(request)

    handlers: dict[tuple[str, str], tuple[Callable[..., Any], bool]] = {
        ("GET", "/{rtype}/{rid}"): (api.read, False),
        ("GET", "/{rtype}/{rid}/_history/{vid}"): (api.vread, False),
        ("PUT", "/{rtype}/{rid}"): (api.update, True),
        ("PATCH", "/{rtype}/{rid}"): (api.patch, True),
        ("DELETE", "/{rtype}/{rid}"): (api.delete, True),
        ("GET", "/{rtype}/{rid}/_history"): (lambda r, rtype, rid: api.history(r, rtype, rid), False),
        ("GET", "/{rtype}/_history"): (lambda r, rtype: api.history(r, rtype, None), False),
        ("POST", "/{rtype}"): (api.create, True),
        ("GET", "/{rtype}"): (lambda r, rtype: api.search(r, rtype, r.query_params.multi_items()), False),
        ("POST", "/{rtype}/_search"): (search_post, True),
        ("PUT", "/{rtype}"): (api.conditional_update, True),
        ("PATCH", "/{rtype}"): (api.conditional_patch, True),
        ("DELETE", "/{rtype}"): (api.conditional_delete, True),
        ("POST", ""): (system_post, True),
        ("GET", "/_history"): (lambda r: api.history(r, None, None), False),
    }
    app.add_api_route(
        f"{BASE}/metadata",
        guarded(lambda r: api.metadata(r), False),
        methods=["GET"],
        tags=["fhir"],
        summary="The CapabilityStatement (no API key needed, as FHIR clients expect)",
        openapi_extra={"security": []},
    )
    done: set[tuple[str, str]] = set()
    # static paths first (/_history before /{rtype}, /{rtype}/_history before /{rtype}/{rid})
    for inter in sorted(INTERACTIONS, key=lambda i: ("{" in i.path.split("/")[-1], -i.path.count("/"))):
        key = (inter.method, inter.path)
        if key in done:
            continue
        done.add(key)
        handler, is_async = handlers[key]
        if not inter.path:  # the base itself, also with a trailing slash
            app.add_api_route(
                BASE + "/", guarded(handler, is_async), methods=[inter.method], include_in_schema=False
            )
        app.add_api_route(
            BASE + inter.path,
            guarded(handler, is_async),
            methods=[inter.method],
            tags=["fhir"],
            summary=f"FHIR {inter.code}",
            include_in_schema=True,
        )

    previous_http = app.exception_handlers.get(StarletteHTTPException)
    previous_validation = app.exception_handlers.get(RequestValidationError)

    async def http_error(request: Request, exc: Exception) -> Response:
        if request.url.path == BASE or request.url.path.startswith(BASE + "/"):
            assert isinstance(exc, StarletteHTTPException)
            code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
            text = {404: "No such FHIR endpoint.", 405: "This interaction is not supported here."}.get(
                exc.status_code, "The request cannot be processed."
            )
            return http.outcome_response(FhirError(exc.status_code, code, text), http.safe_format(request))
        assert previous_http is not None
        answer: Awaitable[Response] | Response = previous_http(request, exc)
        return await answer if isinstance(answer, Awaitable) else answer

    async def validation_error(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith(BASE + "/"):
            return http.outcome_response(
                FhirError(400, "invalid", "The request is not valid."), http.safe_format(request)
            )
        assert previous_validation is not None
        answer: Awaitable[Response] | Response = previous_validation(request, exc)
        return await answer if isinstance(answer, Awaitable) else answer

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
