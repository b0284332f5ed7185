"""The route tables of docs/http-api.md, generated from the gateway itself: paths, methods,
summaries and answers from its OpenAPI description, and whether a route needs a bearer token
from its dependencies (a route that depends on ``require_principal``) or from an OpenAPI
security requirement.

    python -m gateway.api_doc            # rewrite docs/http-api.md's generated part
    python -m gateway.api_doc --check    # exit 1 when it is stale
    make docs                            # every generated part
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from gateway.app import create_app
from gateway.auth import require_principal
from opsmantik_stream.docgen import DOCS, main_for, table_cell

__all__ = ["routes_markdown"]

_METHOD_ORDER = ("get", "post", "put", "patch", "delete", "options")


def _api_routes(routes: Iterable[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        # routers included into the app are wrapped; their routes sit in the original router
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _api_routes(inner.routes)


def _needs_principal(dependant: Any) -> bool:
    return dependant.call is require_principal or any(_needs_principal(d) for d in dependant.dependencies)


def _bearer_routes(app: FastAPI) -> set[tuple[str, str]]:
    return {
        (method.lower(), route.path)
        for route in _api_routes(app.routes)
        if _needs_principal(route.dependant)
        for method in route.methods or ()
    }


# the OpenAPI security schemes (gateway/openapi.py) as the table names them
_SCHEMES = {"bearer": "bearer token", "callEventSignature": "HMAC signature", "cronSecret": "cron secret"}


def _auth_label(security: list[dict[str, Any]] | None) -> str:
    if not security:
        return "—"
    names = [_SCHEMES.get(name, name) for requirement in security for name in requirement]
    label = " or ".join(dict.fromkeys(names))
    return f"optional {label}" if any(not requirement for requirement in security) else label


def routes_markdown(app: FastAPI | None = None) -> str:
    """One table per OpenAPI tag (in the order tags first appear), one row per operation."""
    app = app or create_app()
    spec = app.openapi()
    bearer = _bearer_routes(app)
    sections: dict[str, list[str]] = {}
    for path, operations in spec["paths"].items():
        for method in sorted(operations, key=lambda m: _METHOD_ORDER.index(m) if m in _METHOD_ORDER else 99):
            op = operations[method]
            tag = (op.get("tags") or ["other"])[0]
            auth = "bearer token" if (method, path) in bearer else _auth_label(op.get("security"))
            answers = ", ".join(sorted(op.get("responses", {})))
            sections.setdefault(tag, []).append(
                f"| `{method.upper()} {path}` | {table_cell(op.get('summary', ''))} | {auth} | {answers} |"
            )
    out: list[str] = []
    for tag, rows in sections.items():
        out += [f"### {tag}", "", "| route | what it does | auth | answers |", "|---|---|---|---|", *rows, ""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main_for(DOCS / "http-api.md", routes_markdown))
