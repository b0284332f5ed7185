-- Beyond one upload per click (issue 13): repeat sales of one session, enhanced conversions for
-- leads (hashed identifiers instead of a click id), and adjustments (restatements and
-- retractions) delivered through the same queue as conversions.

-- 1. Repeat sales. The one-pending-per-session rule stops a second *lead* of the same visitor
-- from being uploaded twice (two calls of one session are one lead); every confirmed sale is its
-- own conversion with its own order id, so sales are no longer held back by it.
DROP INDEX ocq_one_pending_per_session;

-- 2. Adjustments live in the queue beside conversions: `kind` says which; an adjustment points
-- at the conversion it adjusts, carries its order id, and its own time (Google's
-- adjustmentDateTime). Order ids and sources stay unique among conversions only.
ALTER TABLE offline_conversion_queue
    ADD COLUMN kind text NOT NULL DEFAULT 'conversion'
        CHECK (kind IN ('conversion', 'restatement', 'retraction')),
    ADD COLUMN adjusts_id uuid REFERENCES offline_conversion_queue (id) ON DELETE CASCADE,
    ADD COLUMN adjusted_at timestamptz,
    ADD COLUMN email_sha256 text CHECK (email_sha256 ~ '^[0-9a-f]{64}$'),
    ADD CONSTRAINT ocq_adjustment_shape CHECK (
        (kind = 'conversion' AND adjusts_id IS NULL AND adjusted_at IS NULL)
        OR (kind <> 'conversion' AND adjusts_id IS NOT NULL AND adjusted_at IS NOT NULL));
-- (0010 made the source key per site, offline_conversion_queue_site_source_key; an older
-- installation may still carry the global one: both names are dropped if present.)
ALTER TABLE offline_conversion_queue
    DROP CONSTRAINT IF EXISTS offline_conversion_queue_site_id_order_id_key,
    DROP CONSTRAINT IF EXISTS offline_conversion_queue_site_source_key,
    DROP CONSTRAINT IF EXISTS offline_conversion_queue_source_kind_source_id_key;
CREATE UNIQUE INDEX ocq_conversion_order_id ON offline_conversion_queue (site_id, order_id)
    WHERE kind = 'conversion';
CREATE UNIQUE INDEX ocq_conversion_source ON offline_conversion_queue (site_id, source_kind, source_id)
    WHERE kind = 'conversion';
CREATE UNIQUE INDEX ocq_one_pending_lead_per_session ON offline_conversion_queue (site_id, session_id)
    WHERE session_id IS NOT NULL AND kind = 'conversion' AND source_kind = 'call'
      AND status IN ('QUEUED', 'PROCESSING', 'RETRY');
-- Adjustments of one conversion are sent one at a time, in order.
CREATE UNIQUE INDEX ocq_one_pending_adjustment ON offline_conversion_queue (adjusts_id)
    WHERE adjusts_id IS NOT NULL AND status IN ('QUEUED', 'PROCESSING', 'RETRY');
CREATE INDEX ocq_adjusts_idx ON offline_conversion_queue (adjusts_id) WHERE adjusts_id IS NOT NULL;

-- 3. Enhanced conversions for leads: a conversion needs a click id or a hashed identifier
-- (anonymised rows, erase and retention, keep neither).
ALTER TABLE offline_conversion_queue DROP CONSTRAINT ocq_click_id_unless_anonymized;
ALTER TABLE offline_conversion_queue ADD CONSTRAINT ocq_click_id_or_identifier_unless_anonymized
    CHECK (num_nonnulls(gclid, wbraid, gbraid, email_sha256, phone_sha256) >= 1 OR anonymized_at IS NOT NULL);

-- A site opts in to upload identifier-only conversions (no click id), with marketing consent.
ALTER TABLE sites ADD COLUMN enhanced_conversions boolean NOT NULL DEFAULT false;

-- What delivery needs of a sale's customer: the normalised SHA-256 only, never the plain value.
ALTER TABLE sales
    ADD COLUMN email_sha256 text CHECK (email_sha256 ~ '^[0-9a-f]{64}$'),
    ADD COLUMN phone_sha256 text CHECK (phone_sha256 ~ '^[0-9a-f]{64}$'),
    ADD COLUMN restated_at timestamptz,
    ADD COLUMN canceled_at timestamptz;

-- A confirmed sale's figures change only through a restatement (which stamps restated_at, and
-- queues the matching adjustment in the same transaction); a canceled sale stays canceled.
CREATE OR REPLACE FUNCTION sales_freeze_after_draft() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'DRAFT' AND (
        ((NEW.amount_minor IS DISTINCT FROM OLD.amount_minor OR NEW.currency IS DISTINCT FROM OLD.currency)
         AND NOT (OLD.status = 'CONFIRMED' AND NEW.status = 'CONFIRMED'
                  AND NEW.restated_at IS DISTINCT FROM OLD.restated_at))
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

-- 4. Hardening (0010) let the API role (an operator's request) write only queue rows that are
--    exactly the conversion of a confirmed source. Adjustments and identifiers are new kinds of
--    legitimate rows; the guard learns them and keeps refusing everything else:
--    - a conversion must still pass 0010's rule (kept as it is, renamed
--      ocq_matches_conversion; a NULL answer, which it gave when a click id was compared with
--      one the session lacks, now counts as a refusal), and its hashed identifiers must be its
--      source's (a sale's own hashes, a call that carries a caller number) or those captured on
--      its session by a form that opted in (session_captured_identifiers);
--    - an adjustment must copy the uploaded (COMPLETED) conversion it adjusts, of the same
--      site, and carry the source's current figures: a restatement the confirmed sale's new
--      value and currency, a retraction value 0 and a source that is no longer confirmed.
ALTER FUNCTION ocq_matches_source(offline_conversion_queue) RENAME TO ocq_matches_conversion;

