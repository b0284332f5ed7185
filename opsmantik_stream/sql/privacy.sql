-- Privacy (GDPR / KVKK): consent updates, finding a data subject's rows, anonymising them,
-- exporting them, and retention. Every statement is scoped by site ($1), so a request for
-- one site never reads or changes another site's rows, whichever role runs it.

-- name: privacy_key
SELECT key FROM private.privacy_key;

-- ---------------------------------------------------------------- consent

-- name: mark_consent_source
-- Tells the consent trigger (consent_changes.source) who changes the scopes, for this
-- transaction only.
SELECT set_config('opsmantik.consent_source', $1, true);

-- name: set_consent_by_session
-- Guarded on time: a decision older than the one recorded (a delayed or replayed request)
-- changes nothing.
UPDATE sessions
SET consent_scopes = $3::text[], consent_updated_at = $4
WHERE site_id = $1 AND id = ANY ($2::uuid[])
  AND (consent_updated_at IS NULL OR consent_updated_at <= $4)
RETURNING id;

-- name: set_consent_by_fingerprint
UPDATE sessions
SET consent_scopes = $3::text[], consent_updated_at = $4
WHERE site_id = $1 AND fingerprint = $2
  AND (consent_updated_at IS NULL OR consent_updated_at <= $4)
RETURNING id;

-- name: consent_by_session
-- The sessions a consent request names, newest first (what is recorded now).
SELECT id, consent_scopes, consent_updated_at
FROM sessions
WHERE site_id = $1 AND id = ANY ($2::uuid[])
ORDER BY created_at DESC, id DESC;

-- name: consent_by_fingerprint
SELECT id, consent_scopes, consent_updated_at
FROM sessions
WHERE site_id = $1 AND fingerprint = $2
ORDER BY created_at DESC, id DESC;

-- ---------------------------------------------------------------- finding a subject

-- name: sessions_by_id
SELECT id FROM sessions WHERE site_id = $1 AND id = ANY ($2::uuid[]);

-- name: sessions_by_fingerprint
SELECT id FROM sessions WHERE site_id = $1 AND fingerprint = $2;

-- name: sessions_by_email
-- An e-mail address reaches the database only as event metadata a site sent itself
-- (meta.email); its sessions are the subject's.
SELECT DISTINCT session_id AS id
FROM events
WHERE site_id = $1 AND (lower(metadata ->> 'email') = $2 OR metadata ->> 'email_lc' = $2);

