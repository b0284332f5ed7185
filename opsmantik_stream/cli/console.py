"""``opsmantik console link``: a one-time sign-in link for the operator console."""

from __future__ import annotations

import argparse
from typing import Any

import asyncpg

from opsmantik_stream.cli._common import CliError, add_json_flag, emit, run_with_db, settings_or_exit
from opsmantik_stream.config import Settings
from opsmantik_stream.console import signin


def register(sub: Any) -> None:
    con = sub.add_parser(
        "console",
        help="the operator console (/console)",
        description="The operator console served by the gateway at /console.",
    )
    csub = con.add_subparsers(dest="console_command", metavar="SUBCOMMAND")
    csub.required = True
    p = csub.add_parser(
        "link",
        help="print a one-time sign-in link for a user",
        description="Print a link that signs USER in to the console once. The link expires "
        "(OPSMANTIK_CONSOLE_LINK_TTL_S, default 15 minutes, or --ttl-min) and only its SHA-256 is "
        "stored. The token sits in the link's #fragment, which browsers never send to a server, "
        "so link previews cannot use it up. The user must exist (opsmantik token create).",
    )
    p.add_argument("--user", required=True, metavar="EMAIL", help="the user's email")
    p.add_argument("--ttl-min", type=int, metavar="MINUTES", help="minutes until the link expires (1 to 10080)")
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="the gateway's address as the user reaches it (default http://OPSMANTIK_HOST:OPSMANTIK_PORT)",
    )
    add_json_flag(p)
    p.set_defaults(func=cmd_link)


def cmd_link(args: argparse.Namespace) -> int:
    settings = settings_or_exit()
    if args.ttl_min is not None and not 1 <= args.ttl_min <= 7 * 24 * 60:
        raise CliError("--ttl-min must be between 1 and 10080", exit_code=2)
    base = (args.base_url or f"http://{settings.host}:{settings.port}").rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise CliError("--base-url must start with http:// or https://", exit_code=2)
    ttl_s = args.ttl_min * 60 if args.ttl_min is not None else settings.console_link_ttl_s

    async def body(conn: asyncpg.Connection, cfg: Settings) -> dict[str, Any]:
        try:
            return await signin.create_link(conn, email=args.user, ttl_s=ttl_s)
        except signin.SignInError as exc:
            raise CliError(exc.message) from None

    link = run_with_db(body, settings=settings)
    url = f"{base}/console#link={link['token']}"
    data = {"url": url, "email": link["email"], "user_id": link["user_id"], "expires_at": link["expires_at"]}
    emit(args, data, f"{url}\n(one-time link for {link['email']}; expires {link['expires_at'].isoformat()})")
    return 0
