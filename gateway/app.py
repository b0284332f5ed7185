"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request

from gateway.context import AppContext
from gateway.errors import ApiError, JSONResponse, api_error_handler, json_response
from gateway.logs import RequestIdMiddleware
from gateway.routes import ROUTERS
from opsmantik_stream.config import Settings

__all__ = ["create_app"]


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


def create_app(
    ctx: AppContext | None = None,
    *,
    settings: Settings | None = None,
    db_url: str | None = None,
    ray_enabled: bool = False,
) -> FastAPI:
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
            app.state.ctx = None
            await close_pool(pool)
            if embedded is not None:
                embedded.stop()

    app = FastAPI(
        title="OpsMantik Stream",
        version="0.1.0",
        description="Tracker ingest, leads and sales, and offline conversion uploads to Google Ads.",
        default_response_class=JSONResponse,
        lifespan=lifespan,
    )
    app.state.ctx = ctx
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
