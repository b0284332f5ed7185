"""Console sign-in: one-time links, cookie sessions, CSRF tokens, session expiry.

A console session is an ordinary API bearer token (``opsm_...``, only its SHA-256 stored)
minted for the user at sign-in and kept in an HttpOnly cookie; the gateway forwards console
calls to the API with it, so the console has exactly the user's roles and row-level security
and no path of its own. The session row (``private.console_sessions``) gives it an expiry;
ending or expiring the session revokes the token.

Sign-in either exchanges a one-time link (``opsmantik console link``: only the link's
SHA-256 is stored, it expires, and the first exchange uses it up) or a bearer token the user
types in (the console then works with a fresh session token, so signing out never revokes
the user's own token).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from opsmantik_stream.enums import ActorType, ConsoleSignIn
from opsmantik_stream.errors import DomainError
from opsmantik_stream.queries import Q
from opsmantik_stream.tenancy import TOKEN_PREFIX, hash_token, resolve_token, write_audit

if TYPE_CHECKING:
    from opsmantik_stream.job_context import JobContext

__all__ = [
    "LINK_PREFIX",
    "SESSION_LABEL",
    "ConsoleSession",
    "SignInError",
    "create_link",
    "csrf_matches",
    "csrf_token",
    "end_session",
    "exchange_link",
    "expire_sessions",
    "live_session",
    "session_for_token",
]

LINK_PREFIX = "olnk_"
SESSION_LABEL = "console session"
_MAX_SECRET_LEN = 200


class SignInError(DomainError):
    """A sign-in that cannot happen; ``status`` and ``code`` go into the HTTP answer."""


@dataclass(frozen=True)
class ConsoleSession:
    token: str
    user_id: str
    expires_at: Any

    @property
    def csrf(self) -> str:
        return csrf_token(self.token)


def _plausible(secret: str, prefix: str) -> bool:
    """Cheap shape check before a hash lookup: the right prefix and a sane length."""
    return secret.startswith(prefix) and len(secret) <= _MAX_SECRET_LEN


def csrf_token(session_token: str) -> str:
    """The double-submit token bound to a session: derived from the session token (which the
    page's script cannot read), handed to the page by ``GET /console/session`` and required in
    ``X-OpsMantik-CSRF`` on every state-changing console call."""
    return hashlib.sha256(b"opsm-console-csrf|" + session_token.encode()).hexdigest()


def csrf_matches(session_token: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(csrf_token(session_token), given or "")


async def create_link(conn: asyncpg.Connection, *, email: str, ttl_s: int) -> dict[str, Any]:
    """A one-time sign-in link token for an existing user (printed once, only its hash kept)."""
    user = await conn.fetchrow(Q.console.user_by_email, email.strip().lower())
    if user is None:
        raise SignInError(
            404, "user_not_found", f"no user {email!r}: create one with `opsmantik token create --user ...` first"
        )
    token = LINK_PREFIX + secrets.token_urlsafe(32)
    async with conn.transaction():
        row = await conn.fetchrow(Q.console.insert_link, user["id"], hash_token(token), float(ttl_s))
        await write_audit(conn, ActorType.CLI, None, "console.link_create", "user", str(user["id"]), None, {})
    return {"token": token, "user_id": str(user["id"]), "email": user["email"], "expires_at": row["expires_at"]}


async def _open_session(conn: asyncpg.Connection, user_id: Any, via: ConsoleSignIn, ttl_s: int) -> ConsoleSession:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_id = await conn.fetchval(Q.console.insert_session_token, user_id, hash_token(token), SESSION_LABEL)
    expires_at = await conn.fetchval(Q.console.insert_session, token_id, user_id, via.value, float(ttl_s))
    await write_audit(
        conn, ActorType.USER, str(user_id), "console.sign_in", "user", str(user_id), None, {"via": via.value}
    )
    return ConsoleSession(token=token, user_id=str(user_id), expires_at=expires_at)


_BAD_LINK = SignInError(401, "invalid_link", "this sign-in link is not valid: it was used, it expired, or it is wrong")


async def exchange_link(conn: asyncpg.Connection, link_token: str, *, ttl_s: int) -> ConsoleSession:
    """Use up a sign-in link and open a session (one transaction: a failed session leaves
    the link unused)."""
    if not _plausible(link_token, LINK_PREFIX):
        raise _BAD_LINK
    async with conn.transaction():
        user_id = await conn.fetchval(Q.console.use_link, hash_token(link_token))
        if user_id is None:
            raise _BAD_LINK
        return await _open_session(conn, user_id, ConsoleSignIn.LINK, ttl_s)


async def session_for_token(conn: asyncpg.Connection, bearer: str, *, ttl_s: int) -> ConsoleSession:
    """Open a console session for the owner of a valid bearer token."""
    principal = await resolve_token(conn, bearer.strip())
    if principal is None:
        raise SignInError(401, "unauthorized", "the bearer token is not valid")
    async with conn.transaction():
        return await _open_session(conn, principal.user_id, ConsoleSignIn.TOKEN, ttl_s)


async def live_session(conn: asyncpg.Connection, session_token: str) -> asyncpg.Record | None:
    """The session behind a cookie value while it is live (not ended, expired or revoked)."""
    if not _plausible(session_token, TOKEN_PREFIX):
        return None
    return await conn.fetchrow(Q.console.live_session, hash_token(session_token))


async def end_session(conn: asyncpg.Connection, session_token: str) -> bool:
    """Sign out: end the session and revoke its token; False when there was nothing to end."""
    if not _plausible(session_token, TOKEN_PREFIX):
        return False
    async with conn.transaction():
        user_id = await conn.fetchval(Q.console.end_session, hash_token(session_token))
        if user_id is None:
            return False
        await write_audit(conn, ActorType.USER, str(user_id), "console.sign_out", "user", str(user_id), None, {})
    return True


async def expire_sessions(ctx: JobContext) -> dict[str, Any]:
    """Job: end expired sessions and revoke their tokens; forget links expired a day ago."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        revoked = await conn.fetch(Q.console.expire_sessions, ctx.now)
        status = await conn.execute(Q.console.delete_old_links, ctx.now)
    return {"revoked": len(revoked), "links_deleted": int(status.split()[-1])}
