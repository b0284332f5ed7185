"""Routes: the operator console (``/console``): its page and assets, sign-in and sign-out,
and the door through which the page calls the API.

The page never holds a bearer token. Signing in (a one-time link from ``opsmantik console
link``, or a bearer token typed in) mints a session token that lives in an HttpOnly,
SameSite=Strict cookie scoped to ``/console``. The page calls ``/console/api/<path>``; the
gateway checks the session and hands the request, unchanged but for the credentials, to
``/api/<path>`` with ``Authorization: Bearer <session token>``. So the console has exactly the
API's routes, checks and row-level security for the signed-in user: no path of its own.

CSRF: besides SameSite=Strict, every state-changing call must carry ``X-OpsMantik-CSRF`` equal
to the session's CSRF token (a value derived from the session token, which the page gets from
``GET /console/session``; a cross-site page can neither read it nor send the header without a
CORS preflight, which the gateway never grants). Signing in requires ``X-OpsMantik-Console: 1``
for the same reason (no login CSRF).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

import msgspec
from fastapi import APIRouter, Request
from starlette.responses import FileResponse, Response

from gateway.errors import ApiError, JSONResponse, decode_json, domain_error, json_response
from opsmantik_stream import tenancy
from opsmantik_stream.console import signin
from opsmantik_stream.rbac import CAPABILITIES

router = APIRouter(tags=["console"])

COOKIE = "opsm_console"
COOKIE_PATH = "/console"
CSRF_HEADER = "x-opsmantik-csrf"
SIGNIN_HEADER = "x-opsmantik-console"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_STATIC_DIR = Path(__file__).resolve().parent.parent / "static" / "console"
# the assets are the files shipped with the gateway, listed once: a request names one of them
_ASSETS = {p.name: p for p in _STATIC_DIR.iterdir() if p.is_file()} if _STATIC_DIR.is_dir() else {}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
# credentials and cron secrets of the browser request never reach the API: the session's token does
_DROPPED_HEADERS = frozenset({b"authorization", b"cookie", b"x-cron-secret", CSRF_HEADER.encode()})
_PASSED_SCOPE_KEYS = (
    "type",
    "asgi",
    "http_version",
    "method",
    "scheme",
    "server",
    "client",
    "root_path",
    "query_string",
    "extensions",
    "state",
)


class SignInBody(msgspec.Struct, forbid_unknown_fields=True):
    link: str | None = None
    token: str | None = None


@router.get("/console", include_in_schema=False)
async def console_page() -> Response:
    index = _ASSETS.get("index.html")
    if index is None:
        raise ApiError(404, "console_not_installed", "the console assets are missing from this installation")
    return FileResponse(index, media_type="text/html; charset=utf-8", headers=_SECURITY_HEADERS)


@router.get("/console/static/{name}", include_in_schema=False)
async def console_asset(name: str) -> Response:
    path = _ASSETS.get(name)
    if path is None or name == "index.html":
        raise ApiError(404, "not_found", "no such console asset")
    media = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if media.startswith("text/") or media == "application/javascript":
        media += "; charset=utf-8"
    return FileResponse(path, media_type=media, headers=_SECURITY_HEADERS)


def _session_cookie(request: Request) -> str | None:
    value = request.cookies.get(COOKIE)
    return value or None


def _set_cookie(response: Response, request: Request, token: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )


def _signed_out(request: Request, message: str = "sign in to the console") -> JSONResponse:
    response = json_response(
        {"ok": False, "error": "console_signed_out", "message": message},
        401,
        {"X-OpsMantik-Error-Code": "console_signed_out"},
    )
    _clear_cookie(response, request)
    return response


def _roles() -> dict[str, list[str]]:
    return {role.value: sorted(c.value for c in caps) for role, caps in CAPABILITIES.items()}


@router.post("/console/session", response_class=JSONResponse, summary="Console sign-in (one-time link or token)")
async def sign_in(request: Request) -> JSONResponse:
    if request.headers.get(SIGNIN_HEADER) != "1":
        raise ApiError(403, "csrf_required", f"send the header {SIGNIN_HEADER}: 1")
    body = decode_json(await request.body(), SignInBody)
    if (body.link is None) == (body.token is None):
        raise ApiError(400, "invalid_body", "give exactly one of link or token")
    ctx = request.app.state.ctx
    ttl = ctx.settings.console_session_ttl_s
    try:
        async with ctx.pool.acquire() as conn:
            if body.link is not None:
                session = await signin.exchange_link(conn, body.link.strip(), ttl_s=ttl)
            else:
                session = await signin.session_for_token(conn, body.token or "", ttl_s=ttl)
    except signin.SignInError as exc:
        raise domain_error(exc) from None
    response = json_response({"ok": True, "csrf": session.csrf, "expires_at": session.expires_at})
    _set_cookie(response, request, session.token, ttl)
    return response


@router.get("/console/session", response_class=JSONResponse, summary="The console's signed-in user")
async def whoami(request: Request) -> JSONResponse:
    token = _session_cookie(request)
    if token is None:
        return _signed_out(request)
    async with request.app.state.ctx.pool.acquire() as conn:
        live = await signin.live_session(conn, token)
        principal = await tenancy.resolve_token(conn, token) if live is not None else None
    if live is None or principal is None:
        return _signed_out(request, "the console session ended; sign in again")
    return json_response(
        {
            "ok": True,
            "user_id": principal.user_id,
            "email": principal.email,
            "platform_admin": principal.is_platform_admin,
            "csrf": signin.csrf_token(token),
            "expires_at": live["expires_at"],
            # the capability matrix, so the page shows only the actions the API will allow
            "roles": _roles(),
        }
    )


@router.delete("/console/session", response_class=JSONResponse, summary="Console sign-out")
async def sign_out(request: Request) -> JSONResponse:
    token = _session_cookie(request)
    if token is not None:
        if not signin.csrf_matches(token, request.headers.get(CSRF_HEADER)):
            raise ApiError(403, "csrf_failed", f"missing or wrong {CSRF_HEADER} header")
        async with request.app.state.ctx.pool.acquire() as conn:
            await signin.end_session(conn, token)
    response = json_response({"ok": True, "signed_out": True})
    _clear_cookie(response, request)
    return response


class _ForwardToApi(Response):
    """Runs the request through the app again as ``/api/<path>`` with the session's bearer
    token in place of the browser's cookie (the body is read by the API route itself)."""

    def __init__(self, path: str, token: str) -> None:
        super().__init__()
        self._path = path
        self._token = token

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k not in _DROPPED_HEADERS]
        headers.append((b"authorization", b"Bearer " + self._token.encode()))
        inner = {k: scope[k] for k in _PASSED_SCOPE_KEYS if k in scope}
        inner.update(path=self._path, raw_path=self._path.encode(), headers=headers)

        async def send_once(message: Any) -> None:
            if message["type"] == "http.response.start":
                # the outer request already carries a request id
                message = {**message, "headers": [h for h in message["headers"] if h[0] != b"x-request-id"]}
            await send(message)

        await scope["app"](inner, receive, send_once)


@router.api_route(
    "/console/api/{path:path}",
    methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
    include_in_schema=False,
)
async def console_api(path: str, request: Request) -> Response:
    segments = path.split("/")
    if not path or any(s in {"", ".", ".."} for s in segments):
        raise ApiError(404, "not_found", "no such API route")
    token = _session_cookie(request)
    if token is None:
        return _signed_out(request)
    if request.method not in _SAFE_METHODS and not signin.csrf_matches(token, request.headers.get(CSRF_HEADER)):
        raise ApiError(403, "csrf_failed", f"missing or wrong {CSRF_HEADER} header")
    async with request.app.state.ctx.pool.acquire() as conn:
        live = await signin.live_session(conn, token)
        if live is None:
            # expired but not yet swept by the job: end it now so its token stops working too
            await signin.end_session(conn, token)
    if live is None:
        return _signed_out(request, "the console session ended; sign in again")
    return _ForwardToApi("/api/" + path, token)
