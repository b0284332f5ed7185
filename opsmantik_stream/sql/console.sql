-- The operator console: sign-in links and sessions (service connection), and the read-only
-- views of a site (API connection, so row-level security applies). Pages are keyset-paged on
-- (time, id) newest first; $cursor_ts/$cursor_id NULL means the first page.

-- name: user_by_email
SELECT id, email FROM users WHERE email = $1;

-- name: insert_link
INSERT INTO private.console_links (user_id, token_sha256, expires_at)
VALUES ($1, $2, now() + make_interval(secs => $3))
RETURNING id, expires_at;

-- name: use_link
-- Single use: the first exchange stamps used_at; a second one (or an expired link) matches nothing.
UPDATE private.console_links SET used_at = now()
WHERE token_sha256 = $1 AND used_at IS NULL AND expires_at > now()
RETURNING user_id;

-- name: insert_session_token
INSERT INTO private.api_tokens (user_id, token_sha256, label) VALUES ($1, $2, $3)
RETURNING id;

-- name: insert_session
INSERT INTO private.console_sessions (token_id, user_id, via, expires_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4))
RETURNING expires_at;

-- name: live_session
SELECT s.token_id, s.user_id, s.expires_at, u.email
FROM private.api_tokens t
JOIN private.console_sessions s ON s.token_id = t.id
JOIN users u ON u.id = s.user_id
WHERE t.token_sha256 = $1 AND t.revoked_at IS NULL AND s.ended_at IS NULL AND s.expires_at > now();

-- name: end_session
-- Sign-out: the session ends and its token stops working everywhere, in one statement.
WITH ended AS (
    UPDATE private.console_sessions s SET ended_at = now()
    FROM private.api_tokens t
    WHERE t.id = s.token_id AND t.token_sha256 = $1 AND s.ended_at IS NULL
    RETURNING s.token_id, s.user_id
)
UPDATE private.api_tokens t SET revoked_at = now()
FROM ended
WHERE t.id = ended.token_id AND t.revoked_at IS NULL
RETURNING ended.user_id;

-- name: expire_sessions
-- Sessions past their expiry end and their tokens are revoked (the cookie value would still
-- work as a bearer token otherwise).
WITH ended AS (
    UPDATE private.console_sessions SET ended_at = $1
    WHERE ended_at IS NULL AND expires_at <= $1
    RETURNING token_id
)
UPDATE private.api_tokens t SET revoked_at = $1
FROM ended
WHERE t.id = ended.token_id AND t.revoked_at IS NULL
RETURNING t.id;

-- name: delete_old_links
DELETE FROM private.console_links WHERE expires_at < $1::timestamptz - interval '1 day';

-- name: visible_sites
-- Sites the caller may read (RLS decides), for the site switcher.
SELECT id, public_id, name, domain, currency, timezone, default_destination
FROM sites ORDER BY name, public_id;

-- name: site_basics
SELECT id, public_id, name, currency, timezone FROM sites WHERE id = $1;

-- name: custom_plans
-- The paged views below filter with "$n IS NULL OR ...": planned with the actual values, the
-- unused filters fold away and the matching index is chosen (a generic plan cannot).
SET LOCAL plan_cache_mode = force_custom_plan;

-- name: leads_page
-- The lead inbox: calls newest first with their session summary and conversion row.
-- Filters: $2 status, $3 intent action, $4 traffic source, $5 traffic medium, $6/$7 created
-- range, $8/$9 cursor, $11 one lead. Index: calls (site_id[, status], created_at DESC, id DESC).
SELECT c.id, c.source, c.status, c.created_at, c.updated_at, c.lead_score, c.intent_action,
       c.intent_target, c.intent_page_url, c.intent_phone_clicks, c.intent_whatsapp_clicks,
       c.intent_form_submits, c.intent_last_at, c.click_id_type, c.value_minor, c.currency,
       c.confirmed_at, c.cancelled_at, c.note, c.matched_session_id, c.matched_session_month,
       c.score_breakdown, c.lead_score_at_match,
       s.id AS session_id, s.entry_page, s.attribution_source, s.traffic_source, s.traffic_medium,
       s.utm_campaign, s.event_count, s.total_duration_sec, s.is_returning,
       s.previous_visit_count, s.device_type, s.consent_scopes, s.gclid, s.wbraid, s.gbraid,
       (SELECT count(*) FROM events e
        WHERE e.session_id = s.id AND e.session_month = s.created_month AND e.event_action = 'view') AS pages,
       (SELECT a.action_type FROM call_actions a WHERE a.call_id = c.id ORDER BY a.id DESC LIMIT 1) AS last_action,
       q.id AS conversion_id, q.status AS conversion_status, q.error_code AS conversion_error_code,
       q.error_category AS conversion_error_category, q.last_error AS conversion_last_error,
       q.next_retry_at AS conversion_next_retry_at, q.uploaded_at AS conversion_uploaded_at
