-- Ingest: site lookup for the gateway, and the per-batch statements of a SitePartition.
-- Every batch statement takes arrays (one statement per table per batch, rows via unnest).

-- name: site_for_ingest
-- What the gateway needs to admit a request for a site: origins, ingest key, rate limit.
SELECT s.id, s.public_id, s.ingest_key_sha256, p.rate_limit_per_min,
       coalesce(array_agg(o.origin ORDER BY o.origin) FILTER (WHERE o.origin IS NOT NULL), '{}') AS origins
FROM sites s
LEFT JOIN site_plans p ON p.site_id = s.id
LEFT JOIN site_origins o ON o.site_id = s.id
WHERE s.public_id = $1
GROUP BY s.id, p.rate_limit_per_min;

-- name: plans_for_sites
SELECT t.site_id, p.monthly_limit, p.soft_limit_enabled, p.hard_cap_multiplier
FROM unnest($1::uuid[]) AS t(site_id)
LEFT JOIN site_plans p ON p.site_id = t.site_id;

-- name: lock_usage
-- Creates the month's usage rows and locks them (sorted, so two batches never deadlock):
-- the quota is decided from these counts while the lock is held, so it stays exact even if
-- two writers (a resize in progress) handle the same site.
INSERT INTO site_usage_monthly AS u (site_id, year_month)
SELECT t.site_id, $2::text FROM unnest($1::uuid[]) AS t(site_id) ORDER BY t.site_id
ON CONFLICT (site_id, year_month) DO UPDATE SET updated_at = now()
RETURNING u.site_id, u.event_count, u.overage_count;

-- name: insert_ledger
-- The idempotency gate: a row that already exists is a duplicate (not returned).
INSERT INTO ingest_idempotency (
    site_id, idempotency_key, created_at, expires_at, billable, billing_state, billing_reason,
    idempotency_version, event_category, event_action, event_label)
SELECT t.site_id, t.idempotency_key, $3::timestamptz, $3::timestamptz + interval '90 days', t.billable,
       t.billing_state, t.billing_reason, t.version, t.ec, t.ea, t.el
FROM unnest($1::uuid[], $2::text[], $4::bool[], $5::text[], $6::text[], $7::int2[], $8::text[], $9::text[], $10::text[])
    AS t(site_id, idempotency_key, billable, billing_state, billing_reason, version, ec, ea, el)
ORDER BY t.site_id, t.idempotency_key
ON CONFLICT (site_id, idempotency_key) DO NOTHING
RETURNING site_id, idempotency_key;

-- name: update_ledger_quota
-- Overage and quota refusals, decided after the insert (only rows inserted by this batch).
UPDATE ingest_idempotency AS i
SET billable = t.billable, billing_state = t.billing_state, billing_reason = t.billing_reason
FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::text[], $5::text[])
    AS t(site_id, idempotency_key, billable, billing_state, billing_reason)
WHERE i.site_id = t.site_id AND i.idempotency_key = t.idempotency_key;

-- name: find_sessions
-- Sessions by id in the given months (current and previous), of any site: the caller
-- checks the site, so a session id of another site is never reused.
SELECT id, site_id, created_month, created_at, fingerprint, gclid, wbraid, gbraid
FROM sessions
WHERE id = ANY($1::uuid[]) AND created_month = ANY($2::date[]);

-- name: fingerprint_history
-- The latest sessions of each (site, fingerprint) since $3 (a month start): returning-visitor
-- counts and "an earlier session with a click id" (Ads Assisted). Scoped by site, always.
SELECT f.site_id, f.fp, s.id, s.created_at,
       (s.gclid IS NOT NULL OR s.wbraid IS NOT NULL OR s.gbraid IS NOT NULL) AS has_click
FROM unnest($1::uuid[], $2::text[]) AS f(site_id, fp)
CROSS JOIN LATERAL (
    SELECT x.id, x.created_at, x.gclid, x.wbraid, x.gbraid
    FROM sessions x
    WHERE x.site_id = f.site_id AND x.fingerprint = f.fp AND x.created_month >= $3::date
    ORDER BY x.created_at DESC
    LIMIT 100
) AS s;

