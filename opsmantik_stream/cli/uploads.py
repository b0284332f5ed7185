"""``opsmantik oci queue|rows|ledger|requeue|breaker-reset`` and ``opsmantik site credentials set``.

The CLI runs as the service role (it is an operator on the machine); actions are audited with
actor type ``cli``. Secrets for ``credentials set`` may come from flags or, to keep them out of
the process list and shell history, from ``OPSMANTIK_CRED_CLIENT_SECRET``,
``OPSMANTIK_CRED_REFRESH_TOKEN`` and ``OPSMANTIK_CRED_DEVELOPER_TOKEN``.
"""

from __future__ import annotations

import argparse
import getpass
import os
from typing import Any

import asyncpg
import msgspec

from opsmantik_stream import tenancy
from opsmantik_stream.cli._common import CliError, add_json_flag, emit, run_with_db
from opsmantik_stream.cli.site import SITE_EXTENSIONS
from opsmantik_stream.config import Settings
from opsmantik_stream.enums import ActorType
from opsmantik_stream.queries import Q
from opsmantik_stream.uploads import operator
from opsmantik_stream.uploads.credentials import (
    CredentialsError,
    CredentialsInput,
    save_credentials,
    vault_from_settings,
)
from opsmantik_stream.vault import Vault, load_or_create_key

__all__ = ["register"]


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli"


async def _site_id(conn: asyncpg.Connection, public_id: str) -> str:
    return str((await tenancy.get_site(conn, public_id))["site_id"])


def register(sub: Any) -> None:
    oci = sub.add_parser(
        "oci",
        help="offline conversion upload queue: stats, rows, ledger, requeue, breaker reset",
        description="Inspect and operate the offline conversion upload queue of a site.",
    )
    osub = oci.add_subparsers(dest="oci_command", metavar="SUBCOMMAND")
    osub.required = True

    p = osub.add_parser("queue", help="row counts by state and the breakers", description="Queue counts by state.")
    p.add_argument("--site", required=True, help="the site's public id")
    add_json_flag(p)
    p.set_defaults(func=cmd_queue)

    p = osub.add_parser("rows", help="list rows with their last error", description="List queue rows.")
    p.add_argument("--site", required=True, help="the site's public id")
    p.add_argument("--status", help="only rows in this state (QUEUED, RETRY, FAILED, BLOCKED, ...)")
    p.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50)")
    add_json_flag(p)
    p.set_defaults(func=cmd_rows)

    p = osub.add_parser("ledger", help="upload attempts (STARTED/FINISHED)", description="The attempt ledger.")
    p.add_argument("--site", required=True, help="the site's public id")
    p.add_argument("--limit", type=int, default=50, help="at most this many entries (default 50)")
    add_json_flag(p)
    p.set_defaults(func=cmd_ledger)

    p = osub.add_parser(
        "requeue",
        help="move FAILED/BLOCKED rows back to QUEUED (audited)",
        description="Requeue FAILED or BLOCKED rows with a fresh attempt budget (e.g. after fixing credentials).",
    )
    p.add_argument("--site", required=True, help="the site's public id")
    p.add_argument("--id", action="append", dest="ids", metavar="ROW_ID", help="a row id (repeatable)")
    p.add_argument("--status", choices=["FAILED", "BLOCKED"], help="every row of the site in this state")
    add_json_flag(p)
    p.set_defaults(func=cmd_requeue)

    p = osub.add_parser(
        "breaker-reset", help="close a site's circuit breaker (audited)", description="Reset a breaker."
    )
    p.add_argument("--site", required=True, help="the site's public id")
    p.add_argument("--destination", choices=["google_ads", "data_manager"], help="only this destination")
    add_json_flag(p)
    p.set_defaults(func=cmd_breaker_reset)


def _register_site(ssub: Any) -> None:
    creds = ssub.add_parser("credentials", help="destination credentials (write-only)", description="Credentials.")
    csub = creds.add_subparsers(dest="credentials_command", metavar="SUBCOMMAND")
    csub.required = True
    p = csub.add_parser(
        "set",
        help="seal and store a destination's credentials (never shown again)",
        description="Store Google credentials for a site, sealed with the vault key. Secrets may come from "
        "OPSMANTIK_CRED_CLIENT_SECRET / OPSMANTIK_CRED_REFRESH_TOKEN / OPSMANTIK_CRED_DEVELOPER_TOKEN.",
    )
    p.add_argument("public_id", help="the site's public id")
    p.add_argument("--destination", required=True, choices=["google_ads", "data_manager"])
    p.add_argument("--customer-id", required=True, help="Google Ads account id (dashes allowed)")
    p.add_argument("--login-customer-id", help="manager (MCC) account id, when acting through one")
    p.add_argument("--client-id", required=True, help="OAuth client id")
    p.add_argument("--client-secret", help="OAuth client secret (or OPSMANTIK_CRED_CLIENT_SECRET)")
    p.add_argument("--refresh-token", help="OAuth refresh token (or OPSMANTIK_CRED_REFRESH_TOKEN)")
    p.add_argument("--developer-token", help="Google Ads developer token (or OPSMANTIK_CRED_DEVELOPER_TOKEN)")
    p.add_argument("--conversion-action", required=True, help="customers/{id}/conversionActions/{id} or the id")
    p.add_argument("--api-base-url", help="API base URL (e.g. the emulator, http://127.0.0.1:8790)")
    p.add_argument("--token-url", help="OAuth token URL (e.g. http://127.0.0.1:8790/token)")
    p.add_argument("--requests-per-s", type=float, help="the account's request budget (whole pool)")
    p.add_argument("--conversions-per-min", type=float, help="the account's conversion budget (whole pool)")
    add_json_flag(p)
    p.set_defaults(func=cmd_credentials_set)


