"""Routes: billing (usage, invoices, dispute export). Capability ``billing:view``."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from gateway.auth import CurrentPrincipal, site_with_capability
from gateway.errors import ApiError, JSONResponse, json_response
from opsmantik_stream.db import api_transaction
from opsmantik_stream.queries import Q
from opsmantik_stream.rbac import Capability

router = APIRouter(tags=["billing"])

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_PAGE_ROWS = 2000


@router.get("/api/billing/usage", response_class=JSONResponse, summary="Month usage counters of a site")
async def usage(request: Request, principal: CurrentPrincipal, site: str = Query(...)) -> JSONResponse:
    site_id = await site_with_capability(request, principal, site, Capability.BILLING_VIEW)
    async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
        rows = await conn.fetch(Q.billing.usage_for_site, site_id)
    return json_response(
        {
            "site": site,
            "months": [
                {
                    "year_month": r["year_month"],
                    "event_count": r["event_count"],
                    "overage_count": r["overage_count"],
                    "rejected_count": r["rejected_count"],
                }
                for r in rows
            ],
        }
    )


@router.get("/api/billing/invoices", response_class=JSONResponse, summary="Frozen invoice snapshots of a site")
async def invoices(request: Request, principal: CurrentPrincipal, site: str = Query(...)) -> JSONResponse:
    site_id = await site_with_capability(request, principal, site, Capability.BILLING_VIEW)
    async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
        rows = await conn.fetch(Q.billing.list_invoices, site_id)
    return json_response(
        {
            "site": site,
            "invoices": [
                {
                    "year_month": r["year_month"],
                    "event_count": r["event_count"],
                    "overage_count": r["overage_count"],
                    "figures_sha256": r["figures_sha256"],
                    "created_at": r["created_at"],
                }
                for r in rows
            ],
        }
    )


@router.get(
    "/api/billing/dispute-export",
    summary="The month's ledger as CSV (idempotency_key,created_at,billable,billing_reason), by key",
    response_class=StreamingResponse,
)
async def dispute_export(
    request: Request, principal: CurrentPrincipal, site: str = Query(...), month: str = Query(...)
) -> StreamingResponse:
    if not _MONTH.match(month):
        raise ApiError(422, "invalid_month", "month must look like 2026-11")
    site_id = await site_with_capability(request, principal, site, Capability.BILLING_VIEW)
    pool = request.app.state.ctx.pool

    async def rows() -> AsyncIterator[bytes]:
        yield b"idempotency_key,created_at,billable,billing_reason\n"
        # one short transaction per page, released before the page is sent: a slow download
        # holds no API connection and no transaction (keyset pages never skip or repeat a row)
        after = ""
        while True:
            async with api_transaction(pool, principal.user_id) as conn:
                page = await conn.fetch(Q.billing.dispute_rows, site_id, month, after, _PAGE_ROWS)
            if not page:
                return
            lines = []
            for r in page:
                reason = (r["billing_reason"] or "").replace('"', '""')
                lines.append(
                    f'{r["idempotency_key"]},{r["created_at"].isoformat()},{str(r["billable"]).lower()},"{reason}"\n'
                )
            yield "".join(lines).encode()
            if len(page) < _PAGE_ROWS:
                return
            after = page[-1]["idempotency_key"]

    filename = f"ledger-{site}-{month}.csv"
    return StreamingResponse(
        rows(), media_type="text/csv", headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )
