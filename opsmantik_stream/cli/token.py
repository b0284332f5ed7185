"""``opsmantik token create``."""

from __future__ import annotations

import argparse
from typing import Any

import asyncpg

from opsmantik_stream import tenancy
from opsmantik_stream.cli._common import add_json_flag, emit, run_with_db
from opsmantik_stream.config import Settings
from opsmantik_stream.enums import SiteRole


def register(sub: Any) -> None:
    tok = sub.add_parser("token", help="API bearer tokens", description="API bearer tokens.")
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
    p.add_argument("--label", help="a note to recognise the token by")
    add_json_flag(p)
    p.set_defaults(func=cmd_create)


def cmd_create(args: argparse.Namespace) -> int:
    if args.site is None and not args.platform_admin:
        from opsmantik_stream.cli._common import CliError

        raise CliError("token create needs --site and --role, or --platform-admin")

    async def body(conn: asyncpg.Connection, settings: Settings) -> dict[str, Any]:
        return await tenancy.create_token(
            conn,
            email=args.user,
            public_id=args.site,
            role=args.role,
            platform_admin=args.platform_admin,
            label=args.label,
        )

    result = run_with_db(body)
    emit(args, result, f"token (shown once): {result['token']}")
    return 0
