-- Operations: global figures for /metrics, status and watchtower.

-- name: queue_by_status
SELECT status, count(*)::bigint AS n FROM offline_conversion_queue GROUP BY status;

-- name: breakers_by_state
SELECT state, count(*)::bigint AS n FROM provider_health_state GROUP BY state;

-- name: upload_totals
SELECT coalesce(sum(completed_total), 0)::bigint AS completed,
       coalesce(sum(failed_total), 0)::bigint AS failed,
       coalesce(sum(retry_total), 0)::bigint AS retry,
       coalesce(sum(blocked_total), 0)::bigint AS blocked,
       coalesce(sum(attempts_total), 0)::bigint AS attempts
FROM provider_upload_metrics;

-- name: ingest_last_minute
-- ledger rows admitted in the last minute (the ingest rate); uses the created_at order of
-- the primary key only through a bounded scan
SELECT count(*)::bigint FROM ingest_idempotency WHERE created_at > now() - interval '1 minute';

-- name: dead_letters_pending
SELECT count(*)::bigint FROM dead_letters WHERE status = 'PENDING';

-- name: orphan_started
-- upload attempts with a STARTED row and no FINISHED row, older than $1 seconds
SELECT count(*)::bigint
FROM provider_upload_attempts s
WHERE s.phase = 'STARTED' AND s.created_at < now() - make_interval(secs => $1)
  AND NOT EXISTS (SELECT 1 FROM provider_upload_attempts f WHERE f.batch_id = s.batch_id AND f.phase = 'FINISHED');

-- name: oldest_due_by_destination
-- Per destination: how long the oldest row that may be sent now (QUEUED/RETRY, due) has been
-- due, in seconds. A growing figure means uploads do not keep up (or a breaker holds them).
SELECT destination,
       extract(epoch FROM now() - min(next_retry_at))::float8 AS age_s,
       count(*)::bigint AS n
FROM offline_conversion_queue
WHERE status IN ('QUEUED', 'RETRY') AND next_retry_at <= now()
GROUP BY destination;
