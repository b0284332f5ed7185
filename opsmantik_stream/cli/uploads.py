"""``opsmantik oci queue|rows|ledger|requeue|breaker-reset`` and ``opsmantik site
destination set|credentials set``.

The CLI runs as the service role (it is an operator on the machine); actions are audited with
actor type ``cli``. Secrets for ``credentials set`` may come from flags or, to keep them out of
the process list and shell history, from ``OPSMANTIK_CRED_CLIENT_SECRET``,
``OPSMANTIK_CRED_REFRESH_TOKEN`` and ``OPSMANTIK_CRED_DEVELOPER_TOKEN``. Destination and
credentials go through ``uploads/delivery.py``, the same code as the API.
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
from opsmantik_stream.destinations import registry
from opsmantik_stream.destinations.base import requeue_command
from opsmantik_stream.enums import ActorType
from opsmantik_stream.uploads import delivery, operator
from opsmantik_stream.uploads.credentials import (
    TENANT_ENDPOINT_FIELDS,
    CredentialsError,
    credentials_from_mapping,
    vault_from_settings,
)
from opsmantik_stream.vault import Vault, load_or_create_key

_BLOCKED_HELP = (
    "BLOCKED rows (an account or configuration problem) carry the cause and the fixing command in "
    "their last error, e.g. missing credentials, or an account Google no longer accepts through the "
    "Google Ads API (switch it with `opsmantik site destination set PUBLIC_ID data_manager`). After "
    "the fix, `opsmantik oci requeue --site PUBLIC_ID --status BLOCKED` sends them again, to the "
    "site's current destination."
)

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
        description="Inspect and operate the offline conversion upload queue of a site. " + _BLOCKED_HELP,
    )
    osub = oci.add_subparsers(dest="oci_command", metavar="SUBCOMMAND")
    osub.required = True

    p = osub.add_parser("queue", help="row counts by state and the breakers", description="Queue counts by state.")
    p.add_argument("--site", required=True, help="the site's public id")
    add_json_flag(p)
    p.set_defaults(func=cmd_queue)

    p = osub.add_parser("rows", help="list rows with their last error", description="List queue rows. " + _BLOCKED_HELP)
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
        description="Requeue FAILED or BLOCKED rows with a fresh attempt budget (e.g. after fixing credentials "
        "or choosing another destination). Requeued rows go to the site's current destination.",
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
    p.add_argument("--destination", choices=delivery.destination_names(), help="only this destination")
    add_json_flag(p)
    p.set_defaults(func=cmd_breaker_reset)


def _register_site(ssub: Any) -> None:
    dest = ssub.add_parser(
        "destination",
        help="where the site's conversions are sent (" + " or ".join(delivery.destination_names()) + ")",
        description="A site's destination: Google Ads API uploads (google_ads) or the Data Manager API "
        "(data_manager, which Google requires for accounts new to offline conversion import since June "
        "2026). New conversions are queued for it; rows requeued with `opsmantik oci requeue` move to it.",
    )
    dsub = dest.add_subparsers(dest="destination_command", metavar="SUBCOMMAND")
    dsub.required = True
    p = dsub.add_parser(
        "set",
        help="choose the site's destination (audited)",
        description="Choose where the site's conversions go. Says when that destination has no credentials "
        "yet (conversions then wait BLOCKED) and how many BLOCKED rows a requeue would move there.",
    )
    p.add_argument("public_id", help="the site's public id")
    p.add_argument("destination", choices=delivery.destination_names(), help="the destination's name")
    add_json_flag(p)
    p.set_defaults(func=cmd_destination_set)

    ec = ssub.add_parser(
        "enhanced-conversions",
        help="upload conversions with a hashed email/phone but no click id",
        description="Enhanced conversions for leads: when on, a confirmed sale or sealed call whose session has "
        "no click id is still queued and uploaded when it carries the customer's hashed email or phone (and the "
        "visitor gave marketing consent). The Google Ads account must have enhanced conversions for leads "
        "turned on and the customer data terms accepted.",
    )
    esub = ec.add_subparsers(dest="ec_command", metavar="SUBCOMMAND")
    esub.required = True
    p = esub.add_parser("set", help="turn it on or off (audited)", description="Turn enhanced conversions on or off.")
    p.add_argument("public_id", help="the site's public id")
    p.add_argument("state", choices=["on", "off"], help="on or off")
    add_json_flag(p)
    p.set_defaults(func=cmd_enhanced_conversions_set)

    creds = ssub.add_parser("credentials", help="destination credentials (write-only)", description="Credentials.")
    csub = creds.add_subparsers(dest="credentials_command", metavar="SUBCOMMAND")
    csub.required = True
    p = csub.add_parser(
        "set",
        help="seal and store a destination's credentials (never shown again)",
        description="Store a destination's credentials for a site, sealed with the vault key. Each destination "
        "takes the flags of its credential schema (below); secret ones may come from OPSMANTIK_CRED_<FIELD> "
        "instead, to keep them out of the process list and shell history. When no other destination of the "
        "site has credentials, this one becomes the site's destination (the output says so). Endpoints are "
        "deployment settings (OPSMANTIK_GOOGLE_ADS_BASE_URL, OPSMANTIK_DATA_MANAGER_BASE_URL, "
        "OPSMANTIK_GOOGLE_TOKEN_URL), not credentials.",
    )
    p.add_argument("public_id", help="the site's public id")
    p.add_argument("--destination", required=True, choices=delivery.destination_names())
    # one flag per credential field of every registered destination (a new destination brings
    # its own flags with its schema; this command is not edited)
    for field, (text, secret, owners) in _credential_fields().items():
        env = f" (or OPSMANTIK_CRED_{field.upper()})" if secret else ""
        flag = "--" + field.replace("_", "-")
        p.add_argument(flag, dest=_DEST + field, metavar=field.upper(), help=f"{text}{env}; for {', '.join(owners)}")
    p.add_argument("--requests-per-s", type=float, help="the account's request budget (whole pool)")
    p.add_argument("--conversions-per-min", type=float, help="the account's conversion budget (whole pool)")
    # Accepted by older versions; refused now with a pointer to the deployment settings.
    for field in TENANT_ENDPOINT_FIELDS:
        p.add_argument("--" + field.replace("_", "-"), dest=field, help=argparse.SUPPRESS)
    add_json_flag(p)
    p.set_defaults(func=cmd_credentials_set)

    p = csub.add_parser(
        "test",
        help="check the stored credentials without storing anything at the destination",
        description="Test a site's stored credentials before the first lead: refresh the OAuth token, then "
        "make one validate-only upload (Google Ads) or validate-only ingest (Data Manager), which Google "
        "checks and does not store. Says in words what works and what does not (a revoked refresh token, "
        "an account not allowlisted, a wrong conversion action, a wrong login customer id) and how to fix "
        "it. Exit status 0 when everything works, 1 when a step failed.",
    )
    p.add_argument("public_id", help="the site's public id")
    p.add_argument(
        "--destination",
        choices=delivery.destination_names(),
        help="test this destination's credentials (default: the site's destination)",
    )
    add_json_flag(p)
    p.set_defaults(func=cmd_credentials_test)


_DEST = "cred_"


def _credential_fields() -> dict[str, tuple[str, bool, list[str]]]:
    """field -> (help, secret, destinations having it), over every registered destination."""
    out: dict[str, tuple[str, bool, list[str]]] = {}
    for name in registry.names():
        cls = registry.get(name)
        for field in cls.credentials_schema.__struct_fields__:
            text, secret, owners = out.get(
                field, (cls.credential_help.get(field, field.replace("_", " ")), field in cls.secret_fields, [])
            )
            out[field] = (text, secret, [*owners, name])
    return out


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
    named = [f for f in TENANT_ENDPOINT_FIELDS if getattr(args, f, None) is not None]
    if named:
        flags = ", ".join("--" + f.replace("_", "-") for f in named)
        raise CliError(
            f"{flags}: a destination's endpoints are deployment settings, not site credentials; for Google "
            "set OPSMANTIK_GOOGLE_ADS_BASE_URL, OPSMANTIK_DATA_MANAGER_BASE_URL and OPSMANTIK_GOOGLE_TOKEN_URL "
            "where the stack runs (e.g. to the `opsmantik emulator`)",
            exit_code=2,
        )
    cls = registry.get(args.destination)
    schema = cls.credentials_schema
    foreign = [
        f for f in _credential_fields() if f not in schema.__struct_fields__ and getattr(args, _DEST + f) is not None
    ]
    if foreign:
        flags = ", ".join("--" + f.replace("_", "-") for f in foreign)
        raise CliError(f"{flags}: not a credential of {args.destination}", exit_code=2)
    raw: dict[str, Any] = {
        "destination": args.destination,
        "requests_per_s": args.requests_per_s,
        "conversions_per_min": args.conversions_per_min,
    }
    for f in msgspec.structs.fields(schema):
        value = getattr(args, _DEST + f.name)
        if not value and f.name in cls.secret_fields:
            value = os.environ.get(f"OPSMANTIK_CRED_{f.name.upper()}") or None
        if value is None and f.required:
            env = f" (or OPSMANTIK_CRED_{f.name.upper()})" if f.name in cls.secret_fields else ""
            raise CliError(f"--{f.name.replace('_', '-')}{env} is required for {args.destination}", exit_code=2)
        raw[f.name] = value
    try:
        creds = credentials_from_mapping(raw)
    except CredentialsError as exc:
        raise CliError(f"invalid credentials: {exc.message}", exit_code=2) from None

    async def body(conn: asyncpg.Connection, settings: Settings) -> dict[str, Any]:
        vault = _vault(settings)
        site_id = await _site_id(conn, args.public_id)
        try:
            result = await delivery.set_credentials(
                conn, vault, site_id, args.public_id, creds, actor_type=ActorType.CLI, actor_id=_actor()
            )
        except CredentialsError as exc:
            raise CliError(exc.message) from None
        return {"public_id": args.public_id, **result}

    view = run_with_db(body)
    emit(
        args,
        view,
        f"credentials stored for {view['public_id']} ({view['destination']}, account {view['account_id']}, "
        f"key {view['key_fingerprint']}); secrets are sealed and never shown\n{view['note']}",
    )
    return 0


def cmd_enhanced_conversions_set(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection, settings: Settings) -> dict[str, Any]:
        site_id = await _site_id(conn, args.public_id)
        result = await delivery.set_enhanced_conversions(
            conn, site_id, args.state == "on", actor_type=ActorType.CLI, actor_id=_actor()
        )
        return {"public_id": args.public_id, **result}

    result = run_with_db(body)
    emit(args, result, f"enhanced conversions for leads are {args.state} for {result['public_id']}")
    return 0


def cmd_credentials_test(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection, settings: Settings) -> dict[str, Any]:
        site_id = await _site_id(conn, args.public_id)
        try:
            result = await delivery.test_credentials(
                conn,
                # the operator's machine holds the key file (docs/security.md): like an
                # uploader, this command may read it to open the stored credentials
                settings.with_overrides(vault_open_credentials=True),
                site_id,
                args.public_id,
                args.destination,
                actor_type=ActorType.CLI,
                actor_id=_actor(),
            )
        except CredentialsError as exc:
            raise CliError(exc.message) from None
        return {"public_id": args.public_id, **result}

    result = run_with_db(body)
    lines = [result["summary"]] + [
        f"  {'ok  ' if s['ok'] else 'FAIL'} {s['step']}: {s['detail']}" for s in result["steps"]
    ]
    emit(args, result, "\n".join(lines))
    return 0 if result["ok"] else 1


def cmd_destination_set(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection, settings: Settings) -> dict[str, Any]:
        site_id = await _site_id(conn, args.public_id)
        try:
            result = await delivery.set_destination(
                conn, site_id, args.public_id, args.destination, actor_type=ActorType.CLI, actor_id=_actor()
            )
        except CredentialsError as exc:
            raise CliError(exc.message) from None
        return {"public_id": args.public_id, **result}

    result = run_with_db(body)
    text = f"{result['public_id']} sends to {result['destination']}" + (
        f" (was {result['previous']})" if result["changed"] else " (unchanged)"
    )
    if result["note"]:
        text += "\n" + result["note"]
    emit(args, result, text)
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
    if any(r["status"] == "BLOCKED" for r in rows):
        lines.append(f"after fixing the cause: {requeue_command(args.site)}")
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
    moved = ", ".join(f"{n} to {d}" for d, n in sorted(result["destinations"].items()))
    emit(args, {"site": args.site, **result}, f"requeued {result['requeued']} row(s)" + (f": {moved}" if moved else ""))
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
