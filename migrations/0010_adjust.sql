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
ALTER TABLE offline_conversion_queue
    DROP CONSTRAINT offline_conversion_queue_site_id_order_id_key,
    DROP CONSTRAINT offline_conversion_queue_source_kind_source_id_key;
CREATE UNIQUE INDEX ocq_conversion_order_id ON offline_conversion_queue (site_id, order_id)
    WHERE kind = 'conversion';
CREATE UNIQUE INDEX ocq_conversion_source ON offline_conversion_queue (source_kind, source_id)
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