-- The hashed email and phone a form captured on a session (the newest form-submit that carried
-- any: ingest stores them in the event's metadata for form intents only, never the plain
-- values; opsmantik_stream/capture.py). Runs with the caller's rights.
CREATE FUNCTION session_captured_identifiers(p_site uuid, p_session uuid,
                                             OUT email_sha256 text, OUT phone_sha256 text)
    LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
    SELECT e.metadata->>'email_sha256', e.metadata->>'phone_sha256'
    FROM events e
    WHERE e.session_id = p_session AND e.site_id = p_site
      AND (e.metadata ? 'email_sha256' OR e.metadata ? 'phone_sha256')
    ORDER BY e.created_at DESC
    LIMIT 1
$$;

-- A call's caller number is normalised and hashed in one place (destinations.base, E.164):
-- here it is enough that the call carries a number. A comparison with a missing value refuses.
CREATE FUNCTION ocq_identifiers_match(q offline_conversion_queue) RETURNS boolean
    LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
    SELECT coalesce(
        (q.email_sha256 IS NULL OR q.email_sha256 = sa.email_sha256 OR q.email_sha256 = cap.email_sha256)
        AND (q.phone_sha256 IS NULL OR q.phone_sha256 = sa.phone_sha256 OR q.phone_sha256 = cap.phone_sha256
             OR EXISTS (SELECT 1 FROM calls c WHERE q.source_kind = 'call' AND c.id = q.source_id
                          AND c.site_id = q.site_id AND c.phone_number IS NOT NULL)),
        false)
    FROM session_captured_identifiers(q.site_id, q.session_id) cap
    LEFT JOIN sales sa ON q.source_kind = 'sale' AND sa.id = q.source_id AND sa.site_id = q.site_id
$$;

CREATE FUNCTION ocq_matches_adjustment(q offline_conversion_queue) RETURNS boolean
    LANGUAGE plpgsql STABLE SET search_path = public, pg_temp AS $$
DECLARE
    c offline_conversion_queue;
BEGIN
    SELECT * INTO c FROM offline_conversion_queue
    WHERE id = q.adjusts_id AND site_id = q.site_id AND kind = 'conversion' AND status = 'COMPLETED';
    IF NOT FOUND OR q.session_id IS NOT NULL
       OR (q.source_kind, q.source_id, q.order_id, q.destination, q.gclid, q.wbraid, q.gbraid, q.email_sha256,
           q.phone_sha256, q.conversion_time, q.consent_scopes)
          IS DISTINCT FROM (c.source_kind, c.source_id, c.order_id, c.destination, c.gclid, c.wbraid, c.gbraid,
                            c.email_sha256, c.phone_sha256, c.conversion_time, c.consent_scopes) THEN
        RETURN false;
    END IF;
    IF q.kind = 'retraction' THEN
        RETURN coalesce(q.value_minor = 0, false) AND NOT EXISTS (
            SELECT 1 FROM sales
            WHERE q.source_kind = 'sale' AND id = q.source_id AND site_id = q.site_id AND status = 'CONFIRMED'
            UNION ALL
            SELECT 1 FROM calls
            WHERE q.source_kind = 'call' AND id = q.source_id AND site_id = q.site_id AND status = 'confirmed');
    END IF;
    RETURN q.source_kind = 'sale' AND EXISTS (
        SELECT 1 FROM sales
        WHERE id = q.source_id AND site_id = q.site_id AND status = 'CONFIRMED'
          AND amount_minor = q.value_minor AND currency = q.currency);
END
$$;

-- The name 0010's guard calls, for inserts and for payload changes.
CREATE FUNCTION ocq_matches_source(q offline_conversion_queue) RETURNS boolean
    LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
    SELECT CASE WHEN q.kind <> 'conversion' THEN ocq_matches_adjustment(q)
                ELSE coalesce(ocq_matches_conversion(q), false) AND ocq_identifiers_match(q) END
$$;

-- 0010's guard checks the columns it knew; this one the columns added here. An operator may
-- rewrite a pending adjustment's kind and figures (a newer cancel/restate), never turn a
-- conversion into an adjustment or back, nor change what an adjustment adjusts.
CREATE FUNCTION ocq_api_guard_adjust() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_user <> 'opsmantik_api' THEN
        RETURN NEW;
    END IF;
    IF (NEW.kind = 'conversion') IS DISTINCT FROM (OLD.kind = 'conversion')
       OR NEW.adjusts_id IS DISTINCT FROM OLD.adjusts_id THEN
        RAISE EXCEPTION 'offline_conversion_queue: column not writable by operators'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (NEW.kind, NEW.email_sha256, NEW.phone_sha256) IS DISTINCT FROM (OLD.kind, OLD.email_sha256, OLD.phone_sha256)
       AND NOT ocq_matches_source(NEW) THEN
        RAISE EXCEPTION 'offline_conversion_queue: not the conversion of a confirmed source of this site'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER ocq_api_guard_adjust BEFORE UPDATE ON offline_conversion_queue
    FOR EACH ROW EXECUTE FUNCTION ocq_api_guard_adjust();

-- 5. The gateway's service connection (0010 grants it exactly what it writes): the site's
--    enhanced-conversions switch (`PUT /api/sites/{site}/enhanced-conversions`, audited), and
--    erase's removal of the hashed identifiers (sales, queue rows). The form hashes live in
--    events.metadata, which erase already rewrites.
GRANT UPDATE (enhanced_conversions) ON sites TO opsmantik_gateway;
GRANT UPDATE (email_sha256, phone_sha256) ON sales TO opsmantik_gateway;
GRANT UPDATE (email_sha256) ON offline_conversion_queue TO opsmantik_gateway;
