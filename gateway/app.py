"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request
from starlette.responses import Response

from gateway.context import AppContext
from gateway.errors import ApiError, ErrorMiddleware, JSONResponse, api_error_handler, validation_error
from gateway.logs import RequestIdMiddleware
from gateway.routes import ROUTERS
from opsmantik_stream.config import Settings

__all__ = ["create_app"]


async def _validation_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    path = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return await api_error_handler(request, validation_error(path, str(first.get("msg", "invalid"))))


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
    # database connection loss -> 503, anything else unhandled -> 500 internal_error
    app.add_middleware(ErrorMiddleware)
    app.add_middleware(RequestIdMiddleware)
    for router in ROUTERS:
        app.include_router(router)
    return app
