-- Billing: the ledger (ingest_idempotency) is the authority; month usage follows it.

-- name: reconcile_month
-- Ledger count vs usage counter per site for one month; every site with either figure.
SELECT s.id AS site_id,
       coalesce(l.n, 0)::bigint AS ledger_count,
       coalesce(u.event_count, 0)::bigint AS usage_count
FROM sites s
LEFT JOIN (
    SELECT site_id, count(*) AS n FROM ingest_idempotency
    WHERE billable AND year_month = $1 GROUP BY site_id
) l ON l.site_id = s.id
LEFT JOIN site_usage_monthly u ON u.site_id = s.id AND u.year_month = $1
WHERE l.n IS NOT NULL OR u.event_count IS NOT NULL;

-- name: record_reconciliation
INSERT INTO billing_reconciliation_runs (site_id, year_month, ledger_count, usage_count, drift)
SELECT t.site_id, $2, t.ledger_count, t.usage_count, t.ledger_count - t.usage_count
FROM unnest($1::uuid[], $3::int8[], $4::int8[]) AS t(site_id, ledger_count, usage_count);

-- name: month_figures
-- What an invoice says for one site and month, from the ledger.
SELECT count(*) FILTER (WHERE billable)::bigint AS event_count,
       count(*) FILTER (WHERE billable AND billing_state = 'OVERAGE')::bigint AS overage_count,
       count(*) FILTER (WHERE billing_state = 'REJECTED_QUOTA')::bigint AS rejected_count
FROM ingest_idempotency WHERE site_id = $1 AND year_month = $2;

-- name: sites_with_ledger
SELECT DISTINCT site_id FROM ingest_idempotency WHERE year_month = $1;

-- name: insert_invoice
-- Freezing twice is a no-op: the snapshot is immutable and keyed by (site, month).
INSERT INTO invoice_snapshot (site_id, year_month, event_count, overage_count, figures, figures_sha256)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (site_id, year_month) DO NOTHING
RETURNING site_id;

-- name: list_invoices
SELECT year_month, event_count, overage_count, figures, figures_sha256, created_at
FROM invoice_snapshot WHERE site_id = $1 ORDER BY year_month DESC;

-- name: usage_for_site
SELECT year_month, event_count, overage_count, rejected_count, updated_at
FROM site_usage_monthly WHERE site_id = $1 ORDER BY year_month DESC LIMIT 24;

-- name: delete_expired_ledger
-- Retention: expired rows, never of the current or the previous month, in bounded chunks.
-- Rows expire 90 days after they were written: the created_at bound lets the BRIN index
-- skip the recent part of the table.
DELETE FROM ingest_idempotency
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM ingest_idempotency
    WHERE expires_at < $1 AND created_at < $1::timestamptz - interval '90 days'
      AND year_month <> ALL ($2::text[])
    LIMIT $3
));

-- name: dispute_rows
-- One page of the month's ledger after key $3 (keyset pagination along the primary key, so
-- every page is a short query: the export holds no connection between pages).
SELECT idempotency_key, created_at, billable, billing_reason
FROM ingest_idempotency
WHERE site_id = $1 AND year_month = $2 AND idempotency_key > $3
ORDER BY idempotency_key
LIMIT $4;