-- name: upsert_sessions
-- Creates new sessions and updates existing ones in one statement. Descriptive fields only
-- fill empty columns (never overwritten, never set back to null); activity stats grow.
-- The WHERE keeps a session id of another site untouched (it is then not returned).
INSERT INTO sessions AS s (
    id, site_id, created_month, created_at, last_activity_at, ip_address, entry_page, exit_page,
    referrer_host, gclid, wbraid, gbraid, other_click_ids, utm_source, utm_medium, utm_campaign,
    utm_term, utm_content, utm_adgroup, matchtype, ads_network, ads_placement, ads_adposition,
    ads_target_id, ads_feed_item_id, device_type, device_os, browser, browser_language,
    screen_width, screen_height, city, district, fingerprint, attribution_source, traffic_source,
    traffic_medium, is_returning, previous_visit_count, event_count, total_duration_sec,
    total_active_seconds, max_scroll_percentage, cta_hover_count, lead_score, consent_scopes,
    consent_updated_at)
SELECT t.id, t.site_id, t.created_month, t.created_at, t.last_activity_at, t.ip_address, t.entry_page,
       t.exit_page, t.referrer_host, t.gclid, t.wbraid, t.gbraid, t.other_click_ids::jsonb, t.utm_source,
       t.utm_medium, t.utm_campaign, t.utm_term, t.utm_content, t.utm_adgroup, t.matchtype, t.ads_network,
       t.ads_placement, t.ads_adposition, t.ads_target_id, t.ads_feed_item_id, t.device_type, t.device_os,
       t.browser, t.browser_language, t.screen_width, t.screen_height, t.city, t.district, t.fingerprint,
       t.attribution_source, t.traffic_source, t.traffic_medium, t.previous_visit_count > 0,
       t.previous_visit_count, t.event_count, t.total_duration_sec, t.total_active_seconds,
       t.max_scroll_percentage, t.cta_hover_count, t.lead_score,
       string_to_array(t.consent_scopes, ','), t.last_activity_at
FROM unnest(
    $1::uuid[], $2::uuid[], $3::date[], $4::timestamptz[], $5::timestamptz[], $6::inet[], $7::text[],
    $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
    $16::text[], $17::text[], $18::text[], $19::text[], $20::text[], $21::text[], $22::text[], $23::text[],
    $24::text[], $25::text[], $26::text[], $27::text[], $28::text[], $29::text[], $30::int4[], $31::int4[],
    $32::text[], $33::text[], $34::text[], $35::text[], $36::text[], $37::text[], $38::int4[], $39::int4[],
    $40::int4[], $41::int4[], $42::int4[], $43::int4[], $44::int4[], $45::text[]
) AS t(id, site_id, created_month, created_at, last_activity_at, ip_address, entry_page, exit_page,
       referrer_host, gclid, wbraid, gbraid, other_click_ids, utm_source, utm_medium, utm_campaign,
       utm_term, utm_content, utm_adgroup, matchtype, ads_network, ads_placement, ads_adposition,
       ads_target_id, ads_feed_item_id, device_type, device_os, browser, browser_language,
       screen_width, screen_height, city, district, fingerprint, attribution_source, traffic_source,
       traffic_medium, previous_visit_count, event_count, total_duration_sec, total_active_seconds,
       max_scroll_percentage, cta_hover_count, lead_score, consent_scopes)
