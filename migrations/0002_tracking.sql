-- Tracking: sessions and events partitioned by UTC month (with DEFAULT partitions so no
-- row is ever rejected), the ingest idempotency ledger (billing authority), month usage,
-- invoice snapshots, reconciliation runs and dead letters.

CREATE TABLE sessions (
    id                    uuid NOT NULL,
    site_id               uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    -- always the server's UTC month of created_at (trigger below), never the client's
    created_month         date NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    last_activity_at      timestamptz NOT NULL DEFAULT now(),
    ip_address            inet,
    entry_page            text,
    exit_page             text,
    referrer_host         text,
    gclid                 text,
    wbraid                text,
    gbraid                text,
    other_click_ids       jsonb NOT NULL DEFAULT '{}'::jsonb,
    utm_source            text,
    utm_medium            text,
    utm_campaign          text,
    utm_term              text,
    utm_content           text,
    utm_adgroup           text,
    matchtype             text,
    ads_network           text,
    ads_placement         text,
    ads_adposition        text,
    ads_target_id         text,
    ads_feed_item_id      text,
    device_type           text,
    device_os             text,
    browser               text,
    browser_language      text,
    screen_width          integer,
    screen_height         integer,
    city                  text,
    district              text,
    fingerprint           text,
    attribution_source    text,
    traffic_source        text,
    traffic_medium        text,
    is_returning          boolean NOT NULL DEFAULT false,
    previous_visit_count  integer NOT NULL DEFAULT 0,
    event_count           integer NOT NULL DEFAULT 0,
    total_duration_sec    integer NOT NULL DEFAULT 0,
    total_active_seconds  integer NOT NULL DEFAULT 0,
    max_scroll_percentage integer NOT NULL DEFAULT 0,
    cta_hover_count       integer NOT NULL DEFAULT 0,
    lead_score            integer NOT NULL DEFAULT 0 CHECK (lead_score BETWEEN 0 AND 100),
    consent_scopes        text[] NOT NULL DEFAULT '{}',
    consent_updated_at    timestamptz,
    PRIMARY KEY (id, created_month)
) PARTITION BY RANGE (created_month);
CREATE TABLE sessions_default PARTITION OF sessions DEFAULT;
CREATE INDEX sessions_site_created_idx ON sessions (site_id, created_month, created_at);
CREATE INDEX sessions_site_fp_idx ON sessions (site_id, fingerprint, created_at DESC) WHERE fingerprint IS NOT NULL;

CREATE FUNCTION sessions_set_created_month() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.created_month := date_trunc('month', NEW.created_at AT TIME ZONE 'UTC')::date;
    RETURN NEW;
END
$$;
CREATE TRIGGER sessions_created_month BEFORE INSERT ON sessions
    FOR EACH ROW EXECUTE FUNCTION sessions_set_created_month();

CREATE TABLE events (
    id             uuid NOT NULL DEFAULT gen_random_uuid(),
    session_id     uuid NOT NULL,
    session_month  date NOT NULL,
    site_id        uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    url            text NOT NULL,
    event_category text NOT NULL,
    event_action   text NOT NULL,
    event_label    text,
    event_value    numeric,
    metadata       jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- the ingest_idempotency key that admitted this event (second line of dedupe)
    ingest_key     text,
    PRIMARY KEY (id, session_month),
    FOREIGN KEY (session_id, session_month) REFERENCES sessions (id, created_month)
        ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED
) PARTITION BY RANGE (session_month);
CREATE TABLE events_default PARTITION OF events DEFAULT;
CREATE INDEX events_session_idx ON events (session_id, session_month);
CREATE INDEX events_site_created_idx ON events (site_id, created_at);
CREATE UNIQUE INDEX events_ingest_key_uniq ON events (session_month, site_id, ingest_key) WHERE ingest_key IS NOT NULL;

-- Creates the monthly partitions [month, month + 1) of sessions and events unless they
-- exist. Skips (returns false) a month whose rows already sit in a DEFAULT partition, so
-- the call never fails; maintenance creates months ahead so that does not happen.
CREATE FUNCTION ensure_month_partitions(p_month date) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    m_start date := date_trunc('month', p_month)::date;
    m_end   date := (date_trunc('month', p_month) + interval '1 month')::date;
    suffix  text := to_char(m_start, 'YYYY_MM');
    created boolean := false;
