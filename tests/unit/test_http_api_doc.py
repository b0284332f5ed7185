"""docs/http-api.md lists every route of the gateway as it is (regenerate with `make docs`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.api_doc import routes_markdown
from gateway.app import create_app
from opsmantik_stream.docgen import splice

pytestmark = pytest.mark.unit

HTTP_API = Path(__file__).resolve().parents[2] / "docs" / "http-api.md"


def test_http_api_md_holds_the_generated_route_tables() -> None:
    current = HTTP_API.read_text()
    assert current == splice(current, routes_markdown()), "docs/http-api.md is stale: run `make docs`"


def test_every_route_is_listed_with_its_authentication() -> None:
    spec = create_app().openapi()
    text = routes_markdown()
    for path, operations in spec["paths"].items():
        for method in operations:
            assert f"| `{method.upper()} {path}` |" in text
    rows = dict(re.findall(r"^\| `([A-Z]+ [^`]+)` \| .*? \| ([^|]+?) \| [^|]+ \|$", text, re.MULTILINE))
    # operator routes take a bearer token; signed call events a signature; the tracker and
    # /health neither
    assert rows["GET /api/sites/{site}/intents"] == "bearer token"
    assert rows["POST /api/sales/{sale_id}/confirm"] == "bearer token"
    assert rows["POST /api/sync"] == "—"
    assert rows["POST /api/call-event"] == "HMAC signature"
    assert rows["GET /health"] == "—"
