-- Delivery a real user can rely on (issue 11) and destinations as plug-ins (issue 12):
-- the conversion's consent as recorded, pool-wide account state (a 429 pause, the batch size
-- Google accepts), pacing of gated-attempt ledger entries, and the one rule deciding when a
-- breaker admits a probe.

-- The session's consent scopes copied at enqueue time: what Google is told is what the
-- visitor said then (NULL: nothing was recorded, so no consent is claimed).
ALTER TABLE offline_conversion_queue ADD COLUMN consent_scopes text[];
UPDATE offline_conversion_queue q
SET consent_scopes = (SELECT s.consent_scopes FROM sessions s
                      WHERE s.site_id = q.site_id AND s.id = q.session_id
                      ORDER BY s.created_month DESC LIMIT 1)
WHERE q.session_id IS NOT NULL;

-- Per destination account, shared by every uploader of the pool (and kept across restarts and
-- resizes): a 429 with a retry delay pauses the account until paused_until; a request Google
-- found too large lowers max_batch for good.
CREATE TABLE provider_account_state (
    destination  text NOT NULL CHECK (destination IN ('google_ads', 'data_manager')),
    account_id   text NOT NULL,
    paused_until timestamptz,
    pause_reason text,
    max_batch    integer CHECK (max_batch >= 1),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (destination, account_id)
);
CREATE TRIGGER provider_account_state_updated_at BEFORE UPDATE ON provider_account_state
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- When a group's held-back rows were last ledgered as a gated attempt (at most one entry per
-- gate interval, so an open breaker does not flood the ledger).
ALTER TABLE provider_health_state ADD COLUMN gate_ledgered_at timestamptz;

-- The breaker's gate, in one place (the uploader's group choice and the probe take both use
-- it): SEND (closed), PROBE (open and its probe time has come, or half-open whose probe holder
-- went quiet for longer than p_stale_s), BREAKER_OPEN, PROBE_IN_PROGRESS. p_now is passed in
-- so a test can move the clock instead of sleeping.
CREATE FUNCTION provider_breaker_gate(
    p_state text, p_next_probe_at timestamptz, p_probe_holder text, p_probe_started_at timestamptz,
    p_now timestamptz, p_stale_s double precision
) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN p_state IS NULL OR p_state = 'CLOSED' THEN 'SEND'
        WHEN p_state = 'OPEN' AND (p_next_probe_at IS NULL OR p_next_probe_at <= p_now) THEN 'PROBE'
        WHEN p_state = 'OPEN' THEN 'BREAKER_OPEN'
        WHEN p_probe_holder IS NULL
             OR p_probe_started_at IS NULL
             OR p_probe_started_at < p_now - make_interval(secs => p_stale_s) THEN 'PROBE'
        ELSE 'PROBE_IN_PROGRESS'
    END
$$;

-- Destinations are plug-ins (opsmantik_stream/destinations/registry.py); the schema still names
-- them in CHECK lists so no row can name a destination this deployment cannot serve. A new
-- destination's one migration is `SELECT allow_destination('its_name');`: every CHECK list on a
-- `destination` / `default_destination` column then accepts it.
CREATE FUNCTION allow_destination(p_name text) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r record;
    v_values text[];
    v_changed integer := 0;
BEGIN
    IF p_name !~ '^[a-z][a-z0-9_]{1,39}$' THEN
        RAISE EXCEPTION 'destination names are lower-case identifiers: %', p_name;
    END IF;
    FOR r IN
        SELECT k.conrelid::regclass AS tbl, k.conname, a.attname AS col, pg_get_constraintdef(k.oid) AS def
        FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
        JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
        WHERE k.contype = 'c' AND cardinality(k.conkey) = 1 AND NOT c.relispartition
          AND a.attname IN ('destination', 'default_destination')
    LOOP
        SELECT array_agg(m[1] ORDER BY ord) INTO v_values
        FROM regexp_matches(r.def, '''([^'']*)''', 'g') WITH ORDINALITY AS t(m, ord);
        CONTINUE WHEN p_name = ANY (v_values);
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.tbl, r.conname);
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (%I IN (%s))', r.tbl, r.conname, r.col,
                       (SELECT string_agg(quote_literal(v), ', ') FROM unnest(v_values || p_name) AS v));
        v_changed := v_changed + 1;
    END LOOP;
    RETURN v_changed;
END
$$;
