-- Leads and sales: calls (intents and call events), their action log, conversations with
-- links, and sales. Foreign keys carry site_id so a row can only point within its site.

CREATE TABLE calls (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id                uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    source                 text NOT NULL DEFAULT 'click' CHECK (source IN ('click', 'call_event', 'manual')),
    status                 text NOT NULL DEFAULT 'intent'
        CHECK (status IN ('intent', 'confirmed', 'junk', 'cancelled', 'suspicious')),
    phone_number           text,
    matched_session_id     uuid,
    matched_session_month  date,
    matched_fingerprint    text,
    matched_at             timestamptz,
    lead_score             integer NOT NULL DEFAULT 0 CHECK (lead_score BETWEEN 0 AND 100),
    lead_score_at_match    integer CHECK (lead_score_at_match BETWEEN 0 AND 100),
    score_breakdown        jsonb NOT NULL DEFAULT '{}'::jsonb,
    intent_stamp           text,
    intent_action          text CHECK (intent_action IN ('phone', 'whatsapp', 'form')),
    intent_target          text,
    intent_page_url        text,
    intent_phone_clicks    integer NOT NULL DEFAULT 0 CHECK (intent_phone_clicks >= 0),
    intent_whatsapp_clicks integer NOT NULL DEFAULT 0 CHECK (intent_whatsapp_clicks >= 0),
    intent_form_submits    integer NOT NULL DEFAULT 0 CHECK (intent_form_submits >= 0),
    intent_last_at         timestamptz,
    click_id               text,
    click_id_type          text CHECK (click_id_type IN ('gclid', 'wbraid', 'gbraid')),
    -- call events: idempotent on (site, event_id) and on (site, signature hash)
    event_id               uuid,
    signature_sha256       text,
    value_minor            bigint CHECK (value_minor >= 0),
    currency               text CHECK (currency ~ '^[A-Z]{3}$'),
    confirmed_at           timestamptz,
    confirmed_by           uuid REFERENCES users (id) ON DELETE SET NULL,
    cancelled_at           timestamptz,
    note                   text,
    UNIQUE (site_id, id),
    UNIQUE (site_id, intent_stamp),
    UNIQUE (site_id, event_id),
    UNIQUE (site_id, signature_sha256),
    -- a click intent always names its action, target and per-session stamp
    CONSTRAINT calls_click_intent_chk CHECK (
        source <> 'click'
        OR (intent_action IS NOT NULL AND coalesce(intent_target, '') <> '' AND coalesce(intent_stamp, '') <> '')
    )
);
CREATE TRIGGER calls_updated_at BEFORE UPDATE ON calls FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE INDEX calls_site_created_idx ON calls (site_id, created_at DESC);
CREATE INDEX calls_site_status_idx ON calls (site_id, status, created_at DESC);
CREATE INDEX calls_session_idx ON calls (matched_session_id);

CREATE TABLE call_actions (
    id              bigserial PRIMARY KEY,
    call_id         uuid NOT NULL,
    site_id         uuid NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    action_type     text NOT NULL CHECK (action_type IN ('seal', 'junk', 'cancel', 'restore', 'undo', 'auto_approve')),
    actor_type      text NOT NULL CHECK (actor_type IN ('user', 'system', 'cron', 'cli')),
    actor_id        text,
    previous_status text NOT NULL,
    new_status      text NOT NULL,
    -- the full call row before the action, so undo can restore it
    revert_snapshot jsonb NOT NULL,
    payload         jsonb NOT NULL DEFAULT '{}'::jsonb,
    FOREIGN KEY (site_id, call_id) REFERENCES calls (site_id, id) ON DELETE CASCADE
);
CREATE INDEX call_actions_call_idx ON call_actions (call_id, id DESC);

CREATE TABLE conversations (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id               uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    status                text NOT NULL DEFAULT 'OPEN' CHECK (status IN ('OPEN', 'WON', 'LOST', 'JUNK')),
    primary_call_id       uuid,
    primary_session_id    uuid,
    primary_session_month date,
    -- snapshot of the primary source: click ids, UTM, consent at creation
    primary_source        jsonb NOT NULL DEFAULT '{}'::jsonb,
    note                  text,
    created_by            uuid REFERENCES users (id) ON DELETE SET NULL,
    resolved_at           timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (site_id, id),
    UNIQUE (site_id, primary_call_id),
    CHECK (num_nonnulls(primary_call_id, primary_session_id) = 1),
    FOREIGN KEY (site_id, primary_call_id) REFERENCES calls (site_id, id)
);
CREATE TRIGGER conversations_updated_at BEFORE UPDATE ON conversations FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE conversation_links (
    id              bigserial PRIMARY KEY,
    conversation_id uuid NOT NULL,
    site_id         uuid NOT NULL,
    entity_type     text NOT NULL CHECK (entity_type IN ('session', 'call', 'event', 'sale')),
    entity_id       uuid NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (conversation_id, entity_type, entity_id),
    FOREIGN KEY (site_id, conversation_id) REFERENCES conversations (site_id, id) ON DELETE CASCADE
);

