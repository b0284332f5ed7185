"""ASGI app of the Google emulator (Starlette routes, msgspec JSON).

Routes (Google-facing):
- ``POST /token`` — OAuth2 refresh-token grant;
- ``POST /{version}/customers/{customerId}:uploadClickConversions`` — Google Ads API;
- ``POST /v1/events:ingest`` and ``GET /v1/requestStatus:retrieve`` — Data Manager API.

Control / inspection (not Google; unauthenticated, bind to 127.0.0.1 only):
- ``GET /_emulator/state`` — accepted conversions, counts per order id, per-second request
  counts per account, token counts (``?conversions=false`` omits the conversion list);
- ``GET /_emulator/config`` / ``POST /_emulator/config`` — read / patch knobs at runtime;
- ``POST /_emulator/reset`` — forget accepted data and counters (``{"tokens": true}`` also
  forgets issued access tokens and token counters).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from .state import EmulatorConfig, EmulatorState, EmuReply

__all__ = ["create_app"]

_encoder = msgspec.json.Encoder()


async def _send(reply: EmuReply) -> Response:
    if reply.delay_s > 0:
        await asyncio.sleep(reply.delay_s)
    if reply.html:
        return HTMLResponse(reply.payload, status_code=reply.status, headers=reply.headers)
    return Response(_encoder.encode(reply.payload), status_code=reply.status, headers=reply.headers)


def _json(payload: object, status: int = 200) -> Response:
    return Response(_encoder.encode(payload), status_code=status, media_type="application/json")


def create_app(
    config: EmulatorConfig | None = None,
    *,
    clock: Callable[[], float] = time.time,
    state: EmulatorState | None = None,
) -> Starlette:
    """Build the emulator ASGI app. The :class:`EmulatorState` is at ``app.state.emulator``.

    ``clock`` (epoch seconds) drives rate-limit windows, token expiry and per-second counters;
    inject a fake clock in tests for deterministic behaviour.
    """
    emu = state or EmulatorState(config, clock=clock)

    async def token(request: Request) -> Response:
        return await _send(emu.handle_token(await request.body()))

    async def ads_upload(request: Request) -> Response:
        body = await request.body()
        reply = emu.handle_ads_upload(
            request.path_params["version"], request.path_params["rest"], request.headers, body
        )
        return await _send(reply)

    async def dm_ingest(request: Request) -> Response:
        return await _send(emu.handle_dm_ingest(request.headers, await request.body()))

    async def dm_status(request: Request) -> Response:
        return await _send(emu.handle_dm_request_status(request.headers, request.query_params.get("requestId")))

    async def get_state(request: Request) -> Response:
        include = request.query_params.get("conversions", "true").lower() not in ("0", "false", "no")
        return _json(emu.snapshot(include_conversions=include))

    async def get_config(request: Request) -> Response:
        return _json(emu.config)

    async def post_config(request: Request) -> Response:
        try:
            patch = msgspec.json.decode(await request.body() or b"{}")
            if not isinstance(patch, dict):
                raise msgspec.ValidationError("expected a JSON object")
            cfg = emu.update_config(patch)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _json({"error": str(exc)}, 400)
        return _json(cfg)

    async def post_reset(request: Request) -> Response:
        try:
            body = msgspec.json.decode(await request.body() or b"{}")
        except msgspec.DecodeError:
            body = {}
        emu.reset(tokens=bool(isinstance(body, dict) and body.get("tokens")))
        return _json({"ok": True})

    async def not_found(request: Request, exc: Exception) -> Response:
        # Google's front end answers unknown paths with an HTML 404, not JSON.
        from .core import HTML_404

        return HTMLResponse(HTML_404, status_code=404)

    routes = [
        Route("/token", token, methods=["POST"]),
        Route("/v1/events:ingest", dm_ingest, methods=["POST"]),
        Route("/v1/requestStatus:retrieve", dm_status, methods=["GET"]),
        Route("/_emulator/state", get_state, methods=["GET"]),
        Route("/_emulator/config", get_config, methods=["GET"]),
        Route("/_emulator/config", post_config, methods=["POST"]),
        Route("/_emulator/reset", post_reset, methods=["POST"]),
        Route("/{version}/customers/{rest}", ads_upload, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found})
    app.state.emulator = emu
    return app