-- name: sessions_by_captured_identifier
-- Sessions on which a form that opted in captured the subject's hashed email ($2) or phone
-- ($3) (opsmantik_stream/capture.py: only the hashes are in the event's metadata).
SELECT DISTINCT session_id AS id
FROM events
WHERE site_id = $1
  AND (($2::text IS NOT NULL AND metadata ->> 'email_sha256' = $2)
       OR ($3::text IS NOT NULL AND metadata ->> 'phone_sha256' = $3));

-- name: phone_call_candidates
-- Calls whose number ends in the same last seven digits (a cheap narrowing; the caller keeps
-- those whose normalised number is the subject's). Click intents are left out: their number
-- is the one the visitor clicked, the business's own, never the visitor's.
SELECT id, phone_number
FROM calls
WHERE site_id = $1 AND source <> 'click' AND phone_number IS NOT NULL
  AND right(regexp_replace(phone_number, '\D', '', 'g'), 7) = $2;

-- name: sessions_of_calls
SELECT DISTINCT matched_session_id
FROM calls
WHERE site_id = $1 AND id = ANY ($2::uuid[]) AND matched_session_id IS NOT NULL;

-- name: related_calls
-- Calls of the subject's sessions, calls a call event matched to the subject's fingerprint,
-- calls named directly (by phone), and calls whose operator note names the e-mail address
-- or the phone number ($5 / $6).
SELECT id
FROM calls
WHERE site_id = $1
  AND (matched_session_id = ANY ($2::uuid[])
       OR id = ANY ($3::uuid[])
       OR ($4::text IS NOT NULL AND matched_fingerprint = $4)
       OR ($5::text IS NOT NULL AND position($5 IN lower(note)) > 0)
       OR ($6::text IS NOT NULL AND position($6 IN regexp_replace(note, '[\s().+-]', '', 'g')) > 0));

-- name: related_conversations
SELECT c.id
FROM conversations c
WHERE c.site_id = $1
  AND (c.primary_call_id = ANY ($3::uuid[])
       OR c.primary_session_id = ANY ($2::uuid[])
       OR EXISTS (SELECT 1 FROM conversation_links l
                  WHERE l.conversation_id = c.id
                    AND ((l.entity_type = 'session' AND l.entity_id = ANY ($2::uuid[]))
                         OR (l.entity_type = 'call' AND l.entity_id = ANY ($3::uuid[]))))
       OR ($4::text IS NOT NULL AND position($4 IN lower(c.note)) > 0)
       OR ($5::text IS NOT NULL AND position($5 IN regexp_replace(c.note, '[\s().+-]', '', 'g')) > 0));

-- name: related_sales
SELECT s.id
FROM sales s
WHERE s.site_id = $1
  AND (s.conversation_id = ANY ($2::uuid[])
       OR s.id IN (SELECT l.entity_id FROM conversation_links l
                   WHERE l.site_id = $1 AND l.conversation_id = ANY ($2::uuid[]) AND l.entity_type = 'sale')
       OR ($3::text IS NOT NULL AND position($3 IN lower(s.notes)) > 0)
       OR ($4::text IS NOT NULL AND position($4 IN regexp_replace(s.notes, '[\s().+-]', '', 'g')) > 0)
       -- the customer's hashed email / phone given for enhanced conversions
       OR ($5::text IS NOT NULL AND s.email_sha256 = $5)
       OR ($6::text IS NOT NULL AND s.phone_sha256 = $6));

-- name: related_queue_rows
SELECT id
FROM offline_conversion_queue
WHERE site_id = $1
  AND (session_id = ANY ($2::uuid[])
       OR (source_kind = 'call' AND source_id = ANY ($3::uuid[]))
       OR (source_kind = 'sale' AND source_id = ANY ($4::uuid[]))
       OR ($5::text IS NOT NULL AND phone_sha256 = $5)
       OR ($6::text IS NOT NULL AND email_sha256 = $6));

-- name: client_session_ids
-- The session ids the tracker used (a non-UUID sid was mapped to a derived UUID), as dead
-- letters carry them.
SELECT DISTINCT metadata ->> 'client_sid' AS sid
FROM events
WHERE site_id = $1 AND session_id = ANY ($2::uuid[]) AND metadata ->> 'client_sid' IS NOT NULL;

-- name: related_dead_letters
-- Dead letters keep whole event payloads: matched by session id, fingerprint, e-mail in
-- meta, or the phone number's last digits anywhere in the payload.
SELECT id
FROM dead_letters
WHERE site_id = $1 AND redacted_at IS NULL
  AND (payload ->> 'sid' = ANY ($2::text[])
       OR payload -> 'meta' ->> 'fp' = ANY ($3::text[])
       OR ($4::text IS NOT NULL AND lower(payload -> 'meta' ->> 'email') = $4)
       OR ($5::text IS NOT NULL AND position($5 IN regexp_replace(payload::text, '[\s().+-]', '', 'g')) > 0));

-- ---------------------------------------------------------------- anonymising
-- Each statement changes only rows that still hold personal data, so a repeated erase
-- answers 0 and a session that received new data after an erase is cleaned again.

-- name: anonymize_sessions
UPDATE sessions
SET fingerprint = NULL, ip_address = NULL, gclid = NULL, wbraid = NULL, gbraid = NULL,
    other_click_ids = '{}'::jsonb, city = NULL, district = NULL, device_type = NULL,
    device_os = NULL, browser = NULL, browser_language = NULL, screen_width = NULL,
    screen_height = NULL, entry_page = privacy_strip_query(entry_page),
    exit_page = privacy_strip_query(exit_page), anonymized_at = $3
WHERE site_id = $1 AND id = ANY ($2::uuid[])
  AND (anonymized_at IS NULL
       OR num_nonnulls(fingerprint, ip_address, gclid, wbraid, gbraid, city, district, device_type,
                       device_os, browser, browser_language, screen_width, screen_height) > 0
       OR other_click_ids <> '{}'::jsonb
       OR entry_page IS DISTINCT FROM privacy_strip_query(entry_page)
       OR exit_page IS DISTINCT FROM privacy_strip_query(exit_page));

-- name: forget_session_clicks
-- The anonymised sessions are no longer click sessions of a visitor (session_clicks,
-- migration 0019). After anonymize_sessions in the same transaction: its row locks make an
-- ingest batch that writes these sessions now either commit first (and its rows are seen
-- here) or wait, and find them anonymised.
DELETE FROM session_clicks WHERE site_id = $1 AND session_id = ANY ($2::uuid[]);

-- name: anonymize_events
-- What stays: category, action, value, time, the page without its query string, and the
-- lead score, attribution and consent scopes the event was stored under.
UPDATE events
SET url = privacy_strip_query(url), event_label = NULL,
    metadata = jsonb_strip_nulls(jsonb_build_object(
        'lead_score', metadata -> 'lead_score',
        'attribution_source', metadata -> 'attribution_source',
        'consent_scopes', metadata -> 'consent_scopes')),
    anonymized_at = $3
WHERE site_id = $1 AND session_id = ANY ($2::uuid[]) AND anonymized_at IS NULL;

-- name: anonymize_calls
-- A target keeps its kind (tel:/wa:) so the intent still reads as a phone or WhatsApp lead.
UPDATE calls
SET phone_number = NULL, matched_fingerprint = NULL, click_id = NULL, click_id_type = NULL, note = NULL,
    intent_target = CASE WHEN intent_target IS NULL THEN NULL
                         ELSE split_part(intent_target, ':', 1) || ':redacted' END,
    intent_page_url = privacy_strip_query(intent_page_url), anonymized_at = $3
WHERE site_id = $1 AND id = ANY ($2::uuid[])
  AND (anonymized_at IS NULL OR num_nonnulls(phone_number, matched_fingerprint, click_id, note) > 0);

-- name: anonymize_call_actions
-- The action log keeps a full snapshot of the call for undo: the same fields go.
UPDATE call_actions
SET revert_snapshot = revert_snapshot || jsonb_build_object(
        'phone_number', NULL, 'matched_fingerprint', NULL, 'click_id', NULL, 'click_id_type', NULL,
        'note', NULL,
        'intent_target', CASE WHEN revert_snapshot ->> 'intent_target' IS NULL THEN NULL
                              ELSE split_part(revert_snapshot ->> 'intent_target', ':', 1) || ':redacted' END,
        'intent_page_url', privacy_strip_query(revert_snapshot ->> 'intent_page_url'))
WHERE site_id = $1 AND call_id = ANY ($2::uuid[])
  AND (revert_snapshot ->> 'phone_number' IS NOT NULL OR revert_snapshot ->> 'matched_fingerprint' IS NOT NULL
       OR revert_snapshot ->> 'click_id' IS NOT NULL OR revert_snapshot ->> 'note' IS NOT NULL);

-- name: anonymize_conversations
UPDATE conversations
SET note = NULL, primary_source = '{}'::jsonb
WHERE site_id = $1 AND id = ANY ($2::uuid[]) AND (note IS NOT NULL OR primary_source <> '{}'::jsonb);

-- name: anonymize_sales
UPDATE sales SET notes = NULL, email_sha256 = NULL, phone_sha256 = NULL
WHERE site_id = $1 AND id = ANY ($2::uuid[])
  AND (notes IS NOT NULL OR email_sha256 IS NOT NULL OR phone_sha256 IS NOT NULL);

-- name: void_conversions
SELECT privacy_void_conversions($1, $2::uuid[], $3, $4);

-- name: anonymize_queue_rows
UPDATE offline_conversion_queue
SET gclid = NULL, wbraid = NULL, gbraid = NULL, phone_sha256 = NULL, email_sha256 = NULL, anonymized_at = $3
WHERE site_id = $1 AND id = ANY ($2::uuid[])
  AND num_nonnulls(gclid, wbraid, gbraid, phone_sha256, email_sha256) > 0;

-- name: redact_dead_letters
-- The payload is replaced by a marker; a pending one can no longer be replayed.
UPDATE dead_letters
SET payload = jsonb_build_object('redacted', true, 'redacted_at', $3::timestamptz, 'reason', $4::text),
    redacted_at = $3,
    status = CASE WHEN status = 'PENDING' THEN 'DISCARDED' ELSE status END
WHERE site_id = $1 AND id = ANY ($2::bigint[]) AND redacted_at IS NULL;

-- ---------------------------------------------------------------- export (keyset pages)

-- name: export_sessions
SELECT * FROM sessions WHERE site_id = $1 AND id = ANY ($2::uuid[]) AND id > $3 ORDER BY id LIMIT $4;

-- name: export_events
SELECT id, session_id, session_month, created_at, url, event_category, event_action, event_label,
       event_value, metadata, anonymized_at
FROM events
WHERE site_id = $1 AND session_id = ANY ($2::uuid[]) AND (session_id, id) > ($3, $4)
ORDER BY session_id, id
LIMIT $5;

-- name: export_calls
SELECT * FROM calls WHERE site_id = $1 AND id = ANY ($2::uuid[]) AND id > $3 ORDER BY id LIMIT $4;

-- name: export_call_actions
SELECT id, call_id, created_at, action_type, actor_type, previous_status, new_status, payload
FROM call_actions
WHERE site_id = $1 AND call_id = ANY ($2::uuid[]) AND id > $3
ORDER BY id
LIMIT $4;

-- name: export_conversations
SELECT * FROM conversations WHERE site_id = $1 AND id = ANY ($2::uuid[]) AND id > $3 ORDER BY id LIMIT $4;

-- name: export_sales
SELECT * FROM sales WHERE site_id = $1 AND id = ANY ($2::uuid[]) AND id > $3 ORDER BY id LIMIT $4;

-- name: export_queue_rows
SELECT id, destination, source_kind, source_id, session_id, order_id, gclid, wbraid, gbraid,
       conversion_time, value_minor, currency, phone_sha256, email_sha256, kind, status, attempt, uploaded_at,
       error_code, created_at, updated_at, anonymized_at
FROM offline_conversion_queue
WHERE site_id = $1 AND id = ANY ($2::uuid[]) AND id > $3
ORDER BY id
LIMIT $4;

-- name: export_consent_history
SELECT id, session_id, previous_scopes, scopes, source, consent_at, recorded_at
FROM consent_changes
WHERE site_id = $1 AND session_id = ANY ($2::uuid[]) AND id > $3
ORDER BY id
LIMIT $4;

-- name: export_dead_letters
SELECT id, created_at, source, stage, reason, status, payload, redacted_at
FROM dead_letters
WHERE site_id = $1 AND id = ANY ($2::bigint[]) AND id > $3
ORDER BY id
LIMIT $4;

-- name: count_events
SELECT count(*)::bigint FROM events WHERE site_id = $1 AND session_id = ANY ($2::uuid[]);

-- name: count_call_actions
SELECT count(*)::bigint FROM call_actions WHERE site_id = $1 AND call_id = ANY ($2::uuid[]);

-- name: count_consent_history
SELECT count(*)::bigint FROM consent_changes WHERE site_id = $1 AND session_id = ANY ($2::uuid[]);

-- ---------------------------------------------------------------- retention

-- name: retention_sessions
-- One batch of sessions without analytics consent whose last activity is older than the
-- cutoff, locked (SKIP LOCKED: a session the partition is writing now waits for the next run).
-- A session starts before its last activity: `created_at < $1` is implied, and it is what the
-- retention index is on (an index on the last activity would make every session update
-- non-HOT; migration 0011).
SELECT site_id, id
FROM sessions
WHERE anonymized_at IS NULL AND NOT ('analytics' = ANY (consent_scopes))
  AND created_at < $1 AND last_activity_at < $1 AND created_month <= $2::date
ORDER BY created_at
LIMIT $3
FOR UPDATE SKIP LOCKED;

-- name: retention_count_sessions
SELECT count(*)::bigint AS sessions,
       coalesce(sum((SELECT count(*) FROM events e
                     WHERE e.site_id = s.site_id AND e.session_id = s.id AND e.anonymized_at IS NULL)), 0)::bigint
           AS events
FROM sessions s
WHERE s.anonymized_at IS NULL AND NOT ('analytics' = ANY (s.consent_scopes))
  AND s.created_at < $1 AND s.last_activity_at < $1 AND s.created_month <= $2::date;

-- name: retention_dead_letters
-- One batch of old dead letters, redacted with the same marker as an erase.
UPDATE dead_letters d
SET payload = jsonb_build_object('redacted', true, 'redacted_at', $3::timestamptz, 'reason', 'retention'),
    redacted_at = $3,
    status = CASE WHEN d.status = 'PENDING' THEN 'DISCARDED' ELSE d.status END
FROM (
    SELECT id FROM dead_letters
    WHERE redacted_at IS NULL AND created_at < $1
    ORDER BY created_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
) old
WHERE d.id = old.id
RETURNING d.id;

-- name: retention_count_dead_letters
SELECT count(*)::bigint FROM dead_letters WHERE redacted_at IS NULL AND created_at < $1;
