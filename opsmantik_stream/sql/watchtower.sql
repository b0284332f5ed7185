-- Watchtower (SPEC §9): the checks, the alert rows they open and resolve, and the webhook
-- outbox. Checks take the job's clock ($1 = now) so runs are reproducible; each returns one
-- row per (site, subject) whose condition holds, with the figures the message quotes.

-- name: lock_run
-- One reconciliation at a time (the Maintenance loop and a manual `jobs run` may overlap).
SELECT pg_advisory_xact_lock(hashtextextended('opsm-watchtower', 0));

-- name: check_no_sessions
-- Sites with $2 or more sessions in the 24 h before the last hour and none in the last hour.
-- Both probes are bounded index range scans (sessions (site_id, created_at DESC, id DESC)).
SELECT s.id AS site_id, s.public_id, s.name, prev.n AS sessions_day_before
FROM sites s
CROSS JOIN LATERAL (
    SELECT count(*)::bigint AS n FROM (
        SELECT 1 FROM sessions x
        WHERE x.site_id = s.id
          AND x.created_month >= date_trunc('month', ($1::timestamptz - interval '25 hours') AT TIME ZONE 'UTC')::date
          AND x.created_at >= $1::timestamptz - interval '25 hours'
          AND x.created_at < $1::timestamptz - interval '1 hour'
        LIMIT $2
    ) y
) prev
WHERE prev.n >= $2
  AND NOT EXISTS (
      SELECT 1 FROM sessions x
      WHERE x.site_id = s.id
        AND x.created_month >= date_trunc('month', ($1::timestamptz - interval '1 hour') AT TIME ZONE 'UTC')::date
        AND x.created_at >= $1::timestamptz - interval '1 hour'
        AND x.created_at <= $1::timestamptz);

-- name: check_no_click_ids
-- Sites with $2 or more click-id sessions in the 7 days before the last 3 h and none in the
-- last 3 h (partial index sessions_site_click_created_idx holds click-id sessions only).
SELECT s.id AS site_id, s.public_id, s.name, prev.n AS click_sessions_week_before
FROM sites s
CROSS JOIN LATERAL (
    SELECT count(*)::bigint AS n FROM (
        SELECT 1 FROM sessions x
        WHERE x.site_id = s.id
          AND (x.gclid IS NOT NULL OR x.wbraid IS NOT NULL OR x.gbraid IS NOT NULL)
          AND x.created_month >= date_trunc('month', ($1::timestamptz - interval '171 hours') AT TIME ZONE 'UTC')::date
          AND x.created_at >= $1::timestamptz - interval '171 hours'
          AND x.created_at < $1::timestamptz - interval '3 hours'
        LIMIT $2
    ) y
) prev
WHERE prev.n >= $2
  AND NOT EXISTS (
      SELECT 1 FROM sessions x
      WHERE x.site_id = s.id
        AND (x.gclid IS NOT NULL OR x.wbraid IS NOT NULL OR x.gbraid IS NOT NULL)
        AND x.created_month >= date_trunc('month', ($1::timestamptz - interval '3 hours') AT TIME ZONE 'UTC')::date
        AND x.created_at >= $1::timestamptz - interval '3 hours'
        AND x.created_at <= $1::timestamptz);

-- name: check_dead_letters
-- Pending dead letters per site (site NULL: the event named no known site).
SELECT d.site_id, s.public_id, s.name, count(*)::bigint AS pending, min(d.created_at) AS oldest
FROM dead_letters d
LEFT JOIN sites s ON s.id = d.site_id
WHERE d.status = 'PENDING'
GROUP BY d.site_id, s.public_id, s.name;

-- name: check_billing_drift
-- The latest reconciliation of each site for the months in $1 that found a drift (one index
-- probe per site and month).
SELECT s.id AS site_id, s.public_id, s.name, jsonb_object_agg(m.ym, r.drift) AS drift_by_month
FROM sites s
CROSS JOIN unnest($1::text[]) AS m(ym)
CROSS JOIN LATERAL (
    SELECT drift FROM billing_reconciliation_runs b
    WHERE b.site_id = s.id AND b.year_month = m.ym
    ORDER BY b.id DESC
    LIMIT 1
) r
WHERE r.drift <> 0
GROUP BY s.id, s.public_id, s.name;

