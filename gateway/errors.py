"""Error answers: a JSON body ``{"ok": false, "error": code, "message": ...}`` and the code
in ``X-OpsMantik-Error-Code``, so clients can branch without parsing text."""

from __future__ import annotations

import asyncio
import logging
import re
import traceback
from typing import Any, TypeVar

import asyncpg
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from opsmantik_stream.errors import DomainError

__all__ = [
    "ApiError",
    "ErrorMiddleware",
    "JSONResponse",
    "api_error_handler",
    "decode_json",
    "domain_error",
    "is_connection_loss",
    "json_response",
    "validation_error",
]

_encoder = msgspec.json.Encoder()
T = TypeVar("T")


class JSONResponse(Response):
    """JSON encoded by msgspec (faster than the stdlib and handles Structs, UUIDs, datetimes)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encoder.encode(content)


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(content, status_code=status_code, headers=headers)


class ApiError(Exception):
    def __init__(
        self,
        status_code: int,
        code: str,
        message: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message or code)
        self.status_code = status_code
        self.code = code
        self.message = message or code
        self.headers = headers or {}
        self.extra = extra or {}


def domain_error(exc: DomainError) -> ApiError:
    """The answer for a request the domain refused (a lead rule, a privacy request, a sign-in)."""
    return ApiError(exc.status, exc.code, exc.message)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    body = {"ok": False, "error": exc.code, "message": exc.message, **exc.extra}
    # exc.headers may carry a more precise error code (validation_error:<field>)
    headers = {"X-OpsMantik-Error-Code": exc.code, **exc.headers}
    return json_response(body, exc.status_code, headers)


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_NAMED = re.compile(r"(?:missing required|unknown) field `(?P<name>[^`]+)`")


def validation_error(field: str, message: str) -> ApiError:
    """422 for a body or parameter that does not fit its schema, naming the field: the body
    says ``validation_error`` and ``field``, the error header ``validation_error:<field>``
    (the same shape FastAPI's own validation errors get, see gateway/app.py)."""
    return ApiError(
        422,
        "validation_error",
        message,
        headers={"X-OpsMantik-Error-Code": f"validation_error:{field}"},
        extra={"field": field},
    )


def decode_json(raw: bytes, typ: type[T]) -> T:
    """Strict JSON decode into a msgspec type: 400 ``invalid_json`` when it is not JSON (or
    not UTF-8), 422 ``validation_error:<field>`` when it does not fit the type."""
    try:
        return msgspec.json.decode(raw, type=typ)
    except msgspec.ValidationError as exc:
        text = str(exc)
        m = _AT.search(text)
        # msgspec says "... - at `$.items[3].note`": the field becomes items.3.note
        path = (m.group("path") if m else "").replace("[", ".").replace("]", "").lstrip(".")
        named = _NAMED.search(text)
        if named:  # the object is at `path`; the field it lacks (or should not have) is named
            path = f"{path}.{named.group('name')}".lstrip(".")
        raise validation_error(path or "body", text[: m.start()] if m else text) from None
    except msgspec.DecodeError:
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None


# ---------------------------------------------------------------- unhandled exceptions

log = logging.getLogger("opsmantik.errors")

# The server is going away or not accepting connections yet (SQLSTATE 57P01-57P03).
_SERVER_GONE = (
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
)
# asyncpg's own words for a connection or pool that no longer exists
_CLOSED = re.compile(r"\b(connection|pool) (is|was) clos(ed|ing)\b")


def _raised_by_driver(exc: BaseException) -> bool:
    """True when the innermost frame of ``exc`` is in asyncpg (or in the event loop's
    transport code it drives: asyncio, uvloop): an ``OSError`` from there is a failed connect
    or a broken socket, not our code."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    for frame in reversed(frames):
        name = frame.filename.replace("\\", "/")
        if "/asyncpg/" in name or name.startswith("asyncpg/"):
            return True
        if "/asyncio/" not in name and "uvloop" not in name:
            return False
    return False


def is_connection_loss(exc: BaseException) -> bool:
    """Does ``exc`` say the database connection is gone (a retry can succeed), as opposed
    to a bug in a query or in the gateway?

    Connection loss: SQLSTATE class 08 (asyncpg's ``PostgresConnectionError``, including a
    connection that died mid-query), the server shutting down or starting up (57P01-57P03),
    an ``OSError`` or timeout raised inside the driver (refused, reset, the unix socket gone
    during a restart, every address failing), asyncpg reporting a closed connection or pool,
    and a pooled connection a restart broke mid-protocol (``cannot switch to state``).
    Everything else (wrong argument counts, out-of-range values, a connection used twice at
    once, an ``OSError`` from our own code, ...) is a bug and must not look like an outage.
    """
    if isinstance(exc, (asyncpg.PostgresConnectionError, *_SERVER_GONE)):
        return True
    if isinstance(exc, asyncpg.exceptions.DataError):
        return False  # "invalid input for query argument": a value the schema check missed
    if isinstance(exc, asyncpg.InterfaceError):
        return bool(_CLOSED.search(str(exc)))
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        return "cannot switch to state" in str(exc)
    if isinstance(exc, (OSError, asyncio.TimeoutError)):
        return _raised_by_driver(exc)
    return False


def _answer_for(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    if isinstance(exc, asyncpg.exceptions.TooManyConnectionsError):
        # the server's max_connections is used up (a pool sized beyond the budget, or
        # connections from outside the stack): nothing was written, a retry may pass
        code, status, message = "database_busy", 503, "the database has no free connection; retry later"
        return status, {"ok": False, "error": code, "message": message}, {"Retry-After": "2"}
    if is_connection_loss(exc):
        # PostgreSQL restarting or unreachable: nothing was committed, so the client may retry
        code, status, message = "database_unavailable", 503, "the database is not reachable; retry later"
        return status, {"ok": False, "error": code, "message": message}, {"Retry-After": "1"}
    return 500, {"ok": False, "error": "internal_error", "message": "an internal error; it was logged"}, {}


class ErrorMiddleware:
    """The answer for an exception no route handled (pure ASGI, inside the request-id
    middleware so the answer carries ``x-request-id``).

    Database connection loss and an exhausted connection budget answer 503 with
    ``Retry-After`` (retryable, nothing was written). Anything else is a bug: 500
    ``internal_error``, logged at ERROR with the exception class and the stack (file, line,
    function) but not the exception's message, which can quote request data (asyncpg puts
    the offending value in its text).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            status, body, headers = _answer_for(exc)
            route = getattr(scope.get("route"), "path", None) or scope.get("path")
            stack = "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__)))
            log.log(
                logging.WARNING if status == 503 else logging.ERROR,
                "request failed",
                extra={"error": body["error"], "exc_type": type(exc).__qualname__, "route": route, "stack": stack},
            )
            if started:
                raise  # a streamed answer already began: the connection is cut instead
            response = json_response(body, status, {"X-OpsMantik-Error-Code": str(body["error"]), **headers})
            await response(scope, receive, send)
