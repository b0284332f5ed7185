-- Leads: call events, intents, operator actions on calls, conversations, auto-approve.

-- name: site_for_call_event
-- The site named by X-Ops-Site-Id (32-hex public id or uuid) with its signing secrets.
SELECT s.id, s.public_id, ss.current_secret, ss.next_secret
FROM sites s
JOIN private.site_secrets ss ON ss.site_id = s.id
WHERE s.public_id = $1 OR s.id = $2::uuid
LIMIT 1;

-- name: call_by_idempotency
-- A call already recorded for this event id or this signature (replay detection).
SELECT id, matched_session_id, lead_score, status
FROM calls
WHERE site_id = $1
  AND (($2::uuid IS NOT NULL AND event_id = $2::uuid) OR signature_sha256 = $3)
ORDER BY created_at
LIMIT 1;

-- name: call_by_stamp
SELECT id, matched_session_id, lead_score, status FROM calls WHERE site_id = $1 AND intent_stamp = $2;

-- name: match_session
-- The newest session of this fingerprint on this site active within the window before
-- the call. Months: only partitions that can hold such a session are scanned.
SELECT id, created_month, created_at, consent_scopes, gclid, wbraid, gbraid, lead_score
FROM sessions
WHERE site_id = $1
  AND fingerprint = $2
  AND created_month >= (date_trunc('month', ($3::timestamptz - $4::interval) AT TIME ZONE 'UTC')
                        - interval '1 month')::date
  AND last_activity_at >= $3::timestamptz - $4::interval
ORDER BY created_at DESC, id DESC
LIMIT 1;

-- name: session_score_inputs
SELECT count(*) FILTER (WHERE event_category = 'conversion') AS conversions,
       count(*) FILTER (WHERE event_category = 'interaction') AS interactions,
       coalesce(max(CASE WHEN jsonb_typeof(metadata -> 'lead_score') = 'number'
                         THEN (metadata ->> 'lead_score')::numeric END), 0) AS max_event_score
FROM events
WHERE site_id = $1 AND session_id = $2 AND session_month = $3;

-- name: insert_call_event
-- ON CONFLICT DO NOTHING covers (site, event_id), (site, signature) and (site, stamp): a
-- concurrent identical request waits for the first to commit and then inserts nothing.
INSERT INTO calls (
    site_id, source, status, phone_number, matched_session_id, matched_session_month,
    matched_fingerprint, matched_at, lead_score, lead_score_at_match, score_breakdown,
    intent_stamp, intent_action, intent_target, intent_page_url, intent_last_at,
    click_id, click_id_type, event_id, signature_sha256
) VALUES (
    $1, 'call_event', $2, $3, $4, $5, $6, now(), $7, $7, $8,
    $9, $10, $11, $12, $13, $14, $15, $16, $17
)
ON CONFLICT DO NOTHING
RETURNING id, matched_session_id, lead_score, status;

-- name: list_intents
SELECT id, source, status, created_at, updated_at, matched_session_id, matched_at,
       lead_score, intent_action, intent_target, intent_page_url, intent_phone_clicks,
       intent_whatsapp_clicks, intent_form_submits, intent_last_at, click_id, click_id_type,
       value_minor, currency, confirmed_at, cancelled_at, note
FROM calls
WHERE site_id = $1
  AND ($2::text IS NULL OR status = $2)
  AND ($3::timestamptz IS NULL OR created_at >= $3)
  AND ($4::timestamptz IS NULL OR created_at < $4)
  AND ($5::text IS NULL OR source = $5)
ORDER BY created_at DESC, id DESC
LIMIT $6;

-- name: call_site
-- Which site a call belongs to (visible rows only, under RLS), before any lock.
SELECT c.id, c.site_id, s.public_id FROM calls c JOIN sites s ON s.id = c.site_id WHERE c.id = $1;

-- name: lock_call
SELECT c.*, to_jsonb(c) AS snapshot FROM calls c WHERE c.id = $1 FOR UPDATE;

-- name: apply_call_action
-- Guarded on the state read under the lock; touches only the operator column set.
UPDATE calls
SET status = $3, value_minor = $4, currency = $5, lead_score = $6, confirmed_at = $7,
    confirmed_by = $8, cancelled_at = $9, note = $10
WHERE id = $1 AND status = $2
RETURNING *;