SITE_EXTENSIONS.append(_register_site)


def _vault(settings: Settings) -> Vault:
    if settings.vault_key is None:
        # same rule as `opsmantik serve`: the data folder's key, created on first use
        settings = settings.with_overrides(vault_key=load_or_create_key(settings.data_path))
    try:
        return vault_from_settings(settings)
    except CredentialsError as exc:
        raise CliError(exc.message) from None


def cmd_credentials_set(args: argparse.Namespace) -> int:
    def pick(flag: str | None, env: str) -> str | None:
        return flag if flag else (os.environ.get(env) or None)

    raw = {
        "destination": args.destination,
        "customer_id": args.customer_id,
        "login_customer_id": args.login_customer_id,
        "client_id": args.client_id,
        "client_secret": pick(args.client_secret, "OPSMANTIK_CRED_CLIENT_SECRET"),
        "refresh_token": pick(args.refresh_token, "OPSMANTIK_CRED_REFRESH_TOKEN"),
        "developer_token": pick(args.developer_token, "OPSMANTIK_CRED_DEVELOPER_TOKEN"),
        "conversion_action": args.conversion_action,
        "api_base_url": args.api_base_url,
        "token_url": args.token_url,
        "requests_per_s": args.requests_per_s,
        "conversions_per_min": args.conversions_per_min,
    }
    for name in ("client_secret", "refresh_token"):
        if not raw[name]:
            raise CliError(f"--{name.replace('_', '-')} (or OPSMANTIK_CRED_{name.upper()}) is required")
    try:
        creds = msgspec.convert({k: v for k, v in raw.items() if v is not None}, CredentialsInput)
        creds.validate()
    except msgspec.ValidationError as exc:
        raise CliError(f"invalid credentials: {exc}") from None
    except CredentialsError as exc:
        raise CliError(exc.message) from None

    async def body(conn: asyncpg.Connection, settings: Settings) -> dict[str, Any]:
        vault = _vault(settings)
        site_id = await _site_id(conn, args.public_id)
        async with conn.transaction():
            view = await save_credentials(conn, vault, site_id, creds)
            await conn.fetchval(Q.uploads.reset_breaker, site_id, creds.destination)
            await tenancy.write_audit(
                conn,
                ActorType.CLI,
                _actor(),
                "credentials.set",
                "provider_credentials",
                creds.destination,
                site_id,
                {"destination": creds.destination, "account_id": view["account_id"]},
            )
        return {"public_id": args.public_id, **view}

    view = run_with_db(body)
    emit(
        args,
        view,
        f"credentials stored for {view['public_id']} ({view['destination']}, account {view['account_id']}, "
        f"key {view['key_fingerprint']}); secrets are sealed and never shown",
    )
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection, settings: Settings) -> dict[str, Any]:
        return await operator.queue_stats(conn, await _site_id(conn, args.site))

    stats = run_with_db(body)
    lines = [f"{k:<11}{v}" for k, v in stats["counts"].items()]
    lines += [f"breaker {b['destination']}: {b['state']} (failures {b['failure_count']})" for b in stats["breakers"]]
    emit(args, {"site": args.site, **stats}, "\n".join(lines))
    return 0


def cmd_rows(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection, settings: Settings) -> list[dict[str, Any]]:
        site_id = await _site_id(conn, args.site)
        try:
            return await operator.list_rows(conn, site_id, args.status.upper() if args.status else None, args.limit)
        except operator.OperatorError as exc:
            raise CliError(exc.message) from None

    rows = run_with_db(body)
    lines = [
        f"{r['id']}  {r['status']:<10} attempt {r['attempt']}  {r['destination']}  "
        f"{r['error_code'] or ''} {r['last_error'] or ''}".rstrip()
        for r in rows
    ] or ["no rows"]
    emit(args, {"site": args.site, "rows": rows}, "\n".join(lines))
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection, settings: Settings) -> dict[str, Any]:
        return await operator.ledger(conn, await _site_id(conn, args.site), args.limit)

    data = run_with_db(body)
    lines = [
        f"{a['created_at']}  {a['phase']:<8} batch {a['batch_id']}  {a['uploader_id']}  "
        f"rows {a['row_count']}  ok {a['completed_count']} failed {a['failed_count']} "
        f"retry {a['retry_count']} blocked {a['blocked_count']}"
        f"  {a['error_code'] or ''}{'  UNFINISHED' if a['unfinished'] else ''}"
        for a in data["attempts"]
    ] or ["no attempts"]
    emit(args, {"site": args.site, **data}, "\n".join(lines))
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection, settings: Settings) -> dict[str, Any]:
        site_id = await _site_id(conn, args.site)
        try:
            async with conn.transaction():
                return await operator.requeue(
                    conn,
                    site_id,
                    ids=args.ids,
                    status=args.status,
                    actor_type=ActorType.CLI,
                    actor_id=_actor(),
                )
        except operator.OperatorError as exc:
            raise CliError(exc.message) from None
        except asyncpg.UniqueViolationError:
            raise CliError("another conversion of the same session is pending") from None

    result = run_with_db(body)
    emit(args, {"site": args.site, **result}, f"requeued {result['requeued']} row(s)")
    return 0


def cmd_breaker_reset(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection, settings: Settings) -> dict[str, Any]:
        site_id = await _site_id(conn, args.site)
        async with conn.transaction():
            return await operator.reset_breaker(
                conn, site_id, args.destination, actor_type=ActorType.CLI, actor_id=_actor()
            )

    result = run_with_db(body)
    emit(args, {"site": args.site, **result}, f"breaker closed: {', '.join(result['reset'])}")
    return 0