BEGIN
    IF to_regclass('public.sessions_' || suffix) IS NULL THEN
        IF EXISTS (SELECT 1 FROM sessions_default WHERE created_month >= m_start AND created_month < m_end) THEN
            RETURN false;
        END IF;
        EXECUTE format('CREATE TABLE sessions_%s PARTITION OF sessions FOR VALUES FROM (%L) TO (%L)',
                       suffix, m_start, m_end);
        created := true;
    END IF;
    IF to_regclass('public.events_' || suffix) IS NULL THEN
        IF EXISTS (SELECT 1 FROM events_default WHERE session_month >= m_start AND session_month < m_end) THEN
            RETURN false;
        END IF;
        EXECUTE format('CREATE TABLE events_%s PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                       suffix, m_start, m_end);
        created := true;
    END IF;
    RETURN created;
END
$$;

SELECT ensure_month_partitions((date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => m))::date)
FROM generate_series(-1, 2) AS m;

-- The billing authority: one row per admitted (or quota-rejected) event.
CREATE TABLE ingest_idempotency (
    site_id             uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    idempotency_key     text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL DEFAULT now() + interval '90 days',
    year_month          text GENERATED ALWAYS AS (utc_year_month(created_at)) STORED,
    billable            boolean NOT NULL DEFAULT true,
    billing_state       text NOT NULL DEFAULT 'ACCEPTED'
        CHECK (billing_state IN ('ACCEPTED', 'OVERAGE', 'NOT_BILLABLE', 'REJECTED_QUOTA')),
    billing_reason      text,
    idempotency_version smallint NOT NULL DEFAULT 1,
    event_category      text,
    event_action        text,
    event_label         text,
    PRIMARY KEY (site_id, idempotency_key)
);
CREATE INDEX ingest_idempotency_billable_idx ON ingest_idempotency (site_id, year_month) WHERE billable;
CREATE INDEX ingest_idempotency_reason_idx ON ingest_idempotency (site_id, year_month, billing_reason);
CREATE INDEX ingest_idempotency_expires_idx ON ingest_idempotency (expires_at);

CREATE TABLE site_usage_monthly (
    site_id        uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    year_month     text NOT NULL CHECK (year_month ~ '^\d{4}-\d{2}$'),
    event_count    bigint NOT NULL DEFAULT 0 CHECK (event_count >= 0),
    overage_count  bigint NOT NULL DEFAULT 0 CHECK (overage_count >= 0),
    rejected_count bigint NOT NULL DEFAULT 0 CHECK (rejected_count >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, year_month)
);

CREATE TABLE invoice_snapshot (
    site_id       uuid NOT NULL REFERENCES sites (id) ON DELETE RESTRICT,
    year_month    text NOT NULL CHECK (year_month ~ '^\d{4}-\d{2}$'),
    event_count   bigint NOT NULL,
    overage_count bigint NOT NULL,
    figures       jsonb NOT NULL,
    figures_sha256 text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, year_month)
);
CREATE FUNCTION invoice_snapshot_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'invoice_snapshot is immutable' USING ERRCODE = 'check_violation';
END
$$;
CREATE TRIGGER invoice_snapshot_no_change BEFORE UPDATE OR DELETE ON invoice_snapshot
    FOR EACH ROW EXECUTE FUNCTION invoice_snapshot_immutable();

CREATE TABLE billing_reconciliation_runs (
    id           bigserial PRIMARY KEY,
    site_id      uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    year_month   text NOT NULL CHECK (year_month ~ '^\d{4}-\d{2}$'),
    ledger_count bigint NOT NULL,
    usage_count  bigint NOT NULL,
    drift        bigint NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dead_letters (
    id                bigserial PRIMARY KEY,
    created_at        timestamptz NOT NULL DEFAULT now(),
    site_id           uuid REFERENCES sites (id) ON DELETE SET NULL,
    source            text NOT NULL,
    stage             text NOT NULL,
    reason            text NOT NULL,
    payload           jsonb NOT NULL,
    status            text NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'REPLAYED', 'DISCARDED')),
    replay_count      integer NOT NULL DEFAULT 0,
    last_replay_at    timestamptz,
    last_replay_error text
);
CREATE INDEX dead_letters_pending_idx ON dead_letters (created_at) WHERE status = 'PENDING';
