-- Ingest: site lookup for the gateway, the one statement per batch of a SitePartition, and
-- dead letters.

-- name: site_for_ingest
-- What the gateway needs to admit a request for a site: origins, ingest key, rate limit.
SELECT s.id, s.public_id, s.ingest_key_sha256, p.rate_limit_per_min,
       coalesce(array_agg(o.origin ORDER BY o.origin) FILTER (WHERE o.origin IS NOT NULL), '{}') AS origins
FROM sites s
LEFT JOIN site_plans p ON p.site_id = s.id
LEFT JOIN site_origins o ON o.site_id = s.id
WHERE s.public_id = $1
GROUP BY s.id, p.rate_limit_per_min;

-- name: ingest_batch
-- A partition's micro-batch in one statement (migrations 0006, 0014-0020): ledger, quota, sessions,
-- events, intents and usage in one transaction; a status letter, the quota left and the session
-- hint (c/p/-) per event.
-- $2 the batch's distinct sites in order, $3 whether it holds a system/consent event, $4 a list
-- of ``BatchEvent`` tuples, sent as binary rows of ingest_batch_event.
SELECT status, remaining, hints
FROM ingest_batch($1::timestamptz, $2::uuid[], $3::boolean, $4::ingest_batch_event[]);

-- name: batch_row_type
-- The batch row type ingest_batch() takes: its OID, its array type's OID, and its attributes'
-- type OIDs in order (the partition's C row encoder writes them; store.use_row_encoder).
SELECT t.oid::int AS oid, t.typarray::int AS array_oid,
       array_agg(a.atttypid::int ORDER BY a.attnum) AS attr_oids
FROM pg_type t
JOIN pg_attribute a ON a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
WHERE t.oid = 'ingest_batch_event'::regtype
GROUP BY t.oid, t.typarray;

-- name: batch_row_check
-- One row sent through a connection's row encoder, read back as PostgreSQL sees it.
SELECT (r).i, (r).site::text, (r).key, (r).billable, (r).at_ms, (r).ev, (r).url, (r).hint, (r).srank
FROM unnest($1::ingest_batch_event[]) AS r;

-- name: ingest_dead_letters
-- Events captured instead of stored, with non-billable ledger rows; a letter per event.
SELECT ingest_dead_letters($1::timestamptz, $2::text::json);

-- name: set_ingest_key
-- Only the SHA-256 of a server-to-server ingest key is kept (the key is shown once).
UPDATE sites SET ingest_key_sha256 = $2 WHERE id = $1;

-- name: dead_letter_for_replay
SELECT id, site_id, source, payload, status FROM dead_letters WHERE id = $1 AND site_id = $2;

-- name: delete_dead_letter_ledger
-- The non-billable ledger row a dead-lettered event left behind (so a resend counted as a
-- duplicate); a replay removes it first so the event is admitted and billed once.
DELETE FROM ingest_idempotency
WHERE site_id = $1 AND idempotency_key = $2 AND billing_reason = 'dead_letter';

-- name: mark_dead_letter_replayed
-- A replay that failed again left a new PENDING dead letter with the new reason, so the old
-- one is closed either way (one pending row per event); $2 says why it failed.
UPDATE dead_letters
SET status = 'REPLAYED', replay_count = replay_count + 1, last_replay_at = now(), last_replay_error = $2
WHERE id = $1 AND status = 'PENDING'
RETURNING status, replay_count;

-- name: list_dead_letters
SELECT id, created_at, source, stage, reason, status, replay_count, last_replay_at, last_replay_error
FROM dead_letters
WHERE site_id = $1 AND ($2::text IS NULL OR status = $2)
ORDER BY id DESC
LIMIT $3;