FROM calls c
LEFT JOIN sessions s
       ON s.id = c.matched_session_id AND s.created_month = c.matched_session_month AND s.site_id = c.site_id
LEFT JOIN offline_conversion_queue q ON q.source_kind = 'call' AND q.source_id = c.id
WHERE c.site_id = $1
  AND ($2::text IS NULL OR c.status = $2)
  AND ($3::text IS NULL OR c.intent_action = $3)
  AND ($4::text IS NULL OR s.traffic_source = $4)
  AND ($5::text IS NULL OR s.traffic_medium = $5)
  AND ($6::timestamptz IS NULL OR c.created_at >= $6)
  AND ($7::timestamptz IS NULL OR c.created_at < $7)
  AND ($8::timestamptz IS NULL OR (c.created_at, c.id) < ($8, $9::uuid))
  AND ($11::uuid IS NULL OR c.id = $11)
ORDER BY c.created_at DESC, c.id DESC
LIMIT $10;

-- name: lead_top_event
-- The session's best-scoring intent event: the score of a click intent is the highest score
-- of its events, so this event's parts are the intent's "why".
SELECT e.created_at, e.url, e.event_category, e.event_action, e.event_value, e.metadata
FROM events e
-- events that made the intent carry its target in their metadata (the partition writes it)
WHERE e.session_id = $2 AND e.session_month = $3 AND e.site_id = $1 AND e.metadata ? 'intent_target'
ORDER BY CASE WHEN jsonb_typeof(e.metadata -> 'lead_score') = 'number'
              THEN (e.metadata ->> 'lead_score')::numeric END DESC NULLS LAST,
         e.created_at
LIMIT 1;

-- name: lead_sales
-- Sales made from a lead (through its conversation), with their conversion row.
SELECT sa.id, sa.status, sa.amount_minor, sa.currency, sa.occurred_at, sa.external_ref, sa.confirmed_at,
       q.status AS conversion_status, q.error_code AS conversion_error_code, q.last_error AS conversion_last_error
FROM conversations cv
JOIN sales sa ON sa.conversation_id = cv.id AND sa.site_id = cv.site_id
LEFT JOIN offline_conversion_queue q ON q.source_kind = 'sale' AND q.source_id = sa.id
WHERE cv.site_id = $1 AND cv.primary_call_id = $2
ORDER BY sa.occurred_at DESC, sa.id DESC;

-- name: lead_conversation
SELECT id, status FROM conversations WHERE site_id = $1 AND primary_call_id = $2;

-- name: sessions_page
-- Sessions of a site newest first (index sessions (site_id, created_at DESC, id DESC); the
-- created_month bound prunes monthly partitions). $9: one session.
SELECT s.id, s.created_month, s.created_at, s.last_activity_at, s.entry_page, s.exit_page,
       s.referrer_host, s.attribution_source, s.traffic_source, s.traffic_medium, s.utm_source,
       s.utm_medium, s.utm_campaign, s.utm_term, s.utm_content, s.device_type, s.device_os,
       s.browser, s.city, s.is_returning, s.previous_visit_count, s.event_count,
       s.total_duration_sec, s.total_active_seconds, s.max_scroll_percentage, s.cta_hover_count,
       s.lead_score, s.consent_scopes, s.gclid, s.wbraid, s.gbraid,
       -- a scalar subquery is probed per row through the (site_id, intent_stamp) key; an EXISTS
       -- may be planned as a hashed scan of every call of the site (each checked by RLS)
       (SELECT c.id FROM calls c WHERE c.site_id = s.site_id AND c.intent_stamp = 'session:' || s.id::text
        LIMIT 1) AS intent_id
FROM sessions s
WHERE s.site_id = $1
  AND ($2::timestamptz IS NULL
       OR (s.created_at >= $2 AND s.created_month >= date_trunc('month', $2 AT TIME ZONE 'UTC')::date))
  AND ($3::timestamptz IS NULL OR s.created_at < $3)
  AND ($4::timestamptz IS NULL OR ((s.created_at, s.id) < ($4, $5::uuid)
                                   AND s.created_month <= date_trunc('month', $4 AT TIME ZONE 'UTC')::date))
  AND ($6::text IS NULL OR s.traffic_source = $6)
  AND ($7::text IS NULL OR s.traffic_medium = $7)
  AND ($9::uuid IS NULL OR s.id = $9)
