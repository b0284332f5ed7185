-- Offline conversion uploads: groups, claim, guarded finish, ledger, metrics, breaker state,
-- leases, credentials, rescue and the operator surface (SPEC §6).

-- name: list_groups
-- Due rows per (site, destination), oldest due first, with what decides whether the group may
-- be sent now: the breaker's gate (one rule: provider_breaker_gate), the account's pool-wide
-- pause, and the batch size Google accepts for the account. $1 is "now" (NULL: the database's
-- clock; tests pass their own), $3 the time after which a half-open probe holder counts as gone.
WITH due AS (
    SELECT q.site_id, q.destination, count(*) AS backlog, min(q.next_retry_at) AS oldest_due
    FROM offline_conversion_queue q
    WHERE q.status IN ('QUEUED', 'RETRY') AND q.next_retry_at <= coalesce($1, now())
    GROUP BY q.site_id, q.destination
    ORDER BY min(q.next_retry_at)
    LIMIT $2
)
SELECT d.site_id, d.destination, d.backlog, d.oldest_due,
       coalesce(h.state, 'CLOSED') AS breaker_state,
       provider_breaker_gate(h.state, h.next_probe_at, h.probe_holder, h.probe_started_at,
                             coalesce($1, now()), $3) AS gate,
       h.gate_ledgered_at,
       c.account_id,
       (a.paused_until IS NOT NULL AND a.paused_until > coalesce($1, now())) AS paused,
       a.paused_until,
       a.max_batch
FROM due d
LEFT JOIN provider_health_state h ON h.site_id = d.site_id AND h.destination = d.destination
LEFT JOIN provider_credentials c ON c.site_id = d.site_id AND c.destination = d.destination
LEFT JOIN provider_account_state a ON a.destination = d.destination AND a.account_id = c.account_id
ORDER BY d.oldest_due;

-- name: group_context
-- What one attempt needs about its group: the credentials row (sealed), the site's public id
-- and current destination (for BLOCKED hints), and whether that destination has credentials.
SELECT s.public_id, s.default_destination AS site_destination,
       c.destination, c.sealed, c.key_fingerprint, c.account_id, c.requests_per_s,
       c.conversions_per_min, c.updated_at,
       EXISTS (SELECT 1 FROM provider_credentials x
               WHERE x.site_id = s.id AND x.destination = s.default_destination) AS site_has_credentials
FROM sites s
LEFT JOIN provider_credentials c ON c.site_id = s.id AND c.destination = $2
WHERE s.id = $1;

