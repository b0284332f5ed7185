"""/openapi.json describes every route completely (issue 14): request bodies from the msgspec
types the routes decode with, answers with schemas, and how each route authenticates."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration

BODY_ROUTES = {
    ("post", "/api/sync"): "Envelope",
    ("post", "/api/call-event"): "CallEventBody",
    ("post", "/api/calls/{call_id}/actions"): "CallActionBody",
    ("post", "/api/conversations"): "ConversationBody",
    ("post", "/api/conversations/{conversation_id}/links"): "LinkBody",
    ("post", "/api/conversations/{conversation_id}/resolve"): "ResolveBody",
    ("post", "/api/sales"): "SaleBody",
    ("post", "/api/sales/{sale_id}/restate"): "RestateBody",
    ("post", "/api/sites/{site}/credentials/test"): "CredentialsTestBody",
    ("put", "/api/sites/{site}/enhanced-conversions"): "EnhancedConversionsBody",
    # one body per destination, tagged by "destination" (see credentials_body_type)
    ("put", "/api/sites/{site}/credentials"): "GoogleAdsCredentialsBody|DataManagerCredentialsBody",
    ("put", "/api/sites/{site}/destination"): "DestinationBody",
    ("post", "/api/oci/requeue"): "RequeueBody",
    ("post", "/api/oci/breaker/reset"): "BreakerResetBody",
}


async def test_every_operation_is_described(client: httpx.AsyncClient) -> None:
    spec: dict[str, Any] = (await client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    seen = set()
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            seen.add((method, path))
            responses = op["responses"]
            ok = [s for s in responses if s.startswith("2")]
            assert ok, (method, path)
            for status in ok:
                if status != "204":
                    assert responses[status].get("content"), (method, path, status)
            for status, answer in responses.items():
                if not status.startswith("2"):
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/ErrorBody", (method, path, status)
            if op.get("parameters") or (method, path) in BODY_ROUTES:
                assert "422" in responses, (method, path)
            if (method, path) in BODY_ROUTES:
                schema = op["requestBody"]["content"]["application/json"]["schema"]
                refs = [one["$ref"] for one in schema["anyOf"]] if "anyOf" in schema else [schema["$ref"]]
                names = [ref.rsplit("/", 1)[1] for ref in refs]
                assert "|".join(names) == BODY_ROUTES[(method, path)] and all(n in schemas for n in names)
            if path.startswith("/api/") and path not in ("/api/sync",):
                assert op.get("security"), (method, path)
    assert set(BODY_ROUTES) <= seen
    # the limits the routes enforce are the limits they document (generated from msgspec)
    sale = schemas["SaleBody"]["properties"]
    assert sale["amount_minor"]["maximum"] == 10**15 and sale["amount_minor"]["minimum"] == 0
    assert sale["notes"]["anyOf"][0]["pattern"] == "^[^\\x00]*$"
    assert sale["email"]["anyOf"][0]["pattern"] == sale["phone"]["anyOf"][0]["pattern"] == "^[^\\x00]*$"
    assert schemas["RestateBody"]["properties"]["amount_minor"]["maximum"] == 10**15
    call_event = schemas["CallEventBody"]
    assert "event_id" in call_event["required"] and call_event.get("additionalProperties") is False
