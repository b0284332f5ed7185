-- Runtime state that survives actor restarts (the Registry's routing table), watchtower
-- checks, and row-level security for every tenant table.

CREATE TABLE runtime_state (
    key        text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE watchtower_checks (
    id         bigserial PRIMARY KEY,
    check_name text NOT NULL,
    ok         boolean NOT NULL,
    details    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX watchtower_checks_name_idx ON watchtower_checks (check_name, created_at DESC);

-- The API role may use the public schema; RLS decides which rows. The private schema
-- (secrets, token hashes) and service tables stay out of its reach.
GRANT USAGE ON SCHEMA public TO opsmantik_api;
GRANT SELECT ON sites, site_origins, site_plans, site_members, role_capabilities, users,
    sessions, events, ingest_idempotency, site_usage_monthly, invoice_snapshot,
    calls, call_actions, conversations, conversation_links, sales,
    offline_conversion_queue, provider_health_state, provider_upload_attempts,
    provider_upload_metrics, dead_letters TO opsmantik_api;
GRANT UPDATE ON sites, site_plans TO opsmantik_api;
GRANT INSERT, UPDATE ON site_origins, calls, conversations, conversation_links, sales,
    offline_conversion_queue, provider_health_state TO opsmantik_api;
GRANT INSERT ON call_actions, audit_log TO opsmantik_api;
GRANT DELETE ON site_origins TO opsmantik_api;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO opsmantik_api;

ALTER TABLE sites ENABLE ROW LEVEL SECURITY;
CREATE POLICY sites_read ON sites FOR SELECT USING (app_can(id, 'site:read'));
CREATE POLICY sites_write ON sites FOR UPDATE USING (app_can(id, 'site:write')) WITH CHECK (app_can(id, 'site:write'));

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
CREATE POLICY users_self ON users FOR SELECT USING (id = app_user_id());

ALTER TABLE site_members ENABLE ROW LEVEL SECURITY;
CREATE POLICY site_members_read ON site_members FOR SELECT
    USING (user_id = app_user_id() OR app_can(site_id, 'members:manage'));

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
CREATE POLICY audit_log_insert ON audit_log FOR INSERT WITH CHECK (site_id IS NULL OR app_can(site_id, 'site:read'));

-- Tables readable by any member and writable by a capability.
DO $$
DECLARE
    spec text[];
    specs text[][] := ARRAY[
        -- table, write capability ('' = no API writes)
        ARRAY['site_origins', 'site:write'],
        ARRAY['site_plans', 'site:write'],
        ARRAY['sessions', ''],
        ARRAY['events', ''],
        ARRAY['ingest_idempotency', ''],
        ARRAY['site_usage_monthly', ''],
        ARRAY['invoice_snapshot', ''],
        ARRAY['calls', 'leads:operate'],
        ARRAY['call_actions', 'leads:operate'],
        ARRAY['conversations', 'leads:operate'],
        ARRAY['conversation_links', 'leads:operate'],
        ARRAY['sales', 'leads:operate'],
        ARRAY['offline_conversion_queue', 'queue:operate'],
        ARRAY['provider_health_state', 'queue:operate'],
        ARRAY['provider_upload_attempts', ''],
        ARRAY['provider_upload_metrics', ''],
        ARRAY['dead_letters', 'site:write']
    ];
BEGIN
    FOREACH spec SLICE 1 IN ARRAY specs LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', spec[1]);
        EXECUTE format('CREATE POLICY %I ON %I FOR SELECT USING (app_can(site_id, %L))',
                       spec[1] || '_read', spec[1], 'site:read');
        IF spec[2] <> '' THEN
            EXECUTE format('CREATE POLICY %I ON %I FOR INSERT WITH CHECK (app_can(site_id, %L))',
                           spec[1] || '_insert', spec[1], spec[2]);
            EXECUTE format('CREATE POLICY %I ON %I FOR UPDATE USING (app_can(site_id, %L)) WITH CHECK (app_can(site_id, %L))',
                           spec[1] || '_update', spec[1], spec[2], spec[2]);
            EXECUTE format('CREATE POLICY %I ON %I FOR DELETE USING (app_can(site_id, %L))',
                           spec[1] || '_delete', spec[1], spec[2]);
        END IF;
    END LOOP;
END
$$;

-- Credentials: no API policy at all (write-only through the service path after a
-- capability check; never readable).
ALTER TABLE provider_credentials ENABLE ROW LEVEL SECURITY;
