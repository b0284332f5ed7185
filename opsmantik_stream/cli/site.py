"""``opsmantik site create|list|origins add|secret rotate``."""

from __future__ import annotations

import argparse
from typing import Any

import asyncpg

from opsmantik_stream import tenancy
from opsmantik_stream.cli._common import add_json_flag, emit, run_with_db
from opsmantik_stream.config import Settings
from opsmantik_stream.snippet import CONSENT_NOTE, PLACEHOLDER_URL, gateway_url, tracker_snippet
from opsmantik_stream.uploads.delivery import sites_delivery

# Other modules add subcommands to `site` (e.g. `site credentials set`) through this hook.
SITE_EXTENSIONS: list[Any] = []


def register(sub: Any) -> None:
    site = sub.add_parser("site", help="create and manage tracked sites", description="Manage tracked sites.")
    ssub = site.add_subparsers(dest="site_command", metavar="SUBCOMMAND")
    ssub.required = True

    p = ssub.add_parser(
        "create",
        help="create a site; prints its public id, call-event secret and tracker snippet",
        description="Create a site with its plan, allowed origins and call-event signing secret, and print "
        "the tracker snippet to paste into its pages (the gateway address is OPSMANTIK_PUBLIC_URL, else "
        "http://OPSMANTIK_HOST:OPSMANTIK_PORT).",
    )
    p.add_argument("--name", required=True, help="display name")
    p.add_argument("--domain", required=True, help="main domain, e.g. shop.example.com (becomes an origin)")
    p.add_argument(
        "--origin", action="append", default=[], metavar="ORIGIN", help="another allowed origin (repeatable)"
    )
    p.add_argument("--currency", default="TRY", help="ISO 4217 currency of the site's sales (default TRY)")
    p.add_argument("--timezone", default="UTC", help="IANA time zone for reports (default UTC)")
    p.add_argument("--monthly-limit", type=int, default=100_000, help="billable events per UTC month")
    p.add_argument("--soft-limit", action="store_true", help="accept overage up to 2x the monthly limit")
    add_json_flag(p)
    p.set_defaults(func=cmd_create)

    p = ssub.add_parser(
        "list",
        help="list sites",
        description="List every site with its origins, its destination (where conversions are sent) and "
        "the destinations it has credentials for.",
    )
    add_json_flag(p)
    p.set_defaults(func=cmd_list)

    origins = ssub.add_parser("origins", help="manage a site's allowed origins", description="Allowed origins.")
    osub = origins.add_subparsers(dest="origins_command", metavar="SUBCOMMAND")
    osub.required = True
    p = osub.add_parser("add", help="allow another origin", description="Allow another origin for a site.")
    p.add_argument("public_id", help="the site's public id")
    p.add_argument("origin", help="e.g. https://www.example.com")
    add_json_flag(p)
    p.set_defaults(func=cmd_origin_add)

    secret = ssub.add_parser("secret", help="call-event signing secrets", description="Signing secrets.")
    xsub = secret.add_subparsers(dest="secret_command", metavar="SUBCOMMAND")
    xsub.required = True
    p = xsub.add_parser(
        "rotate",
        help="promote the next secret to current and prepare a new next one",
        description="Rotate the call-event secret. Requests signed with the current or the next "
        "secret are accepted, so clients can switch without rejected calls.",
    )
    p.add_argument("public_id", help="the site's public id")
    add_json_flag(p)
    p.set_defaults(func=cmd_secret_rotate)

    for extend in SITE_EXTENSIONS:
        extend(ssub)


def cmd_create(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection, settings: Settings) -> dict[str, Any]:
        site = await tenancy.create_site(
            conn,
            name=args.name,
            domain=args.domain,
            origins=args.origin,
            currency=args.currency,
            timezone=args.timezone,
            monthly_limit=args.monthly_limit,
            soft_limit=args.soft_limit,
        )
        base = gateway_url(settings)
        return {**site, "tracker_snippet": tracker_snippet(site["public_id"], base), "consent_note": CONSENT_NOTE}

    site = run_with_db(body)
    where = (
        "" if PLACEHOLDER_URL not in site["tracker_snippet"] else " (set OPSMANTIK_PUBLIC_URL to print the real host)"
    )
    emit(
        args,
        site,
        f"site created\n  public_id: {site['public_id']}\n  site_id:   {site['site_id']}\n"
        f"  secret:    {site['secret']}\n  origins:   {', '.join(site['origins'])}\n"
        f"tracker, for every page of the site{where}:\n{site['tracker_snippet']}\n{site['consent_note']}",
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection, settings: Settings) -> list[dict[str, Any]]:
        sites = await tenancy.list_sites(conn)
        delivery = {d["site_id"]: d for d in await sites_delivery(conn)}
        for s in sites:
            d = delivery.get(s["site_id"], {})
            s["destination"] = d.get("destination", s["default_destination"])
            s["credentials"] = d.get("credentials", [])
        return sites

    sites = run_with_db(body)
    lines = [
        f"{s['public_id']}  {s['name']}  {', '.join(s['origins'])}  -> {s['destination']}"
        + ("" if s["destination"] in s["credentials"] else " (no credentials yet)")
        for s in sites
    ] or ["no sites"]
    emit(args, {"sites": sites}, "\n".join(lines))
    return 0


def cmd_origin_add(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection, settings: Settings) -> dict[str, Any]:
        return await tenancy.add_origin(conn, args.public_id, args.origin)

    site = run_with_db(body)
    emit(args, site, f"origins of {site['public_id']}: {', '.join(site['origins'])}")
    return 0


def cmd_secret_rotate(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection, settings: Settings) -> dict[str, Any]:
        return await tenancy.rotate_secret(conn, args.public_id)

    result = run_with_db(body)
    emit(
        args,
        result,
        f"secret rotated for {result['public_id']}\n  current: {result['secret']}\n"
        f"  next:    {result['next_secret']} (the previous secret, valid until the next rotation)",
    )
    return 0
