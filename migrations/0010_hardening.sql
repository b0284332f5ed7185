-- Hardening (issue 14): least privilege for the gateway, tighter row-level security within a
-- site, token expiry, and a per-site uniqueness for queued conversions.
--
-- Runs as whoever owns the schema (opsmantik_owner after the role bootstrap in
-- opsmantik_stream/sql/roles.sql; a superuser on an older installation). It names the
-- gateway and API roles, never the owner, so it works for either.

-- 1. The gateway's role. The bootstrap creates it; a migrator that may create roles creates
--    it here too (tests migrating a bare database as a superuser).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'opsmantik_gateway') THEN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND (rolsuper OR rolcreaterole)) THEN
            RAISE EXCEPTION 'role opsmantik_gateway is missing: create it first (docs/security.md, "External PostgreSQL")';
        END IF;
        CREATE ROLE opsmantik_gateway LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOINHERIT;
    END IF;
END
$$;

-- 2. What the gateway's service connection may do, and nothing more. It is not a table
--    owner, so row-level security applies to it: each readable table gets a policy for it.
GRANT USAGE ON SCHEMA public, private TO opsmantik_gateway;
-- token resolution (hashes only), the identity key that signs API identities, call-event
-- signing secrets
GRANT SELECT ON private.api_tokens, private.identity_key, private.site_secrets TO opsmantik_gateway;
GRANT UPDATE (last_used_at) ON private.api_tokens TO opsmantik_gateway;
-- sites and memberships (principals, ingest admission, call-event site look-up)
GRANT SELECT ON sites, site_origins, site_plans, site_members, users, role_capabilities TO opsmantik_gateway;
-- /metrics and /ops: counts by state (queue, dead letters: see 2b), the ledger's recent rows
GRANT SELECT (site_id, created_at) ON ingest_idempotency TO opsmantik_gateway;
GRANT SELECT ON provider_upload_metrics TO opsmantik_gateway;
-- /metrics reads the last privacy_retention run's summary from the runtime state
GRANT SELECT ON runtime_state TO opsmantik_gateway;
-- credential writes and the breaker reset that goes with them, audited. (Upserting reads
-- EXCLUDED.sealed, which needs SELECT on it: the ciphertext opens only with the private key,
-- which the gateway never has.)
GRANT SELECT, INSERT, UPDATE ON provider_health_state TO opsmantik_gateway;
GRANT SELECT, INSERT, UPDATE ON provider_credentials TO opsmantik_gateway;
GRANT INSERT ON audit_log TO opsmantik_gateway;
GRANT SELECT (id) ON audit_log TO opsmantik_gateway;
GRANT USAGE ON SEQUENCE audit_log_id_seq TO opsmantik_gateway;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['sites', 'site_origins', 'site_plans', 'site_members', 'users', 'calls',
                             'offline_conversion_queue', 'dead_letters', 'ingest_idempotency',
                             'provider_upload_metrics', 'provider_health_state', 'provider_credentials',
                             'audit_log'] LOOP
        EXECUTE format('CREATE POLICY %I ON %I FOR SELECT TO opsmantik_gateway USING (true)', t || '_gateway_read', t);
    END LOOP;
END
$$;
CREATE POLICY provider_health_state_gateway_insert ON provider_health_state FOR INSERT TO opsmantik_gateway
    WITH CHECK (true);
CREATE POLICY provider_health_state_gateway_update ON provider_health_state FOR UPDATE TO opsmantik_gateway
    USING (true) WITH CHECK (true);
CREATE POLICY provider_credentials_gateway_insert ON provider_credentials FOR INSERT TO opsmantik_gateway
    WITH CHECK (true);
CREATE POLICY provider_credentials_gateway_update ON provider_credentials FOR UPDATE TO opsmantik_gateway
    USING (true) WITH CHECK (true);
-- the gateway audits what it does on a site (credentials, privacy), never without a site
CREATE POLICY audit_log_gateway_insert ON audit_log FOR INSERT TO opsmantik_gateway
    WITH CHECK (site_id IS NOT NULL);

