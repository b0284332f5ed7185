"""Auto-approve job (SPEC §5): seal low-risk stale Ads click intents.

Candidates: pending click intents older than 24 h whose session has a click id, lasted at
least 10 s and has at least 2 events. Each is sealed with ``lead_score = max(score, 60)``
as the system actor, with a ``call_actions`` row (full snapshot, so an operator can undo
it) in the same transaction. It never junks and never invents a value, so it enqueues
nothing by itself.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from opsmantik_stream.enums import ActorType, CallAction, CallStatus
from opsmantik_stream.job_context import JobContext
from opsmantik_stream.queries import Q
from opsmantik_stream.tenancy import write_audit

__all__ = ["AUTO_APPROVE_AGE", "AUTO_APPROVE_LIMIT", "auto_approve"]

AUTO_APPROVE_AGE = dt.timedelta(hours=24)
AUTO_APPROVE_LIMIT = 200


async def auto_approve(ctx: JobContext) -> dict[str, Any]:
    """Job entry point (``JobContext``): returns ``{"approved": n, "call_ids": [...]}``."""
    cutoff = ctx.now - AUTO_APPROVE_AGE
    approved: list[str] = []
    async with ctx.pool.acquire() as conn, conn.transaction():
        for cand in await conn.fetch(Q.leads.auto_approve_candidates, cutoff, AUTO_APPROVE_LIMIT):
            row = await conn.fetchrow(Q.leads.auto_approve_call, cand["id"])
            if row is None:
                continue
            await conn.execute(
                Q.leads.insert_call_action,
                cand["id"],
                cand["site_id"],
                CallAction.AUTO_APPROVE.value,
                ActorType.SYSTEM.value,
                "auto_approve",
                CallStatus.INTENT.value,
                CallStatus.CONFIRMED.value,
                cand["snapshot"],
                {"reason": "stale low-risk ads intent", "lead_score": row["lead_score"]},
            )
            await write_audit(
                conn,
                ActorType.SYSTEM,
                "auto_approve",
                "call.auto_approve",
                "call",
                str(cand["id"]),
                cand["site_id"],
                {},
            )
            approved.append(str(cand["id"]))
    return {"approved": len(approved), "call_ids": approved}
