"""The FastAPI application factory, and the gateway's ASGI entry.

``POST /api/sync`` -- the hot route -- is handed to ``gateway.sync.asgi`` before FastAPI's
generic stack (middleware, routing, dependency resolution); every other request takes the
normal FastAPI path. Behind proxies listed in ``OPSMANTIK_TRUSTED_PROXIES`` every request
first passes uvicorn's ``ProxyHeadersMiddleware``, so the client address is the right-most
X-Forwarded-For entry not in that list (and uvicorn's own proxy handling is switched off
where we serve).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request

from gateway import sync
from gateway.context import AppContext
from gateway.errors import ApiError, JSONResponse, api_error_handler, json_response
from gateway.logs import RequestIdMiddleware
from gateway.routes import ROUTERS
from opsmantik_stream.config import Settings

__all__ = ["GatewayApp", "create_app"]


class GatewayApp(FastAPI):
    """FastAPI with the lean entry for ``POST /api/sync`` (see the module doc)."""

    _entry: Any = None

    def trust_proxies(self, trusted: str) -> None:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        self._entry = ProxyHeadersMiddleware(self._dispatch, trusted_hosts=trusted) if trusted.strip() else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._entry is not None:
            await self._entry(scope, receive, send)
        else:
            await self._dispatch(scope, receive, send)

    async def _dispatch(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/api/sync" and scope["method"] == "POST":
            ctx = self.state.ctx
            await sync.asgi(ctx.sync if ctx is not None else None, scope, receive, send)
            return
        await super().__call__(scope, receive, send)


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    path = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return json_response(
        {"ok": False, "error": "validation_error", "message": first.get("msg", "invalid"), "field": path},
        422,
        {"X-OpsMantik-Error-Code": f"validation_error:{path}"},
    )


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # PostgreSQL restarting or unreachable: nothing was committed, so the client may retry
    return json_response(
        {"ok": False, "error": "database_unavailable", "message": "the database is not reachable; retry later"},
        503,
        {"X-OpsMantik-Error-Code": "database_unavailable", "Retry-After": "1"},
    )


def _default_settings() -> Settings:
    from opsmantik_stream.config import load_settings

    return load_settings()


def create_app(
    ctx: AppContext | None = None,
    *,
    settings: Settings | None = None,
    db_url: str | None = None,
    ray_enabled: bool = False,
) -> GatewayApp:
    """Build the app. With ``ctx`` (tests) it is used as is; otherwise the lifespan opens a
    pool to ``db_url`` (or the database named by ``settings``) in the serving event loop.
    ``ray_enabled`` says the actors are running (``serve`` starts them first)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if getattr(app.state, "ctx", None) is not None:
            yield
            return
        from opsmantik_stream.config import load_settings
        from opsmantik_stream.db import close_pool, create_pool, resolve_database_url

        cfg = settings or load_settings()
        embedded = None
        url = db_url
        if url is None:
            url, embedded = resolve_database_url(cfg)
        pool = await create_pool(url, min_size=cfg.db_pool_min, max_size=cfg.db_pool_max, api_url=cfg.api_database_url)
        app.state.ctx = AppContext(settings=cfg, pool=pool, ray_enabled=ray_enabled)
        try:
            yield
        finally:
            await app.state.ctx.partitions.close()
            app.state.ctx = None
            await close_pool(pool)
            if embedded is not None:
                embedded.stop()

    app = GatewayApp(
        title="OpsMantik Stream",
        version="0.1.0",
        description="Tracker ingest, leads and sales, and offline conversion uploads to Google Ads.",
        default_response_class=JSONResponse,
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.trust_proxies((ctx.settings if ctx is not None else settings or _default_settings()).trusted_proxies)
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    for exc_type in (
        asyncpg.PostgresConnectionError,  # connection lost mid-query
        asyncpg.InterfaceError,  # connection closed under the pool
        asyncpg.exceptions.OperatorInterventionError,  # server shutting down / starting up
        # a pooled connection the restart broke mid-protocol ("cannot switch to state ...");
        # the pool closes it on release, and the client's retry gets a fresh one
        asyncpg.exceptions.InternalClientError,
        # refused/reset, the unix socket gone while the server restarts, or asyncio's plain
        # OSError("Multiple exceptions: ...") when every address failed; the gateway does no
        # other I/O that raises OSError in a request (the static files ship with it)
        OSError,
    ):
        app.add_exception_handler(exc_type, _database_unavailable)
    app.add_middleware(RequestIdMiddleware)
    for router in ROUTERS:
        app.include_router(router)
    return app