ORDER BY s.created_at DESC, s.id DESC
LIMIT $8;

-- name: session_events
-- The session's timeline (URLs and kinds; the metadata with fingerprints stays out).
SELECT e.created_at, e.url, e.event_category, e.event_action, e.event_label,
       CASE WHEN jsonb_typeof(e.metadata -> 'lead_score') = 'number'
            THEN (e.metadata ->> 'lead_score')::int END AS lead_score
FROM events e
WHERE e.site_id = $1 AND e.session_id = $2 AND e.session_month = $3
ORDER BY e.created_at, e.id
LIMIT $4;

-- name: traffic_counts
-- Sessions and intents per local day $3..$4 (zone $2), channel and attribution: closed days from
-- the rollup, the rest live (guarded function, migration 0008). A key may come twice: add up.
SELECT day, source, medium, attribution, sessions, intents FROM console_traffic_counts($1, $2, $3, $4);

-- name: traffic_outcomes
-- Sealed and sold leads of [$2, $3) per local day (zone $4), channel and attribution (live).
SELECT day, source, medium, attribution, sealed, sold, sealed_value_minor
FROM console_traffic_outcomes($1, $2, $3, $4);

-- name: rollup_sites
SELECT id, timezone FROM sites ORDER BY id;

-- name: rollup_forget_zone
-- A site's time zone changed: its days in the old zone are not read any more.
WITH gone AS (DELETE FROM console_traffic_daily WHERE site_id = $1 AND zone <> $2)
DELETE FROM console_traffic_days WHERE site_id = $1 AND zone <> $2;

-- name: rollup_done_days
SELECT day FROM console_traffic_days WHERE site_id = $1 AND zone = $2 AND day >= $3;

-- name: rollup_day
-- Stores closed local day $3 of site $1 in zone $2: sessions and intents per channel and
-- attribution, and the day's marker, in one statement (a concurrent run inserts nothing).
WITH bounds AS (
    SELECT ($3::date)::timestamp AT TIME ZONE $2 AS t0, ($3::date + 1)::timestamp AT TIME ZONE $2 AS t1
), s AS (
    SELECT x.* FROM bounds b, console_traffic_live_sessions($1, b.t0, b.t1, $2) x
), i AS (
    SELECT x.* FROM bounds b, console_traffic_live_intents($1, b.t0, b.t1, $2) x
), counts AS (
    SELECT coalesce(s.source, i.source) AS source, coalesce(s.medium, i.medium) AS medium,
           coalesce(s.attribution, i.attribution) AS attribution,
           coalesce(s.n, 0) AS sessions, coalesce(i.n, 0) AS intents
    FROM s FULL JOIN i ON i.source = s.source AND i.medium = s.medium AND i.attribution = s.attribution
), stored AS (
    INSERT INTO console_traffic_daily (site_id, zone, day, source, medium, attribution, sessions, intents)
    SELECT $1, $2, $3, source, medium, attribution, sessions, intents FROM counts
    ON CONFLICT DO NOTHING
    RETURNING 1
)
INSERT INTO console_traffic_days (site_id, zone, day) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING;

-- name: sales_page
-- Sales newest first (by occurred_at) with their conversion row and the lead they came from.
SELECT sa.id, sa.status, sa.amount_minor, sa.currency, sa.occurred_at, sa.external_ref,
       sa.confirmed_at, sa.created_at, sa.conversation_id, cv.primary_call_id AS lead_id,
       q.status AS conversion_status, q.error_code AS conversion_error_code,
       q.error_category AS conversion_error_category, q.last_error AS conversion_last_error
FROM sales sa
LEFT JOIN conversations cv ON cv.id = sa.conversation_id AND cv.site_id = sa.site_id
LEFT JOIN offline_conversion_queue q ON q.source_kind = 'sale' AND q.source_id = sa.id
WHERE sa.site_id = $1
  AND ($2::text IS NULL OR sa.status = $2)
  AND ($3::timestamptz IS NULL OR (sa.occurred_at, sa.id) < ($3, $4::uuid))
ORDER BY sa.occurred_at DESC, sa.id DESC
LIMIT $5;

-- name: site_alerts
-- A site's alerts: open ones first (newest first), then resolved ones when $2 is true.
SELECT a.id, a.kind, a.subject, a.summary, a.details, a.first_seen_at, a.last_seen_at, a.resolved_at
FROM watchtower_alerts a
WHERE a.site_id = $1 AND ($2 OR a.resolved_at IS NULL)
ORDER BY (a.resolved_at IS NULL) DESC, a.first_seen_at DESC, a.id DESC
LIMIT $3;