-- 2b. Privacy (migration 0007): the signed consent endpoint and the operators' erase run on
--     the gateway's service connection. They get the reads that find a data subject's rows
--     and UPDATE on exactly the columns consent sets and erase anonymises; nothing else of
--     these tables is writable by the gateway (no values, states, ids or schema).
GRANT SELECT ON private.privacy_key TO opsmantik_gateway;
GRANT SELECT ON sessions, events, calls, call_actions, conversations, conversation_links, sales,
    offline_conversion_queue, dead_letters TO opsmantik_gateway;
GRANT UPDATE (consent_scopes, consent_updated_at, fingerprint, ip_address, gclid, wbraid, gbraid,
    other_click_ids, city, district, device_type, device_os, browser, browser_language, screen_width,
    screen_height, entry_page, exit_page, anonymized_at) ON sessions TO opsmantik_gateway;
GRANT UPDATE (url, event_label, metadata, anonymized_at) ON events TO opsmantik_gateway;
GRANT UPDATE (phone_number, matched_fingerprint, click_id, click_id_type, note, intent_target,
    intent_page_url, anonymized_at) ON calls TO opsmantik_gateway;
GRANT UPDATE (revert_snapshot) ON call_actions TO opsmantik_gateway;
GRANT UPDATE (note, primary_source) ON conversations TO opsmantik_gateway;
GRANT UPDATE (notes) ON sales TO opsmantik_gateway;
-- voiding a conversion (FAILED with the reason) and dropping its click ids
GRANT UPDATE (status, error_code, error_category, last_error, gclid, wbraid, gbraid, phone_sha256,
    anonymized_at) ON offline_conversion_queue TO opsmantik_gateway;
