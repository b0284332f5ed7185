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

-- Traffic for the console: sessions and intents per site-local day, channel (traffic source /
-- medium) and attribution. A closed day never changes (sessions and intents keep their time and
-- session), so the `traffic_rollup` job stores it once; only the open day (and any day not yet
-- rolled up) is counted from the raw rows. Sealed / sold figures change with operators' work and
-- are always counted live, from the few sealed or sold leads.
CREATE TABLE console_traffic_daily (
    site_id     uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    zone        text NOT NULL,
    day         date NOT NULL,
    source      text NOT NULL,
    medium      text NOT NULL,
    attribution text NOT NULL,
    sessions    bigint NOT NULL CHECK (sessions >= 0),
    intents     bigint NOT NULL CHECK (intents >= 0),
    PRIMARY KEY (site_id, zone, day, source, medium, attribution)
);
-- which days are rolled up (a day without traffic has a marker and no rows)
CREATE TABLE console_traffic_days (
    site_id     uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    zone        text NOT NULL,
    day         date NOT NULL,
    computed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, zone, day)
);
-- service tables: the API role has no grant; reads go through the guarded functions below
ALTER TABLE console_traffic_daily ENABLE ROW LEVEL SECURITY;
ALTER TABLE console_traffic_days ENABLE ROW LEVEL SECURITY;

-- Row-level security would call app_can() once per row (seconds over a month of sessions), so
-- the read functions run as the owner and check the caller's capability on the one site first:
-- a caller without site:read gets no rows, exactly as RLS would give. Live parts run through
-- EXECUTE so they are planned with the actual site and times (an index range scan for a day).

-- Sessions and intents per day for local days [p_first_day, p_last_day] in p_zone: rolled-up
-- days from the rollup, the rest (from the first day without one) counted live. Rows of one key
-- may come twice (a sessions row and an intents row); the caller adds them up.
CREATE FUNCTION console_traffic_counts(p_site uuid, p_zone text, p_first_day date, p_last_day date)
    RETURNS TABLE (day date, source text, medium text, attribution text, sessions bigint, intents bigint)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
DECLARE
    live_from date;
BEGIN
    IF NOT coalesce(app_can(p_site, 'site:read'), false) THEN
        RETURN;
    END IF;
    SELECT min(d::date) INTO live_from
    FROM generate_series(p_first_day, p_last_day, interval '1 day') AS d
    WHERE NOT EXISTS (SELECT 1 FROM console_traffic_days t
                      WHERE t.site_id = p_site AND t.zone = p_zone AND t.day = d::date);
    RETURN QUERY
        SELECT r.day, r.source, r.medium, r.attribution, r.sessions, r.intents
        FROM console_traffic_daily r
        WHERE r.site_id = p_site AND r.zone = p_zone AND r.day >= p_first_day
          AND r.day < coalesce(live_from, p_last_day + 1);
    IF live_from IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE $q$
        SELECT g.day, g.source, g.medium, g.attribution, g.n, 0::bigint
        FROM console_traffic_live_sessions($1, $2, $3, $4) g
        UNION ALL
        SELECT g.day, g.source, g.medium, g.attribution, 0::bigint, g.n
        FROM console_traffic_live_intents($1, $2, $3, $4) g
    $q$ USING p_site, (live_from::timestamp AT TIME ZONE p_zone),
              ((p_last_day + 1)::timestamp AT TIME ZONE p_zone), p_zone;
END
$fn$;

-- The raw counts of [p_from, p_to) (also what the rollup job stores for a closed day).
CREATE FUNCTION console_traffic_live_sessions(p_site uuid, p_from timestamptz, p_to timestamptz, p_zone text)
    RETURNS TABLE (day date, source text, medium text, attribution text, n bigint)
    LANGUAGE plpgsql STABLE AS $fn$
BEGIN
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

CREATE FUNCTION console_traffic_live_intents(p_site uuid, p_from timestamptz, p_to timestamptz, p_zone text)
    RETURNS TABLE (day date, source text, medium text, attribution text, n bigint)
    LANGUAGE plpgsql STABLE AS $fn$
