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
    -- the claim that moved the row to PROCESSING (= provider_upload_attempts.batch_id):
    -- finishing is guarded by it, and the rescue job finds the ledger rows of a lost claim
    claim_batch_id      uuid,
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
CREATE INDEX ocq_claim_batch_idx ON offline_conversion_queue (claim_batch_id) WHERE claim_batch_id IS NOT NULL;

CREATE TABLE provider_health_state (
    site_id       uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    destination   text NOT NULL CHECK (destination IN ('google_ads', 'data_manager')),
    state         text NOT NULL DEFAULT 'CLOSED' CHECK (state IN ('CLOSED', 'OPEN', 'HALF_OPEN')),
    failure_count integer NOT NULL DEFAULT 0 CHECK (failure_count >= 0),
    opened_at     timestamptz,
    next_probe_at timestamptz,
    -- pybreaker's half-open success counter
    success_count integer NOT NULL DEFAULT 0 CHECK (success_count >= 0),
    -- the uploader running the single half-open probe batch, and since when
    probe_holder  text,
    probe_started_at timestamptz,
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
-- STARTED rows are searched for a missing FINISHED twin (crashed attempts)
CREATE INDEX provider_upload_attempts_started_idx ON provider_upload_attempts (created_at) WHERE phase = 'STARTED';

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

-- Take an upload lease for (site, destination account) when fewer than the limits are live.
-- Advisory locks serialise the decision per site, then per account (always in that order, so
-- two callers never wait on each other in a cycle); expired leases of crashed holders are
-- removed first. Returns the lease id, or NULL when a limit is reached.
CREATE FUNCTION acquire_provider_lease(
    p_site uuid, p_destination text, p_account text, p_holder text,
    p_ttl_s double precision, p_site_limit integer, p_account_limit integer
) RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('opsm-lease-site:' || p_site::text, 0));
    PERFORM pg_advisory_xact_lock(hashtextextended('opsm-lease-acct:' || p_destination || ':' || p_account, 0));
    DELETE FROM provider_leases
    WHERE expires_at <= now()
      AND (site_id = p_site OR (destination = p_destination AND account_id = p_account));
    IF (SELECT count(*) FROM provider_leases WHERE site_id = p_site) >= p_site_limit THEN
        RETURN NULL;
    END IF;
    IF (SELECT count(*) FROM provider_leases
        WHERE destination = p_destination AND account_id = p_account) >= p_account_limit THEN
        RETURN NULL;
    END IF;
    INSERT INTO provider_leases (site_id, destination, account_id, holder, expires_at)
    VALUES (p_site, p_destination, p_account, p_holder, now() + make_interval(secs => p_ttl_s))
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;
