"""The OpenAPI description (``/openapi.json``): every route with its request body, its
answers and its authentication, so clients and the fuzz suite (tests/fuzz) work from it.

Request bodies are the msgspec Structs the routes decode with (their JSON schema comes from
``msgspec.json.schema_components``, so the limits a route enforces are the limits it
documents); error answers share one ``Error`` schema. The routes read their bodies
themselves (msgspec, not FastAPI's models), so the bodies are attached here, in one table,
instead of on each decorator.
"""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

__all__ = ["ErrorBody", "install"]


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error answer: ``error`` is also in ``X-OpsMantik-Error-Code``."""

    ok: bool = False
    error: str
    message: str
    field: str | None = None


def _request_bodies() -> dict[tuple[str, str], type]:
    # imported here: the route modules import this module's users
    from gateway.routes.calls import CallActionBody
    from gateway.routes.privacy import EraseBody
    from gateway.routes.sales import ConversationBody, LinkBody, ResolveBody, RestateBody, SaleBody
    from gateway.routes.uploads import (
        BreakerResetBody,
        CredentialsTestBody,
        DestinationBody,
        EnhancedConversionsBody,
        RequeueBody,
    )
    from opsmantik_stream.ingest.schema import Envelope
    from opsmantik_stream.leads.call_events import CallEventBody
    from opsmantik_stream.privacy import ConsentBody
    from opsmantik_stream.uploads.credentials import credentials_body_type

    return {
        ("post", "/api/sync"): Envelope,
        ("post", "/api/call-event"): CallEventBody,
        ("post", "/api/calls/{call_id}/actions"): CallActionBody,
        ("post", "/api/conversations"): ConversationBody,
        ("post", "/api/conversations/{conversation_id}/links"): LinkBody,
        ("post", "/api/conversations/{conversation_id}/resolve"): ResolveBody,
        ("post", "/api/sales"): SaleBody,
        ("post", "/api/sales/{sale_id}/restate"): RestateBody,
        ("put", "/api/sites/{site}/credentials"): credentials_body_type(),
        ("post", "/api/sites/{site}/credentials/test"): CredentialsTestBody,
        ("put", "/api/sites/{site}/enhanced-conversions"): EnhancedConversionsBody,
        ("put", "/api/sites/{site}/destination"): DestinationBody,
        ("post", "/api/oci/requeue"): RequeueBody,
        ("post", "/api/oci/breaker/reset"): BreakerResetBody,
        ("post", "/api/consent"): ConsentBody,
        ("post", "/api/privacy/erase"): EraseBody,
    }


# non-JSON answers
_MEDIA = {
    ("get", "/metrics"): "text/plain",
    ("get", "/ops"): "text/html",
    ("get", "/assets/core.js"): "application/javascript",
    ("get", "/ux-core.js"): "application/javascript",
    ("get", "/api/billing/dispute-export"): "text/csv",
}
# routes that take no bearer token (their own authentication, or none)
_PUBLIC = {
    "/health",
    "/api/sync",
    "/api/call-event",
    "/api/consent",
    "/assets/core.js",
    "/ux-core.js",
    "/ops",
    "/metrics",
}
_SIGNED = {"/api/call-event", "/api/consent"}
_CRON = {"/api/jobs/{name}"}
_ERROR_CODES = {
    "400": "invalid JSON or a rule the body breaks",
    "401": "no valid credentials",
    "403": "not allowed for this caller or origin",
    "404": "no such object (or not visible to the caller)",
    "409": "the object is not in the state the action needs",
    "413": "the body is too large",
    "422": "a field does not fit its schema (named in X-OpsMantik-Error-Code)",
    "429": "rate limited or over quota (Retry-After)",
    "503": "the database or a partition is unavailable (Retry-After); nothing was written",
    "500": "a bug (logged with the request id)",
}
_OK_OBJECT = {"type": "object", "additionalProperties": True}


def _build(app: FastAPI) -> dict[str, Any]:
    spec = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes, openapi_version="3.1.0"
    )
    bodies = _request_bodies()
    types = [ErrorBody, *bodies.values()]
    refs, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    ref_of = dict(zip(types, refs, strict=True))
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(components)
    spec["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "an `opsm_` API token"},
        "callEventSignature": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Ops-Signature",
            "description": "hex HMAC-SHA256 of '<X-Ops-Ts>.<raw body>' with the site's secret; "
            "X-Ops-Site-Id and X-Ops-Ts are required too (call events and consent updates)",
        },
        "cronSecret": {"type": "apiKey", "in": "header", "name": "X-Cron-Secret"},
    }
    error = {"application/json": {"schema": ref_of[ErrorBody]}}
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            key = (method, path)
            if key in bodies:
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref_of[bodies[key]]}}}
            responses = op.setdefault("responses", {})
            for status, answer in list(responses.items()):
                if not status.startswith("2") or status == "204":
                    continue
                media = _MEDIA.get(key, "application/json")
                schema: dict[str, Any] = {"type": "string"} if media != "application/json" else _OK_OBJECT
                answer["content"] = {media: {"schema": schema}}
            # the errors this operation can answer, all with the one error schema: what it
            # declares, plus what its authentication, parameters and body imply
            has_params = bool(op.get("parameters")) or key in bodies
            implied = {
                "401": path not in _PUBLIC or path == "/metrics",
                "403": path not in _PUBLIC or path in ("/api/sync",),
                "404": "{" in path,
                "422": has_params,
            }
            for status, applies in implied.items():
                if applies:
                    responses.setdefault(status, {"description": _ERROR_CODES[status]})
            for status, answer in responses.items():
                if not status.startswith("2"):
                    answer.setdefault("description", _ERROR_CODES.get(status, "error"))
                    answer["content"] = error
            if path in _SIGNED:
                op["security"] = [{"callEventSignature": []}]
            elif path in _CRON:
                op["security"] = [{"cronSecret": []}, {"bearer": []}]
            elif path == "/metrics":
                op["security"] = [{}, {"bearer": []}]
            elif path not in _PUBLIC:
                op["security"] = [{"bearer": []}]
    return spec


def install(app: FastAPI) -> None:
    """Serve the complete description at ``/openapi.json`` (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