-- name: check_stuck_uploads
-- Rows PROCESSING under a claim older than $1 (the rescue job's stale time).
SELECT q.site_id, s.public_id, s.name, count(*)::bigint AS rows, min(q.claimed_at) AS oldest_claim
FROM offline_conversion_queue q
JOIN sites s ON s.id = q.site_id
WHERE q.status = 'PROCESSING' AND q.claimed_at < $1
GROUP BY q.site_id, s.public_id, s.name;

-- name: check_breakers_open
SELECT h.site_id, s.public_id, s.name, h.destination, h.opened_at, h.next_probe_at, h.failure_count
FROM provider_health_state h
JOIN sites s ON s.id = h.site_id
WHERE h.state = 'OPEN';

-- name: check_blocked_rows
SELECT q.site_id, s.public_id, s.name, count(*)::bigint AS rows,
       array_agg(DISTINCT q.error_code ORDER BY q.error_code) FILTER (WHERE q.error_code IS NOT NULL) AS error_codes
FROM offline_conversion_queue q
JOIN sites s ON s.id = q.site_id
WHERE q.status = 'BLOCKED'
GROUP BY q.site_id, s.public_id, s.name;

-- name: check_queue_age
-- Due rows (QUEUED/RETRY) that have waited longer than $2 seconds past their due time.
SELECT q.site_id, s.public_id, s.name, count(*)::bigint AS rows, min(q.next_retry_at) AS oldest_due
FROM offline_conversion_queue q
JOIN sites s ON s.id = q.site_id
WHERE q.status IN ('QUEUED', 'RETRY') AND q.next_retry_at < $1::timestamptz - make_interval(secs => $2)
GROUP BY q.site_id, s.public_id, s.name;

-- name: open_alerts
SELECT id, site_id, kind, subject, summary, details, first_seen_at, last_seen_at
FROM watchtower_alerts WHERE resolved_at IS NULL;

-- name: insert_alert
INSERT INTO watchtower_alerts (site_id, kind, subject, summary, details, first_seen_at, last_seen_at)
VALUES ($1, $2, $3, $4, $5, $6, $6)
RETURNING id, first_seen_at;

-- name: touch_alert
UPDATE watchtower_alerts SET last_seen_at = greatest(last_seen_at, $2), summary = $3, details = $4
WHERE id = $1 AND resolved_at IS NULL;

-- name: resolve_alert
UPDATE watchtower_alerts SET resolved_at = greatest(last_seen_at, $2)
WHERE id = $1 AND resolved_at IS NULL
RETURNING resolved_at;

-- name: insert_notification
-- One message per (alert, event), whatever retries or overlapping runs do.
INSERT INTO watchtower_notifications (alert_id, event, payload, created_at, next_attempt_at)
VALUES ($1, $2, $3, $4, $4)
ON CONFLICT (alert_id, event) DO NOTHING;

-- name: claim_notification
-- The next due message; a "resolved" waits until its "raised" left the outbox. The claim moves
-- next_attempt_at out by a lease ($2 s), so an overlapping run does not send it as well.
UPDATE watchtower_notifications n
SET attempts = n.attempts + 1, next_attempt_at = $1::timestamptz + make_interval(secs => $2)
WHERE n.id = (
    SELECT x.id FROM watchtower_notifications x
    WHERE x.status = 'PENDING' AND x.next_attempt_at <= $1
      AND NOT (x.event = 'resolved' AND EXISTS (
          SELECT 1 FROM watchtower_notifications r
          WHERE r.alert_id = x.alert_id AND r.event = 'raised' AND r.status = 'PENDING'))
    ORDER BY x.next_attempt_at, x.id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING n.id, n.alert_id, n.event, n.payload, n.attempts, n.created_at;

-- name: notification_delivered
UPDATE watchtower_notifications SET status = 'DELIVERED', delivered_at = $2, last_error = NULL
WHERE id = $1 AND status = 'PENDING';

-- name: notification_failed
-- Back off ($2 = the next attempt), or give up ($4) on a message nobody could take for too long.
UPDATE watchtower_notifications
SET next_attempt_at = $2, last_error = $3, status = CASE WHEN $4 THEN 'ABANDONED' ELSE 'PENDING' END
WHERE id = $1 AND status = 'PENDING';

-- name: open_alerts_by_kind
SELECT kind, count(*)::bigint AS n FROM watchtower_alerts WHERE resolved_at IS NULL GROUP BY kind;

-- name: open_alerts_list
-- Open alerts across sites (platform admin views: /ops, status), newest first.
SELECT a.id, a.kind, a.subject, a.summary, a.first_seen_at, a.last_seen_at, s.public_id, s.name AS site_name
FROM watchtower_alerts a
LEFT JOIN sites s ON s.id = a.site_id
WHERE a.resolved_at IS NULL
ORDER BY a.first_seen_at DESC, a.id DESC
LIMIT $1;

-- name: notifications_pending
SELECT count(*)::bigint FROM watchtower_notifications WHERE status = 'PENDING';
