"""The FastAPI application factory, and the gateway's ASGI entry.

``POST /api/sync`` -- the hot route -- is handed to ``gateway.sync.asgi`` before FastAPI's
generic stack (middleware, routing, dependency resolution); every other request takes the
normal FastAPI path. Behind proxies listed in ``OPSMANTIK_TRUSTED_PROXIES`` every request
first passes uvicorn's ``ProxyHeadersMiddleware``, so the client address is the right-most
X-Forwarded-For entry not in that list (and uvicorn's own proxy handling is switched off
where we serve).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import sync
from gateway.context import AppContext
from gateway.errors import ApiError, ErrorMiddleware, JSONResponse, api_error_handler, validation_error
from gateway.logs import RequestIdMiddleware
from gateway.openapi import install as install_openapi
from gateway.routes import ROUTERS
from opsmantik_stream.budget import PoolPlan
from opsmantik_stream.config import Settings

__all__ = ["GatewayApp", "create_app", "gateway_settings"]


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


async def _validation_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = list(first.get("loc", ()))
    if loc and loc[0] in ("body", "path", "query", "header", "cookie"):
        loc = loc[1:]  # the field's name, as msgspec-decoded bodies name it too
    path = ".".join(str(p) for p in loc) or "body"
    return await api_error_handler(request, validation_error(path, str(first.get("msg", "invalid"))))


async def _plan(url: str, settings: Settings) -> PoolPlan:
    """The gateway's pool sizes from the server's limits. The gateways' share of the budget
    does not depend on how many actors run (the actors' plan is checked where they start)."""
    import asyncpg

    from opsmantik_stream.budget import plan_pools, read_server_limits

    conn = await asyncpg.connect(url)
    try:
        limits = await read_server_limits(conn, settings)
    finally:
        await conn.close()
    return plan_pools(limits, partitions=1, uploaders=0, settings=settings)


class _MetricsServer(uvicorn.Server):
    """The /metrics port's server: it runs beside the main server, which owns the process's
    signals (Ctrl-C stops the main server, whose shutdown stops this one)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _start_metrics_server(app: FastAPI) -> tuple[_MetricsServer, asyncio.Task[None]]:
    """Serve ``/metrics`` alone on 127.0.0.1:``metrics_port`` with the gateway's context."""
    from gateway.routes.ops import metrics_response

    metrics_app = Starlette(routes=[Route("/metrics", metrics_response)])
    metrics_app.state.ctx = app.state.ctx
    metrics_app.add_exception_handler(ApiError, api_error_handler)
    cfg = app.state.ctx.settings
    server = _MetricsServer(
        uvicorn.Config(
            metrics_app, host="127.0.0.1", port=cfg.metrics_port, log_config=None, access_log=False, lifespan="off"
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():  # e.g. the port is taken: fail the start-up with uvicorn's reason
            await task
            raise RuntimeError(f"could not serve metrics on 127.0.0.1:{cfg.metrics_port}")
        await asyncio.sleep(0.01)
    return server, task


def gateway_settings(settings: Settings) -> Settings:
    """The gateway seals credentials but never opens them: it keeps the vault's public key
    and drops the private one (only the uploaders hold it; see opsmantik_stream.vault)."""
    from opsmantik_stream.vault import VaultError, public_key

    try:
        public = public_key(settings)
    except (VaultError, OSError):
        public = None  # the credentials route answers 503 VAULT_KEY_MISSING / INVALID
    return settings.with_overrides(vault_key=None, vault_open_credentials=False, vault_public_key=public)


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
        from opsmantik_stream.db import (
            api_database_url,
            close_pool,
            create_pool,
            gateway_database_url,
            resolve_database_url,
        )

        cfg = gateway_settings(settings or load_settings())
        embedded = None
        url = db_url
        if url is None:
            url, embedded = resolve_database_url(cfg)
        # least privilege: the gateway's own queries run as the narrow gateway role, operator
        # requests as the API role under row-level security; never as the schema owner
        service_url = cfg.gateway_database_url or gateway_database_url(url)
        plan = await _plan(service_url, cfg)
        pool = await create_pool(
            service_url,
            min_size=cfg.db_pool_min,
            max_size=plan.gateway,
            api_url=cfg.api_database_url or api_database_url(url),
            api_max_size=plan.gateway_api,
        )
        app.state.ctx = AppContext(settings=cfg, pool=pool, ray_enabled=ray_enabled)
        metrics = await _start_metrics_server(app) if cfg.metrics_port else None
        from opsmantik_stream.bounds import settle_heap

        settle_heap()  # ready to serve: the start-up objects leave the collector's walks
        try:
            yield
        finally:
            if metrics is not None:
                metrics[0].should_exit = True
                await metrics[1]
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
    # database connection loss -> 503, anything else unhandled -> 500 internal_error
    app.add_middleware(ErrorMiddleware)
    app.add_middleware(RequestIdMiddleware)
    for router in ROUTERS:
        app.include_router(router)
    install_openapi(app)
    return app
