-- Sales and the offline-conversion enqueue shared by sale confirm and call seal.

-- name: upsert_sale
-- Idempotent per (site, external_ref). Only a DRAFT may be rewritten; a confirmed or
-- canceled sale returns no row and the caller answers 409. $8/$9: the customer's hashed email
-- and phone (never the plain values).
INSERT INTO sales (site_id, conversation_id, external_ref, occurred_at, amount_minor, currency, notes,
                   email_sha256, phone_sha256)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (site_id, external_ref) DO UPDATE
SET amount_minor = EXCLUDED.amount_minor,
    occurred_at = EXCLUDED.occurred_at,
    currency = EXCLUDED.currency,
    conversation_id = coalesce(EXCLUDED.conversation_id, sales.conversation_id),
    notes = coalesce(EXCLUDED.notes, sales.notes),
    email_sha256 = coalesce(EXCLUDED.email_sha256, sales.email_sha256),
    phone_sha256 = coalesce(EXCLUDED.phone_sha256, sales.phone_sha256)
WHERE sales.status = 'DRAFT'
RETURNING *, (xmax = 0) AS inserted;

-- name: sale_by_external_ref
SELECT * FROM sales WHERE site_id = $1 AND external_ref = $2;

-- name: sale_site
SELECT sa.id, sa.site_id, s.public_id FROM sales sa JOIN sites s ON s.id = sa.site_id WHERE sa.id = $1;

-- name: lock_sale
SELECT * FROM sales WHERE id = $1 FOR UPDATE;

-- name: confirm_sale
UPDATE sales SET status = 'CONFIRMED', confirmed_at = now(), confirmed_by = $2
WHERE id = $1 AND status = 'DRAFT'
RETURNING *;

-- name: list_sales
SELECT * FROM sales
WHERE site_id = $1
  AND ($2::text IS NULL OR status = $2)
  AND ($3::timestamptz IS NULL OR occurred_at >= $3)
  AND ($4::timestamptz IS NULL OR occurred_at <= $4)
  AND ($5::uuid IS NULL OR conversation_id = $5)
ORDER BY occurred_at DESC, id DESC
LIMIT $6;

-- name: conversation_for_sale
SELECT id, primary_call_id, primary_session_id, primary_session_month, primary_source
FROM conversations WHERE id = $1 AND site_id = $2;

-- name: call_session
SELECT matched_session_id, matched_session_month FROM calls WHERE id = $1 AND site_id = $2;

-- name: session_for_conversion
SELECT id, created_month, gclid, wbraid, gbraid, consent_scopes
FROM sessions
WHERE site_id = $1 AND id = $2 AND ($3::date IS NULL OR created_month = $3)
ORDER BY created_month DESC
LIMIT 1;

-- name: session_captured_identifiers
-- The hashed email/phone a form that opted in captured on the session (migration 0012).
SELECT email_sha256, phone_sha256 FROM session_captured_identifiers($1, $2);

-- name: site_destination
SELECT default_destination, currency, enhanced_conversions FROM sites WHERE id = $1;