ORDER BY t.id
ON CONFLICT (id, created_month) DO UPDATE SET
    last_activity_at      = greatest(s.last_activity_at, EXCLUDED.last_activity_at),
    exit_page             = coalesce(EXCLUDED.exit_page, s.exit_page),
    ip_address            = coalesce(s.ip_address, EXCLUDED.ip_address),
    entry_page            = coalesce(s.entry_page, EXCLUDED.entry_page),
    referrer_host         = coalesce(s.referrer_host, EXCLUDED.referrer_host),
    gclid                 = coalesce(s.gclid, EXCLUDED.gclid),
    wbraid                = coalesce(s.wbraid, EXCLUDED.wbraid),
    gbraid                = coalesce(s.gbraid, EXCLUDED.gbraid),
    other_click_ids       = EXCLUDED.other_click_ids || s.other_click_ids,
    utm_source            = coalesce(s.utm_source, EXCLUDED.utm_source),
    utm_medium            = coalesce(s.utm_medium, EXCLUDED.utm_medium),
    utm_campaign          = coalesce(s.utm_campaign, EXCLUDED.utm_campaign),
    utm_term              = coalesce(s.utm_term, EXCLUDED.utm_term),
    utm_content           = coalesce(s.utm_content, EXCLUDED.utm_content),
    utm_adgroup           = coalesce(s.utm_adgroup, EXCLUDED.utm_adgroup),
    matchtype             = coalesce(s.matchtype, EXCLUDED.matchtype),
    ads_network           = coalesce(s.ads_network, EXCLUDED.ads_network),
    ads_placement         = coalesce(s.ads_placement, EXCLUDED.ads_placement),
    ads_adposition        = coalesce(s.ads_adposition, EXCLUDED.ads_adposition),
    ads_target_id         = coalesce(s.ads_target_id, EXCLUDED.ads_target_id),
    ads_feed_item_id      = coalesce(s.ads_feed_item_id, EXCLUDED.ads_feed_item_id),
    device_type           = coalesce(s.device_type, EXCLUDED.device_type),
    device_os             = coalesce(s.device_os, EXCLUDED.device_os),
    browser               = coalesce(s.browser, EXCLUDED.browser),
    browser_language      = coalesce(s.browser_language, EXCLUDED.browser_language),
    screen_width          = coalesce(s.screen_width, EXCLUDED.screen_width),
    screen_height         = coalesce(s.screen_height, EXCLUDED.screen_height),
    city                  = coalesce(s.city, EXCLUDED.city),
    district              = coalesce(s.district, EXCLUDED.district),
    fingerprint           = coalesce(s.fingerprint, EXCLUDED.fingerprint),
    attribution_source    = coalesce(s.attribution_source, EXCLUDED.attribution_source),
    traffic_source        = coalesce(s.traffic_source, EXCLUDED.traffic_source),
    traffic_medium        = coalesce(s.traffic_medium, EXCLUDED.traffic_medium),
    event_count           = s.event_count + EXCLUDED.event_count,
    total_duration_sec    = greatest(s.total_duration_sec, EXCLUDED.total_duration_sec,
                                     floor(extract(epoch FROM EXCLUDED.last_activity_at - s.created_at))::int),
    total_active_seconds  = greatest(s.total_active_seconds, EXCLUDED.total_active_seconds),
    max_scroll_percentage = greatest(s.max_scroll_percentage, EXCLUDED.max_scroll_percentage),
    cta_hover_count       = greatest(s.cta_hover_count, EXCLUDED.cta_hover_count),
    lead_score            = greatest(s.lead_score, EXCLUDED.lead_score),
    consent_scopes        = CASE WHEN EXCLUDED.consent_scopes <> '{}' THEN EXCLUDED.consent_scopes
                                 ELSE s.consent_scopes END,
    consent_updated_at    = CASE WHEN EXCLUDED.consent_scopes <> '{}'
                                      AND EXCLUDED.consent_scopes IS DISTINCT FROM s.consent_scopes
                                 THEN EXCLUDED.consent_updated_at ELSE s.consent_updated_at END
WHERE s.site_id = EXCLUDED.site_id
RETURNING s.id, s.created_month, s.gclid, s.wbraid, s.gbraid, s.fingerprint;

-- name: insert_events
-- Event rows (never heartbeats). The ingest key is a second line of dedupe.
INSERT INTO events (id, session_id, session_month, site_id, created_at, url, event_category, event_action,
                    event_label, event_value, metadata, ingest_key)
SELECT t.id, t.session_id, t.session_month, t.site_id, t.created_at, t.url, t.ec, t.ea, t.el, t.ev,
       t.metadata::jsonb, t.ingest_key
