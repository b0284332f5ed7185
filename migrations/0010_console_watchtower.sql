-- The operator console (sign-in links and cookie sessions), watchtower alerts with their
-- webhook outbox, and the indexes behind the console's paged views.

-- One-time sign-in links printed by `opsmantik console link`. Only the SHA-256 of the link
-- token is kept; a link is used at most once (used_at) and only before it expires.
CREATE TABLE private.console_links (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_sha256 text NOT NULL UNIQUE CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz,
    CHECK (expires_at > created_at)
);
CREATE INDEX console_links_expires_idx ON private.console_links (expires_at);

-- A console session is an ordinary API token (so every console request runs with the
-- user's roles and RLS) that lives in an HttpOnly cookie and expires; ending or expiring
-- the session revokes the token.
CREATE TABLE private.console_sessions (
    token_id   uuid PRIMARY KEY REFERENCES private.api_tokens (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    via        text NOT NULL CHECK (via IN ('link', 'token')),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    ended_at   timestamptz,
    CHECK (expires_at > created_at)
);
CREATE INDEX console_sessions_live_idx ON private.console_sessions (expires_at) WHERE ended_at IS NULL;

-- Watchtower: watchtower_checks (a run log nothing used) gives way to one row per alert.
DROP TABLE watchtower_checks;

-- One row per raised condition: (kind, site, subject) has at most one open alert; it stays
-- open (last_seen_at moving) until the condition clears, then it is resolved for good and a
-- later recurrence opens a new row.
CREATE TABLE watchtower_alerts (
    id            bigserial PRIMARY KEY,
    -- NULL: a platform-wide condition (e.g. dead letters of no known site)
    site_id       uuid REFERENCES sites (id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('no_sessions', 'no_click_ids', 'dead_letters', 'billing_drift',
                                                'stuck_uploads', 'breaker_open', 'blocked_rows', 'queue_age')),
    -- what within the site: the destination of a breaker, else ''
    subject       text NOT NULL DEFAULT '',
    summary       text NOT NULL,
    details       jsonb NOT NULL DEFAULT '{}'::jsonb,
    first_seen_at timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL,
    resolved_at   timestamptz,
    CHECK (last_seen_at >= first_seen_at),
    CHECK (resolved_at IS NULL OR resolved_at >= first_seen_at)
);
CREATE UNIQUE INDEX watchtower_alerts_open_uniq
    ON watchtower_alerts (kind, coalesce(site_id, '00000000-0000-0000-0000-000000000000'::uuid), subject)
    WHERE resolved_at IS NULL;
CREATE INDEX watchtower_alerts_site_idx ON watchtower_alerts (site_id, first_seen_at DESC, id DESC);

-- The webhook outbox: exactly one message per raise and one per resolve (UNIQUE), written in
-- the same transaction as the alert change and delivered afterwards with back-off.
CREATE TABLE watchtower_notifications (
    id              bigserial PRIMARY KEY,
    alert_id        bigint NOT NULL REFERENCES watchtower_alerts (id) ON DELETE CASCADE,
    event           text NOT NULL CHECK (event IN ('raised', 'resolved')),
    status          text NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'DELIVERED', 'ABANDONED')),
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL,
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL,
    delivered_at    timestamptz,
    last_error      text,
    UNIQUE (alert_id, event),
    CHECK (status <> 'DELIVERED' OR delivered_at IS NOT NULL)
);
CREATE INDEX watchtower_notifications_due_idx ON watchtower_notifications (next_attempt_at, id)
    WHERE status = 'PENDING';

-- Members read their sites' alerts; platform-wide ones (site_id NULL) only platform admins
-- (app_can(NULL, ...) is true for them alone). The outbox stays service-only.
GRANT SELECT ON watchtower_alerts TO opsmantik_api;
ALTER TABLE watchtower_alerts ENABLE ROW LEVEL SECURITY;
CREATE POLICY watchtower_alerts_read ON watchtower_alerts FOR SELECT USING (app_can(site_id, 'site:read'));

-- Console views page by (created_at, id) newest first; these replace the (site, created_at)
-- indexes they extend, so writers keep the same number of indexes.
CREATE INDEX calls_site_created_id_idx ON calls (site_id, created_at DESC, id DESC);
DROP INDEX calls_site_created_idx;
CREATE INDEX calls_site_status_created_id_idx ON calls (site_id, status, created_at DESC, id DESC);
DROP INDEX calls_site_status_idx;
-- sessions of a site newest first across monthly partitions (the old index led with
-- created_month, which cannot order by created_at across months)
CREATE INDEX sessions_site_created_id_idx ON sessions (site_id, created_at DESC, id DESC);
DROP INDEX sessions_site_created_idx;
CREATE INDEX sales_site_occurred_id_idx ON sales (site_id, occurred_at DESC, id DESC);
DROP INDEX sales_site_occurred_idx;

