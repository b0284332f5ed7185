/* OpsMantik Stream console: plain JavaScript, no build step, no third-party code.
 *
 * Every call goes to /console/api/<path>, which the gateway forwards to /api/<path> with the
 * signed-in user's session token (kept in an HttpOnly cookie this script cannot read), so the
 * console can do exactly what the API allows that user. State-changing calls carry the
 * session's CSRF token in X-OpsMantik-CSRF. Data is always put into the page as text nodes. */
(function () {
  "use strict";

  const S = {
    me: null,
    csrf: "",
    roles: {},
    sites: [],
    site: null,
    features: { saleCancel: false, saleRestate: false },
    timers: [],
    route: { view: "inbox", params: new URLSearchParams() },
  };
  const VIEWS = [
    { id: "inbox", label: "Inbox" },
    { id: "sales", label: "Sales" },
    { id: "traffic", label: "Traffic" },
    { id: "delivery", label: "Delivery" },
    { id: "alerts", label: "Alerts" },
    { id: "billing", label: "Billing", cap: "billing:view" },
  ];
  const PENDING = new Set(["QUEUED", "PROCESSING", "RETRY"]);
  const REASONS = {
    zero_value: "no value",
    no_session: "no tracked session",
    session_not_found: "no tracked session",
    no_click_id: "no Google click id",
    no_marketing_consent: "no marketing consent",
    already_enqueued: "already queued",
    pending_conversion_for_session: "another conversion of this visit is pending",
  };
  const SCORE_PARTS = {
    conversion: "phone/WhatsApp/form click",
    interaction: "interaction",
    scroll_50: "scrolled past 50 %",
    scroll_90: "scrolled past 90 %",
    cta_hover: "hovered a call-to-action",
    google_referrer: "came from Google",
    ads_assisted: "Ads assisted (earlier ad click)",
    conversion_points: "conversions in the session",
    interaction_points: "interactions in the session",
    max_event_score: "best event score",
  };
  const PALETTE = ["#2563eb", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#94a3b8"];

  // ------------------------------------------------------------------ DOM helpers

  function h(tag, props) {
    const node = document.createElement(tag);
    setProps(node, props);
    for (let i = 2; i < arguments.length; i++) add(node, arguments[i]);
    return node;
  }

  function svg(tag, props) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    setProps(node, props);
    for (let i = 2; i < arguments.length; i++) add(node, arguments[i]);
    return node;
  }

  function setProps(node, props) {
    Object.entries(props || {}).forEach(([key, value]) => {
      if (value === null || value === undefined || value === false) return;
      if (key === "text") node.textContent = String(value);
      else if (key === "class") node.setAttribute("class", value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    });
  }

  function add(node, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) child.forEach((c) => add(node, c));
    else if (child instanceof Node) node.appendChild(child);
    else node.appendChild(document.createTextNode(String(child)));
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  const $ = (sel, root) => (root || document).querySelector(sel);

  function thead(titles) {
    return h("thead", {}, h("tr", {}, titles.filter((t) => t !== null).map((t) => h("th", { text: t }))));
  }

  // A table filled page by page (the API's keyset cursor) with a "Load more" button; returns
  // its body once the first page is in.
  async function pagedTable(view, cls, titles, fetchPage, rowsOf, emptyText) {
    const body = h("tbody");
    const more = h("button", { type: "button", class: "secondary", text: "Load more", hidden: true });
    add(view, h("div", { class: "card" }, h("table", { class: cls }, thead(titles), body), more));
    let cursor = null;
    const load = async () => {
      const page = await fetchPage(cursor);
      add(body, rowsOf(page));
      cursor = page.next_cursor;
      more.hidden = !cursor;
      if (!body.children.length) add(body, h("tr", {}, h("td", { colspan: titles.length, class: "empty", text: emptyText })));
    };
    more.onclick = load;
    await load();
    return body;
  }

  // ------------------------------------------------------------------ formatting

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  }

  function money(minor, currency) {
    if (minor === null || minor === undefined) return "";
    try {
      return new Intl.NumberFormat(undefined, { style: "currency", currency: currency || "TRY" }).format(minor / 100);
    } catch (e) {
      return (minor / 100).toFixed(2) + " " + (currency || "");
    }
  }

  function duration(sec) {
    if (sec === null || sec === undefined) return "";
    if (sec < 60) return sec + " s";
    const m = Math.floor(sec / 60);
    return m < 60 ? m + " min " + (sec % 60) + " s" : Math.floor(m / 60) + " h " + (m % 60) + " min";
  }

  // pages are shown as host + path: queries carry click ids and campaign tags, not the page
  function pagePath(url) {
    if (!url) return "";
    try {
      const u = new URL(url);
      return u.host + u.pathname;
    } catch (e) {
      return url.split("?")[0];
    }
  }

  function pct(n, d) {
    return d ? ((100 * n) / d).toFixed(1) + " %" : "–";
  }

  // ------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, body) {
      super((body && (body.message || body.error)) || "HTTP " + status);
      this.status = status;
      this.code = body && body.error;
    }
  }

  async function call(method, url, body, extraHeaders) {
    const headers = Object.assign({ Accept: "application/json" }, extraHeaders || {});
    if (method !== "GET" && method !== "HEAD") headers["X-OpsMantik-CSRF"] = S.csrf;
    const opts = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const resp = await fetch(url, opts);
    let data = null;
    try {
      data = await resp.json();
    } catch (e) {
      data = null;
    }
    if (resp.status === 401 && url.startsWith("/console")) {
      showSignIn("Your session ended. Sign in again.");
    }
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }

  const api = {
    get: (path) => call("GET", "/console/api" + path),
    post: (path, body) => call("POST", "/console/api" + path, body === undefined ? {} : body),
  };

  function q(params) {
    const u = new URLSearchParams();
    Object.entries(params).forEach(([k, v]) => {
      if (v !== null && v !== undefined && v !== "") u.set(k, v);
    });
    const s = u.toString();
    return s ? "?" + s : "";
  }

  // ------------------------------------------------------------------ session

  function showSignIn(message) {
    stopTimers();
    S.me = null;
    $("#app").hidden = true;
    $("#signin").hidden = false;
    $("#signin-message").textContent = message || "";
    document.body.setAttribute("data-view", "signin");
  }

  async function signIn(body) {
    const data = await call("POST", "/console/session", body, { "X-OpsMantik-Console": "1" });
    S.csrf = data.csrf;
  }

  async function boot() {
    $("#signin-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const input = $("#signin-token");
      try {
        await signIn({ token: input.value.trim() });
        input.value = "";
        await start();
      } catch (e) {
        $("#signin-message").textContent = e.message;
      }
    });
    $("#signout").addEventListener("click", async () => {
      try {
        await call("DELETE", "/console/session");
      } finally {
        showSignIn("Signed out.");
      }
    });
    // a sign-in link may also arrive while the page is open (pasted into the address bar)
    window.addEventListener("hashchange", () => (linkInHash() ? useLink() : S.me ? render() : null));
    if (linkInHash()) await useLink();
    else await start();
  }

  function linkInHash() {
    const m = /(?:^#|&)link=([^&]+)/.exec(location.hash);
    return m ? decodeURIComponent(m[1]) : null;
  }

  async function useLink() {
    const link = linkInHash();
    // the one-time token leaves the address bar and the history at once
    history.replaceState(null, "", location.pathname);
    try {
      await signIn({ link });
    } catch (e) {
      showSignIn(e.message);
      return;
    }
    await start();
  }

  async function start() {
    let me;
    try {
      me = await call("GET", "/console/session");
    } catch (e) {
      showSignIn(e.status === 401 ? "" : e.message);
      return;
    }
    S.me = me;
    S.csrf = me.csrf;
    S.roles = me.roles || {};
    S.sites = (await api.get("/sites")).sites;
    await detectFeatures();
    $("#signin").hidden = true;
    $("#app").hidden = false;
    $("#user").textContent = me.email + (me.platform_admin ? " · platform admin" : "");
    const select = clear($("#site-select"));
    S.sites.forEach((s) => add(select, h("option", { value: s.public_id, text: s.name + " · " + s.role })));
    select.onchange = () => go(S.route.view, { site: select.value });
    render();
  }

  async function detectFeatures() {
    // the sale lifecycle (cancel/restate) is offered only where this server has the routes
    try {
      const spec = await (await fetch("/openapi.json", { cache: "no-store" })).json();
      const paths = Object.keys(spec.paths || {});
      const has = (re) => paths.some((p) => re.test(p) && spec.paths[p].post);
      S.features.saleCancel = has(/^\/api\/sales\/\{[^}]+\}\/cancel$/);
      S.features.saleRestate = has(/^\/api\/sales\/\{[^}]+\}\/restate$/);
    } catch (e) {
      S.features = { saleCancel: false, saleRestate: false };
    }
  }

  function can(cap) {
    return !!(S.site && (S.roles[S.site.role] || []).includes(cap));
  }

  // ------------------------------------------------------------------ routing

  function parseRoute() {
    const raw = location.hash.replace(/^#\/?/, "");
    const [path, query] = raw.split("?");
    return { view: path || "inbox", params: new URLSearchParams(query || "") };
  }

  function go(view, params) {
    const merged = new URLSearchParams(params || {});
    if (!merged.get("site") && S.site) merged.set("site", S.site.public_id);
    const target = "#/" + view + "?" + merged.toString();
    if (location.hash === target) render();
    else location.hash = target;
  }

  function stopTimers() {
    S.timers.forEach((t) => clearInterval(t));
    S.timers = [];
  }

  function every(ms, fn) {
    S.timers.push(setInterval(fn, ms));
  }

  async function render() {
    stopTimers();
    S.route = parseRoute();
    // a site named in the address must be one of the user's; a remembered one may be gone
    const named = S.route.params.get("site");
    const wanted = named || localStorage.getItem("opsm_console_site");
    S.site = S.sites.find((s) => s.public_id === wanted) || (named ? null : S.sites[0] || null);
    const view = clear($("#view"));
    document.body.removeAttribute("data-loaded");
    document.body.setAttribute("data-view", S.route.view);
    const nav = clear($("#nav"));
    VIEWS.filter((v) => !v.cap || can(v.cap)).forEach((v) =>
      add(
        nav,
        h("a", {
          href: "#/" + v.id + (S.site ? "?site=" + S.site.public_id : ""),
          "data-view": v.id,
          class: v.id === S.route.view ? "active" : "",
          text: v.label,
        }),
      ),
    );
    if (!S.site) {
      add(
        view,
        h("div", {
          class: "notice error",
          text: named ? "You have no access to this site." : "Your account has no sites yet.",
        }),
      );
      document.body.setAttribute("data-loaded", "1");
      return;
    }
    localStorage.setItem("opsm_console_site", S.site.public_id);
    $("#site-select").value = S.site.public_id;
    const renderers = { inbox, sales, traffic, delivery, alerts, billing };
    const fn = renderers[S.route.view] || inbox;
    try {
      await fn(view, S.route.params);
    } catch (e) {
      add(view, h("div", { class: "notice error", text: "Could not load this view: " + e.message }));
    }
    document.body.setAttribute("data-loaded", "1");
  }

  // ------------------------------------------------------------------ inbox

  function conversionText(conv) {
    if (!conv) return { text: "", cls: "" };
    if (!conv.queued) return { text: "not queued: " + (REASONS[conv.reason] || conv.reason), cls: "warn" };
    switch (conv.status) {
      case "QUEUED":
        return { text: "queued", cls: "wait" };
      case "PROCESSING":
        return { text: "uploading", cls: "wait" };
      case "RETRY":
        return { text: "retrying" + (conv.next_retry_at ? " at " + when(conv.next_retry_at) : ""), cls: "warn" };
      case "COMPLETED":
        return { text: "uploaded", cls: "good" };
      case "BLOCKED":
        return { text: "BLOCKED: " + (conv.last_error || conv.error_code || "see Delivery"), cls: "bad" };
      case "FAILED":
        return conv.withdrawn
          ? { text: "withdrawn (seal undone)", cls: "" }
          : { text: "failed: " + (conv.error_code || conv.last_error || "rejected"), cls: "bad" };
      default:
        return { text: conv.status, cls: "" };
    }
  }

  const ACTION_LABELS = { phone: "Phone", whatsapp: "WhatsApp", form: "Form" };

  async function inbox(view, params) {
    const filters = {
      status: params.get("status") || "",
      action: params.get("action") || "",
      source: params.get("source") || "",
      medium: params.get("medium") || "",
      from: params.get("from") || "",
      to: params.get("to") || "",
    };
    const apply = () => {
      const next = { site: S.site.public_id };
      view.querySelectorAll(".filters [name]").forEach((f) => {
        if (f.value) next[f.name] = f.value;
      });
      go("inbox", next);
    };
    const sel = (name, label, options) =>
      h(
        "label",
        {},
        label,
        h(
          "select",
          { name, onchange: apply },
          options.map(([v, t]) => h("option", { value: v, text: t, selected: filters[name] === v })),
        ),
      );
    const inp = (name, label, type) =>
      h("label", {}, label, h("input", { name, type, value: filters[name], onchange: apply }));
    add(
      view,
      h(
        "div",
        { class: "filters" },
        sel("status", "Status", [
          ["", "any"],
          ["intent", "new (intent)"],
          ["confirmed", "sealed"],
          ["junk", "junk"],
          ["cancelled", "cancelled"],
          ["suspicious", "suspicious"],
        ]),
        sel("action", "Action", [
          ["", "any"],
          ["phone", "phone"],
          ["whatsapp", "WhatsApp"],
          ["form", "form"],
        ]),
        inp("source", "Source", "text"),
        inp("medium", "Medium", "text"),
        inp("from", "From", "date"),
        inp("to", "To", "date"),
        h("button", { type: "button", class: "secondary", text: "Refresh", onclick: () => render() }),
      ),
    );
    // dates are the operator's local days; "to" includes its whole day
    const dayStart = (day, plus) => new Date(new Date(day + "T00:00:00").getTime() + (plus || 0) * 86400000).toISOString();
    const query = {
      status: filters.status,
      action: filters.action,
      source: filters.source,
      medium: filters.medium,
      from: filters.from ? dayStart(filters.from, 0) : "",
      to: filters.to ? dayStart(filters.to, 1) : "",
    };
    const body = await pagedTable(
      view,
      "leads",
      ["When", "Lead", "Score", "Source", "Session", "Status", "Conversion", can("leads:operate") ? "Actions" : null],
      (cursor) => api.get("/sites/" + S.site.public_id + "/leads" + q(Object.assign({ cursor, limit: 50 }, query))),
      (page) => page.leads.map(leadRows),
      "No leads match.",
    );
    // conversions on their way to Google: refresh those rows in place
    every(2500, async () => {
      const rows = Array.from(body.querySelectorAll("tr.lead")).filter((r) => PENDING.has(r.getAttribute("data-conv")));
      for (const row of rows) {
        try {
          const data = await api.get("/sites/" + S.site.public_id + "/leads/" + row.getAttribute("data-lead-id"));
          replaceLead(row, data.lead);
        } catch (e) {
          /* the next tick tries again */
        }
      }
    });
  }

  function leadRows(lead) {
    const operate = can("leads:operate");
    const conv = conversionText(lead.conversion);
    const sess = lead.session;
    const score = h("button", {
      type: "button",
      class: "score" + (lead.lead_score >= 60 ? " high" : ""),
      title: "Why this score",
      text: String(lead.lead_score),
    });
    const row = h(
      "tr",
      {
        class: "lead",
        "data-lead-id": lead.id,
        "data-status": lead.status,
        "data-conv": lead.conversion && lead.conversion.status ? lead.conversion.status : "",
      },
      h("td", { class: "nowrap" }, when(lead.created_at), h("span", { class: "sub", text: lead.source.replace("_", " ") })),
      h(
        "td",
        {},
        h("span", { class: "badge action " + (lead.action || ""), text: ACTION_LABELS[lead.action] || "Call" }),
        " ",
        h("span", { class: "target", text: lead.target || "" }),
        h("span", { class: "sub", text: pagePath(lead.page_url) }),
      ),
      h("td", {}, score),
      h(
        "td",
        {},
        sess ? (sess.traffic_source || "?") + " / " + (sess.traffic_medium || "?") : "no session",
        h("span", {
          class: "sub",
          text: [sess && sess.attribution_source, lead.click_id_type].filter(Boolean).join(" · "),
        }),
      ),
      h(
        "td",
        {},
        sess ? (sess.pages || 0) + " page" + (sess.pages === 1 ? "" : "s") + " · " + duration(sess.duration_sec) : "",
        h("span", {
          class: "sub",
          text: sess
            ? (sess.returning ? "returning (" + sess.previous_visits + " earlier)" : "first visit") +
              (sess.entry_page ? " · landed on " + pagePath(sess.entry_page) : "")
            : "",
        }),
      ),
      h(
        "td",
        {},
        h("span", { class: "badge lead-status " + lead.status, text: lead.status === "confirmed" ? "sealed" : lead.status }),
        lead.value_minor ? h("span", { class: "sub", text: money(lead.value_minor, lead.currency) }) : null,
      ),
      h("td", {}, h("span", { class: "conv " + conv.cls, text: conv.text })),
      operate ? h("td", {}, leadActions(lead)) : null,
    );
    const detail = h("tr", { class: "detail", hidden: true, "data-detail-for": lead.id }, h("td", { colspan: 8 }));
    score.onclick = () => toggleDetail(lead, detail);
    return [row, detail];
  }

  function replaceLead(row, lead) {
    const detail = row.nextElementSibling;
    const [fresh, freshDetail] = leadRows(lead);
    row.replaceWith(fresh);
    if (detail && detail.classList.contains("detail")) {
      freshDetail.hidden = detail.hidden;
      if (!detail.hidden) toggleDetail(lead, freshDetail, true);
      detail.replaceWith(freshDetail);
    }
    return fresh;
  }

  function leadActions(lead) {
    const box = h("div", { class: "actions" });
    const feedback = h("div", { class: "feedback" });
    const labels = { seal: "Seal", junk: "Junk", cancel: "Cancel", restore: "Restore", undo: "Undo" };
    (lead.allowed_actions || []).forEach((action) => {
      add(
        box,
        h("button", {
          type: "button",
          class: action === "seal" ? "" : action === "junk" ? "danger" : "secondary",
          "data-action": action,
          text: labels[action] || action,
          onclick: () => (action === "seal" ? toggleSeal(lead, wrap) : runAction(lead, action, {}, wrap)),
        }),
      );
    });
    const wrap = h("div", {}, box, feedback);
    return wrap;
  }

  function toggleSeal(lead, wrap) {
    const existing = $(".seal-form", wrap);
    if (existing) {
      existing.remove();
      return;
    }
    const value = h("input", { name: "value", type: "number", min: "0", step: "0.01", placeholder: "value" });
    const currencies = [S.site.currency, "TRY", "EUR", "USD", "GBP"].filter((c, i, a) => c && a.indexOf(c) === i);
    const currency = h("select", { name: "currency" }, currencies.map((c) => h("option", { value: c, text: c })));
    const form = h(
      "form",
      {
        class: "seal-form",
        onsubmit: (ev) => {
          ev.preventDefault();
          const body = {};
          if (value.value !== "") {
            body.value_minor = Math.round(parseFloat(value.value) * 100);
            body.currency = currency.value;
          }
          runAction(lead, "seal", body, wrap);
        },
      },
      value,
      currency,
      h("button", { type: "submit", class: "seal-confirm", text: "Seal lead" }),
    );
    wrap.insertBefore(form, $(".feedback", wrap));
    value.focus();
  }

  async function runAction(lead, action, extra, wrap) {
    const feedback = $(".feedback", wrap);
    wrap.querySelectorAll("button").forEach((b) => (b.disabled = true));
    feedback.className = "feedback";
    feedback.textContent = "…";
    try {
      const result = await api.post("/calls/" + lead.id + "/actions", Object.assign({ action }, extra));
      const fresh = await api.get("/sites/" + S.site.public_id + "/leads/" + lead.id);
      const row = wrap.closest("tr.lead");
      const newRow = replaceLead(row, fresh.lead);
      let note = action + " done";
      if (result.conversion) {
        note += result.conversion.enqueued
          ? " · conversion queued"
          : " · not queued: " + (REASONS[result.conversion.reason] || result.conversion.reason);
      } else if (result.conversion_voided) {
        note += " · pending conversion withdrawn";
      }
      const fb = $(".feedback", newRow);
      if (fb) fb.textContent = note;
    } catch (e) {
      feedback.className = "feedback error";
      feedback.textContent = e.message;
      wrap.querySelectorAll("button").forEach((b) => (b.disabled = false));
    }
  }

  async function toggleDetail(lead, detailRow, keepOpen) {
    if (!detailRow.hidden && !keepOpen) {
      detailRow.hidden = true;
      return;
    }
    detailRow.hidden = false;
    const cell = clear(detailRow.firstChild);
    add(cell, h("span", { class: "muted", text: "Loading…" }));
    let data;
    try {
      data = (await api.get("/sites/" + S.site.public_id + "/leads/" + lead.id)).lead;
    } catch (e) {
      clear(cell);
      add(cell, h("div", { class: "feedback error", text: e.message }));
      return;
    }
    clear(cell);
    const score = data.score || { parts: [] };
    const why = h(
      "div",
      { class: "why" },
      h("strong", { text: "Why " + score.score }),
      h(
        "ul",
        { class: "parts" },
        score.parts.map((p) => h("li", { text: "+" + p.points + " " + (SCORE_PARTS[p.reason] || p.reason) })),
      ),
      score.set_by_operator ? h("span", { class: "sub", text: "score set by an operator" }) : null,
      score.basis === "none" ? h("span", { class: "sub", text: "no scored event recorded" }) : null,
    );
    const timeline = h(
      "div",
      {},
      h("strong", { text: "Visit" }),
      h(
        "ol",
        { class: "timeline" },
        (data.timeline || []).map((e) =>
          h("li", {}, when(e.created_at) + " · " + e.event_action + " ", h("span", { class: "sub", text: pagePath(e.url) })),
        ),
      ),
    );
    const log = h(
      "div",
      {},
      h("strong", { text: "Actions" }),
      h(
        "ul",
        { class: "parts" },
        (data.actions || []).map((a) =>
          h("li", { text: when(a.created_at) + " · " + a.action_type + " (" + a.previous_status + " → " + a.new_status + ")" }),
        ),
      ),
    );
    const salesBox = h(
      "div",
      {},
      h("strong", { text: "Sales" }),
      h(
        "ul",
        { class: "parts" },
        (data.sales || []).map((s) =>
          h("li", { text: money(s.amount_minor, s.currency) + " · " + s.status + (s.conversion_status ? " · " + s.conversion_status : "") }),
        ),
      ),
      can("leads:operate") ? saleForm(lead) : null,
    );
    add(cell, h("div", { class: "grid" }, why, timeline, log, salesBox));
  }

  function saleForm(lead) {
    const amount = h("input", { name: "amount", type: "number", min: "0", step: "0.01", placeholder: "amount", required: true });
    const currency = h("input", { name: "currency", value: S.site.currency || "TRY", size: 4, maxlength: 3 });
    const ref = h("input", { name: "external_ref", placeholder: "order ref (optional)" });
    const fb = h("div", { class: "feedback" });
    return h(
      "form",
      {
        class: "seal-form sale-form",
        onsubmit: async (ev) => {
          ev.preventDefault();
          try {
            const conv = await api.post("/conversations", { site: S.site.public_id, primary_call_id: lead.id });
            const sale = await api.post("/sales", {
              site: S.site.public_id,
              amount_minor: Math.round(parseFloat(amount.value) * 100),
              currency: currency.value.toUpperCase(),
              occurred_at: new Date().toISOString(),
              external_ref: ref.value || undefined,
              conversation_id: conv.conversation.id,
            });
            fb.className = "feedback";
            fb.textContent = "Draft sale created (" + money(sale.sale.amount_minor, sale.sale.currency) + "): confirm it under Sales.";
          } catch (e) {
            fb.className = "feedback error";
            fb.textContent = e.message;
          }
        },
      },
      amount,
      currency,
      ref,
      h("button", { type: "submit", text: "Create sale" }),
      fb,
    );
  }

  // ------------------------------------------------------------------ sales

  async function sales(view, params) {
    const status = params.get("status") || "";
    add(
      view,
      h(
        "div",
        { class: "filters" },
        h(
          "label",
          {},
          "Status",
          h(
            "select",
            { onchange: (ev) => go("sales", { site: S.site.public_id, status: ev.target.value }) },
            ["", "DRAFT", "CONFIRMED", "CANCELED"].map((s) => h("option", { value: s, text: s || "any", selected: s === status })),
          ),
        ),
      ),
    );
    const operate = can("leads:operate");
    await pagedTable(
      view,
      "sales",
      ["Occurred", "Amount", "Status", "Reference", "Lead", "Conversion", operate ? "Actions" : null],
      (cursor) => api.get("/sites/" + S.site.public_id + "/sales" + q({ status, cursor, limit: 50 })),
      (page) => page.sales.map((sale) => saleRow(sale, operate)),
      "No sales yet. Create one from a lead in the Inbox.",
    );
  }

  function saleRow(sale, operate) {
    const conv = sale.conversion_status
      ? conversionText({ queued: true, status: sale.conversion_status, error_code: sale.conversion_error_code, last_error: sale.conversion_last_error })
      : { text: sale.status === "CONFIRMED" ? "not queued" : "", cls: sale.status === "CONFIRMED" ? "warn" : "" };
    const fb = h("div", { class: "feedback" });
    const actions = h("div", { class: "actions" });
    const act = (label, path, body, cls) =>
      h("button", {
        type: "button",
        class: cls || "",
        "data-action": label.toLowerCase(),
        text: label,
        onclick: async () => {
          try {
            const r = await api.post("/sales/" + sale.id + path, body);
            fb.textContent = label + " done" + (r.enqueued === false && r.reason ? " · not queued: " + (REASONS[r.reason] || r.reason) : r.enqueued ? " · conversion queued" : "");
            setTimeout(() => render(), 800);
          } catch (e) {
            fb.className = "feedback error";
            fb.textContent = e.message;
          }
        },
      });
    if (sale.status === "DRAFT") add(actions, act("Confirm", "/confirm", undefined));
    if (sale.status === "CONFIRMED" && S.features.saleCancel) add(actions, act("Cancel", "/cancel", {}, "danger"));
    if (sale.status === "CONFIRMED" && S.features.saleRestate) {
      add(
        actions,
        h("button", {
          type: "button",
          class: "secondary",
          "data-action": "restate",
          text: "Restate",
          onclick: async () => {
            const value = prompt("New amount (" + sale.currency + ")");
            if (value === null || value === "") return;
            try {
              await api.post("/sales/" + sale.id + "/restate", { amount_minor: Math.round(parseFloat(value) * 100) });
              render();
            } catch (e) {
              fb.className = "feedback error";
              fb.textContent = e.message;
            }
          },
        }),
      );
    }
    return h(
      "tr",
      { class: "sale", "data-sale-id": sale.id },
      h("td", { class: "nowrap", text: when(sale.occurred_at) }),
      h("td", { class: "num", text: money(sale.amount_minor, sale.currency) }),
      h("td", {}, h("span", { class: "badge", text: sale.status })),
      h("td", { text: sale.external_ref || "" }),
      h("td", {}, sale.lead_id ? h("a", { href: "#/inbox?site=" + S.site.public_id, text: "lead" }) : ""),
      h("td", {}, h("span", { class: "conv " + conv.cls, text: conv.text })),
      operate ? h("td", {}, actions, fb) : null,
    );
  }

  // ------------------------------------------------------------------ traffic

  async function traffic(view, params) {
    const days = params.get("days") === "30" ? 30 : 7;
    const data = await api.get("/sites/" + S.site.public_id + "/traffic?days=" + days);
    add(
      view,
      h(
        "div",
        { class: "filters" },
        h(
          "div",
          { class: "toggle" },
          [7, 30].map((d) =>
            h("button", {
              type: "button",
              class: d === days ? "on" : "",
              text: d + " days",
              onclick: () => go("traffic", { site: S.site.public_id, days: String(d) }),
            }),
          ),
        ),
        h("span", { class: "muted small", text: "Days in " + data.timezone }),
      ),
    );
    const channelOf = (r) => r.source + " / " + r.medium;
    const totals = {};
    data.rows.forEach((r) => {
      const key = channelOf(r);
      totals[key] = (totals[key] || 0) + r.sessions + r.intents;
    });
    const ranked = Object.keys(totals).sort((a, b) => totals[b] - totals[a]);
    const top = ranked.slice(0, PALETTE.length - 1);
    const group = (key) => (top.includes(key) ? key : "Other");
    const keys = ranked.length > top.length ? top.concat(["Other"]) : top;
    const perDay = {};
    data.days.forEach((d) => (perDay[d] = { stacks: {}, intents: 0, sealed: 0 }));
    data.rows.forEach((r) => {
      const day = perDay[r.day];
      if (!day) return;
      const k = group(channelOf(r));
      day.stacks[k] = (day.stacks[k] || 0) + r.sessions;
      day.intents += r.intents;
      day.sealed += r.sealed;
    });
    add(
      view,
      h(
        "div",
        { class: "grid" },
        h(
          "div",
          { class: "card" },
          h("h2", { text: "Sessions per day by channel" }),
          stackedBars(data.days, perDay, keys),
          legend(keys),
        ),
        h(
          "div",
          { class: "card" },
          h("h2", { text: "Intents and sealed leads per day" }),
          lines(data.days, [
            { label: "intents", color: PALETTE[0], values: data.days.map((d) => perDay[d].intents) },
            { label: "sealed", color: PALETTE[1], values: data.days.map((d) => perDay[d].sealed) },
          ]),
          legend(["intents", "sealed"]),
        ),
      ),
    );
    add(view, h("div", { class: "card" }, h("h2", { text: "By channel: lead-to-sale" }), summaryTable(data, channelOf, "Channel")));
    add(view, h("div", { class: "card" }, h("h2", { text: "By attribution" }), summaryTable(data, (r) => r.attribution, "Attribution")));
  }

  function summaryTable(data, keyOf, label) {
    const agg = {};
    data.rows.forEach((r) => {
      const a = (agg[keyOf(r)] = agg[keyOf(r)] || { sessions: 0, intents: 0, sealed: 0, sold: 0, value: 0 });
      a.sessions += r.sessions;
      a.intents += r.intents;
      a.sealed += r.sealed;
      a.sold += r.sold;
      a.value += r.sealed_value_minor;
    });
    const keys = Object.keys(agg).sort((x, y) => agg[y].intents - agg[x].intents || agg[y].sessions - agg[x].sessions);
    return h(
      "table",
      { class: "summary" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { text: label }),
          ["Sessions", "Intents", "Intent rate", "Sealed", "Sales", "Lead→sale", "Sealed value"].map((t) => h("th", { class: "num", text: t })),
        ),
      ),
      h(
        "tbody",
        {},
        keys.length
          ? keys.map((k) => {
              const a = agg[k];
              return h(
                "tr",
                { "data-key": k },
                h("td", { text: k }),
                h("td", { class: "num", text: a.sessions }),
                h("td", { class: "num", text: a.intents }),
                h("td", { class: "num", text: pct(a.intents, a.sessions) }),
                h("td", { class: "num", text: a.sealed }),
                h("td", { class: "num", text: a.sold }),
                h("td", { class: "num lead-to-sale", text: pct(a.sold, a.intents) }),
                h("td", { class: "num", text: money(a.value, data.currency) }),
              );
            })
          : h("tr", {}, h("td", { colspan: 8, class: "empty", text: "No traffic in this period." })),
      ),
    );
  }

  function legend(keys) {
    return h(
      "div",
      { class: "legend" },
      keys.map((k, i) => {
        const swatch = h("i");
        swatch.style.background = PALETTE[i % PALETTE.length];
        return h("span", {}, swatch, k);
      }),
    );
  }

  function axis(max) {
    if (max <= 4) return [0, max];
    const step = Math.pow(10, Math.floor(Math.log10(max)));
    const nice = Math.ceil(max / step) * step;
    return [0, nice / 2, nice];
  }

  function dayLabel(d) {
    return d.slice(5).replace("-", "/");
  }

  function frame(days, ticks, draw) {
    const W = 640;
    const H = 220;
    const L = 40;
    const B = 24;
    const T = 8;
    const top = ticks[ticks.length - 1] || 1;
    const chart = svg("svg", { class: "chart", viewBox: "0 0 " + W + " " + H, role: "img" });
    const y = (v) => H - B - ((H - B - T) * v) / top;
    ticks.forEach((t) => {
      add(chart, svg("line", { x1: L, x2: W, y1: y(t), y2: y(t), stroke: "#e3e6ec" }));
      add(chart, svg("text", { x: L - 6, y: y(t) + 4, "text-anchor": "end", text: String(t) }));
    });
    const slot = (W - L) / days.length;
    const labelEvery = Math.ceil(days.length / 10);
    days.forEach((d, i) => {
      if (i % labelEvery === 0) add(chart, svg("text", { x: L + slot * i + slot / 2, y: H - 6, "text-anchor": "middle", text: dayLabel(d) }));
    });
    draw(chart, { slot, y, L, base: y(0) });
    return chart;
  }

  function stackedBars(days, perDay, keys) {
    const max = Math.max(1, ...days.map((d) => Object.values(perDay[d].stacks).reduce((a, b) => a + b, 0)));
    return frame(days, axis(max), (chart, g) => {
      days.forEach((d, i) => {
        let acc = 0;
        keys.forEach((k, ki) => {
          const v = perDay[d].stacks[k] || 0;
          if (!v) return;
          const y0 = g.y(acc);
          const y1 = g.y(acc + v);
          acc += v;
          add(
            chart,
            svg(
              "rect",
              { x: g.L + g.slot * i + g.slot * 0.15, width: g.slot * 0.7, y: y1, height: Math.max(1, y0 - y1), fill: PALETTE[ki % PALETTE.length] },
              svg("title", { text: d + " · " + k + ": " + v }),
            ),
          );
        });
      });
    });
  }

  function lines(days, series) {
    const max = Math.max(1, ...series.flatMap((s) => s.values));
    return frame(days, axis(max), (chart, g) => {
      series.forEach((s) => {
        const pts = s.values.map((v, i) => [g.L + g.slot * i + g.slot / 2, g.y(v)]);
        add(chart, svg("polyline", { points: pts.map((p) => p.join(",")).join(" "), fill: "none", stroke: s.color, "stroke-width": 2 }));
        pts.forEach((p, i) =>
          add(chart, svg("circle", { cx: p[0], cy: p[1], r: 3, fill: s.color }, svg("title", { text: days[i] + " · " + s.label + ": " + s.values[i] }))),
        );
      });
    });
  }

  // ------------------------------------------------------------------ delivery

  const FIXES = {
    MISSING_CREDENTIALS: "Set the site's credentials (opsmantik site credentials set SITE ... or PUT /api/sites/SITE/credentials), then requeue.",
    VAULT_KEY_MISSING: "Set OPSMANTIK_VAULT_KEY on the uploaders to the key the credentials were sealed with, then requeue.",
    CREDENTIALS_UNDECRYPTABLE: "The credentials were sealed with another vault key: set them again, then requeue.",
    INVALID_CREDENTIALS: "The stored credentials are incomplete: set them again, then requeue.",
    CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE: "This account cannot use the Google Ads API upload: switch the site's destination to Data Manager, then requeue.",
    NO_CONVERSION_ACTION_FOUND: "Check the conversion action in the credentials (customers/ID/conversionActions/ID), then requeue.",
    INVALID_CONVERSION_ACTION_TYPE: "Use an offline (import) conversion action in the credentials, then requeue.",
    MAX_ATTEMPTS: "Gave up after the last attempt: fix the cause shown in the ledger, then requeue.",
    VOIDED: "Withdrawn because the seal was undone; nothing to do.",
  };
  const CATEGORY_FIXES = {
    AUTH: "Google refused the credentials: store a fresh refresh token (opsmantik site credentials set), then requeue.",
    CONFIG: "Account or configuration problem: check customer id, login customer id and conversion action, then requeue.",
    VALIDATION: "Google rejected this conversion itself (bad row); it is not retried.",
    RATE_LIMIT: "Google asked to slow down; it is retried automatically.",
    TRANSIENT: "A temporary error; it is retried automatically.",
  };

  function fixFor(row) {
    return FIXES[row.error_code] || CATEGORY_FIXES[row.error_category] || "";
  }

  function bars(data, order, kinds) {
    const max = Math.max(1, ...order.map((k) => data[k] || 0));
    return h(
      "div",
      { class: "bars" },
      order.map((k) => {
        const bar = h("span", { class: "bar" });
        bar.style.width = Math.round((180 * (data[k] || 0)) / max) + "px";
        return h("div", { class: "row " + (kinds[k] || ""), "data-key": k }, h("span", { class: "label", text: k }), bar, h("span", { class: "n", text: String(data[k] || 0) }));
      }),
    );
  }

  function credentialsText(site) {
    // the destination API may report these; say so plainly when this server does not
    const dest = site.destination;
    const creds = (dest && typeof dest === "object" && (dest.credentials || dest.credentials_set)) || site.credentials || site.credentials_set;
    if (creds === undefined || creds === null) return "not reported by this server";
    if (typeof creds === "boolean") return creds ? "set" : "not set";
    if (Array.isArray(creds)) return creds.length ? "set for " + creds.map((c) => c.destination || c).join(", ") : "not set";
    if (typeof creds === "object") {
      const set = creds.set !== undefined ? creds.set : creds.configured;
      if (typeof set === "boolean") return set ? "set" + (creds.account_id ? " (account " + creds.account_id + ")" : "") : "not set";
      return Object.entries(creds).map(([k, v]) => k + ": " + (v && typeof v === "object" ? (v.set || v.configured ? "set" : "not set") : v)).join(", ");
    }
    return String(creds);
  }

  async function delivery(view, params) {
    const pid = S.site.public_id;
    const status = params.get("status") || "";
    const operate = can("queue:operate");
    const [site, queue, rows, ledger] = await Promise.all([
      api.get("/sites/" + pid),
      api.get("/oci/queue?site=" + pid),
      api.get("/oci/rows" + q({ site: pid, status, limit: 100 })),
      api.get("/oci/ledger?site=" + pid + "&limit=25"),
    ]);
    const dest = site.destination && typeof site.destination === "object" ? site.destination.type || site.destination.destination : site.destination;
    const fb = h("div", { class: "feedback" });
    const doPost = async (path, body, label) => {
      try {
        const r = await api.post(path, body);
        fb.className = "feedback";
        fb.textContent = label + (r.requeued !== undefined ? ": " + r.requeued + " row(s)" : "");
        setTimeout(() => render(), 600);
      } catch (e) {
        fb.className = "feedback error";
        fb.textContent = e.message;
      }
    };
    const kinds = { FAILED: "bad", BLOCKED: "bad", RETRY: "warn", COMPLETED: "good", OPEN: "bad", HALF_OPEN: "warn", CLOSED: "good" };
    add(
      view,
      h(
        "div",
        { class: "grid" },
        h(
          "div",
          { class: "card" },
          h("h2", { text: "Destination" }),
          h("div", {}, "Uploads go to ", h("strong", { class: "destination", text: dest || site.default_destination || "?" })),
          h("div", { class: "sub credentials" }, "Credentials: " + credentialsText(site)),
          operate && (queue.counts.BLOCKED || queue.counts.FAILED)
            ? h(
                "div",
                { class: "actions" },
                queue.counts.BLOCKED ? h("button", { type: "button", "data-action": "requeue-blocked", text: "Requeue all BLOCKED", onclick: () => doPost("/oci/requeue", { site: pid, status: "BLOCKED" }, "requeued") }) : null,
                queue.counts.FAILED ? h("button", { type: "button", class: "secondary", "data-action": "requeue-failed", text: "Requeue all FAILED", onclick: () => doPost("/oci/requeue", { site: pid, status: "FAILED" }, "requeued") }) : null,
              )
            : null,
          fb,
        ),
        h("div", { class: "card" }, h("h2", { text: "Queue by state" }), bars(queue.counts, ["QUEUED", "PROCESSING", "RETRY", "COMPLETED", "FAILED", "BLOCKED"], kinds)),
        h(
          "div",
          { class: "card" },
          h("h2", { text: "Circuit breakers" }),
          queue.breakers.length
            ? h(
                "table",
                { class: "breakers" },
                h("tbody", {}, queue.breakers.map((b) =>
                  h(
                    "tr",
                    { "data-destination": b.destination },
                    h("td", { text: b.destination }),
                    h("td", {}, h("span", { class: "badge", text: b.state }), b.next_probe_at && b.state !== "CLOSED" ? h("span", { class: "sub", text: "next probe " + when(b.next_probe_at) }) : null),
                    h("td", { class: "sub", text: b.last_error || "" }),
                    operate && b.state !== "CLOSED" ? h("td", {}, h("button", { type: "button", class: "secondary", "data-action": "breaker-reset", text: "Reset", onclick: () => doPost("/oci/breaker/reset", { site: pid, destination: b.destination }, "breaker closed") })) : h("td"),
                  ),
                )),
              )
            : h("div", { class: "empty", text: "No uploads attempted yet: every breaker is closed." }),
        ),
      ),
    );
    add(
      view,
      h(
        "div",
        { class: "card" },
        h("h2", { text: "Conversions" }),
        h(
          "div",
          { class: "filters" },
          h("label", {}, "State", h("select", { onchange: (ev) => go("delivery", { site: pid, status: ev.target.value }) }, ["", "QUEUED", "PROCESSING", "RETRY", "COMPLETED", "FAILED", "BLOCKED"].map((s) => h("option", { value: s, text: s || "any", selected: s === status })))),
        ),
        rows.rows.length
          ? h(
              "table",
              { class: "queue-rows" },
              thead(["Created", "Kind", "State", "Attempt", "Last error and fix", operate ? "" : null]),
              h("tbody", {}, rows.rows.map((r) =>
                h(
                  "tr",
                  { "data-row-id": r.id, "data-status": r.status },
                  h("td", { class: "nowrap", text: when(r.created_at) }),
                  h("td", { text: r.source_kind + " · " + r.destination }),
                  h("td", {}, h("span", { class: "badge", text: r.status })),
                  h("td", { class: "num", text: String(r.attempt) }),
                  h("td", {}, r.last_error || r.error_code || "", fixFor(r) ? h("span", { class: "fix", text: fixFor(r) }) : null),
                  operate ? h("td", {}, r.status === "FAILED" || r.status === "BLOCKED" ? h("button", { type: "button", class: "secondary", "data-action": "requeue", text: "Requeue", onclick: () => doPost("/oci/requeue", { site: pid, ids: [r.id] }, "requeued") }) : null) : null,
                ),
              )),
            )
          : h("div", { class: "empty", text: "No conversions" + (status ? " in state " + status : "") + "." }),
      ),
    );
    add(
      view,
      h(
        "div",
        { class: "card" },
        h("h2", { text: "Attempt ledger" }),
        ledger.unfinished ? h("div", { class: "notice", text: ledger.unfinished + " attempt(s) started and never finished (an uploader stopped mid-request; the rescue job retries them)." }) : null,
        ledger.attempts.length
          ? h(
              "table",
              { class: "ledger" },
              thead(["Time", "Phase", "Rows", "Done / failed / retry / blocked", "HTTP", "Error", "Breaker", "ms"]),
              h("tbody", {}, ledger.attempts.map((a) =>
                h(
                  "tr",
                  { class: a.unfinished ? "unfinished" : "" },
                  h("td", { class: "nowrap", text: when(a.created_at) }),
                  h("td", { text: a.phase + (a.unfinished ? " (unfinished)" : "") }),
                  h("td", { class: "num", text: String(a.row_count) }),
                  h("td", { text: a.phase === "FINISHED" ? [a.completed_count, a.failed_count, a.retry_count, a.blocked_count].join(" / ") : "" }),
                  h("td", { text: a.http_status || "" }),
                  h("td", { text: [a.error_code, a.error_category].filter(Boolean).join(" · ") }),
                  h("td", { text: a.breaker_state || "" }),
                  h("td", { class: "num", text: a.duration_ms === null ? "" : String(a.duration_ms) }),
                ),
              )),
            )
          : h("div", { class: "empty", text: "No upload attempts yet." }),
      ),
    );
    every(5000, async () => {
      try {
        const fresh = await api.get("/oci/queue?site=" + pid);
        const box = $(".bars", view);
        if (box) box.replaceWith(bars(fresh.counts, ["QUEUED", "PROCESSING", "RETRY", "COMPLETED", "FAILED", "BLOCKED"], kinds));
      } catch (e) {
        /* next tick */
      }
    });
  }

  // ------------------------------------------------------------------ alerts

  async function alerts(view, params) {
    const all = params.get("all") === "1";
    const data = await api.get("/sites/" + S.site.public_id + "/alerts" + (all ? "?include_resolved=true" : ""));
    add(
      view,
      h(
        "div",
        { class: "filters" },
        h("label", {}, h("input", { type: "checkbox", checked: all, onchange: (ev) => go("alerts", { site: S.site.public_id, all: ev.target.checked ? "1" : "" }) }), " include resolved"),
      ),
    );
    add(
      view,
      h(
        "div",
        { class: "card" },
        h("h2", { text: "Watchtower alerts" }),
        data.alerts.length
          ? h(
              "table",
              { class: "alerts" },
              thead(["Alert", "Kind", "First seen", "Last seen", "State"]),
              h("tbody", {}, data.alerts.map((a) =>
                h(
                  "tr",
                  { "data-kind": a.kind },
                  h("td", { text: a.summary }),
                  h("td", {}, h("code", { text: a.kind })),
                  h("td", { class: "nowrap", text: when(a.first_seen_at) }),
                  h("td", { class: "nowrap", text: when(a.last_seen_at) }),
                  h("td", {}, h("span", { class: "badge " + (a.resolved_at ? "" : "suspicious"), text: a.resolved_at ? "resolved " + when(a.resolved_at) : "open" })),
                ),
              )),
            )
          : h("div", { class: "empty", text: "No open alerts: the watchtower checks pass for this site." }),
      ),
    );
  }

  // ------------------------------------------------------------------ billing

  async function billing(view) {
    const pid = S.site.public_id;
    const [usage, invoices] = await Promise.all([api.get("/billing/usage?site=" + pid), api.get("/billing/invoices?site=" + pid)]);
    add(
      view,
      h(
        "div",
        { class: "grid" },
        h(
          "div",
          { class: "card" },
          h("h2", { text: "Usage by month" }),
          h(
            "table",
            {},
            thead(["Month", "Events", "Overage", "Rejected", "Ledger"]),
            h("tbody", {}, usage.months.map((m) =>
              h(
                "tr",
                {},
                h("td", { text: m.year_month }),
                h("td", { class: "num", text: String(m.event_count) }),
                h("td", { class: "num", text: String(m.overage_count) }),
                h("td", { class: "num", text: String(m.rejected_count) }),
                h("td", {}, h("a", { href: "/console/api/billing/dispute-export?site=" + pid + "&month=" + m.year_month, text: "CSV" })),
              ),
            )),
          ),
        ),
        h(
          "div",
          { class: "card" },
          h("h2", { text: "Invoices (frozen)" }),
          invoices.invoices.length
            ? h("table", {}, h("tbody", {}, invoices.invoices.map((i) => h("tr", {}, h("td", { text: i.year_month }), h("td", { class: "num", text: String(i.event_count) }), h("td", { class: "sub", text: i.figures_sha256.slice(0, 12) })))))
            : h("div", { class: "empty", text: "No frozen invoices yet." }),
        ),
      ),
    );
  }

  document.addEventListener("DOMContentLoaded", boot);
})();