-- name: insert_conversion
-- DO NOTHING covers one conversion per source, one per order id and one pending lead (call)
-- per session (docs/queue-state-machine.md "One conversion per lead, one per sale").
-- consent_scopes: the session's consent as recorded now (sent to Google as recorded).
INSERT INTO offline_conversion_queue (
    site_id, destination, source_kind, source_id, session_id, order_id,
    gclid, wbraid, gbraid, conversion_time, value_minor, currency, consent_scopes,
    email_sha256, phone_sha256
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
ON CONFLICT DO NOTHING
RETURNING id, order_id, status;

-- name: conversion_by_source
SELECT id, order_id, status, error_code FROM offline_conversion_queue
WHERE source_kind = $1 AND source_id = $2 AND kind = 'conversion';

-- name: pending_lead_for_session
-- The session's pending lead conversion (a sealed call), if any: one lead is uploaded once.
SELECT id, source_kind, source_id FROM offline_conversion_queue
WHERE site_id = $1 AND session_id = $2 AND kind = 'conversion' AND source_kind = 'call'
  AND status IN ('QUEUED', 'PROCESSING', 'RETRY')
LIMIT 1;

-- name: revive_voided_conversion
-- A conversion voided by an undo, never sent, becomes pending again with the new figures
-- (same deterministic order id).
UPDATE offline_conversion_queue
SET status = 'QUEUED', attempt = 0, next_retry_at = now(), claimed_by = NULL, claimed_at = NULL,
    last_error = NULL, error_code = NULL, error_category = NULL,
    gclid = $3, wbraid = $4, gbraid = $5, conversion_time = $6, value_minor = $7, currency = $8,
    destination = $9, consent_scopes = $10, email_sha256 = $11, phone_sha256 = $12
WHERE source_kind = $1 AND source_id = $2 AND kind = 'conversion' AND status = 'FAILED'
  AND error_code = 'VOIDED'
RETURNING id, order_id, status;

-- name: void_pending_conversion
-- Undoing a seal (or junking/cancelling a sealed call) withdraws its conversion while it is
-- still unclaimed; a conversion already claimed or sent is left alone.
UPDATE offline_conversion_queue
SET status = 'FAILED', error_code = 'VOIDED', error_category = 'VALIDATION', last_error = $3
WHERE source_kind = $1 AND source_id = $2 AND kind = 'conversion' AND status IN ('QUEUED', 'RETRY')
RETURNING id;

-- name: lock_conversion_of_source
-- The conversion of a sale or call, locked while it is being adjusted (cancel, restate, undo).
SELECT * FROM offline_conversion_queue
WHERE site_id = $1 AND source_kind = $2 AND source_id = $3 AND kind = 'conversion'
FOR UPDATE;

-- name: restate_unsent_conversion
-- Before upload a restatement simply changes the figures the uploader will send.
UPDATE offline_conversion_queue SET value_minor = $2, currency = $3
WHERE id = $1 AND kind = 'conversion' AND status IN ('QUEUED', 'RETRY', 'FAILED', 'BLOCKED')
RETURNING id, status;

-- name: void_unsent_conversion
-- Before upload a cancellation withdraws the conversion for good (a requeue never sends a
-- VOIDED row; re-sealing a call revives it).
UPDATE offline_conversion_queue
SET status = 'FAILED', error_code = 'VOIDED', error_category = 'VALIDATION', last_error = $2
WHERE id = $1 AND kind = 'conversion' AND status IN ('QUEUED', 'RETRY', 'FAILED', 'BLOCKED')
RETURNING id, status;

-- name: lock_adjustments_of
-- The adjustments of one conversion, newest first, locked.
SELECT id, kind, status, value_minor, currency, adjusted_at, error_code
FROM offline_conversion_queue
WHERE adjusts_id = $1
ORDER BY adjusted_at DESC, created_at DESC
FOR UPDATE;

-- name: rewrite_pending_adjustment
-- A newer cancel/restate replaces an adjustment that no uploader holds yet (one pending
-- adjustment per conversion: the newest intent wins, with its own adjustment time).
UPDATE offline_conversion_queue
SET kind = $2, value_minor = $3, currency = $4, adjusted_at = $5, next_retry_at = now(),
    last_error = NULL, error_code = NULL, error_category = NULL
WHERE id = $1 AND status IN ('QUEUED', 'RETRY')
RETURNING id, kind, status, order_id;

-- name: supersede_unsent_adjustments
-- Adjustments that failed or wait blocked are replaced by the new one: never sent later.
UPDATE offline_conversion_queue
SET status = 'FAILED', error_code = 'SUPERSEDED', error_category = 'VALIDATION',
    last_error = 'replaced by a newer adjustment of the same conversion'
WHERE adjusts_id = $1 AND status IN ('FAILED', 'BLOCKED') AND error_code IS DISTINCT FROM 'SUPERSEDED'
RETURNING id;

-- name: insert_adjustment
-- An adjustment of an uploaded conversion: same destination, order id, source and identifiers,
-- its own kind, value and adjustment time. Delivered by the uploader like a conversion.
INSERT INTO offline_conversion_queue (
    site_id, destination, source_kind, source_id, order_id, gclid, wbraid, gbraid,
    email_sha256, phone_sha256, conversion_time, value_minor, currency, consent_scopes,
    kind, adjusts_id, adjusted_at
)
SELECT c.site_id, c.destination, c.source_kind, c.source_id, c.order_id, c.gclid, c.wbraid, c.gbraid,
       c.email_sha256, c.phone_sha256, c.conversion_time, $3, $4, c.consent_scopes, $2, c.id, $5
FROM offline_conversion_queue c
WHERE c.id = $1 AND c.kind = 'conversion' AND c.status = 'COMPLETED'
RETURNING id, kind, status, order_id;

-- name: cancel_sale
UPDATE sales SET status = 'CANCELED', canceled_at = now()
WHERE id = $1 AND status IN ('DRAFT', 'CONFIRMED')
RETURNING *;

-- name: restate_sale
UPDATE sales SET amount_minor = $2, currency = $3, restated_at = clock_timestamp()
WHERE id = $1 AND status = 'CONFIRMED'
RETURNING *;
