"""``opsmantik site ingest-key rotate``: the key server-to-server senders (no ``Origin``
header) put in ``X-OpsMantik-Ingest-Key`` when they post to ``/api/sync``.

Registered as a ``site`` subcommand through ``SITE_EXTENSIONS`` when this module is imported.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
from typing import Any

import asyncpg

from opsmantik_stream import tenancy
from opsmantik_stream.cli._common import add_json_flag, emit, run_with_db
from opsmantik_stream.cli.site import SITE_EXTENSIONS
from opsmantik_stream.config import Settings
from opsmantik_stream.enums import ActorType
from opsmantik_stream.queries import Q

__all__ = ["INGEST_KEY_PREFIX", "cmd_ingest_key_rotate"]

INGEST_KEY_PREFIX = "opsi_"


def _register_site(ssub: Any) -> None:
    key = ssub.add_parser("ingest-key", help="server-to-server ingest key", description="The site's ingest key.")
    ksub = key.add_subparsers(dest="ingest_key_command", metavar="SUBCOMMAND")
    ksub.required = True
    p = ksub.add_parser(
        "rotate",
        help="create a new ingest key (the old one stops working); printed once",
        description="Create a new ingest key for requests to /api/sync without an Origin header "
        "(servers, not browsers): send it as X-OpsMantik-Ingest-Key. Only its SHA-256 is stored; "
        "the old key stops working once gateways refresh their site cache (seconds).",
    )
    p.add_argument("public_id", help="the site's public id")
    add_json_flag(p)
    p.set_defaults(func=cmd_ingest_key_rotate)


def cmd_ingest_key_rotate(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection, settings: Settings) -> dict[str, Any]:
        site = await tenancy.get_site(conn, args.public_id)
        key = INGEST_KEY_PREFIX + secrets.token_urlsafe(32)
        async with conn.transaction():
            await conn.execute(Q.ingest.set_ingest_key, site["site_id"], hashlib.sha256(key.encode()).hexdigest())
            await tenancy.write_audit(
                conn, ActorType.CLI, None, "site.ingest_key_rotate", "site", site["site_id"], site["site_id"], {}
            )
        return {"public_id": args.public_id, "site_id": site["site_id"], "ingest_key": key}

    result = run_with_db(body)
    emit(
        args,
        result,
        f"ingest key for {result['public_id']}: {result['ingest_key']}\n"
        "send it as X-OpsMantik-Ingest-Key; it is not shown again",
    )
    return 0


SITE_EXTENSIONS.append(_register_site)
