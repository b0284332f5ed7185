/*! OpsMantik tracker (core.js) — plain JavaScript, no build step. See SPEC.md §2.
 *
 * <script src="https://<gateway>/assets/core.js" data-ops-site-id="<public id>"
 *         data-consent="analytics,marketing" async></script>
 *
 * Every event carries a client event id (eid) so a retry or a beacon re-send is stored
 * once. Events wait in an outbox in localStorage and are sent in batches; on page hide
 * the pending batch goes by sendBeacon and stays in the outbox until a 2xx removes it.
 *
 * Consent: nothing is stored or sent without the "analytics" scope. A page starts with the
 * scopes of data-consent (or window.opsmantikConsent); a consent banner changes them at any
 * time with opsmantik.consent(["analytics", "marketing"]), which records the new scopes for
 * the session (a system/consent event). Withdrawing "analytics" drops what waits in the
 * outbox and stops sending from that moment; only the withdrawal itself still goes out.
 * When the tracker sends nothing it says why, once, in the browser console.
 */
(function () {
  'use strict';

  var w = window;
  var d = document;
  if (w.__opsmantikTrackerInitialized) return;

  var VERSION = '1.0.0';
  var SESSION_IDLE_MS = 30 * 60 * 1000;
  var MAX_OUTBOX = 100;
  var MAX_BATCH_EVENTS = 20;
  var MAX_BATCH_BYTES = 50 * 1024;
  var MAX_BEACON_EVENTS = 100;
  var MAX_BEACON_BYTES = 60 * 1024;
  var MIN_GAP_MS = 2000;
  var HEARTBEAT_MS = 60 * 1000;
  var FETCH_TIMEOUT_MS = 5000;
  var K = {
    sid: 'opsmantik_sid',
    sidAt: 'opsmantik_sid_at',
    fp: 'opsmantik_fp',
    landing: 'opsmantik_landing',
    click: 'opsmantik_click_',
    outbox: 'opsmantik_outbox_v3',
    debug: 'opsmantik_debug'
  };
  var CLICK_IDS = ['gclid', 'wbraid', 'gbraid'];
  var TEMPLATE_KEYS = ['utm_source', 'utm_medium', 'utm_campaign', 'utm_term', 'utm_content', 'utm_adgroup',
    'matchtype', 'network', 'placement', 'adposition', 'targetid', 'feeditemid', 'device', 'devicemodel',
    'loc_interest_ms', 'loc_physical_ms'];
  var OTHER_CLICK_IDS = ['fbclid', 'msclkid', 'ttclid', 'dclid', 'gclsrc'];

  // ------------------------------------------------------------------ configuration

  function attr(el, name) { return el && el.getAttribute ? el.getAttribute(name) : null; }

  function findScript() {
    var s = d.currentScript;
    if (s && (attr(s, 'data-ops-site-id') || attr(s, 'data-site-id'))) return s;
    s = d.querySelector('script[data-ops-site-id],script[data-site-id]');
    if (s) return s;
    var all = d.getElementsByTagName('script');
    for (var i = 0; i < all.length; i++) {
      if (/(ux-)?core\.js/.test(all[i].src || '')) return all[i];
    }
    return null;
  }

  var script = findScript();
  var cfg = w.opsmantikConfig || w.opmantikConfig || {};
  var siteId = attr(script, 'data-ops-site-id') || attr(script, 'data-site-id') || cfg.siteId;
  if (!siteId) {
    if (w.console) w.console.warn('[opsmantik] no data-ops-site-id on the script tag; tracker not started');
    return;
  }
  w.__opsmantikTrackerInitialized = true;

  function apiUrl() {
    var explicit = attr(script, 'data-api') || cfg.apiUrl;
    if (explicit) return explicit;
    try {
      return new URL(script.src, location.href).origin + '/api/sync';
    } catch (e) {
      return location.origin + '/api/sync';
    }
  }
  var API = apiUrl();

  // ------------------------------------------------------------------ storage

  function store(kind) {
    try { return kind === 'local' ? w.localStorage : w.sessionStorage; } catch (e) { return null; }
  }
  function get(kind, key) {
    var s = store(kind);
    try { return s ? s.getItem(key) : null; } catch (e) { return null; }
  }
  function set(kind, key, value) {
    var s = store(kind);
    try { if (s) s.setItem(key, value); } catch (e) { /* full or blocked: keep going */ }
  }
  var debug = get('local', K.debug) === '1';
  function log() {
    if (debug && w.console) w.console.log.apply(w.console, ['[opsmantik]'].concat([].slice.call(arguments)));
  }

  // ------------------------------------------------------------------ identity

  function uuid4() {
    if (w.crypto && w.crypto.randomUUID) return w.crypto.randomUUID();
    var b = new Uint8Array(16);
    if (w.crypto && w.crypto.getRandomValues) w.crypto.getRandomValues(b);
    else for (var i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = [];
    for (var j = 0; j < 16; j++) h.push((b[j] + 0x100).toString(16).slice(1));
    return h.slice(0, 4).join('') + '-' + h.slice(4, 6).join('') + '-' + h.slice(6, 8).join('') + '-' +
      h.slice(8, 10).join('') + '-' + h.slice(10, 16).join('');
  }
  var V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/i;

  // A session is one tab's visit: a new id after 30 minutes without activity. Activity is
  // what the visitor does (input, page views, clicks); a visible tab's heartbeat is not, so
  // a tab left open still ends its session after 30 idle minutes.
  function sessionId(touch) {
    var now = Date.now();
    var sid = get('session', K.sid);
    var at = parseInt(get('session', K.sidAt) || '0', 10);
    var fresh = !sid || !V4.test(sid) || !at || now - at > SESSION_IDLE_MS;
    if (fresh) {
      sid = uuid4();
      set('session', K.sid, sid);
      // click ids belong to the session they came with; the landing page of the new
      // session carries its own (and its UTM/template parameters)
      CLICK_IDS.forEach(function (k) {
        try { var s = store('session'); if (s) s.removeItem(K.click + k); } catch (e) { /* blocked */ }
      });
      set('session', K.landing, JSON.stringify(templateParams(urlParams())));
    }
    if (fresh || touch) set('session', K.sidAt, String(now));
    return sid;
  }

  function idle() {
    var at = parseInt(get('session', K.sidAt) || '0', 10);
    return !at || Date.now() - at > SESSION_IDLE_MS;
  }

  // Input keeps the session alive (at most one storage write per 5 s); after 30 idle
  // minutes the first input starts a new session.
  var lastTouch = 0;
  function touchActivity() {
    var now = Date.now();
    if (now - lastTouch < 5000) return;
    lastTouch = now;
    sessionId(true);
  }

  // cyrb53: a small, stable 53-bit string hash (not cryptographic; an identifier only)
  function hash53(str) {
    var h1 = 0xdeadbeef, h2 = 0x41c6ce57;
    for (var i = 0; i < str.length; i++) {
      var ch = str.charCodeAt(i);
      h1 = Math.imul(h1 ^ ch, 2654435761);
      h2 = Math.imul(h2 ^ ch, 1597334677);
    }
    h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
    h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
    return (4294967296 * (2097151 & h2) + (h1 >>> 0)).toString(36);
  }

  function fingerprint() {
    var fp = get('local', K.fp);
    if (fp) return fp;
    var tz = '';
    try { tz = Intl.DateTimeFormat().resolvedOptions().timeZone || ''; } catch (e) { /* old browser */ }
    var scr = w.screen || {};
    fp = hash53([navigator.userAgent, navigator.language, scr.width + 'x' + scr.height + 'x' + scr.colorDepth,
      tz, new Date().getTimezoneOffset()].join('|'));
    set('local', K.fp, fp);
    return fp;
  }

  // Query and fragment parameters; fragment values win (single-page apps: #/page?gclid=...).
  function urlParams() {
    var out = {};
    function parse(q) {
      if (!q) return;
      q.split('&').forEach(function (pair) {
        var i = pair.indexOf('=');
        if (i <= 0) return;
        try {
          var v = decodeURIComponent(pair.slice(i + 1).replace(/\+/g, ' '));
          if (v) out[decodeURIComponent(pair.slice(0, i))] = v;
        } catch (e) { /* malformed escape */ }
      });
    }
    parse(location.search.replace(/^\?/, ''));
    var h = location.hash.replace(/^#/, '').replace(/^\?/, '');
    if (h.indexOf('?') >= 0) h = h.slice(h.indexOf('?') + 1);
    if (h.indexOf('=') >= 0) parse(h);
    return out;
  }

  function templateParams(params) {
    var out = {};
    TEMPLATE_KEYS.forEach(function (k) { if (params[k]) out[k] = String(params[k]).slice(0, 512); });
    return out;
  }

  // Click ids persist for the tab's session: the URL wins, else the stored value.
  function clickIds(params) {
    var out = {};
    CLICK_IDS.forEach(function (k) {
      var v = params[k] || get('session', K.click + k);
      if (v) {
        set('session', K.click + k, v);
        out[k] = String(v).slice(0, 512);
      }
    });
    OTHER_CLICK_IDS.forEach(function (k) { if (params[k]) out[k] = String(params[k]).slice(0, 512); });
    return out;
  }

  // ------------------------------------------------------------------ consent

  function consentScopes() {
    var raw = w.opsmantikConsent;
    if (raw == null) raw = attr(script, 'data-consent') || cfg.consent;
    return normalizeScopes(raw);
  }
  function hasAnalytics() { return consentScopes().indexOf('analytics') >= 0; }
  function normalizeScopes(raw) {
    if (raw == null) return [];
    if (typeof raw === 'string') raw = raw.split(/[\s,]+/);
    var out = [];
    for (var i = 0; i < raw.length; i++) {
      var s = String(raw[i] || '').trim().toLowerCase();
      if (s && out.indexOf(s) < 0) out.push(s);
    }
    return out.sort();
  }

  // Why nothing is sent, said once per page (not only in debug mode).
  var warned = {};
  function warnOnce(key, message) {
    if (warned[key] || !w.console) return;
    warned[key] = true;
    (w.console.warn || w.console.log).call(w.console, '[opsmantik] ' + message);
  }
  function warnNoConsent() {
    warnOnce('consent', 'no "analytics" consent: nothing is stored or sent. A consent banner passes the ' +
      'visitor\'s choice with data-consent="analytics,marketing" on the script tag, window.opsmantikConsent, ' +
      'or opsmantik.consent(["analytics", "marketing"]).');
  }
  function isConsentEvent(payload) { return payload.ec === 'system' && payload.ea === 'consent'; }

  // ------------------------------------------------------------------ engagement pulse

  var pulse = { scroll: 0, hovers: 0, activeMs: 0, visibleSince: d.visibilityState === 'visible' ? Date.now() : 0 };
  function activeSec() {
    var ms = pulse.activeMs + (pulse.visibleSince ? Date.now() - pulse.visibleSince : 0);
    return Math.round(ms / 1000);
  }
  function scrollPct() {
    var el = d.documentElement;
    var height = Math.max(el.scrollHeight, d.body ? d.body.scrollHeight : 0);
    if (!height) return 0;
    return Math.min(100, Math.round(((w.scrollY || el.scrollTop || 0) + w.innerHeight) / height * 100));
  }

  // ------------------------------------------------------------------ events

  function baseMeta() {
    var params = urlParams();
    var meta = clickIds(params);
    var tpl = templateParams(params);
    if (!Object.keys(tpl).length) {
      try { tpl = JSON.parse(get('session', K.landing) || '{}') || {}; } catch (e) { tpl = {}; }
    }
    for (var k in tpl) if (Object.prototype.hasOwnProperty.call(tpl, k)) meta[k] = tpl[k];
    meta.fp = fingerprint();
    meta.lan = navigator.language || '';
    if (w.screen) { meta.sw = w.screen.width; meta.sh = w.screen.height; }
    meta.dpr = w.devicePixelRatio || 1;
    var city = attr(script, 'data-geo-city');
    var district = attr(script, 'data-geo-district');
    if (city) meta.city = city;
    if (district) meta.district = district;
    meta.om_tracker_version = VERSION;
    return meta;
  }

  function send(ec, ea, el, ev, extra) {
    var consentEvent = ec === 'system' && ea === 'consent';
    if (!hasAnalytics() && !consentEvent) { warnNoConsent(); log('not sent', ec, ea); return null; }
    // heartbeat and session_end are not activity (see sessionId); the others are
    var passive = ec === 'system' && (ea === 'heartbeat' || ea === 'session_end');
    var sid = sessionId(!passive); // first: a new session forgets the old one's click ids
    // a consent record carries the decision only, not the visitor's device and click data
    var meta = consentEvent ? { om_tracker_version: VERSION } : baseMeta();
    if (ec === 'conversion' || ea === 'heartbeat' || ea === 'session_end') {
      meta.scroll_pct = pulse.scroll;
      meta.cta_hovers = pulse.hovers;
      meta.active_sec = activeSec();
    }
    if (extra) for (var k in extra) if (Object.prototype.hasOwnProperty.call(extra, k)) meta[k] = extra[k];
    var payload = {
      s: siteId,
      u: location.href.slice(0, 4096),
      eid: uuid4(),
      sid: sid,
      ec: ec,
      ea: ea,
      el: el == null ? null : String(el).slice(0, 512),
      ev: ev == null ? null : ev,
      r: (d.referrer || '').slice(0, 2048),
      consent: consentScopes(),
      meta: meta
    };
    enqueue(payload);
    schedule(ec === 'conversion' ? 0 : 300);
    return payload.eid;
  }

  // ------------------------------------------------------------------ outbox

  function loadQueue() {
    try {
      var q = JSON.parse(get('local', K.outbox) || '[]');
      return Array.isArray(q) ? q : [];
    } catch (e) { return []; }
  }
  function saveQueue(q) { set('local', K.outbox, JSON.stringify(q)); }

  function enqueue(payload) {
    var q = loadQueue();
    q.push({ id: payload.eid, ts: Date.now(), payload: payload, attempts: 0, next: 0 });
    if (q.length > MAX_OUTBOX) q = q.slice(q.length - MAX_OUTBOX); // the oldest go first
    saveQueue(q);
  }

  function removeIds(ids) {
    var q = loadQueue().filter(function (e) { return ids.indexOf(e.id) < 0; });
    saveQueue(q);
  }

  function pick(q, now, maxEvents, maxBytes, ignoreDue) {
    var batch = [], size = 2;
    for (var i = 0; i < q.length && batch.length < maxEvents; i++) {
      var e = q[i];
      if (!ignoreDue && e.next > now) continue;
      if (e.solo && batch.length) continue;
      var len = JSON.stringify(e.payload).length + 1;
      if (batch.length && size + len > maxBytes) break;
      batch.push(e);
      size += len;
      if (e.solo) break;
    }
    return batch;
  }

  function body(batch) {
    if (batch.length === 1) return JSON.stringify(batch[0].payload);
    return JSON.stringify({ events: batch.map(function (e) { return e.payload; }) });
  }

  var inFlight = false;
  var lastFlush = 0;
  var timer = null;
  var quotaPausedUntil = 0;

  function schedule(delay) {
    var now = Date.now();
    var at = Math.max(now + (delay || 0), lastFlush + MIN_GAP_MS);
    if (timer) {
      if (timer.at <= at) return;
      clearTimeout(timer.id);
    }
    timer = { at: at, id: setTimeout(function () { timer = null; flush(); }, at - now) };
  }

  function backoff(entry, base, cap, retryAfterS) {
    entry.attempts = (entry.attempts || 0) + 1;
    var delay = Math.min(cap, base * Math.pow(2, entry.attempts - 1));
    if (retryAfterS && retryAfterS * 1000 > delay) delay = Math.min(retryAfterS * 1000, 32 * 24 * 3600 * 1000);
    entry.next = Date.now() + delay + Math.floor(Math.random() * 1000);
  }

  function settle(batch, status, headers) {
    var ids = batch.map(function (e) { return e.id; });
    var retryAfter = headers ? parseInt(headers.get('Retry-After') || '0', 10) : 0;
    if (headers && headers.get('x-opsmantik-quota-exceeded') === '1') {
      quotaPausedUntil = Date.now() + Math.min(retryAfter || 600, 32 * 24 * 3600) * 1000;
    }
    if (status >= 200 && status < 300) { removeIds(ids); return; }
    var q = loadQueue();
    var mine = q.filter(function (e) { return ids.indexOf(e.id) >= 0; });
    if (status === 429 && headers && headers.get('x-opsmantik-quota-exceeded') === '1') {
      removeIds(ids); // recorded as refused over quota: a re-send would only be a duplicate
      return;
    }
    if (status === 429) {
      mine.forEach(function (e) { backoff(e, 30000, 600000, retryAfter); });
    } else if (status === 0 || status >= 500) {
      mine.forEach(function (e) { backoff(e, 5000, 120000, retryAfter); });
    } else if (batch.length > 1) {
      // one bad event must not drop the others: retry each alone
      mine.forEach(function (e) { e.solo = true; });
    } else {
      log('dropped after', status, batch[0].payload.ec, batch[0].payload.ea);
      saveQueue(q.filter(function (e) { return ids.indexOf(e.id) < 0; }));
      return;
    }
    saveQueue(q);
  }

  function flush() {
    if (inFlight) return;
    var q = loadQueue();
    if (!hasAnalytics()) {
      // consent withdrawn: what waits is forgotten; only the withdrawal itself still goes
      var records = q.filter(function (e) { return isConsentEvent(e.payload); });
      if (records.length !== q.length) saveQueue(records);
      q = records;
    }
    if (!q.length) return;
    var now = Date.now();
    if (now - lastFlush < MIN_GAP_MS) { schedule(0); return; }
    if (quotaPausedUntil > now) {
      // over quota: keep conversions (and consent records, never billed), drop the rest
      q = q.filter(function (e) { return e.payload.ec === 'conversion' || isConsentEvent(e.payload); });
      saveQueue(q);
    }
    var batch = pick(q, now, MAX_BATCH_EVENTS, MAX_BATCH_BYTES, false);
    if (!batch.length) {
      var next = Infinity;
      q.forEach(function (e) { next = Math.min(next, e.next || 0); });
      if (next < Infinity) schedule(Math.max(0, next - now));
      return;
    }
    inFlight = true;
    lastFlush = now;
    var ctrl = w.AbortController ? new AbortController() : null;
    var abortTimer = ctrl ? setTimeout(function () { ctrl.abort(); }, FETCH_TIMEOUT_MS) : null;
    var done = function (status, headers) {
      if (abortTimer) clearTimeout(abortTimer);
      inFlight = false;
      settle(batch, status, headers);
      if (loadQueue().length) schedule(0);
    };
    try {
      // text/plain keeps the request "simple" (no CORS preflight); the server reads JSON anyway
      fetch(API + (API.indexOf('?') >= 0 ? '&' : '?') + '_ts=' + now, {
        method: 'POST',
        body: body(batch),
        headers: { 'Content-Type': 'text/plain;charset=UTF-8' },
        keepalive: true,
        credentials: 'omit',
        mode: 'cors',
        signal: ctrl ? ctrl.signal : undefined
      }).then(function (res) { done(res.status, res.headers); }, function () { done(0, null); });
    } catch (e) {
      done(0, null);
    }
  }

  // On page hide the pending batch goes by beacon; it stays in the outbox until a 2xx
  // (a later fetch, answered "duplicate" if the beacon got through) removes it.
  function beacon() {
    if (!navigator.sendBeacon) return;
    var q = loadQueue();
    if (!hasAnalytics()) q = q.filter(function (e) { return isConsentEvent(e.payload); });
    var batch = pick(q, Date.now(), MAX_BEACON_EVENTS, MAX_BEACON_BYTES, true);
    if (!batch.length) return;
    try {
      navigator.sendBeacon(API, new Blob([body(batch)], { type: 'text/plain;charset=UTF-8' }));
    } catch (e) { /* nothing more can be done while the page goes away */ }
  }

  // ------------------------------------------------------------------ auto-tracking

  var WA_HREF = /(^whatsapp:\/\/)|wa\.me|whatsapp\.com|joinchat/i;

  function closest(el, selector) {
    while (el && el.nodeType === 1) {
      if (el.matches && el.matches(selector)) return el;
      el = el.parentElement;
    }
    return null;
  }

  function onClick(e) {
    var wa = closest(e.target, '[data-om-whatsapp]');
    if (wa && (attr(wa, 'data-om-whatsapp') || '').trim()) {
      send('conversion', 'whatsapp', attr(wa, 'data-om-whatsapp').trim(), null, { intent_action: 'whatsapp' });
      return;
    }
    var a = closest(e.target, 'a[href]');
    if (!a) return;
    var href = attr(a, 'href') || '';
    if (/^tel:/i.test(href)) {
      send('conversion', 'phone_call', href, null, { intent_action: 'phone_call' });
    } else if (WA_HREF.test(href)) {
      send('conversion', 'whatsapp', href, null, { intent_action: 'whatsapp' });
    }
  }

  function onHover(e) {
    var t = e.target;
    if (t && t.nodeType === 1 && t.matches &&
        t.matches('a[href^="tel:"],a[href*="wa.me"],a[href*="whatsapp"],[data-om-whatsapp],[data-om-cta="true"]')) {
      pulse.hovers += 1;
    }
  }

  // Enhanced conversions for leads: a form that opts in with data-om-capture="email,phone"
  // (never by default) sends its email and phone with the form-submit event, and only with
  // "marketing" consent. The server keeps only their SHA-256 (never the plain values).
  var CAPTURE = {
    email: { selector: 'input[type="email"],input[autocomplete~="email"],input[name*="mail" i]', max: 320 },
    phone: { selector: 'input[type="tel"],input[autocomplete~="tel"],input[name*="phone" i]', max: 64 }
  };
  function captured(f) {
    var wanted = (attr(f, 'data-om-capture') || '').toLowerCase().split(/[\s,]+/);
    if (consentScopes().indexOf('marketing') < 0) return null;
    var out = null;
    ['email', 'phone'].forEach(function (kind) {
      if (wanted.indexOf(kind) < 0) return;
      var input = f.querySelector(CAPTURE[kind].selector);
      var value = input && typeof input.value === 'string' ? input.value.trim() : '';
      if (value && value.length <= CAPTURE[kind].max) { out = out || {}; out['om_' + kind] = value; }
    });
    return out;
  }

  function onSubmit(e) {
    var f = e.target;
    if (!f || f.tagName !== 'FORM') return;
    send('conversion', 'form_submit', f.id || attr(f, 'name') || 'form', null, captured(f));
  }

  var scrollSent = {};
  function onScroll() {
    touchActivity();
    var pct = scrollPct();
    if (pct > pulse.scroll) pulse.scroll = pct;
    [50, 90].forEach(function (mark) {
      if (pct >= mark && !scrollSent[mark]) {
        scrollSent[mark] = true;
        send('interaction', 'scroll_depth', mark + '%', mark, null);
      }
    });
  }

  var heartbeatTimer = null;
  // An idle session gets no heartbeat: the tab may stay open, the visit has ended.
  function heartbeat() { if (!idle()) send('system', 'heartbeat', 'session_active', null, null); }
  function startHeartbeat() {
    if (!heartbeatTimer) heartbeatTimer = setInterval(heartbeat, HEARTBEAT_MS);
  }
  function stopHeartbeat() {
    if (heartbeatTimer) { clearInterval(heartbeatTimer); heartbeatTimer = null; }
  }

  var ended = false;
  function onVisibility() {
    if (d.visibilityState === 'hidden') {
      if (pulse.visibleSince) { pulse.activeMs += Date.now() - pulse.visibleSince; pulse.visibleSince = 0; }
      stopHeartbeat();
      beacon();
    } else {
      pulse.visibleSince = Date.now();
      ended = false;
      heartbeat();
      startHeartbeat();
    }
  }
  function onPageHide() {
    if (!ended && !idle()) {
      ended = true;
      send('system', 'session_end', 'page_unload', null, { exit_page: location.href.slice(0, 4096) });
    }
    beacon();
  }

  // The visitor's new consent scopes (a consent banner calls this at any time): recorded for
  // the session as a system/consent event; without "analytics" nothing else is sent from now.
  function setConsent(scopes) {
    if (scopes === undefined) return consentScopes();
    var before = consentScopes();
    var now = normalizeScopes(scopes);
    w.opsmantikConsent = now.slice();
    var changed = before.join(',') !== now.join(',');
    var everSent = before.indexOf('analytics') >= 0 || now.indexOf('analytics') >= 0;
    if (now.indexOf('analytics') < 0) {
      saveQueue(loadQueue().filter(function (e) { return isConsentEvent(e.payload); }));
      warnNoConsent();
    }
    // nothing to record for a visitor who never allowed analytics (no session exists)
    if (changed && everSent) send('system', 'consent', now.join(',') || 'none', null, null);
    // analytics granted on this page: the page view it held back goes now
    if (now.indexOf('analytics') >= 0 && !viewSent) pageView();
    return now.slice();
  }

  var viewSent = false;
  function pageView() { if (!viewSent && send('interaction', 'view', d.title, null, null)) viewSent = true; }

  function boot() {
    flush(); // what an earlier page left in the outbox
    pageView();
    d.addEventListener('click', onClick, true);
    ['keydown', 'mousedown', 'touchstart', 'mousemove'].forEach(function (type) {
      d.addEventListener(type, touchActivity, { capture: true, passive: true });
    });
    d.addEventListener('mouseenter', onHover, true);
    d.addEventListener('submit', onSubmit, true);
    w.addEventListener('scroll', onScroll, { passive: true });
    d.addEventListener('visibilitychange', onVisibility);
    w.addEventListener('pagehide', onPageHide);
    w.addEventListener('online', function () { flush(); });
    if (d.visibilityState === 'visible') startHeartbeat();
  }

  var api = {
    send: function (ec, ea, el, ev, meta) { return send(ec, ea, el, ev, meta); },
    session: function () { return sessionId(); },
    flush: function () { lastFlush = 0; flush(); },
    pending: function () { return loadQueue().length; },
    consent: function (scopes) { return setConsent(scopes); },
    version: VERSION,
    _initialized: true
  };
  w.opsmantik = api;
  w.opmantik = api; // the original tracker's name

  if (d.readyState === 'loading') d.addEventListener('DOMContentLoaded', boot);
  else boot();
})();