-- name: restore_call_snapshot
-- Undo: the operator columns come back exactly as the snapshot holds them.
UPDATE calls c
SET status = x.s ->> 'status',
    value_minor = (x.s ->> 'value_minor')::bigint,
    currency = x.s ->> 'currency',
    lead_score = (x.s ->> 'lead_score')::integer,
    confirmed_at = (x.s ->> 'confirmed_at')::timestamptz,
    confirmed_by = (x.s ->> 'confirmed_by')::uuid,
    cancelled_at = (x.s ->> 'cancelled_at')::timestamptz,
    note = x.s ->> 'note'
FROM (SELECT $3::jsonb AS s) x
WHERE c.id = $1 AND c.status = $2
RETURNING c.*;

-- name: insert_call_action
INSERT INTO call_actions (call_id, site_id, action_type, actor_type, actor_id, previous_status,
                          new_status, revert_snapshot, payload)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
RETURNING id, created_at;

-- name: last_call_action
SELECT id, action_type, previous_status, new_status, revert_snapshot, created_at
FROM call_actions WHERE call_id = $1 ORDER BY id DESC LIMIT 1;

-- name: list_call_actions
SELECT id, action_type, actor_type, actor_id, previous_status, new_status, payload, created_at
FROM call_actions WHERE call_id = $1 ORDER BY id;

-- name: auto_approve_candidates
-- Stale pending Ads click intents whose session shows real engagement. SKIP LOCKED so a
-- concurrent operator action (or a second job run) is never blocked or doubled.
SELECT c.id, c.site_id, c.status, c.lead_score, to_jsonb(c) AS snapshot
FROM calls c
JOIN sessions s ON s.site_id = c.site_id AND s.id = c.matched_session_id
WHERE c.status = 'intent'
  AND c.source = 'click'
  AND c.created_at < $1
  AND (coalesce(s.gclid, '') <> '' OR coalesce(s.wbraid, '') <> '' OR coalesce(s.gbraid, '') <> '')
  AND s.total_duration_sec >= 10
  AND s.event_count >= 2
ORDER BY c.created_at
LIMIT $2
FOR UPDATE OF c SKIP LOCKED;

-- name: auto_approve_call
UPDATE calls
SET status = 'confirmed', lead_score = greatest(lead_score, 60), confirmed_at = now(),
    confirmed_by = NULL, cancelled_at = NULL,
    note = coalesce(note, 'auto-approved after 24h (low-risk)')
WHERE id = $1 AND status = 'intent'
RETURNING id, status, lead_score;

-- name: conversation_call_in_site
SELECT id, matched_session_id, matched_session_month, intent_stamp, click_id, click_id_type
FROM calls WHERE id = $1 AND site_id = $2;

-- name: session_in_site
SELECT id, created_month, gclid, wbraid, gbraid, utm_source, utm_medium, utm_campaign, utm_term,
       utm_content, referrer_host, consent_scopes, attribution_source
FROM sessions
WHERE id = $1 AND site_id = $2 AND ($3::date IS NULL OR created_month = $3)
ORDER BY created_month DESC
LIMIT 1;

-- name: event_in_site
SELECT id FROM events WHERE id = $1 AND site_id = $2 LIMIT 1;

-- name: sale_in_site
SELECT id, conversation_id FROM sales WHERE id = $1 AND site_id = $2;

-- name: insert_conversation
INSERT INTO conversations (site_id, primary_call_id, primary_session_id, primary_session_month,
                           primary_source, note, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT DO NOTHING
RETURNING *;

-- name: conversation_by_primary_call
SELECT * FROM conversations WHERE site_id = $1 AND primary_call_id = $2;

-- name: conversation_site
SELECT c.id, c.site_id, s.public_id FROM conversations c JOIN sites s ON s.id = c.site_id WHERE c.id = $1;

-- name: lock_conversation
SELECT * FROM conversations WHERE id = $1 FOR UPDATE;

-- name: insert_link
INSERT INTO conversation_links (conversation_id, site_id, entity_type, entity_id)
VALUES ($1, $2, $3, $4)
ON CONFLICT (conversation_id, entity_type, entity_id) DO NOTHING
RETURNING id, created_at;

-- name: link_by_entity
SELECT id, created_at FROM conversation_links
WHERE conversation_id = $1 AND entity_type = $2 AND entity_id = $3;

-- name: resolve_conversation
UPDATE conversations
SET status = $2, note = coalesce($3, note), resolved_at = now()
WHERE id = $1 AND status = 'OPEN'
RETURNING *;

-- name: attach_sale_to_conversation
UPDATE sales SET conversation_id = $2
WHERE id = $1 AND site_id = $3 AND (conversation_id IS NULL OR conversation_id = $2)
RETURNING id;
