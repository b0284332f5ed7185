"""Adjusting a conversion after the fact: a sale cancelled or restated, a seal undone (issue 13).

One function, :func:`adjust_conversion`, runs in the caller's transaction (the sale's or the
call's change and the queue change commit together) and decides by the conversion's state:

- no conversion (never enqueued): nothing to adjust;
- not uploaded yet (QUEUED, RETRY, FAILED, BLOCKED): a cancel voids it (never sent, a requeue
  skips it), a restate changes the figures it will be sent with;
- being uploaded right now (PROCESSING): 409 ``conversion_in_flight`` — whether it lands is not
  known yet; the caller retries in a moment;
- uploaded (COMPLETED): an **adjustment** row joins the queue (``kind`` ``retraction`` or
  ``restatement``, same order id and destination, its own ``adjusted_at``) and the uploader
  delivers it exactly once like a conversion (claim, ledger, breaker, bucket, retry policy).
  At most one adjustment of a conversion is pending: a newer action rewrites a pending one that
  no uploader holds, answers 409 ``adjustment_in_flight`` while one is being sent, and replaces
  FAILED/BLOCKED ones (``SUPERSEDED``). After a retraction nothing more is sent.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
import msgspec

from opsmantik_stream.enums import QueueKind, QueueStatus
from opsmantik_stream.leads.errors import LeadError
from opsmantik_stream.queries import Q

__all__ = ["AdjustResult", "adjust_conversion"]

_UNSENT = frozenset({QueueStatus.QUEUED, QueueStatus.RETRY, QueueStatus.FAILED, QueueStatus.BLOCKED})
_PENDING = frozenset({QueueStatus.QUEUED, QueueStatus.RETRY})


class AdjustResult(msgspec.Struct, frozen=True):
    """What happened to the conversion: ``none`` (there is none), ``voided`` / ``restated``
    (before upload), ``adjustment_queued`` (after upload), ``already_retracted``."""

    outcome: str
    conversion_id: str | None = None
    order_id: str | None = None
    adjustment_id: str | None = None
    adjustment_kind: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)


def _adjustment_time(last: dt.datetime | None) -> dt.datetime:
    """Now in whole seconds (Google's adjustment time has second precision), strictly after the
    previous adjustment of the same conversion (Google refuses two with the same time)."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    if last is not None and now <= last:
        now = last.replace(microsecond=0) + dt.timedelta(seconds=1)
    return now


async def adjust_conversion(
    conn: asyncpg.Connection,
    *,
    site_id: Any,
    source_kind: str,
    source_id: Any,
    kind: QueueKind,
    value_minor: int = 0,
    currency: str | None = None,
    reason: str,
) -> AdjustResult:
    """Cancel (``kind`` RETRACTION) or restate (RESTATEMENT, with the new value and currency)
    the conversion of one sale or call of ``site_id``; see the module docstring. Call it after
    the source itself changed: the queue's guard compares an operator's adjustment with the
    source as it now is. Raises ``LeadError`` 409 while the conversion or an adjustment of it
    is being sent."""
    assert kind is not QueueKind.CONVERSION
    conv = await conn.fetchrow(Q.sales.lock_conversion_of_source, site_id, source_kind, source_id)
    if conv is None:
        return AdjustResult("none")
    ids = {"conversion_id": str(conv["id"]), "order_id": conv["order_id"]}
    status = QueueStatus(conv["status"])
    if status is QueueStatus.PROCESSING:
        raise LeadError(
            409, "conversion_in_flight", "the conversion is being uploaded right now; try again in a few seconds"
        )
    if status in _UNSENT:
        if kind is QueueKind.RETRACTION:
            if conv["error_code"] != "VOIDED":
                await conn.fetchrow(Q.sales.void_unsent_conversion, conv["id"], reason)
            return AdjustResult("voided", **ids)
        await conn.fetchrow(Q.sales.restate_unsent_conversion, conv["id"], value_minor, currency or conv["currency"])
        return AdjustResult("restated", **ids)

    # COMPLETED: the destination holds it; adjust it there
    adjustments = await conn.fetch(Q.sales.lock_adjustments_of, conv["id"])
    if any(a["kind"] == QueueKind.RETRACTION and a["status"] == QueueStatus.COMPLETED for a in adjustments):
        if kind is QueueKind.RETRACTION:
            return AdjustResult("already_retracted", **ids)
        raise LeadError(409, "conversion_retracted", "the conversion was retracted at the destination")
    if any(a["status"] == QueueStatus.PROCESSING for a in adjustments):
        raise LeadError(
            409, "adjustment_in_flight", "an adjustment of this conversion is being sent; try again in a few seconds"
        )
    at = _adjustment_time(max((a["adjusted_at"] for a in adjustments), default=None))
    value = 0 if kind is QueueKind.RETRACTION else value_minor
    cur = currency or conv["currency"]
    pending = next((a for a in adjustments if a["status"] in _PENDING), None)
    row = None
    if pending is not None:
        row = await conn.fetchrow(Q.sales.rewrite_pending_adjustment, pending["id"], kind.value, value, cur, at)
    if row is None:
        await conn.fetch(Q.sales.supersede_unsent_adjustments, conv["id"])
        row = await conn.fetchrow(Q.sales.insert_adjustment, conv["id"], kind.value, value, cur, at)
    assert row is not None  # the conversion is locked and COMPLETED
    return AdjustResult("adjustment_queued", **ids, adjustment_id=str(row["id"]), adjustment_kind=row["kind"])
