"""OAuth2 refresh-token grant with an access-token cache.

Tokens are cached per (token URL, client id, refresh token) until 60 s before ``expires_in``
runs out, so a busy uploader refreshes about once an hour instead of once per request (the
reference refreshed on every call, without a timeout). Tokens and secrets are never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import msgspec

from .credentials import GoogleCredentials

__all__ = [
    "DEFAULT_TOKEN_URL",
    "OAuthConfigError",
    "OAuthError",
    "OAuthTransientError",
    "TokenProvider",
]

DEFAULT_TOKEN_URL = "https://oauth2.googleapis.com/token"
#: Refresh this long before the token's stated expiry.
EXPIRY_SKEW_S = 60.0


class OAuthError(Exception):
    """Token refresh failed. ``code`` is the RFC 6749 error (``invalid_grant``) or ours."""

    def __init__(self, code: str, message: str, http_status: int = 0) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status


class OAuthConfigError(OAuthError):
    """Permanent: revoked/expired refresh token (``invalid_grant``), wrong client, missing
    credentials. Retrying cannot help; the account needs a human (rows go BLOCKED)."""


class OAuthTransientError(OAuthError):
    """The token endpoint failed transiently (5xx, 429, timeout, network): retry later."""


class _TokenResponse(msgspec.Struct):
    access_token: str = ""
    expires_in: float = 3599.0
    token_type: str = "Bearer"
    error: str | None = None
    error_description: str | None = None


@dataclass(slots=True)
class _Cached:
    token: str
    refresh_at: float


class TokenProvider:
    """Fetches and caches OAuth2 access tokens.

    ``token_url`` is the deployment's token endpoint (``OPSMANTIK_GOOGLE_TOKEN_URL``), never a
    tenant's. ``clock`` is a monotonic clock (injectable for tests). ``refreshes`` counts token
    endpoint calls made by this provider.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        token_url: str = DEFAULT_TOKEN_URL,
        timeout: httpx.Timeout | None = None,
        clock: Callable[[], float] = time.monotonic,
        skew_s: float = EXPIRY_SKEW_S,
    ) -> None:
        self._http = http
        self.token_url = token_url
        self._timeout = timeout or httpx.Timeout(10.0, connect=5.0)
        self._clock = clock
        self._skew_s = skew_s
        self._cache: dict[tuple[str, str, str], _Cached] = {}
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self.refreshes = 0

    def _key(self, creds: GoogleCredentials) -> tuple[str, str, str]:
        # Key on a digest so the refresh token itself is not kept as a dict key.
        digest = hashlib.sha256(creds.refresh_token.encode()).hexdigest()
        return (self.token_url, creds.client_id, digest)

    def invalidate(self, creds: GoogleCredentials) -> None:
        """Forget the cached token (e.g. after the API answered 401)."""
        self._cache.pop(self._key(creds), None)

    async def get_token(self, creds: GoogleCredentials) -> str:
        """Return a valid access token, refreshing it when missing or close to expiry.

        Raises :class:`OAuthConfigError` or :class:`OAuthTransientError`.
        """
        key = self._key(creds)
        cached = self._cache.get(key)
        if cached is not None and self._clock() < cached.refresh_at:
            return cached.token
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            # Another task may have refreshed while we waited for the lock.
            cached = self._cache.get(key)
            if cached is not None and self._clock() < cached.refresh_at:
                return cached.token
            token, expires_in = await self._refresh(creds)
            self._cache[key] = _Cached(token, self._clock() + max(0.0, expires_in - self._skew_s))
            return token

    async def _refresh(self, creds: GoogleCredentials) -> tuple[str, float]:
        if not (creds.client_id.strip() and creds.client_secret.strip() and creds.refresh_token.strip()):
            raise OAuthConfigError("MISSING_CREDENTIALS", "client id, client secret or refresh token is empty")
        url = self.token_url
        form = {
            "grant_type": "refresh_token",
            "client_id": creds.client_id.strip(),
            "client_secret": creds.client_secret.strip(),
            "refresh_token": creds.refresh_token.strip(),
        }
        self.refreshes += 1
        try:
            resp = await self._http.post(url, data=form, timeout=self._timeout)
        except httpx.TimeoutException as exc:
            raise OAuthTransientError("TIMEOUT", f"token endpoint timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise OAuthTransientError("NETWORK_ERROR", f"token endpoint unreachable ({type(exc).__name__})") from None
        try:
            body = msgspec.json.decode(resp.content, type=_TokenResponse)
        except (msgspec.DecodeError, msgspec.ValidationError):
            body = _TokenResponse()
        if resp.status_code == 200 and body.access_token:
            return body.access_token, float(body.expires_in)
        code = body.error or f"HTTP_{resp.status_code}"
        # error_description is Google's text (no secrets); keep it short.
        message = (body.error_description or "token refresh failed")[:300]
        if resp.status_code == 429 or resp.status_code >= 500:
            raise OAuthTransientError("TOKEN_ENDPOINT_UNAVAILABLE", f"{code}: {message}", resp.status_code)
        if code == "invalid_grant":
            message += " (refresh token expired or revoked: re-consent and store a new refresh token)"
        if resp.status_code == 200:
            code = "INVALID_TOKEN_RESPONSE"
            message = "token response had no access_token"
            raise OAuthTransientError(code, message, resp.status_code)
        raise OAuthConfigError(code, message, resp.status_code)
