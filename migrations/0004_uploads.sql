-- Offline conversion uploads: the queue, per-(site, destination) circuit state, leases,
-- the attempt ledger and counters.

CREATE TABLE offline_conversion_queue (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id             uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    destination         text NOT NULL CHECK (destination IN ('google_ads', 'data_manager')),
    source_kind         text NOT NULL CHECK (source_kind IN ('sale', 'call')),
    source_id           uuid NOT NULL,
    session_id          uuid,
    -- deterministic: hash of (site, source kind, source id); Google dedupes on it
    order_id            text NOT NULL,
    gclid               text,
    wbraid              text,
    gbraid              text,
    conversion_time     timestamptz NOT NULL,
    value_minor         bigint NOT NULL CHECK (value_minor >= 0),
    currency            text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    phone_sha256        text,
    status              text NOT NULL DEFAULT 'QUEUED'
        CHECK (status IN ('QUEUED', 'PROCESSING', 'COMPLETED', 'RETRY', 'FAILED', 'BLOCKED')),
    attempt             integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    next_retry_at       timestamptz NOT NULL DEFAULT now(),
    claimed_by          text,
    claimed_at          timestamptz,
    uploaded_at         timestamptz,
    provider_request_id text,
    last_error          text,
    error_code          text,
    error_category      text CHECK (error_category IN ('VALIDATION', 'AUTH', 'TRANSIENT', 'RATE_LIMIT', 'CONFIG')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (site_id, order_id),
    UNIQUE (source_kind, source_id),
    -- exactly one click id is uploaded; at least one must exist to enqueue
    CHECK (num_nonnulls(gclid, wbraid, gbraid) >= 1),
    CHECK (status <> 'PROCESSING' OR (claimed_by IS NOT NULL AND claimed_at IS NOT NULL)),
    CHECK (status <> 'COMPLETED' OR uploaded_at IS NOT NULL)
);
CREATE TRIGGER offline_conversion_queue_updated_at BEFORE UPDATE ON offline_conversion_queue
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
-- one pending conversion per (site, session)
CREATE UNIQUE INDEX ocq_one_pending_per_session ON offline_conversion_queue (site_id, session_id)
    WHERE session_id IS NOT NULL AND status IN ('QUEUED', 'PROCESSING', 'RETRY');
CREATE INDEX ocq_eligible_idx ON offline_conversion_queue (site_id, destination, next_retry_at)
    WHERE status IN ('QUEUED', 'RETRY');
CREATE INDEX ocq_processing_idx ON offline_conversion_queue (claimed_at) WHERE status = 'PROCESSING';
CREATE INDEX ocq_site_status_idx ON offline_conversion_queue (site_id, status);

CREATE TABLE provider_health_state (
    site_id       uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    destination   text NOT NULL CHECK (destination IN ('google_ads', 'data_manager')),
    state         text NOT NULL DEFAULT 'CLOSED' CHECK (state IN ('CLOSED', 'OPEN', 'HALF_OPEN')),
    failure_count integer NOT NULL DEFAULT 0 CHECK (failure_count >= 0),
    opened_at     timestamptz,
    next_probe_at timestamptz,
    last_error    text,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, destination)
);

CREATE TABLE provider_leases (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id     uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    destination text NOT NULL CHECK (destination IN ('google_ads', 'data_manager')),
    account_id  text NOT NULL,
    holder      text NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    CHECK (expires_at > acquired_at)
);
CREATE INDEX provider_leases_site_idx ON provider_leases (site_id, expires_at);
CREATE INDEX provider_leases_account_idx ON provider_leases (destination, account_id, expires_at);

CREATE TABLE provider_upload_attempts (
    id              bigserial PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now(),
    batch_id        uuid NOT NULL,
    site_id         uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    destination     text NOT NULL CHECK (destination IN ('google_ads', 'data_manager')),
    uploader_id     text NOT NULL,
    attempt         integer NOT NULL,
    phase           text NOT NULL CHECK (phase IN ('STARTED', 'FINISHED')),
    row_count       integer NOT NULL DEFAULT 0,
    completed_count integer NOT NULL DEFAULT 0,
    failed_count    integer NOT NULL DEFAULT 0,
    retry_count     integer NOT NULL DEFAULT 0,
    blocked_count   integer NOT NULL DEFAULT 0,
    http_status     integer,
    request_id      text,
    error_code      text,
    error_category  text CHECK (error_category IN ('VALIDATION', 'AUTH', 'TRANSIENT', 'RATE_LIMIT', 'CONFIG')),
    duration_ms     integer,
    breaker_state   text CHECK (breaker_state IN ('CLOSED', 'OPEN', 'HALF_OPEN')),
    UNIQUE (batch_id, phase)
);
CREATE INDEX provider_upload_attempts_site_idx ON provider_upload_attempts (site_id, destination, created_at DESC);

CREATE TABLE provider_upload_metrics (
    site_id         uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    destination     text NOT NULL CHECK (destination IN ('google_ads', 'data_manager')),
    attempts_total  bigint NOT NULL DEFAULT 0,
    completed_total bigint NOT NULL DEFAULT 0,
    failed_total    bigint NOT NULL DEFAULT 0,
    retry_total     bigint NOT NULL DEFAULT 0,
    blocked_total   bigint NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, destination)
);
