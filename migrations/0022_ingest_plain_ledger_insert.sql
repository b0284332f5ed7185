-- ingest_batch(): the idempotency gate tries a plain insert first (issue 10; what it decides
-- and writes is unchanged). Measured inside the function on 400-event calls of the bench's
-- events, alternating with 0021 on one server (docs/performance.md): the ledger and quota step
-- 3.1 to 3.5 us less per event (of about 15), the whole function 2.7 to 3.6.
--
-- `INSERT ... ON CONFLICT DO NOTHING` pays for every row what only a duplicate needs: a probe
-- of the arbiter index, then a speculative insert (a lock on a token, the index descent again,
-- and a WAL record that confirms the row). Nearly every batch has no duplicate, so the keys
-- now go in with a plain insert inside a block that catches `unique_violation`: the block's
-- subtransaction (one per batch) is undone at the first key already in the ledger, and the
-- batch then goes in through the ON CONFLICT insert as before (a client's retry, the same
-- event twice in one batch). Such a batch pays the failed insert's rows once more; a batch
-- of the usual kind uses one more transaction id (the subtransaction's).
-- The rest of ingest_batch() is that of 0021.

CREATE OR REPLACE FUNCTION ingest_batch(p_now timestamptz, p_sites uuid[], p_consent boolean, p_events ingest_batch_event[],
                             OUT status text, OUT remaining int[], OUT hints text)
LANGUAGE plpgsql
-- One plan per statement, kept for the connection's life: planning these statements anew on
-- every call (custom plans) would cost more than running them. Few statements, each doing a
-- whole step for the whole batch: a statement's start-up costs about as much as a handful of
-- rows.
SET plan_cache_mode = force_generic_plan
-- Every access is keyed: never a sequential scan, whatever the statistics said when a
-- connection planned (0017).
SET enable_seqscan = off
AS $$
DECLARE
    v_cur     date := date_trunc('month', p_now AT TIME ZONE 'UTC')::date;
    v_prev    date := (date_trunc('month', p_now AT TIME ZONE 'UTC') - interval '1 month')::date;
    -- how far back an earlier visit / click of the same fingerprint is looked for
    v_history date := (date_trunc('month', p_now AT TIME ZONE 'UTC') - interval '5 months')::date;
    -- when the batch's ledger rows expire (once per batch: adding days to a timestamptz looks
    -- up the time zone)
    v_expires timestamptz := p_now + interval '90 days';
    v_ym      text := utc_year_month(p_now);
    -- the batch's distinct sites in order, and whether it holds a system/consent event: the
    -- partition knows both (a statement of their own cost a fifth of a small call's start-up)
    v_sites   uuid[] := p_sites;
    v_consent boolean := coalesce(p_consent, false);
    v_state   "char"[];
    v_left    int[];
    v_sess    uuid[];
    v_month   date[];
    v_fresh   boolean[];
    v_track   boolean[];
    v_round   int[];
    v_want    int[];
    v_earlier boolean[];
    v_visits  int[];
    v_rounds  int;
    v_irounds int;
    v_renumber boolean;
    v_ntrack  int;
    v_isess   uuid[];
    v_xid     xid;
    v_new     boolean[];
    v_rank    bigint[];
    v_qsite   uuid[];
    v_qstate  "char"[];
    v_unranked boolean;
    v_got     int;
    v_gone    int;
    v_hints   text;
    v_lookup  boolean;
    v_clash   boolean;
    -- what step 4 found for each session id of the batch
    v_k_site  uuid[];
    v_k_sid   uuid[];
    v_k_alt   uuid[];
    v_k_own   date[];
    v_k_taken boolean[];
BEGIN
    -- (the batch in arrival order: every step below addresses an event by its position `i`)

    -- The month's usage rows of the batch's sites, locked in site order (created once a
    -- month): batches of one site are serialised here (also two writers during a resize), so
    -- the quota below is decided from counts nobody can move before COMMIT.
    SELECT count(*) INTO v_got
    FROM (SELECT 1 FROM site_usage_monthly u
          WHERE u.site_id = ANY (v_sites) AND u.year_month = v_ym
          ORDER BY u.site_id FOR UPDATE) AS locked;
    IF v_got < cardinality(v_sites) THEN
        INSERT INTO site_usage_monthly (site_id, year_month)
        SELECT x, v_ym FROM unnest(v_sites) AS x ORDER BY 1
        ON CONFLICT DO NOTHING;
        PERFORM 1 FROM site_usage_monthly u
        WHERE u.site_id = ANY (v_sites) AND u.year_month = v_ym
        ORDER BY u.site_id FOR UPDATE;
    END IF;

    -- 1-3, 9. The idempotency gate (a key already in the ledger is a duplicate), the quota in
    --    arrival order from the locked usage (a site without a plan row gets the plan columns'
    --    defaults; create_site always writes one), and the month's counters, which move in the
    --    same transaction as the ledger so quota and invoice never drift from it. The usage
    --    rows the quota reads are locked above, so they hold what they held before this batch
    --    until its usage update below.
    -- Every key is tried with a plain insert first (the usual batch: all new); the first key
    -- already there undoes that insert (the block's subtransaction) and the batch goes in
    -- through ON CONFLICT as before. An ON CONFLICT insert probes the primary key for each
    -- row, then inserts it speculatively (a lock, a second descent, a WAL record to confirm
    -- it); the plain one descends the index once. No other batch of these sites can insert
    -- a key meanwhile (the usage rows are locked above), so a unique violation here means a
    -- duplicate, never a race.
    BEGIN
        INSERT INTO ingest_idempotency AS l (
            site_id, idempotency_key, created_at, year_month, expires_at, billable, billing_state, billing_reason,
            idempotency_version, event_category, event_action, event_label)
        SELECT e.site, e.key, p_now, v_ym, v_expires, e.billable,
               CASE WHEN e.billable THEN 'ACCEPTED' ELSE 'NOT_BILLABLE' END, e.reason, e.ver, e.lc, e.la, e.ll
        -- (in arrival order: no other batch of these sites can insert keys before COMMIT, as
        -- their usage rows are locked above, so no order is needed against deadlocks, and
        -- sorting the rows by a 64-character key cost more than a microsecond per event)
        FROM unnest(p_events) AS e;
        GET DIAGNOSTICS v_got = ROW_COUNT;
    EXCEPTION WHEN unique_violation THEN
        INSERT INTO ingest_idempotency AS l (
            site_id, idempotency_key, created_at, year_month, expires_at, billable, billing_state, billing_reason,
            idempotency_version, event_category, event_action, event_label)
        SELECT e.site, e.key, p_now, v_ym, v_expires, e.billable,
               CASE WHEN e.billable THEN 'ACCEPTED' ELSE 'NOT_BILLABLE' END, e.reason, e.ver, e.lc, e.la, e.ll
        -- (in arrival order: no other batch of these sites can insert keys before COMMIT, as
        -- their usage rows are locked above, so no order is needed against deadlocks, and
        -- sorting the rows by a 64-character key cost more than a microsecond per event)
        FROM unnest(p_events) AS e
        ON CONFLICT (site_id, idempotency_key) DO NOTHING;
        GET DIAGNOSTICS v_got = ROW_COUNT;
    END;
    -- An event is new when its key went in: every key did when as many rows went in as the
    -- batch has (the usual case); otherwise the new ones are the ledger rows this transaction
    -- wrote (no other batch of these sites writes keys before COMMIT): its id as their xmin,
    -- and this batch's time (an old row frozen with the same raw xmin, 2^32 transactions ago,
    -- has another).
    IF v_got < cardinality(p_events) THEN
        v_xid := pg_current_xact_id()::xid;
        SELECT array_agg(l.xmin = v_xid AND l.created_at = p_now ORDER BY e.i) INTO v_new
        FROM unnest(p_events) AS e
        JOIN ingest_idempotency l ON l.site_id = e.site AND l.idempotency_key = e.key;
    END IF;
    -- The quota state of the k-th counted event of a site is decided with k - 1 counted before
    -- it in this batch (its rank); and whether a new event has no hint (else step 4 has nothing
    -- to look up). The ranks are the partition's when every event is new (`srank`: the event's
    -- place among its site's billable events in the batch); otherwise, or when an event came
    -- without one, they are counted here and the quota decided again.
    FOR attempt IN 1..2 LOOP
        IF attempt = 2 OR v_new IS NOT NULL THEN
            SELECT array_agg(x.rank ORDER BY x.i) INTO v_rank
            FROM (SELECT e.i, count(*) FILTER (WHERE e.billable AND coalesce(v_new[e.i], true))
                                  OVER (PARTITION BY e.site ORDER BY e.i ROWS UNBOUNDED PRECEDING) AS rank
                  FROM unnest(p_events) AS e) AS x;
        END IF;
        SELECT array_agg(q.state ORDER BY q.i), array_agg(q.remaining ORDER BY q.i),
               coalesce(bool_or(q.lookup), false), array_agg(q.site ORDER BY q.i),
               array_agg(CASE WHEN q.counted THEN q.state END ORDER BY q.i), coalesce(bool_or(q.unranked), false)
        INTO v_state, v_left, v_lookup, v_qsite, v_qstate, v_unranked
        FROM (
            SELECT b.i, b.site, b.billable AND b.new AS counted, b.new AND NOT b.hinted AS lookup,
                   b.billable AND b.new AND b.rank IS NULL AS unranked,
                   CASE WHEN NOT b.new THEN 'd'::"char"
                        WHEN NOT b.billable THEN 'a'::"char"
                        ELSE ingest_quota(coalesce(u.monthly_limit, 100000), coalesce(u.soft_limit_enabled, false),
                                          coalesce(u.hard_cap_multiplier, 2), u.event_count + b.rank - 1) END AS state,
                   CASE WHEN b.new AND b.billable
                        THEN greatest(coalesce(u.monthly_limit, 100000) - u.event_count - b.rank, 0)::int END AS remaining
            FROM (
                SELECT e.i, e.site, e.billable, coalesce(v_new[e.i], true) AS new,
                       CASE WHEN v_rank IS NULL THEN e.srank ELSE v_rank[e.i] END AS rank,
                       coalesce(e.hint IN (v_cur, v_prev), false) AS hinted
                FROM unnest(p_events) AS e
            ) AS b
            -- the batch's sites only (an index look-up each, however many sites there are)
            LEFT JOIN (
                SELECT x.site_id, x.event_count, y.monthly_limit, y.soft_limit_enabled, y.hard_cap_multiplier
                FROM site_usage_monthly x
                LEFT JOIN site_plans y ON y.site_id = x.site_id
                WHERE x.site_id = ANY (v_sites) AND x.year_month = v_ym
            ) AS u ON u.site_id = b.site
            -- (each value once per event: see step 5)
            OFFSET 0
        ) AS q;
        EXIT WHEN NOT v_unranked;
    END LOOP;
    UPDATE site_usage_monthly AS u
    SET event_count = u.event_count + c.billable,
        overage_count = u.overage_count + c.overage,
        rejected_count = u.rejected_count + c.rejected,
        updated_at = p_now
    FROM (
        SELECT q.site,
               count(*) FILTER (WHERE q.state IN ('a', 'o')) AS billable,
               count(*) FILTER (WHERE q.state = 'o') AS overage,
               count(*) FILTER (WHERE q.state = 'r') AS rejected
        FROM unnest(v_qsite, v_qstate) AS q(site, state)
        WHERE q.state IS NOT NULL
        GROUP BY q.site
    ) AS c
    -- (the batch's sites named again: the month's usage rows are then found by their key, not
    -- all of the month's rows read and matched)
    WHERE u.site_id = ANY (v_sites) AND u.year_month = v_ym AND u.site_id = c.site;

    -- The ledger rows of overage and refused events say so (only at the limit; a statement of
    -- its own because it must see the rows inserted above).
    IF 'o' = ANY (v_state) OR 'r' = ANY (v_state) THEN
        UPDATE ingest_idempotency AS l
        SET billable = (v_state[e.i] = 'o'),
            billing_state = CASE v_state[e.i] WHEN 'o' THEN 'OVERAGE' ELSE 'REJECTED_QUOTA' END,
            billing_reason = CASE v_state[e.i] WHEN 'o' THEN l.billing_reason ELSE 'rejected_quota' END
        FROM unnest(p_events) AS e
        WHERE v_state[e.i] IN ('o', 'r') AND l.site_id = e.site AND l.idempotency_key = e.key;
    END IF;

    -- 4. Per session id of the batch's new events: the month of the site's own session with
    --    that id (this or last month), and whether another site has a session with that id.
    --    An event the partition sends with a hint (`hint`: the month of the site's own session
    --    with that id, as the partition last wrote it) is not looked up: a hint of this or
    --    last month is taken as what the look-up would find, and step 6 checks it (a hinted
    --    session that is gone makes the batch fail unwritten, and the partition sends it again
    --    without hints). A hint of an older month is ignored: that session is no longer looked
    --    for. When every new event is hinted, this step has nothing to do. Otherwise a batch
    --    of 32 events or more looks its ids up with one index scan; a smaller one probes the
    --    primary key once per id. A probe starts an index scan of each month's partition for
    --    its id, which costs a large batch more than the scan and its hash join; for a few ids
    --    the probes cost less than starting that plan.
    IF NOT v_lookup THEN
        NULL;
    ELSIF cardinality(p_events) >= 32 THEN
        WITH k AS MATERIALIZED (
            SELECT DISTINCT e.site, e.sid, e.alt FROM unnest(p_events) AS e
            WHERE v_state[e.i] IN ('a', 'o') AND NOT coalesce(e.hint IN (v_cur, v_prev), false)
        ), hit AS MATERIALIZED (
            SELECT x.id, x.site_id, x.created_month
            FROM sessions x
            WHERE x.id = ANY (ARRAY(SELECT k.sid FROM k)) AND x.created_month IN (v_cur, v_prev)
        )
        SELECT array_agg(o.site), array_agg(o.sid), array_agg(o.alt), array_agg(o.own), array_agg(o.taken)
        INTO v_k_site, v_k_sid, v_k_alt, v_k_own, v_k_taken
        FROM (
            SELECT k.site, k.sid, k.alt,
                   max(h.created_month) FILTER (WHERE h.site_id = k.site) AS own,
                   coalesce(bool_or(h.site_id <> k.site), false) AS taken
            FROM k
            LEFT JOIN hit h ON h.id = k.sid
            GROUP BY k.site, k.sid, k.alt
        ) AS o;
    ELSE
        SELECT array_agg(k.site), array_agg(k.sid), array_agg(k.alt), array_agg(p.own), array_agg(p.taken)
        INTO v_k_site, v_k_sid, v_k_alt, v_k_own, v_k_taken
        FROM (SELECT DISTINCT e.site, e.sid, e.alt FROM unnest(p_events) AS e
              WHERE v_state[e.i] IN ('a', 'o') AND NOT coalesce(e.hint IN (v_cur, v_prev), false)) AS k
        CROSS JOIN LATERAL (
            SELECT max(x.created_month) FILTER (WHERE x.site_id = k.site) AS own,
                   coalesce(bool_or(x.site_id <> k.site), false) AS taken
            FROM sessions x
            WHERE x.id = k.sid AND x.created_month IN (v_cur, v_prev)
        ) AS p;
    END IF;

    -- 5. The session of every stored event, from what step 4 found: the site's own session
    --    with that id (this or last month), else, when another site holds the id, the site's
    --    derived id; else a new session in the server's current UTC month. A hinted event's
    --    session is the hinted one. What is written from here on: every stored event, except a
    --    consent event without `analytics` for a session that does not exist (a choice to be
    --    left alone: its ledger row is all that is kept). And the fingerprint facts, read
    --    before this batch changes any session. And the rounds of the session upserts below.
    --    One pass over the batch, each event's values computed once (the fences, `OFFSET 0`,
    --    keep the planner from copying an expression into every place that uses it): 0020's
    --    chain of materialised steps, with a sort of the batch by session for the rounds and
    --    one by position for the answers, cost 2 to 3 us more per event (docs/performance.md).
    WITH o AS (
        SELECT u.site, u.sid, u.alt, u.own, u.taken
        FROM unnest(v_k_site, v_k_sid, v_k_alt, v_k_own, v_k_taken) AS u(site, sid, alt, own, taken)
    ), r AS (
        -- the derived id only when another site has the session id
        SELECT o.site, o.sid, o.alt, o.own, o.taken, a.own AS own_alt, a.taken AS alt_taken
        FROM o
        CROSS JOIN LATERAL (
            SELECT max(x.created_month) FILTER (WHERE x.site_id = o.site) AS own,
                   coalesce(bool_or(x.site_id <> o.site), false) AS taken
            FROM sessions x
            WHERE o.own IS NULL AND o.taken AND x.id = o.alt AND x.created_month IN (v_cur, v_prev)
        ) AS a
    ), m AS (
        SELECT r.site, r.sid,
               CASE WHEN r.own IS NOT NULL OR NOT r.taken THEN r.sid ELSE r.alt END AS id,
               CASE WHEN r.own IS NOT NULL THEN r.own
                    WHEN NOT r.taken THEN v_cur
                    ELSE coalesce(r.own_alt, v_cur) END AS month,
               CASE WHEN r.own IS NOT NULL THEN false
                    WHEN NOT r.taken THEN true
                    ELSE r.own_alt IS NULL END AS fresh,
               r.own IS NULL AND r.taken AND r.own_alt IS NULL AND r.alt_taken AS clash
        FROM r
    )
    SELECT array_agg(g.id ORDER BY g.i), array_agg(g.month ORDER BY g.i), array_agg(g.fresh ORDER BY g.i),
           array_agg(g.track ORDER BY g.i),
           -- The fingerprint facts, each only for the events that need it (a subquery in a CASE
           -- branch that is not taken never runs): how many sessions of the visitor the site
           -- saw in the last 7 days (a new session), and whether an earlier session of it on
           -- this site had a click id (an Ads Assisted candidate: most events without a click
           -- id) -- from its 100 latest sessions at most, however many it has. A candidate
           -- reads the visitor's sessions only when one of them has a click id at all: one
           -- probe of session_clicks, usually finding nothing.
           array_agg(CASE WHEN g.fresh AND g.track AND g.fp IS NOT NULL THEN (
                   SELECT count(*) FILTER (WHERE x.created_at >= p_now - interval '7 days')::int
                   FROM (SELECT y.created_at FROM sessions y
                         WHERE y.site_id = g.site AND y.fingerprint = g.fp
                           AND y.created_month BETWEEN v_history AND v_cur
                         ORDER BY y.created_at DESC
                         LIMIT 100) AS x)
                    ELSE 0 END ORDER BY g.i),
           array_agg(CASE WHEN g.assist AND g.track AND g.fp IS NOT NULL
                         AND EXISTS (SELECT 1 FROM session_clicks z
                                     WHERE z.site_id = g.site AND z.fingerprint = g.fp
                                       AND z.session_month BETWEEN v_history AND v_cur
                                       AND z.session_id <> g.id) THEN (
                   SELECT coalesce(bool_or(x.id <> g.id
                                           AND (x.gclid IS NOT NULL OR x.wbraid IS NOT NULL OR x.gbraid IS NOT NULL)),
                                   false)
                   FROM (SELECT y.id, y.gclid, y.wbraid, y.gbraid FROM sessions y
                         WHERE y.site_id = g.site AND y.fingerprint = g.fp
                           AND y.created_month BETWEEN v_history AND v_cur
                         ORDER BY y.created_at DESC
                         LIMIT 100) AS x)
                    ELSE false END ORDER BY g.i),
           coalesce(bool_or(g.clash), false),
           -- the partition's rounds hold when every written event has the session id it was sent
           -- with and is the first of its id in the batch (`nth`, the usual case)
           coalesce(bool_or(g.track AND (g.id <> g.sid OR g.nth IS DISTINCT FROM 1)), false),
           -- what the partition may send as this event's hint next time: its session's month
           -- (c: this month, p: last month) when the session has the id the event was sent with
           string_agg(CASE WHEN NOT g.track OR g.id <> g.sid THEN '-'
                           WHEN g.month = v_cur THEN 'c'
                           WHEN g.month = v_prev THEN 'p'
                           ELSE '-' END, '' ORDER BY g.i),
           count(*) FILTER (WHERE g.track)::int,
           array_agg(CASE WHEN g.track THEN 1 END ORDER BY g.i),
           array_agg(g.id) FILTER (WHERE g.track AND g.has_intent)
    INTO v_sess, v_month, v_fresh, v_track, v_visits, v_earlier, v_clash, v_renumber, v_hints, v_ntrack, v_round,
         v_isess
    FROM (
        SELECT b.i, b.site, b.sid, b.fp, b.assist, b.has_intent, b.nth,
               CASE WHEN b.hinted THEN b.sid ELSE m.id END AS id,
               CASE WHEN b.hinted THEN b.hint ELSE m.month END AS month,
               CASE WHEN b.hinted THEN false ELSE m.fresh END AS fresh,
               CASE WHEN b.hinted THEN false ELSE m.clash END AS clash,
               b.new AND NOT (b.consent_set AND NOT b.hinted AND m.fresh
                              AND NOT coalesce('analytics' = ANY (string_to_array(b.consent, ',')), false)) AS track
        FROM (
            -- a new event with a hint of this or last month: step 4 did not look it up
            SELECT e.i, e.site, e.sid, e.hint, e.fp, e.assist, e.intent IS NOT NULL AS has_intent, e.nth,
                   e.consent_set, e.consent, s.new, s.new AND coalesce(e.hint IN (v_cur, v_prev), false) AS hinted
            FROM unnest(p_events) AS e
            CROSS JOIN LATERAL (SELECT v_state[e.i] IN ('a', 'o') AS new OFFSET 0) AS s
        ) AS b
        LEFT JOIN m ON m.site = b.site AND m.sid = b.sid
        OFFSET 0
    ) AS g;
    IF v_clash THEN
        RAISE EXCEPTION 'session ids taken by another site' USING ERRCODE = '40001';
    END IF;
    -- The rounds: the k-th written event of each session is in round k. When a session has
    -- more than one event in the batch, or an event went to a derived id, they are numbered
    -- here (a sort of the session ids only); otherwise every written event is in round 1.
    IF v_renumber THEN
        SELECT array_agg(x.n ORDER BY x.i), max(x.n) INTO v_round, v_rounds
        FROM (SELECT u.i, CASE WHEN u.t THEN row_number() OVER (PARTITION BY u.s, u.t ORDER BY u.i) END AS n
              FROM unnest(v_sess, v_track) WITH ORDINALITY AS u(s, t, i)) AS x;
        SELECT array_agg(c.n ORDER BY c.k) INTO v_want
        FROM (SELECT r AS k, count(*)::int AS n FROM unnest(v_round) AS r WHERE r IS NOT NULL GROUP BY r) AS c;
    ELSE
        v_rounds := CASE WHEN v_ntrack > 0 THEN 1 ELSE 0 END;
        v_want := ARRAY[v_ntrack];
    END IF;
    -- the rounds of intents: the most intent events one session has in the batch
    v_irounds := CASE WHEN cardinality(v_isess) > 1
                      THEN (SELECT max(c.n) FROM (SELECT count(*) AS n FROM unnest(v_isess) AS s GROUP BY s) AS c)
                      ELSE coalesce(cardinality(v_isess), 0) END;

    -- 6. Sessions, one upsert per round: round k applies the k-th written event of each
    --    session, so a session with several events in the batch gets exactly what it would
    --    get from them one at a time. Descriptive fields only fill empty columns (never
    --    overwritten, never set back to null); activity stats grow; a plain event can only
    --    narrow the consent scopes, a system/consent event sets them (below).
    --    A session found in step 4 (or hinted) proposes a previous-visit count of -1, which
    --    only an insert would write (an update leaves the count alone, and a real count is
    --    never negative): a row that comes back with it is a session that was gone (erased,
    --    or past retention, since the partition wrote it or since step 4 read it). The
    --    batch then fails unwritten, and the partition sends it again without hints.
    --    A session that has a click id and a fingerprint after its upsert is one of its
    --    visitor's click sessions (session_clicks; the row may already be there).
    FOR k IN 1..coalesce(v_rounds, 0) LOOP
        WITH up AS (
        INSERT INTO sessions AS s (
            id, site_id, created_month, created_at, last_activity_at, ip_address, entry_page, exit_page,
            referrer_host, gclid, wbraid, gbraid, other_click_ids, utm_source, utm_medium, utm_campaign,
            utm_term, utm_content, utm_adgroup, matchtype, ads_network, ads_placement, ads_adposition,
            ads_target_id, ads_feed_item_id, device_type, device_os, browser, browser_language,
            screen_width, screen_height, city, district, fingerprint, attribution_source, traffic_source,
            traffic_medium, is_returning, previous_visit_count, event_count, total_duration_sec,
            total_active_seconds, max_scroll_percentage, cta_hover_count, lead_score, consent_scopes,
            consent_updated_at)
        -- (an existing session proposes the start of its month as created_at, which the
        -- conflict then leaves alone: the month trigger must not move it to another month)
        SELECT v_sess[e.i], e.site, v_month[e.i],
               CASE WHEN v_fresh[e.i] THEN p_now ELSE v_month[e.i]::timestamp AT TIME ZONE 'UTC' END,
               to_timestamp(e.at_ms::float8 / 1000), e.ip::inet, e.url,
               coalesce(e.exit_page, e.url), e.ref, e.gclid, e.wbraid, e.gbraid, coalesce(e.other::jsonb, '{}'),
               e.utm_source, e.utm_medium, e.utm_campaign, e.utm_term, e.utm_content, e.utm_adgroup, e.matchtype,
               e.network, e.placement, e.adposition, e.targetid, e.feeditemid, e.device_type, e.device_os,
               e.browser, e.lan, e.sw, e.sh, e.city, e.district, e.fp,
               CASE WHEN e.assist AND v_earlier[e.i] THEN e.attr_a ELSE e.attr END, e.src, e.medium,
               v_visits[e.i] > 0, CASE WHEN v_fresh[e.i] THEN v_visits[e.i] ELSE -1 END,
               CASE WHEN e.hb THEN 0 ELSE 1 END, coalesce(e.dur, 0),
               coalesce(e.active, 0), coalesce(e.scroll, 0), coalesce(e.cta, 0),
               CASE WHEN e.assist AND v_earlier[e.i] THEN e.score_a ELSE e.score END,
               coalesce(string_to_array(e.consent, ','), '{}'), to_timestamp(e.at_ms::float8 / 1000)
        FROM unnest(p_events) AS e
        WHERE v_round[e.i] = k
        -- (not sorted, as the ledger above: only a batch of the same site writes its sessions,
        -- and it waits for the usage row; another writer -- erase, retention -- that meets
        -- this one in a deadlock makes the batch fail unwritten, and the partition runs it
        -- again. Sorting the proposed rows cost more than a tenth of this statement.)
        ON CONFLICT (id, created_month) DO UPDATE SET
            last_activity_at      = greatest(s.last_activity_at, EXCLUDED.last_activity_at),
            exit_page             = coalesce(EXCLUDED.exit_page, s.exit_page),
            ip_address            = coalesce(s.ip_address, EXCLUDED.ip_address),
            entry_page            = coalesce(s.entry_page, EXCLUDED.entry_page),
            referrer_host         = coalesce(s.referrer_host, EXCLUDED.referrer_host),
            gclid                 = coalesce(s.gclid, EXCLUDED.gclid),
            wbraid                = coalesce(s.wbraid, EXCLUDED.wbraid),
            gbraid                = coalesce(s.gbraid, EXCLUDED.gbraid),
            other_click_ids       = CASE WHEN EXCLUDED.other_click_ids = '{}' THEN s.other_click_ids
                                         ELSE EXCLUDED.other_click_ids || s.other_click_ids END,
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
            consent_scopes        = CASE WHEN s.consent_scopes <@ EXCLUDED.consent_scopes THEN s.consent_scopes
                                         ELSE ARRAY(SELECT c FROM unnest(s.consent_scopes) AS c
                                                    WHERE c = ANY (EXCLUDED.consent_scopes)) END,
            consent_updated_at    = CASE WHEN s.consent_scopes <@ EXCLUDED.consent_scopes THEN s.consent_updated_at
                                         ELSE EXCLUDED.consent_updated_at END
        WHERE s.site_id = EXCLUDED.site_id
        RETURNING s.previous_visit_count, s.id, s.site_id, s.created_month, s.fingerprint,
                  s.gclid IS NOT NULL OR s.wbraid IS NOT NULL OR s.gbraid IS NOT NULL AS clicked
        ), clicks AS (
            INSERT INTO session_clicks (site_id, fingerprint, session_id, session_month)
            SELECT up.site_id, up.fingerprint, up.id, up.created_month
            FROM up
            WHERE up.clicked AND up.fingerprint IS NOT NULL
            ON CONFLICT DO NOTHING
        )
        SELECT count(*), count(*) FILTER (WHERE up.previous_visit_count < 0) INTO v_got, v_gone FROM up;
        IF v_gone > 0 THEN
            RAISE EXCEPTION 'a session the batch expected is gone' USING ERRCODE = '40001';
        END IF;
        IF v_got <> v_want[k] THEN
            -- a row that exists for another site was not updated: its id was taken concurrently
            RAISE EXCEPTION 'session id taken by another site' USING ERRCODE = '40001';
        END IF;

        IF v_consent THEN
            -- A system/consent event records the visitor's choice as it is, raising or lowering.
            UPDATE sessions AS s
            SET consent_scopes = coalesce(string_to_array(e.consent, ','), '{}'),
                consent_updated_at = to_timestamp(e.at_ms::float8 / 1000)
            FROM unnest(p_events) AS e
            WHERE v_round[e.i] = k AND e.consent_set
              AND s.id = v_sess[e.i] AND s.created_month = v_month[e.i] AND s.site_id = e.site
              AND s.consent_scopes IS DISTINCT FROM coalesce(string_to_array(e.consent, ','), '{}');
        END IF;
    END LOOP;

    -- 7. Event rows (heartbeats only update their session). The partition's metadata already
    --    holds the score and attribution without an earlier click; only an Ads Assisted event
    --    changes them. The id is the partition's (`row_id`, time-ordered: the primary key grows
    --    at its right edge instead of touching a random page of the index for every row).
    INSERT INTO events (id, session_id, session_month, site_id, created_at, url, event_category, event_action,
                        event_label, event_value, metadata, ingest_key)
    SELECT e.row_id,
           v_sess[e.i], v_month[e.i], e.site, to_timestamp(e.at_ms::float8 / 1000), e.url,
           coalesce(e.lc, 'interaction'), coalesce(e.la, 'view'), e.ll, e.ev,
           CASE WHEN e.assist AND v_earlier[e.i]
                THEN e.meta::jsonb || jsonb_build_object('lead_score', e.score_a, 'attribution_source', e.attr_a)
                ELSE e.meta::jsonb END,
           e.key
    FROM unnest(p_events) AS e
    WHERE v_track[e.i] AND NOT e.hb;

    -- 8. Intents: one card per session (intent_stamp 'session:<id>'), one round per intent
    --    event of the session. Counters add up, the latest action and target win, the score
    --    only grows, the best click id (the event's, else its session's) is kept; the status is
    --    never touched here, so a sealed or junked intent stays so.
    FOR k IN 1..coalesce(v_irounds, 0) LOOP
        INSERT INTO calls AS c (
            site_id, source, status, phone_number, matched_session_id, matched_session_month, matched_fingerprint,
            matched_at, lead_score, lead_score_at_match, intent_stamp, intent_action, intent_target, intent_page_url,
            intent_phone_clicks, intent_whatsapp_clicks, intent_form_submits, intent_last_at, click_id,
            click_id_type, created_at)
        SELECT e.site, 'click', 'intent', e.phone, v_sess[e.i], v_month[e.i], coalesce(s.fingerprint, e.fp),
               to_timestamp(e.at_ms::float8 / 1000), sc.score, sc.score, 'session:' || v_sess[e.i]::text, e.intent,
               e.target, left(e.page, 2048), (e.intent = 'phone')::int, (e.intent = 'whatsapp')::int,
               (e.intent = 'form')::int, to_timestamp(e.at_ms::float8 / 1000), best.id, best.type,
               to_timestamp(e.at_ms::float8 / 1000)
        FROM (
            SELECT x.*, row_number() OVER (PARTITION BY v_sess[x.i] ORDER BY x.i) AS n
            FROM unnest(p_events) AS x
            WHERE v_track[x.i] AND x.intent IS NOT NULL
        ) AS e
        JOIN sessions s ON s.id = v_sess[e.i] AND s.created_month = v_month[e.i]
        CROSS JOIN LATERAL (
            SELECT CASE WHEN e.assist AND v_earlier[e.i] THEN e.score_a ELSE e.score END AS score
        ) AS sc
        CROSS JOIN LATERAL best_click_id(e.click_id, e.click_type, s.gclid, s.wbraid, s.gbraid) AS best
        WHERE e.n = k
        ORDER BY e.site, v_sess[e.i]
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
                                               OR click_id_rank(EXCLUDED.click_id_type) < click_id_rank(c.click_id_type)
                                          THEN coalesce(EXCLUDED.click_id, c.click_id) ELSE c.click_id END,
            click_id_type          = CASE WHEN c.click_id IS NULL
                                               OR click_id_rank(EXCLUDED.click_id_type) < click_id_rank(c.click_id_type)
                                          THEN coalesce(EXCLUDED.click_id_type, c.click_id_type)
                                          ELSE c.click_id_type END;
    END LOOP;

    status := array_to_string(v_state::text[], '');
    remaining := v_left;
    hints := v_hints;
END
$$;
