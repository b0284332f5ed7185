-- Tenancy: sites, origins, plans, secrets, users, tokens, members, capabilities, audit,
-- provider credentials; plus the row-level-security plumbing every tenant table uses.
--
-- The connecting (owner) role is the "service role": partitions, uploaders and the CLI use
-- it. API requests run as the NOLOGIN role opsmantik_api with the caller's user id in the
-- transaction-local setting opsmantik.user_id, so RLS policies apply to them.

-- The API role logs in on its own connections (not SET ROLE on an owner connection, which
-- RESET ROLE would undo). With the embedded server (trust auth on a unix socket) no password
-- is needed; for an external server give it one and set OPSMANTIK_API_DATABASE_URL.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'opsmantik_api') THEN
        CREATE ROLE opsmantik_api LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
END
$$;

CREATE SCHEMA IF NOT EXISTS private;
REVOKE ALL ON SCHEMA private FROM PUBLIC;

CREATE FUNCTION utc_year_month(ts timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM') $$;

CREATE FUNCTION set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TABLE sites (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    public_id   text NOT NULL UNIQUE CHECK (public_id ~ '^[0-9a-f]{32}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    domain      text NOT NULL CHECK (length(domain) BETWEEN 1 AND 253),
    currency    text NOT NULL DEFAULT 'TRY' CHECK (currency ~ '^[A-Z]{3}$'),
    timezone    text NOT NULL DEFAULT 'UTC',
    -- sha256 hex of an optional server-to-server ingest key (requests without Origin).
    ingest_key_sha256 text,
    default_destination text NOT NULL DEFAULT 'data_manager'
        CHECK (default_destination IN ('google_ads', 'data_manager')),
    config      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER sites_updated_at BEFORE UPDATE ON sites FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE site_origins (
    site_id    uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    -- scheme://host[:port], lower case, no trailing slash
    origin     text NOT NULL CHECK (origin ~ '^https?://[a-z0-9.\-\[\]:]+$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, origin)
);

CREATE TABLE site_plans (
    site_id              uuid PRIMARY KEY REFERENCES sites (id) ON DELETE CASCADE,
    plan_tier            text NOT NULL DEFAULT 'free',
    monthly_limit        bigint NOT NULL DEFAULT 100000 CHECK (monthly_limit >= 0),
    soft_limit_enabled   boolean NOT NULL DEFAULT false,
    hard_cap_multiplier  numeric NOT NULL DEFAULT 2 CHECK (hard_cap_multiplier >= 1),
    overage_price_per_1k numeric CHECK (overage_price_per_1k >= 0),
    -- per-site override of the ingest rate limit (events per minute per client)
    rate_limit_per_min   integer CHECK (rate_limit_per_min > 0),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER site_plans_updated_at BEFORE UPDATE ON site_plans FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Call-event signing secrets: current + next, so rotation never rejects a signed request.
CREATE TABLE private.site_secrets (
    site_id        uuid PRIMARY KEY REFERENCES sites (id) ON DELETE CASCADE,
    current_secret text NOT NULL,
    next_secret    text,
    rotated_at     timestamptz
);

CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email         text NOT NULL UNIQUE CHECK (email = lower(email) AND email LIKE '%_@_%'),
    platform_role text NOT NULL DEFAULT 'user' CHECK (platform_role IN ('user', 'admin')),
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Bearer tokens: only the SHA-256 of the token is kept.
CREATE TABLE private.api_tokens (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_sha256 text NOT NULL UNIQUE CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    label        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

CREATE TABLE site_members (
    site_id    uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       text NOT NULL CHECK (role IN ('owner', 'admin', 'operator', 'analyst', 'billing')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, user_id)
);
CREATE INDEX site_members_user_idx ON site_members (user_id);

-- The capability matrix, in the schema so SQL policies and Python share one truth.
CREATE TABLE role_capabilities (
    role       text NOT NULL CHECK (role IN ('owner', 'admin', 'operator', 'analyst', 'billing')),
    capability text NOT NULL,
    PRIMARY KEY (role, capability)
);
INSERT INTO role_capabilities (role, capability) VALUES
    ('owner', 'site:read'), ('owner', 'site:write'), ('owner', 'members:manage'),
    ('owner', 'leads:operate'), ('owner', 'queue:operate'), ('owner', 'billing:view'),
    ('admin', 'site:read'), ('admin', 'site:write'), ('admin', 'members:manage'),
    ('admin', 'leads:operate'), ('admin', 'queue:operate'), ('admin', 'billing:view'),
    ('operator', 'site:read'), ('operator', 'leads:operate'), ('operator', 'queue:operate'),
    ('billing', 'site:read'), ('billing', 'billing:view'),
    ('analyst', 'site:read');

-- The caller's identity is "<user uuid>.<mac>" in the transaction-local setting
-- opsmantik.identity, with mac = hex(sha256(key || '|' || uuid)) under a key the API role
-- cannot read. A hand-written set_config on an API connection therefore cannot impersonate
-- another user: without the key the identity does not verify and app_user_id() is NULL.
CREATE TABLE private.identity_key (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- 2 x 122 random bits from the server's strong random source
    key bytea NOT NULL DEFAULT uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())
);
INSERT INTO private.identity_key DEFAULT VALUES;

CREATE FUNCTION app_user_id() RETURNS uuid
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    ident text := current_setting('opsmantik.identity', true);
    uid text;
    mac text;
BEGIN
    IF ident IS NULL OR ident !~ '^[0-9a-f-]{36}\.[0-9a-f]{64}$' THEN
        RETURN NULL;
    END IF;
    uid := split_part(ident, '.', 1);
    mac := split_part(ident, '.', 2);
    IF encode(sha256((SELECT key FROM private.identity_key) || convert_to('|' || uid, 'UTF8')), 'hex') <> mac THEN
        RETURN NULL;
    END IF;
    RETURN uid::uuid;
END
$$;

-- SECURITY DEFINER so policies can read membership without recursive RLS checks.
CREATE FUNCTION app_can(p_site uuid, p_capability text) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT EXISTS (
        SELECT 1 FROM users u
        WHERE u.id = app_user_id() AND u.platform_role = 'admin'
    ) OR EXISTS (
        SELECT 1
        FROM site_members m
        JOIN role_capabilities c ON c.role = m.role
        WHERE m.site_id = p_site AND m.user_id = app_user_id() AND c.capability = p_capability
    )
$$;

CREATE TABLE audit_log (
    id            bigserial PRIMARY KEY,
    created_at    timestamptz NOT NULL DEFAULT now(),
    actor_type    text NOT NULL CHECK (actor_type IN ('user', 'system', 'cron', 'cli')),
    actor_id      text,
    action        text NOT NULL,
    resource_type text,
    resource_id   text,
    site_id       uuid REFERENCES sites (id) ON DELETE SET NULL,
    payload       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_site_idx ON audit_log (site_id, created_at DESC);
CREATE INDEX audit_log_action_idx ON audit_log (action, created_at DESC);

-- Destination credentials, sealed with a libsodium sealed box; never returned by the API.
CREATE TABLE provider_credentials (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id         uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    destination     text NOT NULL CHECK (destination IN ('google_ads', 'data_manager')),
    sealed          bytea NOT NULL,
    key_fingerprint text NOT NULL,
    -- non-secret routing facts, readable without the vault key
    account_id      text NOT NULL,
    requests_per_s  numeric CHECK (requests_per_s > 0),
    conversions_per_min numeric CHECK (conversions_per_min > 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (site_id, destination)
);
CREATE TRIGGER provider_credentials_updated_at BEFORE UPDATE ON provider_credentials
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
