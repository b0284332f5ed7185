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