FROM unnest($1::uuid[], $2::uuid[], $3::date[], $4::uuid[], $5::timestamptz[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::float8[], $11::text[], $12::text[])
    AS t(id, session_id, session_month, site_id, created_at, url, ec, ea, el, ev, metadata, ingest_key)
ON CONFLICT DO NOTHING;

-- name: upsert_intents
-- One intent card per session (intent_stamp 'session:<id>'): counters add up, the latest
-- action and target win, the score only grows, the best click id (gclid > wbraid > gbraid)
-- is kept. The status is never touched here, so a sealed or junked intent stays so.
INSERT INTO calls AS c (
    site_id, source, status, phone_number, matched_session_id, matched_session_month, matched_fingerprint,
    matched_at, lead_score, lead_score_at_match, intent_stamp, intent_action, intent_target, intent_page_url,
    intent_phone_clicks, intent_whatsapp_clicks, intent_form_submits, intent_last_at, click_id, click_id_type,
    created_at)
SELECT t.site_id, 'click', 'intent', t.phone_number, t.session_id, t.session_month, t.fingerprint,
       t.last_at, t.lead_score, t.lead_score, 'session:' || t.session_id::text, t.action, t.target, t.page_url,
       t.phone_clicks, t.whatsapp_clicks, t.form_submits, t.last_at, t.click_id, t.click_id_type, t.first_at
FROM unnest($1::uuid[], $2::uuid[], $3::date[], $4::text[], $5::text[], $6::int4[], $7::text[], $8::text[],
            $9::text[], $10::int4[], $11::int4[], $12::int4[], $13::timestamptz[], $14::timestamptz[],
            $15::text[], $16::text[])
    AS t(site_id, session_id, session_month, phone_number, fingerprint, lead_score, action, target, page_url,
         phone_clicks, whatsapp_clicks, form_submits, first_at, last_at, click_id, click_id_type)
ORDER BY t.site_id, t.session_id
ON CONFLICT (site_id, intent_stamp) DO UPDATE SET
    lead_score             = greatest(c.lead_score, EXCLUDED.lead_score),
    lead_score_at_match    = greatest(coalesce(c.lead_score_at_match, 0), EXCLUDED.lead_score_at_match),
    intent_action          = EXCLUDED.intent_action,
    intent_target          = EXCLUDED.intent_target,
    phone_number           = coalesce(EXCLUDED.phone_number, c.phone_number),
    intent_page_url        = coalesce(EXCLUDED.intent_page_url, c.intent_page_url),
    matched_fingerprint    = coalesce(c.matched_fingerprint, EXCLUDED.matched_fingerprint),
    intent_phone_clicks    = c.intent_phone_clicks + EXCLUDED.intent_phone_clicks,
    intent_whatsapp_clicks = c.intent_whatsapp_clicks + EXCLUDED.intent_whatsapp_clicks,
    intent_form_submits    = c.intent_form_submits + EXCLUDED.intent_form_submits,
    intent_last_at         = greatest(c.intent_last_at, EXCLUDED.intent_last_at),
    click_id               = CASE WHEN c.click_id IS NULL
                                       OR array_position(ARRAY['gclid', 'wbraid', 'gbraid'], EXCLUDED.click_id_type)
                                          < array_position(ARRAY['gclid', 'wbraid', 'gbraid'], c.click_id_type)
                                  THEN coalesce(EXCLUDED.click_id, c.click_id) ELSE c.click_id END,
    click_id_type          = CASE WHEN c.click_id IS NULL
                                       OR array_position(ARRAY['gclid', 'wbraid', 'gbraid'], EXCLUDED.click_id_type)
                                          < array_position(ARRAY['gclid', 'wbraid', 'gbraid'], c.click_id_type)
                                  THEN coalesce(EXCLUDED.click_id_type, c.click_id_type) ELSE c.click_id_type END;

-- name: add_usage
-- The month's usage moves in the same transaction as the ledger, so quota and invoice
-- never drift from it.
UPDATE site_usage_monthly AS u
SET event_count = u.event_count + t.billable,
    overage_count = u.overage_count + t.overage,
    rejected_count = u.rejected_count + t.rejected,
    updated_at = now()
FROM unnest($1::uuid[], $2::int8[], $3::int8[], $4::int8[]) AS t(site_id, billable, overage, rejected)
WHERE u.site_id = t.site_id AND u.year_month = $5::text;

-- name: insert_dead_letters
INSERT INTO dead_letters (site_id, source, stage, reason, payload)
SELECT t.site_id, 'ingest', t.stage, t.reason, t.payload::jsonb
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) AS t(site_id, stage, reason, payload);

-- name: set_ingest_key
-- Only the SHA-256 of a server-to-server ingest key is kept (the key is shown once).
UPDATE sites SET ingest_key_sha256 = $2 WHERE id = $1;

-- name: dead_letter_for_replay
SELECT id, site_id, source, payload, status FROM dead_letters WHERE id = $1 AND site_id = $2;

-- name: delete_dead_letter_ledger
-- The non-billable ledger row a dead-lettered event left behind (so a resend counted as a
-- duplicate); a replay removes it first so the event is admitted and billed once.
DELETE FROM ingest_idempotency
WHERE site_id = $1 AND idempotency_key = $2 AND billing_reason = 'dead_letter';

-- name: mark_dead_letter_replayed
-- A replay that failed again left a new PENDING dead letter with the new reason, so the old
-- one is closed either way (one pending row per event); $2 says why it failed.
UPDATE dead_letters
SET status = 'REPLAYED', replay_count = replay_count + 1, last_replay_at = now(), last_replay_error = $2
WHERE id = $1 AND status = 'PENDING'
RETURNING status, replay_count;

-- name: list_dead_letters
SELECT id, created_at, source, stage, reason, status, replay_count, last_replay_at, last_replay_error
FROM dead_letters
WHERE site_id = $1 AND ($2::text IS NULL OR status = $2)
ORDER BY id DESC
LIMIT $3;