-- name: claim_rows
-- One statement: lock up to $5 due rows of one group (oldest due first, skipping rows another
-- uploader holds), move them to PROCESSING, stamp the claim and count the attempt. $6 is "now"
-- (NULL: the database's clock).
UPDATE offline_conversion_queue q
SET status = 'PROCESSING', claimed_by = $3, claimed_at = now(), claim_batch_id = $4,
    attempt = q.attempt + 1
FROM (
    SELECT id FROM offline_conversion_queue
    WHERE site_id = $1 AND destination = $2 AND status IN ('QUEUED', 'RETRY')
      AND next_retry_at <= coalesce($6, now())
    ORDER BY next_retry_at, created_at
    LIMIT $5
    FOR UPDATE SKIP LOCKED
) c
WHERE q.id = c.id
RETURNING q.id, q.order_id, q.attempt, q.gclid, q.wbraid, q.gbraid, q.conversion_time,
          q.value_minor, q.currency, q.phone_sha256, q.email_sha256, q.consent_scopes, q.created_at,
          q.kind, q.adjusted_at;

-- name: finish_rows
-- Guarded transitions: only rows still PROCESSING under this uploader's claim and attempt
-- change; a late finish of a rescued (or re-claimed) attempt matches nothing. A refunded row
-- (split batch, collateral, never sent) gives its attempt back.
UPDATE offline_conversion_queue q
SET status = u.status,
    attempt = CASE WHEN u.refund THEN q.attempt - 1 ELSE q.attempt END,
    next_retry_at = coalesce(u.next_retry_at, q.next_retry_at),
    uploaded_at = CASE WHEN u.status = 'COMPLETED' THEN now() ELSE q.uploaded_at END,
    provider_request_id = CASE WHEN u.status = 'COMPLETED' THEN u.request_id ELSE q.provider_request_id END,
    error_code = u.error_code,
    error_category = u.error_category,
    last_error = u.last_error
FROM unnest($1::uuid[], $2::int[], $3::text[], $4::timestamptz[], $5::text[], $6::text[],
            $7::text[], $8::text[], $11::bool[])
     AS u(id, attempt, status, next_retry_at, error_code, error_category, last_error, request_id, refund)
WHERE q.id = u.id AND q.status = 'PROCESSING' AND q.claimed_by = $9 AND q.claim_batch_id = $10
  AND q.attempt = u.attempt
RETURNING q.id, q.status;

-- name: insert_started
INSERT INTO provider_upload_attempts (batch_id, site_id, destination, uploader_id, attempt, phase, row_count)
VALUES ($1, $2, $3, $4, $5, 'STARTED', $6)
ON CONFLICT (batch_id, phase) DO NOTHING;

-- name: start_request
-- Right before a request leaves (the bucket's slot is taken): commit the attempt's STARTED row
-- and read the account's pool-wide pause in one round trip, so nothing but this stands between
-- the slot and the send. $7: the account; $8: "now" (NULL: the database's clock).
WITH started AS (
    INSERT INTO provider_upload_attempts (batch_id, site_id, destination, uploader_id, attempt, phase, row_count)
    VALUES ($1, $2, $3, $4, $5, 'STARTED', $6)
    ON CONFLICT (batch_id, phase) DO NOTHING
)
SELECT paused_until FROM provider_account_state
WHERE destination = $3 AND account_id = $7 AND paused_until > coalesce($8, now());

-- name: insert_finished
-- DO NOTHING: the rescue job may already have closed this attempt (the late finish is a no-op).
INSERT INTO provider_upload_attempts (
    batch_id, site_id, destination, uploader_id, attempt, phase, row_count, completed_count,
    failed_count, retry_count, blocked_count, http_status, request_id, error_code, error_category,
    duration_ms, breaker_state
) VALUES ($1, $2, $3, $4, $5, 'FINISHED', $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
ON CONFLICT (batch_id, phase) DO NOTHING
RETURNING id;

-- name: add_metrics
INSERT INTO provider_upload_metrics (site_id, destination, attempts_total, completed_total,
                                     failed_total, retry_total, blocked_total)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (site_id, destination) DO UPDATE SET
    attempts_total = provider_upload_metrics.attempts_total + EXCLUDED.attempts_total,
    completed_total = provider_upload_metrics.completed_total + EXCLUDED.completed_total,
    failed_total = provider_upload_metrics.failed_total + EXCLUDED.failed_total,
    retry_total = provider_upload_metrics.retry_total + EXCLUDED.retry_total,
    blocked_total = provider_upload_metrics.blocked_total + EXCLUDED.blocked_total,
    updated_at = now();

-- name: ensure_health
INSERT INTO provider_health_state (site_id, destination) VALUES ($1, $2)
ON CONFLICT (site_id, destination) DO NOTHING;

-- name: lock_health
SELECT state, failure_count, success_count, opened_at, next_probe_at, probe_holder, last_error
FROM provider_health_state WHERE site_id = $1 AND destination = $2
FOR UPDATE;

-- name: get_health
SELECT site_id, destination, state, failure_count, success_count, opened_at, next_probe_at,
       probe_holder, probe_started_at, last_error, updated_at
FROM provider_health_state WHERE site_id = $1 AND destination = $2;

-- name: save_health
UPDATE provider_health_state
SET state = $3, failure_count = $4, success_count = $5, opened_at = $6, next_probe_at = $7,
    probe_holder = $8, probe_started_at = CASE WHEN $8::text IS NULL THEN NULL ELSE probe_started_at END,
    last_error = $9, updated_at = now()
WHERE site_id = $1 AND destination = $2;

-- name: take_probe
-- Exactly one uploader moves a group whose gate says PROBE (provider_breaker_gate) to
-- HALF_OPEN and runs the single probe batch. $4: seconds after which a holder counts as gone;
-- $5: "now" (NULL: the database's clock).
UPDATE provider_health_state
SET state = 'HALF_OPEN', probe_holder = $3, probe_started_at = coalesce($5, now()), success_count = 0,
    updated_at = now()
WHERE site_id = $1 AND destination = $2
  AND provider_breaker_gate(state, next_probe_at, probe_holder, probe_started_at, coalesce($5, now()), $4) = 'PROBE'
RETURNING state;

-- name: mark_gate_ledgered
-- Claims the right to ledger one gated attempt for the group: at most one per $3 seconds.
INSERT INTO provider_health_state (site_id, destination, gate_ledgered_at)
VALUES ($1, $2, coalesce($4, now()))
ON CONFLICT (site_id, destination) DO UPDATE SET gate_ledgered_at = EXCLUDED.gate_ledgered_at
WHERE provider_health_state.gate_ledgered_at IS NULL
   OR provider_health_state.gate_ledgered_at <= EXCLUDED.gate_ledgered_at - make_interval(secs => $3)
RETURNING state;

-- name: pause_account
-- A 429 with a retry delay: every uploader of the pool leaves the account alone until then
-- (a later, shorter pause never shortens a longer one).
INSERT INTO provider_account_state (destination, account_id, paused_until, pause_reason)
VALUES ($1, $2, coalesce($4, now()) + make_interval(secs => $3), $5)
ON CONFLICT (destination, account_id) DO UPDATE SET
    paused_until = greatest(provider_account_state.paused_until, EXCLUDED.paused_until),
    pause_reason = EXCLUDED.pause_reason
RETURNING paused_until;

-- name: lower_max_batch
-- Google found a request too large: the account's batch size shrinks for the whole pool, for good.
INSERT INTO provider_account_state (destination, account_id, max_batch)
VALUES ($1, $2, $3)
ON CONFLICT (destination, account_id) DO UPDATE SET
    max_batch = least(coalesce(provider_account_state.max_batch, EXCLUDED.max_batch), EXCLUDED.max_batch)
RETURNING max_batch;

-- name: account_state
SELECT destination, account_id, paused_until, pause_reason, max_batch, updated_at
FROM provider_account_state WHERE destination = $1 AND account_id = $2;

-- name: release_probe
UPDATE provider_health_state SET probe_holder = NULL, probe_started_at = NULL, updated_at = now()
WHERE site_id = $1 AND destination = $2 AND probe_holder = $3;

-- name: reset_breaker
INSERT INTO provider_health_state (site_id, destination) VALUES ($1, $2)
ON CONFLICT (site_id, destination) DO UPDATE SET
    state = 'CLOSED', failure_count = 0, success_count = 0, opened_at = NULL, next_probe_at = NULL,
    probe_holder = NULL, probe_started_at = NULL, last_error = NULL, updated_at = now()
RETURNING state;

-- name: acquire_lease
SELECT acquire_provider_lease($1, $2, $3, $4, $5, $6, $7);

-- name: release_lease
DELETE FROM provider_leases WHERE id = $1;

-- name: release_leases_of_holder_prefix
-- A restarted uploader holds nothing: drop the leases of its earlier incarnations.
DELETE FROM provider_leases WHERE holder LIKE $1 || '%' AND holder <> $2;

-- name: credentials_for
SELECT destination, sealed, key_fingerprint, account_id, requests_per_s, conversions_per_min,
       updated_at
FROM provider_credentials WHERE site_id = $1 AND destination = $2;

-- name: credentials_of_site
-- Non-secret facts only (never the sealed part).
SELECT destination, key_fingerprint, account_id, requests_per_s, conversions_per_min, updated_at
FROM provider_credentials WHERE site_id = $1 ORDER BY destination;

-- name: lock_site_destination
SELECT id, public_id, default_destination FROM sites WHERE id = $1 FOR UPDATE;

-- name: set_site_destination
UPDATE sites SET default_destination = $2 WHERE id = $1;

-- name: set_enhanced_conversions
-- Whether the site uploads conversions that have hashed identifiers but no click id.
UPDATE sites SET enhanced_conversions = $2 WHERE id = $1
RETURNING (SELECT enhanced_conversions FROM sites WHERE id = $1) AS previous, enhanced_conversions;

-- name: blocked_elsewhere
-- BLOCKED rows queued for another destination than the site's (a requeue moves them).
SELECT count(*) FROM offline_conversion_queue
WHERE site_id = $1 AND status = 'BLOCKED' AND destination <> $2;

-- name: sites_destinations
-- Every site's destination and the destinations it has credentials for (status, site list).
SELECT s.id AS site_id, s.public_id, s.name, s.default_destination AS destination,
       coalesce(array_agg(c.destination ORDER BY c.destination) FILTER (WHERE c.destination IS NOT NULL),
                '{}') AS credentials
FROM sites s
LEFT JOIN provider_credentials c ON c.site_id = s.id
GROUP BY s.id
ORDER BY s.created_at, s.public_id;

-- name: upsert_credentials
INSERT INTO provider_credentials (site_id, destination, sealed, key_fingerprint, account_id,
                                  requests_per_s, conversions_per_min)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (site_id, destination) DO UPDATE SET
    sealed = EXCLUDED.sealed, key_fingerprint = EXCLUDED.key_fingerprint,
    account_id = EXCLUDED.account_id, requests_per_s = EXCLUDED.requests_per_s,
    conversions_per_min = EXCLUDED.conversions_per_min
RETURNING destination, account_id, key_fingerprint, requests_per_s, conversions_per_min, updated_at;

-- name: stale_processing
-- Rows whose claim is older than the cutoff: their uploader died or hangs.
SELECT id, site_id, destination, attempt, claimed_by, claim_batch_id
FROM offline_conversion_queue
WHERE status = 'PROCESSING' AND claimed_at < $1
ORDER BY claimed_at
LIMIT $2
FOR UPDATE SKIP LOCKED;

-- name: rescue_rows
-- Guarded like a finish: the row must still be under the same claim and attempt.
UPDATE offline_conversion_queue q
SET status = u.status, next_retry_at = now() + make_interval(secs => u.delay_s),
    error_code = u.error_code, error_category = u.error_category, last_error = u.last_error
FROM unnest($1::uuid[], $2::int[], $3::uuid[], $4::text[], $5::float8[], $6::text[], $7::text[],
            $8::text[])
     AS u(id, attempt, batch_id, status, delay_s, error_code, error_category, last_error)
WHERE q.id = u.id AND q.status = 'PROCESSING' AND q.attempt = u.attempt
  AND q.claim_batch_id IS NOT DISTINCT FROM u.batch_id
RETURNING q.id, q.status, q.site_id, q.destination, q.claimed_by, q.claim_batch_id, q.attempt;

-- name: orphan_started
-- STARTED ledger rows without their FINISHED twin, older than the cutoff.
SELECT s.batch_id, s.site_id, s.destination, s.uploader_id, s.attempt, s.row_count, s.created_at
FROM provider_upload_attempts s
WHERE s.phase = 'STARTED' AND s.created_at < $1
  AND NOT EXISTS (SELECT 1 FROM provider_upload_attempts f
                  WHERE f.batch_id = s.batch_id AND f.phase = 'FINISHED')
ORDER BY s.created_at
LIMIT $2;

-- name: queue_stats
SELECT destination, status, count(*) AS n, min(next_retry_at) AS oldest_next_retry_at
FROM offline_conversion_queue WHERE site_id = $1
GROUP BY destination, status ORDER BY destination, status;

-- name: breakers_for_site
SELECT destination, state, failure_count, opened_at, next_probe_at, probe_holder, last_error, updated_at
FROM provider_health_state WHERE site_id = $1 ORDER BY destination;

-- name: list_rows
SELECT id, destination, source_kind, order_id, status, attempt, next_retry_at, claimed_by,
       claimed_at, uploaded_at, provider_request_id, error_code, error_category, last_error,
       created_at, updated_at
FROM offline_conversion_queue
WHERE site_id = $1 AND ($2::text IS NULL OR status = $2)
ORDER BY created_at DESC, id
LIMIT $3;

-- name: list_ledger
SELECT id, created_at, batch_id, destination, uploader_id, attempt, phase, row_count,
       completed_count, failed_count, retry_count, blocked_count, http_status, request_id,
       error_code, error_category, duration_ms, breaker_state,
       (phase = 'STARTED' AND NOT EXISTS (
            SELECT 1 FROM provider_upload_attempts f
            WHERE f.batch_id = a.batch_id AND f.phase = 'FINISHED')) AS unfinished
FROM provider_upload_attempts a
WHERE site_id = $1
ORDER BY created_at DESC, id DESC
LIMIT $2;

-- name: requeue_rows
-- FAILED/BLOCKED -> QUEUED with a fresh attempt budget (an operator fixed the cause), moved to
-- the site's current destination (the fix may have been choosing another one); an adjustment
-- stays with its conversion's destination (only that one holds the conversion). A lead whose
-- session already has another pending lead, and an adjustment whose conversion already has
-- another pending adjustment, stay as they are.
UPDATE offline_conversion_queue q
SET status = 'QUEUED', attempt = 0, next_retry_at = now(), claimed_by = NULL, claimed_at = NULL,
    claim_batch_id = NULL, error_code = NULL, error_category = NULL,
    destination = CASE WHEN q.kind = 'conversion'
                       THEN (SELECT s.default_destination FROM sites s WHERE s.id = q.site_id)
                       ELSE q.destination END,
    last_error = 'requeued by operator'
WHERE q.site_id = $1 AND q.status IN ('FAILED', 'BLOCKED')
  AND ($2::uuid[] IS NULL OR q.id = ANY ($2::uuid[]))
  AND ($3::text IS NULL OR q.status = $3)
  AND NOT (q.status = 'FAILED' AND q.error_code IN ('VOIDED', 'SUPERSEDED'))
  AND (q.session_id IS NULL OR q.kind <> 'conversion' OR q.source_kind <> 'call' OR NOT EXISTS (
        SELECT 1 FROM offline_conversion_queue o
        WHERE o.site_id = q.site_id AND o.session_id = q.session_id AND o.id <> q.id
          AND o.kind = 'conversion' AND o.source_kind = 'call'
          AND o.status IN ('QUEUED', 'PROCESSING', 'RETRY')))
  AND (q.adjusts_id IS NULL OR NOT EXISTS (
        SELECT 1 FROM offline_conversion_queue o
        WHERE o.adjusts_id = q.adjusts_id AND o.id <> q.id AND o.status IN ('QUEUED', 'PROCESSING', 'RETRY')))
RETURNING q.id, q.destination;