-- Watchtower checks: click-id sessions per site by time (only sessions with a click id are
-- indexed), BLOCKED rows per site, and the latest reconciliation run per site and month.
CREATE INDEX sessions_site_click_created_idx ON sessions (site_id, created_at DESC)
    WHERE gclid IS NOT NULL OR wbraid IS NOT NULL OR gbraid IS NOT NULL;
CREATE INDEX ocq_blocked_site_idx ON offline_conversion_queue (site_id) WHERE status = 'BLOCKED';
CREATE INDEX billing_reconciliation_runs_site_idx ON billing_reconciliation_runs (site_id, year_month, id DESC);

-- Traffic aggregates for the console. Row-level security would call app_can() once per row
-- (seconds over a month of sessions), so these run as the owner and check the caller's
-- capability on the one site first: a caller without site:read gets no rows, exactly as RLS
-- would give. The query runs through EXECUTE so it is planned with the actual site and dates
-- (a 7-day window is an index range scan, a generic plan would scan the month).
CREATE FUNCTION console_traffic_sessions(p_site uuid, p_from timestamptz, p_to timestamptz, p_zone text)
    RETURNS TABLE (day date, source text, medium text, attribution text, sessions bigint)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
BEGIN
    IF NOT coalesce(app_can(p_site, 'site:read'), false) THEN
        RETURN;
    END IF;
    -- grouped by the plain columns (their statistics make the planner pick a small hash
    -- aggregate); the "(unknown)" labels are applied to the few groups afterwards
    RETURN QUERY EXECUTE $q$
        SELECT g.day, coalesce(g.source, '(unknown)'), coalesce(g.medium, '(unknown)'),
               coalesce(g.attribution, '(unknown)'), g.n
        FROM (
            SELECT (s.created_at AT TIME ZONE $4)::date AS day, s.traffic_source AS source,
                   s.traffic_medium AS medium, s.attribution_source AS attribution, count(*)::bigint AS n
            FROM sessions s
            WHERE s.site_id = $1 AND s.created_at >= $2 AND s.created_at < $3
              AND s.created_month >= date_trunc('month', $2 AT TIME ZONE 'UTC')::date
            GROUP BY s.traffic_source, s.traffic_medium, s.attribution_source, 1
        ) g
    $q$ USING p_site, p_from, p_to, p_zone;
END
$fn$;

-- A lead counts as sold when it was sealed, or a confirmed sale belongs to the conversation
-- that started from it (the site's sold leads are collected once and hash-joined).
CREATE FUNCTION console_traffic_leads(p_site uuid, p_from timestamptz, p_to timestamptz, p_zone text)
    RETURNS TABLE (day date, source text, medium text, attribution text, intents bigint, sealed bigint,
                   sold bigint, sealed_value_minor bigint)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
BEGIN
    IF NOT coalesce(app_can(p_site, 'site:read'), false) THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE $q$
        SELECT g.day, coalesce(g.source, '(unknown)'), coalesce(g.medium, '(unknown)'),
               coalesce(g.attribution, '(unknown)'), g.intents, g.sealed, g.sold, g.sealed_value_minor
        FROM (
            SELECT (c.created_at AT TIME ZONE $4)::date AS day, s.traffic_source AS source,
                   s.traffic_medium AS medium, s.attribution_source AS attribution,
                   count(*)::bigint AS intents,
                   count(*) FILTER (WHERE c.status = 'confirmed')::bigint AS sealed,
                   count(*) FILTER (WHERE c.status = 'confirmed' OR sold.call_id IS NOT NULL)::bigint AS sold,
                   coalesce(sum(c.value_minor) FILTER (WHERE c.status = 'confirmed'), 0)::bigint
                       AS sealed_value_minor
            FROM calls c
            LEFT JOIN sessions s
                   ON s.id = c.matched_session_id AND s.created_month = c.matched_session_month
                  AND s.site_id = c.site_id
            LEFT JOIN (
                SELECT DISTINCT cv.primary_call_id AS call_id
                FROM conversations cv
                JOIN sales sa ON sa.conversation_id = cv.id AND sa.site_id = cv.site_id AND sa.status = 'CONFIRMED'
                WHERE cv.site_id = $1 AND cv.primary_call_id IS NOT NULL
            ) sold ON sold.call_id = c.id
            WHERE c.site_id = $1 AND c.created_at >= $2 AND c.created_at < $3
            GROUP BY s.traffic_source, s.traffic_medium, s.attribution_source, 1
        ) g
    $q$ USING p_site, p_from, p_to, p_zone;
END
$fn$;
REVOKE ALL ON FUNCTION console_traffic_sessions(uuid, timestamptz, timestamptz, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION console_traffic_leads(uuid, timestamptz, timestamptz, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION console_traffic_sessions(uuid, timestamptz, timestamptz, text) TO opsmantik_api;
GRANT EXECUTE ON FUNCTION console_traffic_leads(uuid, timestamptz, timestamptz, text) TO opsmantik_api;
