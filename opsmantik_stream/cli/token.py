"""``opsmantik token create|list|revoke``: API bearer tokens (only their SHA-256 is stored)."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import uuid
from typing import Any

import asyncpg

from opsmantik_stream import tenancy
from opsmantik_stream.cli._common import CliError, add_json_flag, emit, run_with_db
from opsmantik_stream.config import Settings
from opsmantik_stream.enums import SiteRole

_DURATION = re.compile(r"^\s*(\d{1,6})\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> dt.timedelta:
    """``90m``, ``12h``, ``30d``, ``2w`` (or seconds with ``s``) -> a positive timedelta."""
    m = _DURATION.match(text)
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"not a duration like 30d, 12h or 90m: {text!r}")
    return dt.timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def register(sub: Any) -> None:
    tok = sub.add_parser(
        "token",
        help="API bearer tokens",
        description="API bearer tokens: create (printed once), list (labels and dates, never tokens), revoke.",
    )
    tsub = tok.add_subparsers(dest="token_command", metavar="SUBCOMMAND")
    tsub.required = True
    p = tsub.add_parser(
        "create",
        help="create a bearer token for a user (printed once)",
        description="Create the user if needed, grant ROLE on the site, and print a new bearer "
        "token. Only its SHA-256 is stored: keep the printed token.",
    )
    p.add_argument("--user", required=True, metavar="EMAIL", help="the user's email")
    p.add_argument("--site", metavar="PUBLIC_ID", help="the site to grant the role on")
    p.add_argument("--role", choices=[r.value for r in SiteRole], help="role on the site")
    p.add_argument("--platform-admin", action="store_true", help="make the user a platform admin")
    p.add_argument("--label", help="a note to recognise the token by (shown by `token list`)")
    p.add_argument(
        "--expires-in",
        metavar="DURATION",
        help="the token stops working after this long: e.g. 90m, 12h, 30d, 2w (default: never)",
    )
    add_json_flag(p)
    p.set_defaults(func=cmd_create)

    p = tsub.add_parser(
        "list",
        help="list tokens by label and state (never the tokens themselves)",
        description="List every token (or one user's): id, user, label, state (active, expired, "
        "revoked), created, last used, expiry. Tokens and their hashes are never shown.",
    )
    p.add_argument("--user", metavar="EMAIL", help="only this user's tokens")
    add_json_flag(p)
    p.set_defaults(func=cmd_list)

    p = tsub.add_parser(
        "revoke",
        help="revoke tokens by id, user or label (401 from the next request on)",
        description="Revoke the live tokens that match every given filter: --id (one token, as "
        "shown by `token list`), --user (all of a user's tokens), --label. Audited.",
    )
    p.add_argument("--id", dest="token_id", metavar="TOKEN_ID", help="the token's id")
    p.add_argument("--user", metavar="EMAIL", help="the user whose tokens to revoke")
    p.add_argument("--label", help="tokens with this label")
    add_json_flag(p)
    p.set_defaults(func=cmd_revoke)


def cmd_create(args: argparse.Namespace) -> int:
    if args.site is None and not args.platform_admin:
        raise CliError("token create needs --site and --role, or --platform-admin", exit_code=2)
    expires_in = None
    if args.expires_in is not None:
        try:
            expires_in = parse_duration(args.expires_in)
        except ValueError as exc:
            raise CliError(f"--expires-in: {exc}", exit_code=2) from None

    async def body(conn: asyncpg.Connection, settings: Settings) -> dict[str, Any]:
        return await tenancy.create_token(
            conn,
            email=args.user,
            public_id=args.site,
            role=args.role,
            platform_admin=args.platform_admin,
            label=args.label,
            expires_in=expires_in,
        )

    result = run_with_db(body)
    expiry = f" (expires {result['expires_at']})" if result["expires_at"] else ""
    emit(args, result, f"token (shown once): {result['token']}{expiry}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection, settings: Settings) -> list[dict[str, Any]]:
        return await tenancy.list_tokens(conn, email=args.user)

    tokens = run_with_db(body)
    lines = [
        f"{t['token_id']}  {t['state']:<7}  {t['email']}  label={t['label'] or '-'}  "
        f"created={t['created_at'][:19]}  last_used={(t['last_used_at'] or '-')[:19]}  "
        f"expires={(t['expires_at'] or 'never')[:19]}"
        for t in tokens
    ]
    emit(args, {"tokens": tokens}, "\n".join(lines) if lines else "no tokens")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    if args.token_id is None and args.user is None and args.label is None:
        raise CliError("token revoke needs --id, --user or --label", exit_code=2)
    if args.token_id is not None:
        try:
            uuid.UUID(args.token_id)
        except ValueError:
            raise CliError(
                f"--id: not a token id (see `opsmantik token list`): {args.token_id!r}", exit_code=2
            ) from None

    async def body(conn: asyncpg.Connection, settings: Settings) -> list[dict[str, Any]]:
        return await tenancy.revoke_tokens(conn, token_id=args.token_id, email=args.user, label=args.label)

    revoked = run_with_db(body)
    text = "\n".join(f"revoked {r['token_id']} ({r['email']}, label={r['label'] or '-'})" for r in revoked)
    emit(args, {"revoked": revoked}, text or "no live token matched")
    return 0
