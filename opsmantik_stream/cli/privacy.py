"""``opsmantik privacy erase|export|retention``: data-subject requests and the retention job."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg

from opsmantik_stream.cli._common import CliError, add_json_flag, emit, run_with_pool
from opsmantik_stream.config import Settings
from opsmantik_stream.enums import ActorType, PrivacyIdentifier
from opsmantik_stream.privacy import (
    PrivacyError,
    Subject,
    erase_subject,
    export_document,
    normalize_identifier,
    privacy_key,
    run_retention,
)
from opsmantik_stream.privacy.export import start_export
from opsmantik_stream.tenancy import get_site

_KINDS = [k.value for k in PrivacyIdentifier]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "privacy",
        help="data-subject requests (erase, export) and retention (GDPR / KVKK)",
        description="Answer data-subject requests for one site and run the retention job. "
        "See docs/privacy.md for what is stored and what each command changes.",
    )
    psub = p.add_subparsers(dest="privacy_command", metavar="SUBCOMMAND")
    psub.required = True

    e = psub.add_parser(
        "erase",
        help="anonymise everything of a site tied to a subject",
        description="Anonymise (never delete) the subject's sessions, events, calls, conversations, sales "
        "notes, not-yet-uploaded conversions (voided) and dead letters on one site, and print the rows "
        "changed per table. Safe to repeat (a second run changes nothing). Audited with a keyed hash "
        "of the identifier, never the identifier.",
    )
    _subject_args(e)
    add_json_flag(e)
    e.set_defaults(func=cmd_erase)

    x = psub.add_parser(
        "export",
        help="everything held for a subject as one JSON document",
        description="Write the subject's sessions, events, consent history, calls, conversations, sales, "
        "queue rows and dead letters of one site as one JSON document (to stdout, or to --output). "
        "Audited like erase.",
    )
    _subject_args(x)
    x.add_argument("--output", metavar="FILE", help="write the document here and print a summary instead")
    add_json_flag(x)
    x.set_defaults(func=cmd_export)

    r = psub.add_parser(
        "retention",
        help="run the privacy_retention job now (or count with --dry-run)",
        description="Anonymise sessions without analytics consent whose last activity is older than the "
        "retention period (OPSMANTIK_PRIVACY_RETENTION_DAYS, 30-365, default 90) and redact dead-letter "
        "payloads older than OPSMANTIK_PRIVACY_DEAD_LETTER_DAYS (default 30). --dry-run only counts.",
    )
    r.add_argument("--dry-run", action="store_true", help="count what would be anonymised; change nothing")
    r.add_argument("--days", type=int, help="retention period in days (30-365) instead of the setting")
    add_json_flag(r)
    r.set_defaults(func=cmd_retention)


def _subject_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site", required=True, metavar="PUBLIC_ID", help="the site's public id")
    p.add_argument("--type", required=True, choices=_KINDS, dest="identifier_type", help="what names the subject")
    p.add_argument("--value", required=True, dest="identifier_value", help="the identifier")


async def _subject(conn: asyncpg.Connection, args: argparse.Namespace) -> tuple[dict[str, Any], Subject]:
    site = await get_site(conn, args.site)
    try:
        return site, normalize_identifier(uuid.UUID(site["site_id"]), args.identifier_type, args.identifier_value)
    except PrivacyError as exc:
        raise CliError(exc.message, exit_code=2) from None


def cmd_erase(args: argparse.Namespace) -> int:
    async def body(pool: asyncpg.Pool, settings: Settings) -> dict[str, Any]:
        async with pool.acquire() as conn:
            _site, subject = await _subject(conn, args)
        return await erase_subject(pool, subject, actor_type=ActorType.CLI, actor_id=None)

    result = run_with_pool(body)
    result["site"] = args.site
    lines = [f"erased on site {args.site} (subject {result['subject_hash'][:16]}...): {result['total']} rows changed"]
    lines += [f"  {table:<34} {n}" for table, n in result["counts"].items()]
    emit(args, result, "\n".join(lines))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    try:
        # opened here (not in the event loop); removed again when the export fails
        out: BinaryIO = open(args.output, "wb") if args.output else sys.stdout.buffer
    except OSError as exc:
        raise CliError(f"cannot write the export: {exc}") from None

    async def body(pool: asyncpg.Pool, settings: Settings) -> dict[str, Any]:
        async with pool.acquire() as conn:
            _site, subject = await _subject(conn, args)

        @contextlib.asynccontextmanager
        async def tx() -> AsyncIterator[asyncpg.Connection]:
            async with pool.acquire() as conn, conn.transaction():
                yield conn

        rows, counts, info = await start_export(
            tx, subject, key=await privacy_key(pool), actor_type=ActorType.CLI, actor_id=None, site_label=args.site
        )
        async for chunk in export_document(tx, rows, info, exported_at=dt.datetime.now(dt.UTC)):
            out.write(chunk)
        return {"site": args.site, "output": args.output, "subject_hash": info["subject_hash"], "counts": counts}

    try:
        summary = run_with_pool(body)
    except BaseException:
        if args.output:
            out.close()
            Path(args.output).unlink(missing_ok=True)
        raise
    if not args.output:
        out.write(b"\n")
        out.flush()
        return 0
    out.close()
    total = sum(summary["counts"].values())
    emit(args, {**summary, "total_records": total}, f"exported {total} records to {args.output}")
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    if args.days is not None and not 30 <= args.days <= 365:
        raise CliError("--days must be between 30 and 365", exit_code=2)

    async def body(pool: asyncpg.Pool, settings: Settings) -> dict[str, Any]:
        return await run_retention(
            pool,
            now=dt.datetime.now(dt.UTC),
            days=args.days or settings.privacy_retention_days,
            dead_letter_days=settings.privacy_dead_letter_days,
            batch=settings.privacy_retention_batch,
            dry_run=args.dry_run,
        )

    result = run_with_pool(body)
    if args.dry_run:
        found = result["would_anonymize"]
        text = (
            f"dry run (sessions without consent, inactive for {result['days']} days): would anonymise "
            f"{found['sessions']} sessions, {found['events']} events; would redact {found['dead_letters']} "
            f"dead letters older than {result['dead_letter_days']} days"
        )
    else:
        counts = result["counts"]
        text = f"privacy retention: {', '.join(f'{k} {v}' for k, v in counts.items() if v) or 'nothing to do'}"
    emit(args, result, text)
    return 0
