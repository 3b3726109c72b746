"""What the OpenAPI document (``/api/openapi.json``) says beyond what FastAPI infers from the routes.

The routes authenticate in their own dependencies (an API key, or a webhook platform's signature)
and answer errors in one JSON shape (``{"error": code, "detail": sentence}``), neither of which
FastAPI can see. :func:`describe` adds both: the two ways to present an API key, as security schemes
required everywhere but on the open routes, and the error answers of the gateway's own routes
(``/api/…``, ``/metrics``): 400 for a parameter or body that is not valid (where FastAPI would
document its 422, which the gateway never sends), 401 and 403. The FHIR API answers
OperationOutcomes and the ingest routes the protocol's own acknowledgements; their routes document
those themselves.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

__all__ = ["ERROR_SCHEMA", "describe"]

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "A snake_case code, e.g. bad_parameter, forbidden."},
        "detail": {"type": "string", "description": "A sentence for a person; never a payload value."},
    },
}
_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_OWN_ERRORS = ("/api/", "/metrics")


def describe(app: FastAPI, open_paths: Collection[str]) -> None:
    """Make ``app``'s OpenAPI document state its authentication and error answers (see the module
    docstring); ``open_paths`` need no API key."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {}).update(
            {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key as a bearer token.",
                },
                "apiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "An API key.",
                },
            }
        )
        components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
        schema["security"] = [{"bearer": []}, {"apiKey": []}]
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                if path in open_paths:
                    operation["security"] = []
                responses = operation.setdefault("responses", {})
                # FastAPI's own 422: the gateway answers a parameter that is not valid with 400 instead
                fastapi_422 = responses.get("422", {}).get("description") == "Validation Error"
                if fastapi_422:
                    del responses["422"]
                if not path.startswith(_OWN_ERRORS):
                    continue
                if fastapi_422 or operation.get("parameters") or "requestBody" in operation:
                    responses.setdefault(
                        "400", {"description": "A parameter or the body is not valid.", **_ERROR}
                    )
                if path not in open_paths:
                    responses.setdefault(
                        "401", {"description": "No API key, or one the gateway does not know.", **_ERROR}
                    )
                    responses.setdefault(
                        "403", {"description": "The API key lacks the route's scope.", **_ERROR}
                    )
        if "HTTPValidationError" not in json.dumps(schema.get("paths", {})):
            components["schemas"].pop("HTTPValidationError", None)
            components["schemas"].pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
