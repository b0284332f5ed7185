"""``opsmantik sale cancel|restate``: correct a confirmed sale after the fact (issue 13).

The same code as ``POST /api/sales/{id}/cancel|restate`` (``leads/sales.py``), audited with
actor type ``cli``. Before its conversion was uploaded the queued row is voided or changed;
after it, an adjustment is queued and the uploaders deliver it (docs/queue-state-machine.md).
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

import asyncpg

from opsmantik_stream.cli._common import CliError, add_json_flag, emit, run_with_db
from opsmantik_stream.cli.uploads import _actor
from opsmantik_stream.config import Settings
from opsmantik_stream.enums import ActorType
from opsmantik_stream.leads import sales as sales_core
from opsmantik_stream.leads.errors import LeadError

__all__ = ["register"]

_OUTCOMES = {
    "none": "it had no conversion to adjust",
    "voided": "its conversion was not uploaded yet and is withdrawn",
    "restated": "its conversion was not uploaded yet and will be sent with the new value",
    "adjustment_queued": "an adjustment of its uploaded conversion is queued for the uploaders",
    "already_retracted": "its conversion was already retracted",
}


def register(sub: Any) -> None:
    sale = sub.add_parser(
        "sale",
        help="cancel or restate a confirmed sale",
        description="Correct a sale after it was confirmed. Before its conversion was uploaded the queued row "
        "is withdrawn or changed; after it, an adjustment (Google Ads RETRACTION/RESTATEMENT; Data Manager "
        "re-sends the event, and cannot retract) is queued and delivered once.",
    )
    ssub = sale.add_subparsers(dest="sale_command", metavar="SUBCOMMAND")
    ssub.required = True
    p = ssub.add_parser(
        "cancel", help="cancel a sale and withdraw its conversion", description="Cancel a draft or confirmed sale."
    )
    p.add_argument("sale_id", help="the sale's id")
    add_json_flag(p)
    p.set_defaults(func=cmd_cancel)
    p = ssub.add_parser(
        "restate",
        help="change a confirmed sale's value and restate its conversion",
        description="Change a confirmed sale's value (minor units) and, with it, its conversion's.",
    )
    p.add_argument("sale_id", help="the sale's id")
    p.add_argument("--amount-minor", type=int, required=True, help="the new value in minor units (> 0)")
    p.add_argument("--currency", help="ISO 4217 code (default: the sale's)")
    add_json_flag(p)
    p.set_defaults(func=cmd_restate)


def _sale_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise CliError(f"not a sale id: {raw!r}", exit_code=2) from None


def _run(args: argparse.Namespace, verb: str, call: Any) -> int:
    sid = _sale_id(args.sale_id)

    async def body(conn: asyncpg.Connection, settings: Settings) -> dict[str, Any]:
        try:
            async with conn.transaction():
                return dict(await call(conn, sid))
        except LeadError as exc:
            raise CliError(f"{exc.code}: {exc.message}", exit_code=2 if exc.status == 400 else 1) from None

    result = run_with_db(body)
    sale = result["sale"]
    text = (
        f"sale {sale['id']} {verb} ({sale['status']}, {sale['amount_minor']} {sale['currency']}): "
        f"{_OUTCOMES.get(result['conversion']['outcome'], result['conversion']['outcome'])}"
    )
    emit(args, result, text)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    return _run(
        args,
        "canceled",
        lambda conn, sid: sales_core.cancel_sale(conn, sale_id=sid, actor_type=ActorType.CLI, user_id=_actor()),
    )


def cmd_restate(args: argparse.Namespace) -> int:
    return _run(
        args,
        "restated",
        lambda conn, sid: sales_core.restate_sale(
            conn,
            sale_id=sid,
            amount_minor=args.amount_minor,
            currency=args.currency,
            actor_type=ActorType.CLI,
            user_id=_actor(),
        ),
    )