BEGIN
    RETURN QUERY EXECUTE $q$
        SELECT g.day, coalesce(g.source, '(unknown)'), coalesce(g.medium, '(unknown)'),
               coalesce(g.attribution, '(unknown)'), g.n
        FROM (
            SELECT (c.created_at AT TIME ZONE $4)::date AS day, s.traffic_source AS source,
                   s.traffic_medium AS medium, s.attribution_source AS attribution, count(*)::bigint AS n
            FROM calls c
            LEFT JOIN sessions s
                   ON s.id = c.matched_session_id AND s.created_month = c.matched_session_month
                  AND s.site_id = c.site_id
            WHERE c.site_id = $1 AND c.created_at >= $2 AND c.created_at < $3
            GROUP BY s.traffic_source, s.traffic_medium, s.attribution_source, 1
        ) g
    $q$ USING p_site, p_from, p_to, p_zone;
END
$fn$;

-- Sealed and sold leads of [p_from, p_to) per day, channel and attribution, always live: a lead
-- is sold when it was sealed or a confirmed sale belongs to the conversation started from it.
-- Only sealed or sold leads are read (the (site, status, created_at) index and the sold set).
CREATE FUNCTION console_traffic_outcomes(p_site uuid, p_from timestamptz, p_to timestamptz, p_zone text)
    RETURNS TABLE (day date, source text, medium text, attribution text, sealed bigint, sold bigint,
                   sealed_value_minor bigint)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
BEGIN
    IF NOT coalesce(app_can(p_site, 'site:read'), false) THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE $q$
        WITH sold AS (
            SELECT DISTINCT cv.primary_call_id AS id
            FROM conversations cv
            JOIN sales sa ON sa.conversation_id = cv.id AND sa.site_id = cv.site_id AND sa.status = 'CONFIRMED'
            WHERE cv.site_id = $1 AND cv.primary_call_id IS NOT NULL
        ), picked AS (
            SELECT c.id, c.created_at, c.status, c.value_minor, c.matched_session_id, c.matched_session_month,
                   c.site_id
            FROM calls c
            WHERE c.site_id = $1 AND c.status = 'confirmed' AND c.created_at >= $2 AND c.created_at < $3
            UNION
            SELECT c.id, c.created_at, c.status, c.value_minor, c.matched_session_id, c.matched_session_month,
                   c.site_id
            FROM calls c JOIN sold ON sold.id = c.id
            WHERE c.site_id = $1 AND c.created_at >= $2 AND c.created_at < $3
        )
        SELECT g.day, coalesce(g.source, '(unknown)'), coalesce(g.medium, '(unknown)'),
               coalesce(g.attribution, '(unknown)'), g.sealed, g.sold, g.value
        FROM (
            SELECT (p.created_at AT TIME ZONE $4)::date AS day, s.traffic_source AS source,
                   s.traffic_medium AS medium, s.attribution_source AS attribution,
                   count(*) FILTER (WHERE p.status = 'confirmed')::bigint AS sealed,
                   count(*)::bigint AS sold,
                   coalesce(sum(p.value_minor) FILTER (WHERE p.status = 'confirmed'), 0)::bigint AS value
            FROM picked p
            LEFT JOIN sessions s
                   ON s.id = p.matched_session_id AND s.created_month = p.matched_session_month
                  AND s.site_id = p.site_id
            GROUP BY s.traffic_source, s.traffic_medium, s.attribution_source, 1
        ) g
    $q$ USING p_site, p_from, p_to, p_zone;
END
$fn$;

REVOKE ALL ON FUNCTION console_traffic_counts(uuid, text, date, date) FROM PUBLIC;
REVOKE ALL ON FUNCTION console_traffic_outcomes(uuid, timestamptz, timestamptz, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION console_traffic_live_sessions(uuid, timestamptz, timestamptz, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION console_traffic_live_intents(uuid, timestamptz, timestamptz, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION console_traffic_counts(uuid, text, date, date) TO opsmantik_api;
GRANT EXECUTE ON FUNCTION console_traffic_outcomes(uuid, timestamptz, timestamptz, text) TO opsmantik_api;