CREATE TABLE sales (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id         uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    conversation_id uuid,
    external_ref    text CHECK (length(external_ref) BETWEEN 1 AND 200),
    occurred_at     timestamptz NOT NULL,
    amount_minor    bigint NOT NULL CHECK (amount_minor >= 0),
    currency        text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status          text NOT NULL DEFAULT 'DRAFT' CHECK (status IN ('DRAFT', 'CONFIRMED', 'CANCELED')),
    notes           text,
    confirmed_at    timestamptz,
    confirmed_by    uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (site_id, id),
    UNIQUE (site_id, external_ref),
    FOREIGN KEY (site_id, conversation_id) REFERENCES conversations (site_id, id)
);
CREATE TRIGGER sales_updated_at BEFORE UPDATE ON sales FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE INDEX sales_site_created_idx ON sales (site_id, created_at DESC);
CREATE INDEX sales_site_occurred_idx ON sales (site_id, occurred_at DESC);
CREATE INDEX sales_conversation_idx ON sales (conversation_id) WHERE conversation_id IS NOT NULL;
-- auto-approve scans pending click intents by age
CREATE INDEX calls_pending_click_idx ON calls (created_at) WHERE status = 'intent' AND source = 'click';

-- Operators (the API role) may change only the lead-working columns of a call; identity,
-- matching and ingest columns belong to the partition (the service role).
CREATE FUNCTION calls_enforce_update_columns() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_user = 'opsmantik_api' AND (
        NEW.id IS DISTINCT FROM OLD.id OR NEW.site_id IS DISTINCT FROM OLD.site_id
        OR NEW.created_at IS DISTINCT FROM OLD.created_at OR NEW.source IS DISTINCT FROM OLD.source
        OR NEW.phone_number IS DISTINCT FROM OLD.phone_number
        OR NEW.matched_session_id IS DISTINCT FROM OLD.matched_session_id
        OR NEW.matched_session_month IS DISTINCT FROM OLD.matched_session_month
        OR NEW.matched_fingerprint IS DISTINCT FROM OLD.matched_fingerprint
        OR NEW.matched_at IS DISTINCT FROM OLD.matched_at
        OR NEW.lead_score_at_match IS DISTINCT FROM OLD.lead_score_at_match
        OR NEW.score_breakdown IS DISTINCT FROM OLD.score_breakdown
        OR NEW.intent_stamp IS DISTINCT FROM OLD.intent_stamp
        OR NEW.intent_action IS DISTINCT FROM OLD.intent_action
        OR NEW.intent_target IS DISTINCT FROM OLD.intent_target
        OR NEW.intent_page_url IS DISTINCT FROM OLD.intent_page_url
        OR NEW.intent_phone_clicks IS DISTINCT FROM OLD.intent_phone_clicks
        OR NEW.intent_whatsapp_clicks IS DISTINCT FROM OLD.intent_whatsapp_clicks
        OR NEW.intent_form_submits IS DISTINCT FROM OLD.intent_form_submits
        OR NEW.intent_last_at IS DISTINCT FROM OLD.intent_last_at
        OR NEW.click_id IS DISTINCT FROM OLD.click_id OR NEW.click_id_type IS DISTINCT FROM OLD.click_id_type
        OR NEW.event_id IS DISTINCT FROM OLD.event_id
        OR NEW.signature_sha256 IS DISTINCT FROM OLD.signature_sha256
    ) THEN
        RAISE EXCEPTION 'calls: column not writable by operators' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER calls_enforce_update_columns BEFORE UPDATE ON calls
    FOR EACH ROW EXECUTE FUNCTION calls_enforce_update_columns();

-- A sale's money and time are fixed once it leaves DRAFT (a confirmed sale may already be
-- queued for upload with these figures).
CREATE FUNCTION sales_freeze_after_draft() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'DRAFT' AND (
        NEW.amount_minor IS DISTINCT FROM OLD.amount_minor
        OR NEW.currency IS DISTINCT FROM OLD.currency
        OR NEW.occurred_at IS DISTINCT FROM OLD.occurred_at
        OR NEW.site_id IS DISTINCT FROM OLD.site_id
        OR (NEW.status <> OLD.status AND OLD.status = 'CANCELED')
    ) THEN
        RAISE EXCEPTION 'sales: a % sale cannot change its amount, currency or time', OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER sales_freeze_after_draft BEFORE UPDATE ON sales
    FOR EACH ROW EXECUTE FUNCTION sales_freeze_after_draft();

-- A link may only point at an entity of the conversation's own site (second line of
-- defence behind the API check; runs with the caller's rights, so RLS applies too).
CREATE FUNCTION conversation_links_entity_site_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    found boolean;
BEGIN
    found := CASE NEW.entity_type
        WHEN 'call' THEN EXISTS (SELECT 1 FROM calls WHERE id = NEW.entity_id AND site_id = NEW.site_id)
        WHEN 'session' THEN EXISTS (SELECT 1 FROM sessions WHERE id = NEW.entity_id AND site_id = NEW.site_id)
        WHEN 'event' THEN EXISTS (SELECT 1 FROM events WHERE id = NEW.entity_id AND site_id = NEW.site_id)
        WHEN 'sale' THEN EXISTS (SELECT 1 FROM sales WHERE id = NEW.entity_id AND site_id = NEW.site_id)
        ELSE false
    END;
    IF NOT found THEN
        RAISE EXCEPTION 'ENTITY_SITE_MISMATCH' USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER conversation_links_entity_site_check BEFORE INSERT OR UPDATE ON conversation_links
    FOR EACH ROW EXECUTE FUNCTION conversation_links_entity_site_check();

-- Audit rows written by API requests use INSERT ... RETURNING id (tenancy.write_audit), which
-- under RLS needs the new row to pass a SELECT policy: members may read their sites' audit
-- entries (ids and counts only). Enabling RLS on audit_log and its INSERT policy are in 0005.
GRANT SELECT ON audit_log TO opsmantik_api;
CREATE POLICY audit_log_member_read ON audit_log FOR SELECT
    USING (site_id IS NOT NULL AND app_can(site_id, 'site:read'));
