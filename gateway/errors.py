"""Error answers: a JSON body ``{"ok": false, "error": code, "message": ...}`` and the code
in ``X-OpsMantik-Error-Code``, so clients can branch without parsing text."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["ApiError", "JSONResponse", "api_error_handler", "json_response"]

_encoder = msgspec.json.Encoder()


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


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    body = {"ok": False, "error": exc.code, "message": exc.message, **exc.extra}
    headers = {"X-OpsMantik-Error-Code": exc.code, **exc.headers}
    return json_response(body, exc.status_code, headers)