GRANT UPDATE (payload, redacted_at, status) ON dead_letters TO opsmantik_gateway;
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['sessions', 'events', 'call_actions', 'conversations', 'conversation_links',
                             'sales'] LOOP
        EXECUTE format('CREATE POLICY %I ON %I FOR SELECT TO opsmantik_gateway USING (true)', t || '_gateway_read', t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['sessions', 'events', 'calls', 'call_actions', 'conversations', 'sales',
                             'offline_conversion_queue', 'dead_letters'] LOOP
        EXECUTE format('CREATE POLICY %I ON %I FOR UPDATE TO opsmantik_gateway USING (true) WITH CHECK (true)',
                       t || '_gateway_update', t);
    END LOOP;
END
$$;

-- 3. Within a site, the API role (an operator's request) may no longer:
-- 3a. change the site's plan (monthly_limit, soft limit, rate limit): plans are set by the
--     platform (CLI), not by the tenant it limits
REVOKE INSERT, UPDATE, DELETE ON site_plans FROM opsmantik_api;
DROP POLICY site_plans_insert ON site_plans;
DROP POLICY site_plans_update ON site_plans;
DROP POLICY site_plans_delete ON site_plans;
-- ... nor rewrite the site's identity or ingest key; it keeps its descriptive settings
REVOKE UPDATE ON sites FROM opsmantik_api;
GRANT UPDATE (name, domain, currency, timezone, default_destination, config) ON sites TO opsmantik_api;

-- 3b. write audit entries without a site, or in someone else's name
DROP POLICY audit_log_insert ON audit_log;
CREATE POLICY audit_log_insert ON audit_log FOR INSERT TO opsmantik_api
    WITH CHECK (
        site_id IS NOT NULL
        AND app_can(site_id, 'site:read')
        AND actor_type = 'user'
        AND actor_id = app_user_id()::text
    );

-- 3c. insert or reshape queued conversions at will. A row the API role writes must be the
--     conversion of a confirmed sale or sealed call of the same site, with its value, its
--     currency, its time, its deterministic order id and the click id of its session (with
--     marketing consent), fresh (QUEUED, no attempt, unclaimed). The function runs with the
--     caller's rights, so it sees only what row-level security lets the caller see.
CREATE FUNCTION ocq_matches_source(q offline_conversion_queue) RETURNS boolean
    LANGUAGE plpgsql STABLE SET search_path = public, pg_temp AS $$
DECLARE
    src_value bigint;
    src_currency text;
    src_time timestamptz;
    s record;
BEGIN
    IF q.source_kind = 'sale' THEN
        SELECT amount_minor, currency, occurred_at INTO src_value, src_currency, src_time
        FROM sales WHERE id = q.source_id AND site_id = q.site_id AND status = 'CONFIRMED';
    ELSE
        SELECT value_minor, currency, confirmed_at INTO src_value, src_currency, src_time
        FROM calls WHERE id = q.source_id AND site_id = q.site_id AND status = 'confirmed';
    END IF;
    IF NOT FOUND OR src_value IS DISTINCT FROM q.value_minor OR src_currency IS DISTINCT FROM q.currency
       OR src_time IS DISTINCT FROM q.conversion_time THEN
        RETURN false;
    END IF;
    IF q.order_id IS DISTINCT FROM
       'om_' || left(encode(sha256(convert_to(q.site_id::text || '|' || q.source_kind || '|' || q.source_id::text,
                                              'UTF8')), 'hex'), 32) THEN
        RETURN false;
    END IF;
    SELECT gclid, wbraid, gbraid, consent_scopes INTO s
    FROM sessions WHERE id = q.session_id AND site_id = q.site_id
    ORDER BY created_month DESC LIMIT 1;
    IF NOT FOUND OR NOT ('marketing' = ANY (s.consent_scopes)) THEN
        RETURN false;
    END IF;
    RETURN (q.gclid IS NULL OR q.gclid = btrim(s.gclid))
       AND (q.wbraid IS NULL OR q.wbraid = btrim(s.wbraid))
       AND (q.gbraid IS NULL OR q.gbraid = btrim(s.gbraid));
END
$$;

CREATE FUNCTION ocq_api_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_user <> 'opsmantik_api' THEN
        RETURN NEW;  -- partitions, uploaders and jobs run as the owner
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'QUEUED' OR NEW.attempt <> 0 OR NEW.claimed_by IS NOT NULL OR NEW.claimed_at IS NOT NULL
           OR NEW.claim_batch_id IS NOT NULL OR NEW.uploaded_at IS NOT NULL OR NEW.provider_request_id IS NOT NULL
           OR NOT ocq_matches_source(NEW) THEN
            RAISE EXCEPTION 'offline_conversion_queue: not the conversion of a confirmed source of this site'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN NEW;
    END IF;
    -- UPDATE: operators requeue, void and revive; only uploaders claim and complete
    IF NEW.site_id IS DISTINCT FROM OLD.site_id OR NEW.source_kind IS DISTINCT FROM OLD.source_kind
       OR NEW.source_id IS DISTINCT FROM OLD.source_id OR NEW.order_id IS DISTINCT FROM OLD.order_id
       OR NEW.session_id IS DISTINCT FROM OLD.session_id OR NEW.created_at IS DISTINCT FROM OLD.created_at
       OR NEW.uploaded_at IS DISTINCT FROM OLD.uploaded_at
       OR NEW.provider_request_id IS DISTINCT FROM OLD.provider_request_id
       OR (NEW.claim_batch_id IS NOT NULL AND NEW.claim_batch_id IS DISTINCT FROM OLD.claim_batch_id)
       OR (NEW.claimed_by IS NOT NULL AND NEW.claimed_by IS DISTINCT FROM OLD.claimed_by)
       OR (NEW.status IN ('PROCESSING', 'COMPLETED') AND NEW.status IS DISTINCT FROM OLD.status) THEN
        RAISE EXCEPTION 'offline_conversion_queue: column not writable by operators'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (NEW.gclid, NEW.wbraid, NEW.gbraid, NEW.value_minor, NEW.currency, NEW.conversion_time)
       IS DISTINCT FROM (OLD.gclid, OLD.wbraid, OLD.gbraid, OLD.value_minor, OLD.currency, OLD.conversion_time)
       AND NOT ocq_matches_source(NEW) THEN
        RAISE EXCEPTION 'offline_conversion_queue: not the conversion of a confirmed source of this site'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER ocq_api_guard BEFORE INSERT OR UPDATE ON offline_conversion_queue
    FOR EACH ROW EXECUTE FUNCTION ocq_api_guard();

-- 4. A conversion is unique per source within its site (a source id of another tenant can
--    neither block nor reveal anything here).
ALTER TABLE offline_conversion_queue DROP CONSTRAINT offline_conversion_queue_source_kind_source_id_key;
ALTER TABLE offline_conversion_queue ADD CONSTRAINT offline_conversion_queue_site_source_key
    UNIQUE (site_id, source_kind, source_id);

-- 5. Bearer tokens may expire; an expired or revoked token resolves to nobody.
ALTER TABLE private.api_tokens ADD COLUMN expires_at timestamptz;
ALTER TABLE private.api_tokens ADD CONSTRAINT api_tokens_expiry_after_creation
    CHECK (expires_at IS NULL OR expires_at > created_at);
CREATE INDEX api_tokens_user_idx ON private.api_tokens (user_id, created_at);

-- 6. Two runs of the partitions job at once (the Maintenance loop and `POST /api/jobs`, or
--    the CLI) raced between the existence check and CREATE TABLE, and the loser failed with
--    "relation already exists". One transaction-level lock per call serialises them: the
--    second caller then finds the partitions and creates nothing.
CREATE OR REPLACE FUNCTION ensure_month_partitions(p_month date) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    m_start date := date_trunc('month', p_month)::date;
    m_end   date := (date_trunc('month', p_month) + interval '1 month')::date;
    suffix  text := to_char(m_start, 'YYYY_MM');
    created boolean := false;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('opsm-month-partitions', 0));
    IF to_regclass('public.sessions_' || suffix) IS NULL THEN
        IF EXISTS (SELECT 1 FROM sessions_default WHERE created_month >= m_start AND created_month < m_end) THEN
            RETURN false;
        END IF;
        EXECUTE format('CREATE TABLE sessions_%s PARTITION OF sessions FOR VALUES FROM (%L) TO (%L) '
                       'WITH (fillfactor = 70)', suffix, m_start, m_end);
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

-- 7. The console (migration 0008) signs users in and out on the gateway's service
--    connection: it reads and stamps one-time links, opens a session with its own API token
--    and ends it (revoking that token), and audits sign-in and sign-out, which belong to a
--    user and no site. /ops and /metrics read the open watchtower alerts of every site.
GRANT SELECT, INSERT ON private.console_links, private.console_sessions TO opsmantik_gateway;
GRANT UPDATE (used_at) ON private.console_links TO opsmantik_gateway;
GRANT UPDATE (ended_at) ON private.console_sessions TO opsmantik_gateway;
GRANT INSERT (user_id, token_sha256, label) ON private.api_tokens TO opsmantik_gateway;
GRANT UPDATE (revoked_at) ON private.api_tokens TO opsmantik_gateway;
GRANT SELECT ON watchtower_alerts TO opsmantik_gateway;
CREATE POLICY watchtower_alerts_gateway_read ON watchtower_alerts FOR SELECT TO opsmantik_gateway USING (true);
DROP POLICY audit_log_gateway_insert ON audit_log;
CREATE POLICY audit_log_gateway_insert ON audit_log FOR INSERT TO opsmantik_gateway
    WITH CHECK (site_id IS NOT NULL
                OR (action LIKE 'console.%' AND resource_type = 'user' AND actor_id = resource_id));
-- The console's sign-out revokes its session's token, so the gateway may set revoked_at;
-- a revoked token stays revoked for every role (nothing un-revokes, or moves the date).
CREATE FUNCTION api_tokens_keep_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at THEN
        RAISE EXCEPTION 'a revoked token stays revoked' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER api_tokens_keep_revoked BEFORE UPDATE OF revoked_at ON private.api_tokens
    FOR EACH ROW EXECUTE FUNCTION api_tokens_keep_revoked();

-- 6. Delivery (migration 0009) on the gateway's service connection: choosing a site's
--    destination (`PUT /api/sites/{site}/destination`, and the credentials write that makes
--    the only destination with credentials the site's) updates that one column of the site;
--    status and /metrics read the pool-wide account pauses.
GRANT UPDATE (default_destination) ON sites TO opsmantik_gateway;
CREATE POLICY sites_gateway_destination ON sites FOR UPDATE TO opsmantik_gateway USING (true) WITH CHECK (true);
GRANT SELECT ON provider_account_state TO opsmantik_gateway;
