-- Privacy (GDPR / KVKK): consent history, the consent rules for offline conversions,
-- anonymisation markers for erase and retention, the key behind the keyed hashes that audit
-- entries carry instead of identifiers, and the privacy capability.
--
-- The consent rules live here, once, so every path obeys them: the partition's session
-- upsert (tracker events, system/consent events), the signed consent endpoint, operators
-- confirming sales or requeueing rows, and the uploaders.

-- ---------------------------------------------------------------- capability
-- Erase and export need privacy:manage (owner and admin, like every other capability they hold).
INSERT INTO role_capabilities (role, capability) VALUES ('owner', 'privacy:manage'), ('admin', 'privacy:manage');

-- ---------------------------------------------------------------- keyed hashes
-- Audit entries of erase/export carry HMAC-SHA256(key, site | type | identifier), never the
-- identifier: repeated requests for one subject can be correlated, while a reader of the
-- audit log cannot test guesses (phone numbers are a small space) without this key.
CREATE TABLE private.privacy_key (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- 2 x 122 random bits from the server's strong random source
    key bytea NOT NULL DEFAULT uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())
);
INSERT INTO private.privacy_key DEFAULT VALUES;

-- ---------------------------------------------------------------- anonymisation markers
-- Set when erase or retention anonymised a row; a row is anonymised again only when new
-- personal data arrived after that (the statements in sql/privacy.sql test both).
ALTER TABLE sessions ADD COLUMN anonymized_at timestamptz;
ALTER TABLE events ADD COLUMN anonymized_at timestamptz;
ALTER TABLE calls ADD COLUMN anonymized_at timestamptz;
ALTER TABLE offline_conversion_queue ADD COLUMN anonymized_at timestamptz;
ALTER TABLE dead_letters ADD COLUMN redacted_at timestamptz;

-- An anonymised queue row keeps its order id, value and time (billing, Google's dedupe,
-- adjustments by order id) but no click id: the "at least one click id" rule now holds for
-- rows that were not anonymised. The old constraint is found by its definition, since it
-- was created without a name.
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN
        SELECT conname FROM pg_constraint
        WHERE conrelid = 'offline_conversion_queue'::regclass AND contype = 'c'
          AND pg_get_constraintdef(oid) LIKE '%num_nonnulls(gclid, wbraid, gbraid) >= 1%'
    LOOP
        EXECUTE format('ALTER TABLE offline_conversion_queue DROP CONSTRAINT %I', c.conname);
    END LOOP;
END
$$;
ALTER TABLE offline_conversion_queue ADD CONSTRAINT ocq_click_id_unless_anonymized
    CHECK (num_nonnulls(gclid, wbraid, gbraid) >= 1 OR anonymized_at IS NOT NULL);

-- The retention job's scans: old sessions without analytics consent, old dead letters.
-- Both partial indexes stay small (sessions normally have analytics consent; redacted
-- dead letters drop out).
CREATE INDEX sessions_retention_idx ON sessions (last_activity_at)
    WHERE anonymized_at IS NULL AND NOT ('analytics' = ANY (consent_scopes));
CREATE INDEX dead_letters_retention_idx ON dead_letters (created_at) WHERE redacted_at IS NULL;

-- URL without query string and fragment (they carry click ids, e-mail addresses, ...).
CREATE FUNCTION privacy_strip_query(url text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT split_part(split_part(url, '#', 1), '?', 1) $$;

-- ---------------------------------------------------------------- consent history
-- One row per change of a session's consent scopes, whoever changed it (a tracker event
-- through ingest, or the signed consent endpoint). A session's first scopes are on the
-- session row itself (consent_scopes at created_at), so a new session writes nothing here.
CREATE TABLE consent_changes (
    id              bigserial PRIMARY KEY,
    site_id         uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    session_id      uuid NOT NULL,
    session_month   date NOT NULL,
    previous_scopes text[] NOT NULL,
    scopes          text[] NOT NULL,
    source          text NOT NULL CHECK (source IN ('ingest', 'api')),
    -- when the visitor decided: the session's consent_updated_at after the change
    consent_at      timestamptz,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consent_changes_session_idx ON consent_changes (site_id, session_id, id);
ALTER TABLE consent_changes ENABLE ROW LEVEL SECURITY;
CREATE POLICY consent_changes_read ON consent_changes FOR SELECT USING (app_can(site_id, 'site:read'));
GRANT SELECT ON consent_changes TO opsmantik_api;

-- ---------------------------------------------------------------- voiding conversions
-- Ends the given not-yet-uploaded queue rows of a site in FAILED with ``p_reason`` as their
-- error code (consent_withdrawn, erased) and writes one audit entry per row. A row in
-- PROCESSING is voided too: its uploader's guarded finish then changes nothing (the request
-- may already be on its way; the attempt ledger keeps what Google answered).
CREATE FUNCTION privacy_void_conversions(p_site uuid, p_ids uuid[], p_reason text, p_detail text)
    RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    WITH target AS (
        SELECT q.id, q.status
        FROM offline_conversion_queue q
        WHERE q.site_id = p_site AND q.id = ANY (p_ids)
          AND q.status IN ('QUEUED', 'RETRY', 'BLOCKED', 'PROCESSING')
        ORDER BY q.id
        FOR UPDATE
    ), voided AS (
        UPDATE offline_conversion_queue q
        SET status = 'FAILED', error_code = p_reason, error_category = NULL, last_error = p_detail
        FROM target t
        WHERE q.id = t.id
        RETURNING q.id, q.order_id, q.session_id, t.status AS previous_status
    ), audited AS (
        INSERT INTO audit_log (actor_type, actor_id, action, resource_type, resource_id, site_id, payload)
        SELECT 'system', NULL, 'conversion.void', 'offline_conversion', v.id::text, p_site,
               jsonb_build_object('reason', p_reason, 'order_id', v.order_id, 'session_id', v.session_id,
                                  'previous_status', v.previous_status)
        FROM voided v
        RETURNING 1
    )
    SELECT count(*) INTO n FROM audited;
    RETURN n;
END
$$;

-- After a session's consent scopes changed: record the change, and when marketing was
-- withdrawn, void the session's pending conversions. The WHEN clause keeps the hot path
-- (the partition's session upsert) free of any function call unless the scopes changed.
-- SECURITY DEFINER: whichever role changed the session (a partition, the consent endpoint),
-- the history and the voiding are written.
CREATE FUNCTION sessions_consent_changed() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO consent_changes (site_id, session_id, session_month, previous_scopes, scopes, source, consent_at)
    VALUES (NEW.site_id, NEW.id, NEW.created_month, OLD.consent_scopes, NEW.consent_scopes,
            -- the consent endpoint marks its transaction; everything else is ingest
            coalesce(nullif(current_setting('opsmantik.consent_source', true), ''), 'ingest'),
            NEW.consent_updated_at);
    IF 'marketing' = ANY (OLD.consent_scopes) AND NOT ('marketing' = ANY (NEW.consent_scopes)) THEN
        PERFORM privacy_void_conversions(
            NEW.site_id,
            ARRAY(SELECT q.id FROM offline_conversion_queue q
                  WHERE q.site_id = NEW.site_id AND q.session_id = NEW.id
                    AND q.status IN ('QUEUED', 'RETRY', 'BLOCKED', 'PROCESSING')),
            'consent_withdrawn',
            'consent_withdrawn: the visitor withdrew marketing consent; not uploaded');
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER sessions_consent_changed AFTER UPDATE OF consent_scopes ON sessions
    FOR EACH ROW WHEN (OLD.consent_scopes IS DISTINCT FROM NEW.consent_scopes)
    EXECUTE FUNCTION sessions_consent_changed();

-- A conversion becomes pending (inserted, or moved back to QUEUED by a revive or a requeue)
-- only while its session has marketing consent, read under a share lock on the session row:
-- a consent change committing at the same moment either waits for this transaction (and
-- then voids the new row) or is seen by it (and the row is not queued). Rows ended for
-- consent, and anonymised rows (erase, retention: no click id left), never change status
-- again. A refused row is skipped silently:
-- the caller sees "nothing inserted/updated" (enqueue answers why from its own check).
-- SECURITY DEFINER: the lock needs UPDATE rights on sessions, which API connections lack.
CREATE FUNCTION queue_consent_guard() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    scopes text[];
BEGIN
    IF TG_OP = 'UPDATE' AND (OLD.error_code = 'consent_withdrawn' OR OLD.anonymized_at IS NOT NULL) THEN
        RETURN NULL;
    END IF;
    IF NEW.status NOT IN ('QUEUED', 'RETRY') OR NEW.session_id IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT s.consent_scopes INTO scopes
    FROM sessions s
    WHERE s.site_id = NEW.site_id AND s.id = NEW.session_id
    ORDER BY s.created_month DESC
    LIMIT 1
    FOR SHARE;
    IF NOT FOUND OR NOT ('marketing' = ANY (scopes)) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER queue_consent_guard_insert BEFORE INSERT ON offline_conversion_queue
    FOR EACH ROW WHEN (NEW.session_id IS NOT NULL)
    EXECUTE FUNCTION queue_consent_guard();
-- Not on the uploaders' own transitions (PROCESSING -> RETRY/COMPLETED/...): only a move back
-- to QUEUED, or any status change of a row ended for consent or anonymised.
CREATE TRIGGER queue_consent_guard_update BEFORE UPDATE OF status ON offline_conversion_queue
    FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM OLD.status
                       AND (OLD.error_code = 'consent_withdrawn' OR OLD.anonymized_at IS NOT NULL
                            OR (NEW.status = 'QUEUED' AND NEW.session_id IS NOT NULL)))
    EXECUTE FUNCTION queue_consent_guard();
