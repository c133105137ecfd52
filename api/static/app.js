// dctwin dashboard: vanilla JS, no dependencies. Reads /v1 with the API key from
// sessionStorage and follows /v1/stream (SSE over fetch, so the key travels in the
// Authorization header, never in a URL) for live updates.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "dctwin.apikey";
const S = {
  key: null, role: null, paths: new Set(), lastEventId: null, racks: [], rackFields: [],
  mode: "temp", selectedRack: null, selectedDevice: null, events: [],
  // issue 26: one session at a time; sign-out ends its timers and stream (no polling after)
  session: null,
};
const ROLE_RANK = { viewer: 0, operator: 1, admin: 2 };

// ---------------------------------------------------------------- API access
class AuthError extends Error {}

async function api(path, opts = {}) {
  // signed out while a refresh was still under way: its remaining requests are not sent
  if (!S.key) throw new DOMException("signed out", "AbortError");
  const res = await fetch(path, {
    signal: S.session?.abort.signal,
    ...opts,
    headers: { Authorization: `Bearer ${S.key}`, Accept: "application/json",
               ...(opts.body ? { "Content-Type": "application/json" } : {}),
               ...(opts.headers || {}) },
  });
  if (res.status === 401) throw new AuthError("the API key was rejected (unknown or revoked)");
  const body = res.status === 204 ? null : await res.json();
  if (!res.ok) throw new Error(body && body.detail ? body.detail : `HTTP ${res.status}`);
  return body;
}

const has = (path) => S.paths.has(path);

// ---------------------------------------------------------------- formatting
const fmtPue = (v) => (v == null ? "–" : v.toFixed(3)); // the API's value, 3 decimals
const fmtKw = (v) => (v == null ? "–" : Math.round(v).toLocaleString("en-US"));
const fmtPct = (v) => (v == null ? "–" : `${(v * 100).toFixed(1)} %`);
const fmtTime = (iso) => (iso ? new Date(iso).toISOString().slice(11, 19) + "Z" : "");

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

// ---------------------------------------------------------------- overview
function showPue(p) {
  $("pue-value").textContent = fmtPue(p.value);
  $("pue-value").dataset.value = p.value == null ? "" : String(p.value);
  $("pue-category").textContent = p.category || "";
  $("pue-note").textContent = p.value == null ? (p.reason || "unknown")
    : (p.stale_inputs && p.stale_inputs.length ? `stale: ${p.stale_inputs.join(", ")}`
      : `as of ${fmtTime(p.time)}`);
  if ("facility_kw" in p) showPower(p.facility_kw, p.it_kw, p.cooling_kw);
  $("dcie").textContent = p.dcie == null ? "" : `DCiE ${fmtPct(p.dcie)}`;
}

function showPower(fac, it, cool) {
  $("facility-kw").textContent = fmtKw(fac);
  $("it-kw").textContent = fmtKw(it);
  $("cooling-kw").textContent = fmtKw(cool);
  $("cooling-overhead").textContent = cool != null && it ? `${fmtPct(cool / it)} of IT power` : "";
  const split = $("power-split");
  split.replaceChildren();
  if (fac && it != null && cool != null) {
    const other = Math.max(fac - it - cool, 0);
    for (const [cls, v, label] of [["it", it, "IT"], ["cool", cool, "cooling"],
                                   ["other", other, "other"]]) {
      const d = el("div", cls, `${label} ${Math.round((v / fac) * 100)} %`);
      d.style.flexBasis = `${(v / fac) * 100}%`;
      d.title = `${label}: ${fmtKw(v)} kW`;
      split.append(d);
    }
  }
}

async function loadOverview() {
  let o = await api("/v1/overview?hours=24&step_s=300");
  let step = "5 min";
  if (o.pue_history.length < 12) { // a young twin: show what there is at a finer step
    o = await api("/v1/overview?hours=24&step_s=10");
    step = "10 s";
  }
  $("site-name").textContent = o.site_name;
  showPower(o.facility_kw, o.it_kw, o.cooling_kw); // first paint: the API's figures
  $("pue-range").textContent = o.pue_history.length ? `${o.pue_history.length} × ${step}` : "";
  lineChart($("pue-chart"), [{ colour: "#4fb3ff",
    points: o.pue_history.map((p) => [Date.parse(p.time), p.value]) }],
    { digits: 2, maxDigits: 3, minSpan: 0.02,
      empty: "no PUE history yet: it needs facility and IT meter readings" });
}

// ---------------------------------------------------------------- heat map
function rackValue(r) {
  if (S.mode === "temp") return r.gpu_max_temp_c;
  return r[S.mode];
}

function renderHeatmap() {
  const map = $("heatmap");
  const rows = new Map();
  for (const r of S.racks) {
    const k = `${r.hall}/${r.row}`;
    if (!rows.has(k)) rows.set(k, []);
    rows.get(k).push(r);
  }
  const cols = Math.max(1, ...[...rows.values()].map((x) => x.length));
  map.replaceChildren();
  for (const [k, racks] of rows) {
    const row = el("div", "heat-row");
    row.style.setProperty("--cols", cols);
    row.append(el("div", "row-label", k.split("/")[1]));
    for (const r of racks) {
      const v = rackValue(r);
      const cell = el("div", "rack");
      cell.dataset.rack = r.rack;
      cell.dataset.testid = "rack-cell";
      const bg = colour(v, S.mode === "temp" ? TEMP_STOPS : SCORE_STOPS);
      if (bg) cell.style.background = bg; else cell.classList.add("nodata");
      if ((r.anomaly_score ?? 0) >= 0.8 || (r.failure_risk ?? 0) >= 0.8) cell.classList.add("flag");
      if (r.rack === S.selectedRack) cell.classList.add("sel");
      cell.append(el("div", "name", r.rack));
      cell.append(el("div", "val", v == null ? "–" : S.mode === "temp" ? `${v.toFixed(0)}°`
                                                                          : v.toFixed(2)));
      cell.title = `${r.rack}: GPU max ${r.gpu_max_temp_c?.toFixed(1) ?? "–"} °C, ` +
        `${r.power_kw?.toFixed(1) ?? "–"} kW, anomaly ${r.anomaly_score ?? "n/a"}, ` +
        `risk ${r.failure_risk ?? "n/a"}`;
      cell.addEventListener("click", () => openRack(r.rack));
      row.append(cell);
    }
    map.append(row);
  }
  const legend = $("legend");
  const stops = S.mode === "temp" ? TEMP_STOPS : SCORE_STOPS;
  const bar = el("div", "bar");
  bar.style.background = `linear-gradient(90deg, ${stops.map((s) => `rgb(${s[1]})`).join(",")})`;
  const lo = S.mode === "temp" ? `${stops[0][0]} °C` : "0";
  const hi = S.mode === "temp" ? `${stops[stops.length - 1][0]} °C` : "1";
  const none = S.mode !== "temp" && S.racks.every((r) => r[S.mode] == null)
    ? " (not computed yet on this server)" : "";
  legend.replaceChildren(el("span", null, lo), bar, el("span", null, hi + none));
}

async function loadRacks() {
  const page = await api("/v1/racks?limit=1000");
  S.racks = page.items;
  renderHeatmap();
}

function applyRacksEvent(ev) {
  const idx = Object.fromEntries(ev.fields.map((f, i) => [f, i]));
  for (const r of S.racks) {
    const v = ev.racks[r.rack];
    if (!v) continue;
    r.gpu_max_temp_c = v[idx.gpu_max_temp_c];
    r.power_kw = v[idx.power_kw];
    if ("anomaly_score" in idx) r.anomaly_score = v[idx.anomaly_score];
    if ("failure_risk" in idx) r.failure_risk = v[idx.failure_risk];
  }
  renderHeatmap();
}

// ---------------------------------------------------------------- drill-down
async function openRack(rack) {
  S.selectedRack = rack;
  S.selectedDevice = null;
  renderHeatmap();
  const d = await api(`/v1/racks/${encodeURIComponent(rack)}`);
  $("drill").hidden = false;
  $("device").hidden = true;
  $("drill-title").textContent = `Rack ${d.rack} · ${d.row} · ${d.hall}`;
  $("drill-summary").textContent = `GPU max ${d.gpu_max_temp_c?.toFixed(1) ?? "–"} °C, ` +
    `mean ${d.gpu_mean_temp_c?.toFixed(1) ?? "–"} °C, ${d.gpus_reporting}/${d.gpus_total} GPUs ` +
    `reporting, ${d.power_kw?.toFixed(1) ?? "–"} kW`;
  const gpus = $("rack-gpus");
  gpus.replaceChildren();
  for (const dev of d.devices) {
    const temp = dev.metrics.find((m) => m.metric === "gpu_temp_c" || m.metric === "temp_c");
    const cell = el("div", "gpu", `${dev.device_id.split("/").slice(-2).join("/")}` +
      (temp ? ` ${temp.value.toFixed(0)}°` : ""));
    const bg = colour(temp?.value, TEMP_STOPS);
    if (bg) cell.style.background = bg;
    cell.title = dev.device_id;
    cell.addEventListener("click", () => openDevice(dev.device_id, cell));
    gpus.append(cell);
  }
  $("drill").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

async function openDevice(id, cell) {
  S.selectedDevice = id;
  document.querySelectorAll(".gpu.sel").forEach((c) => c.classList.remove("sel"));
  if (cell) cell.classList.add("sel");
  const dev = await api(`/v1/devices/${id}`);
  $("device").hidden = false;
  $("device-title").textContent = `${id} (${dev.device_class ?? "unknown class"})`;
  const table = $("device-metrics");
  table.replaceChildren();
  for (const m of dev.metrics) {
    const tr = el("tr");
    tr.append(el("td", null, m.metric), el("td", null, `${+m.value.toFixed(2)}`));
    table.append(tr);
  }
  const names = dev.device_class === "gpu" ? ["gpu_temp_c", "power_w"]
    : dev.device_class === "psu" ? ["temp_c", "input_power_w"] : [dev.metrics[0]?.metric];
  const targets = [$("device-chart-temp"), $("device-chart-power")];
  await Promise.all(names.map(async (metric, i) => {
    if (!metric) { targets[i].replaceChildren(); return; }
    const start = new Date(Date.now() - 3600e3).toISOString();
    const s = await api(`/v1/series?id=${encodeURIComponent(id)}&metric=` +
                        `${encodeURIComponent(metric)}&step=10&start=${start}`);
    lineChart(targets[i], [{ colour: i ? "#57d3c6" : "#f5b942",
      points: s.points.map((p) => [Date.parse(p.time), p.mean]) }],
      { unit: metric.endsWith("_c") ? "°" : "", title: `${metric}, last hour (10 s mean)` });
  }));
}

// ---------------------------------------------------------------- UPS battery
// upsTestResultsSummary (RFC 1628)
const UPS_TEST = { 1: "passed", 2: "passed with warnings", 3: "FAILED", 4: "aborted",
                   5: "in progress", 6: "none run yet" };
const DAY_MS = 86400e3;
const fmtMin = (s) => (s == null ? "–" : `${(s / 60).toFixed(s < 600 ? 1 : 0)} min`);

function setCell(id, text, cls) {
  const c = $(id);
  c.textContent = text;
  c.className = cls || "";
}

async function loadUps() {
  if (!S.battery) { // the battery's site-file attributes: from the topology, once
    const topo = await api("/v1/topology?depth=facility&chain=power");
    const node = topo.nodes.find((n) => n.class === "ups_battery");
    if (!node) { $("ups-state").textContent = "no UPS battery in the site model"; return; }
    S.battery = { ...node.attrs, ups: node.id.replace(/\/battery$/, "") };
  }
  const b = S.battery;
  $("ups-id").textContent = `${b.ups} · ${b.chemistry}`;
  const dev = await api(`/v1/devices/${b.ups}`);
  const m = Object.fromEntries(dev.metrics.map((x) => [x.metric, x.value]));
  const state = $("ups-state");
  if (m.on_battery == null) state.textContent = "no UPS readings yet";
  else {
    const secs = m.battery_time_on_battery_s;
    state.textContent = m.on_battery >= 0.5
      ? `ON BATTERY${secs != null ? ` for ${Math.round(secs)} s` : ""}` : "on utility";
  }
  state.classList.toggle("onbatt", m.on_battery >= 0.5);
  setCell("ups-charge", m.battery_charge_pct == null ? "–"
    : `${Math.round(m.battery_charge_pct)} %`, m.battery_charge_pct < 50 ? "warn" : "");
  const need = b.required_ride_through_s;
  const rt = m.battery_runtime_s;
  setCell("ups-runtime", `${fmtMin(rt)} (needs ${fmtMin(need)})`,
    rt != null && need != null && rt < need ? "bad" : "");
  const temp = m.battery_temp_c;
  setCell("ups-temp", temp == null ? "–" : `${temp.toFixed(0)} °C`, temp > 35 ? "warn" : "");
  const test = m.battery_test_result;
  setCell("ups-test", test == null ? "–" : UPS_TEST[Math.round(test)] ?? `code ${test}`,
    test === 3 ? "bad" : test === 2 ? "warn" : "");
  const now = Date.now();
  setCell("ups-age", b.installed
    ? `installed ${b.installed} (${((now - Date.parse(b.installed)) / DAY_MS / 365.25).toFixed(1)} years)`
    : "installation date not in the site file");
  if (b.replace_by) {
    const days = Math.round((Date.parse(b.replace_by) - now) / DAY_MS);
    setCell("ups-replace", `${b.replace_by} (${days >= 0 ? `in ${days} days` : `${-days} days overdue`})`,
      days < 0 ? "bad" : days <= 90 ? "warn" : "");
  } else setCell("ups-replace", "not in the site file");
}

// ---------------------------------------------------------------- alerts
// fields of the API's AlertOut: id, alertname, status (firing|resolved), severity, labels,
// annotations (summary, runbook_url), starts_at, acknowledged ({by, at, comment} or null)
const alertId = (a) => a.id;
const isActive = (a) => a.status === "firing";
const isAcked = (a) => a.acknowledged != null;

async function loadAlerts() {
  const list = $("alerts");
  if (!has("/v1/alerts")) {
    list.replaceChildren(el("li", "none", "alerts are not available on this server"));
    return;
  }
  const body = await api("/v1/alerts?status=firing&limit=200");
  const alerts = (Array.isArray(body) ? body : body.items || []).filter(isActive);
  $("alert-count").textContent = `${alerts.length} active`;
  list.replaceChildren();
  if (!alerts.length) list.append(el("li", "none", "no active alerts: every rule's condition is clear"));
  const canAck = ROLE_RANK[S.role] >= ROLE_RANK.operator && has("/v1/alerts/{alert_id}/ack");
  for (const a of alerts) {
    const li = el("li");
    li.dataset.alertId = alertId(a);
    const sev = String(a.severity || "info");
    li.append(el("span", `sev ${isAcked(a) ? "acked" : sev}`, isAcked(a) ? "acked" : sev));
    const text = el("div", "grow");
    text.append(el("div", "title", a.annotations.summary || a.alertname));
    const where = a.labels.device_id || a.labels.cdu || a.labels.pdu || a.labels.rack || "";
    const sub = el("div", "sub", `${a.alertname} · ${where} · since ${fmtTime(a.starts_at)}` +
      (isAcked(a) ? ` · acked by ${a.acknowledged.by}` : ""));
    if (a.annotations.runbook_url) {
      const rb = el("a", "runbook", "runbook");
      rb.href = a.annotations.runbook_url;
      rb.target = "_blank";
      rb.rel = "noopener";
      sub.append(" · ", rb);
    }
    text.append(sub);
    li.append(text);
    if (canAck && !isAcked(a)) {
      const b = el("button", "ack", "Acknowledge");
      b.dataset.testid = "ack";
      b.addEventListener("click", async () => {
        b.disabled = true;
        try {
          await api(`/v1/alerts/${encodeURIComponent(alertId(a))}/ack`, {
            method: "POST",
            body: JSON.stringify({ by: S.name, comment: "acknowledged from the dashboard" }) });
        } catch (e) { b.disabled = false; b.title = e.message; }
        await loadAlerts();
      });
      li.append(b);
    }
    list.append(li);
  }
}

// ---------------------------------------------------------------- issue 20: incidents
async function loadIncidents() {
  const list = $("incidents");
  if (!has("/v1/anomalies")) {
    list.replaceChildren(el("li", "none", "anomaly scoring is not available on this server"));
    return;
  }
  const body = await api("/v1/anomalies?limit=1&incidents=all&incident_limit=20");
  const incs = body.incidents || [];
  const open = incs.filter((i) => i.state === "open").length;
  $("incident-count").textContent = body.warming_up ? "warming up" : `${open} open`;
  list.replaceChildren();
  if (body.warming_up) { // why it is empty: not enough stored history yet
    list.append(el("li", "none", `no scores yet: ${Math.round(body.history_s / 60)} of ` +
      `${Math.round(body.history_needed_s / 60)} min of history (${body.status})`));
    return;
  }
  if (!incs.length) list.append(el("li", "none", "no incidents: every device within its normal"));
  for (const i of incs) {
    const li = el("li");
    li.dataset.incidentId = i.id;
    li.append(el("span", `sev ${i.state === "open" ? i.severity : "resolved"}`,
                 i.state === "open" ? i.severity : "resolved"));
    const text = el("div", "grow");
    const rc = i.root_cause || {};
    text.append(el("div", "title",
      `root cause ${rc.device_id ?? "?"} · ${rc.metric ?? "?"} (${rc.component ?? "?"})`));
    const others = (i.alarms || []).filter((a) => a.device_id !== rc.device_id);
    const evid = others.slice(0, 3).map((a) => `${a.device_id.split("/").pop()} ` +
      `${a.relation} ${a.peak_score.toFixed(2)}`).join(", ");
    text.append(el("div", "sub", `score ${i.score.toFixed(2)} · ${i.devices} device(s)` +
      `${evid ? ` · ${evid}${others.length > 3 ? ", …" : ""}` : ""} · since ` +
      `${fmtTime(i.opened)}${i.resolved ? ` · resolved ${fmtTime(i.resolved)}` : ""}`));
    li.append(text);
    list.append(li);
  }
}

// ---------------------------------------------------------------- recommendations
async function loadRecommendations() {
  const list = $("recommendations");
  if (!has("/v1/recommendations")) {
    list.replaceChildren(el("li", "none", "none: no optimizer runs on this server"));
    return;
  }
  const body = await api("/v1/recommendations?limit=50");
  const recs = Array.isArray(body) ? body : body.items || [];
  list.replaceChildren();
  // issue 19 (opt-live): the live optimizer's last round and why it proposed nothing
  if (has("/v1/recommendations/status")) {
    const st = await api("/v1/recommendations/status").catch(() => null);
    if (st && st.running) {
      const at = (t) => (t ? new Date(t).toLocaleTimeString() : "–");
      const mode = st.advisory_only ? "advisory only" : `writes via ${st.writer || "–"}`;
      // issue 19/26 (opt-default): which model serves, shipped default or the site's own
      const src = { shipped_default: "shipped default", site_trained: "site-trained" }[st.model_source];
      const model = st.model_version ? ` · model ${st.model_version} (${src || "?"})` : " · no model";
      const line = `live optimizer: last run ${at(st.last_run_at)}, next ${at(st.next_run_at)}, ${mode}${model}`
        + (st.last_outcome && st.last_outcome !== "recommended" ? ` · no proposal: ${st.reason}` : "");
      const li = el("li", "none", line);
      li.dataset.testid = "rec-status";
      list.append(li);
      // the plant's setpoints as its telemetry reports them now: an applied change shows
      // here as the plant ramps to it
      const sp = Object.entries(st.state || {}).filter(([k]) => k.includes("setpoint"));
      if (sp.length) {
        const now = el("li", "none", "plant at last run: "
          + sp.map(([k, v]) => `${setpointName(k)} ${v == null ? "–" : v.toFixed(1)}`).join(", "));
        now.dataset.testid = "plant-setpoints";
        list.append(now);
      }
    }
  }
  if (!recs.length) list.append(el("li", "none",
    "none yet: the optimizer proposes once it has a model and enough plant history"));
  for (const r of recs) {
    const li = el("li");
    const text = el("div", "grow");
    const cur = r.current_setpoints || {};
    const changes = Object.entries(r.recommended_setpoints || {})
      .filter(([k, v]) => cur[k] == null || Math.abs(cur[k] - v) >= 0.05)
      .map(([k, v]) => `${setpointName(k)} ${cur[k]?.toFixed(1) ?? "?"} → ${v.toFixed(1)}`);
    text.append(el("div", "title", changes.length ? changes.join(", ") : `#${r.id}: hold setpoints`));
    const why = [r.status];
    if (r.pue_delta != null) why.push(`PUE ${r.pue_delta > 0 ? "+" : ""}${r.pue_delta.toFixed(3)}`);
    if (r.binding_constraint) why.push(`binding: ${r.binding_constraint}`);
    if (r.decided_by) why.push(`by ${r.decided_by}`);
    // issue 19/26 (opt-default): realised beside predicted, once the change has settled
    if (r.realised_savings_kw != null) {
      why.push(`predicted −${(r.predicted_savings_kw ?? 0).toFixed(1)} kW, realised −${r.realised_savings_kw.toFixed(1)} kW`);
    } else if (r.applied_at && r.status === "accepted") why.push("applied: realised saving once settled");
    // what the plant's registers read back after the write (the change as the plant holds it)
    if (r.applied_setpoints && r.applied_at) {
      const w = Object.entries(r.applied_setpoints).filter(([k, v]) => cur[k] == null || Math.abs(cur[k] - v) >= 0.05)
        .map(([k, v]) => `${setpointName(k)} ${v.toFixed(1)}`);
      if (w.length) why.push(`written: ${w.join(", ")}`);
    }
    if (r.status_note) why.push(r.status_note); // issue 19: expired / failed / reverted, why
    text.append(el("div", "sub", why.join(" · ")));
    li.append(text);
    const kw = r.predicted_savings_kw;
    if (kw != null) {
      const range = r.savings_low_kw != null && r.savings_high_kw != null
        ? ` (${r.savings_low_kw.toFixed(0)}–${r.savings_high_kw.toFixed(0)})` : "";
      li.append(el("span", "saving", `−${kw.toFixed(1)} kW${range}`));
    }
    const canDecide = ROLE_RANK[S.role] >= ROLE_RANK.operator;
    if (canDecide && r.status === "proposed") {
      for (const verb of ["accept", "reject"]) {
        if (!has(`/v1/recommendations/{rec_id}/${verb}`)) continue;
        const b = el("button", verb === "reject" ? "ghost" : "", verb);
        b.dataset.testid = `rec-${verb}`;
        b.addEventListener("click", async () => {
          b.disabled = true;
          // no body: the server records the API key's name as the operator
          await api(`/v1/recommendations/${encodeURIComponent(r.id)}/${verb}`,
                    { method: "POST" }).catch(report);
          await loadRecommendations();
        });
        li.append(b);
      }
    }
    list.append(li);
  }
}

function setpointName(k) {
  return k.replace(/_setpoint/, "").replace(/_c$/, " °C").replace(/_kpa$/, " kPa").replace(/_/g, " ");
}

// ---------------------------------------------------------------- device events
// the timeline: GET /v1/events on first paint, then the stream's device_event
async function loadEvents() {
  if (!has("/v1/events")) return;
  S.events = await api("/v1/events?hours=6&limit=50");
  addDeviceEvent(null);
}

function addDeviceEvent(e) {
  // the stream may bring an event the first-paint fetch already listed: keep one
  const key = (x) => `${Date.parse(x.time)}|${x.device_id}|${x.kind}|${x.message ?? ""}`; // ISO forms differ
  if (e && !S.events.some((x) => key(x) === key(e))) S.events.unshift(e);
  S.events.length = Math.min(S.events.length, 50);
  const list = $("events");
  list.replaceChildren();
  if (!S.events.length) list.append(el("li", "none",
    "no device events in the last 6 h (XIDs, leaks, failed pumps or PSUs show here)"));
  for (const x of S.events) {
    const li = el("li");
    li.append(el("span", `sev ${x.severity}`, x.severity));
    li.append(el("div", "grow", `${fmtTime(x.time)} ${x.kind} ${x.device_id} ${x.message ?? ""}`));
    list.append(li);
  }
}

// ---------------------------------------------------------------- live stream
function setLive(on) {
  const l = $("live");
  l.className = `live ${on ? "on" : "off"}`;
  l.textContent = on ? "live" : "reconnecting";
}

function handleEvent(type, data, id) {
  if (id) S.lastEventId = id;
  const d = data ? JSON.parse(data) : null;
  if (type === "pue") showPue(d);
  else if (type === "racks") applyRacksEvent(d);
  else if (type === "alert") loadAlerts().catch(report);
  else if (type === "recommendations") loadRecommendations().catch(report);
  else if (type === "incidents") loadIncidents().catch(report); // issue 20
  else if (type === "device_event") addDeviceEvent(d);
  else if (type === "reset") refreshAll().catch(report); // missed events: reload state
}

async function follow(session) {
  let retryMs = 2000;
  const current = () => S.session === session;
  while (current()) {
    try {
      const headers = { Authorization: `Bearer ${S.key}`, Accept: "text/event-stream" };
      if (S.lastEventId) headers["Last-Event-ID"] = S.lastEventId;
      const res = await fetch("/v1/stream", { headers, cache: "no-store",
                                              signal: session.abort.signal });
      if (res.status === 401) { signOut("the API key was rejected"); return; }
      if (!res.ok || !res.body) throw new Error(`stream HTTP ${res.status}`);
      setLive(true);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let type = "message", data = [], id = null;
          for (const line of block.split("\n")) {
            if (line.startsWith(":")) continue;
            const i = line.indexOf(":");
            const f = i < 0 ? line : line.slice(0, i);
            const v = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
            if (f === "event") type = v;
            else if (f === "data") data.push(v);
            else if (f === "id") id = v;
            else if (f === "retry" && /^\d+$/.test(v)) retryMs = +v;
          }
          if (data.length || id) handleEvent(type, data.join("\n"), id);
        }
      }
    } catch (e) {
      if (!current()) return;
    }
    if (!current()) return;
    setLive(false);
    await new Promise((r) => setTimeout(r, retryMs));
  }
}

// ---------------------------------------------------------------- session
function report(e) {
  if (e.name === "AbortError" || !S.session) return; // signed out meanwhile
  if (e instanceof AuthError) signOut(e.message);
  else console.warn("dctwin:", e.message || e);
}

// which failure model serves the "risk" view: shipped default or site-trained, when,
// and the held-out figures it was validated on (GET /v1/failure-models)
async function loadRiskModel() {
  const box = $("risk-model");
  if (!has("/v1/failure-models")) { box.textContent = ""; return; }
  const body = await api("/v1/failure-models");
  const m = body.serving;
  if (!m) { box.textContent = "failure risk: no model serves (none approved or shipped)"; return; }
  const src = m.source === "shipped_default" ? "shipped default" : "site-trained";
  const when = m.trained_at ? `, trained ${m.trained_at.slice(0, 10)}` : "";
  const figs = Object.entries(m.validation.classes)
    .map(([c, f]) => `${c} PR-AUC ${f.pr_auc == null ? "–" : f.pr_auc.toFixed(2)}`
      + ` recall ${f.recall == null ? "–" : f.recall.toFixed(2)}`).join(", ");
  box.textContent = `failure risk: model ${m.version} (${src}${when}); `
    + `validated on ${m.validation.method}: ${figs}`;
}

// ---------------------------------------------------------------- issue 26 (story): risk
// the riskiest devices with the model's reasons, so a risk on the heat map has its why
async function loadRiskTop() {
  const list = $("risk-top");
  if (!has("/v1/failure-risk")) { list.replaceChildren(); return; }
  const body = await api("/v1/failure-risk?limit=5&min_risk=0.05");
  list.replaceChildren();
  if (!body.devices.length) {
    list.append(el("li", "none", "no device above 5 % failure risk within the horizon"));
    return;
  }
  for (const d of body.devices) {
    const li = el("li");
    li.dataset.testid = "risk-device";
    li.dataset.device = d.device_id;
    li.append(el("span", `sev ${d.alarm ? "critical" : "warning"}`, d.alarm ? "at risk" : "watch"));
    const text = el("div", "grow");
    text.append(el("div", "title", `${d.device_id} · risk ${(100 * d.risk).toFixed(0)} %`));
    text.append(el("div", "sub", `why: ${d.reasons.join("; ") || "no single feature stands out"}`));
    li.append(text);
    list.append(li);
  }
}

// ---------------------------------------------------------------- what-if (issue 27)
const WHATIF_ROWS = [["pue", "PUE", (v) => fmtPue(v)], ["peak_gpu_temp_c", "peak GPU °C", (v) => v?.toFixed(1)],
  ["peak_gpu_id", "hottest GPU", (v) => v ?? "–"], ["it_energy_kwh", "IT kWh", fmtKw],
  ["makeup_water_l", "water L", fmtKw], ["violations", "violations", (v) => v ?? "–"],
  ["first_breach", "first breach", (b) => (b ? `${b.limit} ${b.device_id} +${b.after_h} h` : "none")]];
const whatifPicked = new Set();

async function loadWhatIf() {
  const list = $("whatif");
  if (!has("/v1/what-if")) {
    list.replaceChildren(el("li", "none", "not available on this server"));
    return;
  }
  const runs = await api("/v1/what-if?limit=20");
  list.replaceChildren();
  if (!runs.length) list.append(el("li", "none", "no runs yet: POST /v1/what-if or dctwin what-if run"));
  for (const r of runs) {
    const li = el("li");
    li.dataset.testid = "whatif-run";
    const pick = el("input");
    pick.type = "checkbox";
    pick.checked = whatifPicked.has(r.id);
    pick.addEventListener("change", () => (pick.checked ? whatifPicked.add(r.id) : whatifPicked.delete(r.id)));
    li.append(pick);
    const text = el("div", "grow");
    text.append(el("div", "title", r.name || r.id));
    const pct = r.status === "running" ? ` ${(r.progress * 100).toFixed(0)} %` : "";
    text.append(el("div", "sub", `${r.status}${pct} · ${r.submitted ? fmtTime(r.submitted) : ""}`));
    li.append(text);
    if (ROLE_RANK[S.role] >= ROLE_RANK.operator) {
      const again = el("button", "ghost", "run again");
      again.dataset.testid = "whatif-rerun";
      again.addEventListener("click", async () => {
        again.disabled = true;  // the saved scenario, from the live state now
        await api("/v1/what-if", { method: "POST", body: JSON.stringify(r.scenario) }).catch(report);
        await loadWhatIf();
      });
      li.append(again);
    }
    list.append(li);
  }
}

async function compareWhatIf() {
  const ids = [...whatifPicked];
  if (!ids.length) return;
  const c = await api(`/v1/what-if/compare?ids=${ids.map(encodeURIComponent).join(",")}`);
  const t = $("whatif-table");
  const head = el("tr");
  head.append(el("th", "", ""));
  c.names.forEach((n, i) => head.append(el("th", "", n || c.ids[i])));
  const rows = [head];
  for (const [key, label, fmt] of WHATIF_ROWS) {
    const tr = el("tr");
    tr.append(el("th", "", label));
    for (const v of c.figures[key]) tr.append(el("td", "", String(fmt(v))));
    rows.push(tr);
  }
  t.replaceChildren(...rows);
  t.hidden = false;
}

// ---------------------------------------------------------------- capacity (issue 27)
const CAP_KINDS = ["ups", "plant", "hall", "pdu", "cdu", "crah"];

async function loadCapacity() {
  if (!has("/v1/capacity")) { $("capacity-runout").textContent = "not in this API"; return; }
  const body = await api("/v1/capacity?" + CAP_KINDS.map((k) => `kind=${k}`).join("&"));
  $("capacity-basis").textContent = `peak of ${body.peak_window_h} h · kW`;
  const head = el("tr");
  for (const h of ["element", "used", "headroom N", "headroom N-1"]) head.append(el("th", null, h));
  const rows = [head];
  for (const e of body.elements) {
    const tr = el("tr");
    const what = e.weather ? `${e.resource}, ${e.weather.replace("_", " ")}` : e.resource;
    tr.append(el("td", null, `${e.id.split("/").pop()} · ${what}`), el("td", null, fmtKw(e.used_kw)));
    for (const v of [e.headroom_n_kw, e.headroom_n1_kw]) {
      tr.append(el("td", v == null ? null : v < 0 ? "bad" : v < 0.1 * (e.capacity_n_kw || 1) ? "warn" : null,
                   fmtKw(v)));
    }
    // a single CDU or CRAH has no spare of its own: its hall's group row carries N-1
    if ((e.kind === "cdu" || e.kind === "crah") && e.capacity_n1_kw === 0) {
      tr.lastChild.className = "";
      tr.lastChild.textContent = "no spare";
    }
    tr.dataset.kind = e.kind;
    rows.push(tr);
  }
  $("capacity").replaceChildren(...rows);
  const fc = await api("/v1/capacity/forecast");
  const runs = fc.series.filter((s) => s.runout_n && s.runout_n.expected)
    .map((s) => `${s.scope.split("/").pop()} ${s.resource}: ${s.runout_n.expected.slice(0, 10)}`);
  $("capacity-runout").textContent = runs.length
    ? `30-day forecast, headroom (N) runs out: ${runs.join("; ")}`
    : fc.series.some((s) => s.status === "ok") ? "30-day forecast: no headroom (N) runs out"
    : "30-day forecast: not enough history yet";
}

async function refreshAll() {
  const session = S.session;
  if (!S.events.length) addDeviceEvent(null);
  const pue = await api("/v1/pue");
  showPue(pue);
  // one panel failing (a feature not running in this process) must not take the others
  // down or sign the user out: it shows its own error
  await Promise.all([[loadOverview, null], [loadRacks, null], [loadAlerts, "alerts"],
                     [loadRecommendations, "recommendations"], [loadIncidents, "incidents"],
                     [loadEvents, "events"], [loadOncall, null],
                     [loadRiskModel, "risk-model"], [loadWhatIf, "whatif"],
                     [loadRiskTop, "risk-top"]].map(([load, list]) =>
    load().catch((e) => {
      if (e instanceof AuthError || !list) throw e;
      if (list === "risk-model") $(list).textContent = `failure risk model: ${e.message}`;
      else $(list).replaceChildren(el("li", "none", `unavailable: ${e.message}`));
      report(e);
    })));
  if (S.session !== session) return; // signed out (or in again) meanwhile
  await loadCapacity().catch((e) => { // issue 27: its own error, the rest keeps working
    if (e instanceof AuthError || e.name === "AbortError") throw e;
    $("capacity-runout").textContent = `unavailable: ${e.message}`;
    report(e);
  });
  await loadUps().catch((e) => { // a site without UPS readings keeps the rest working
    if (e instanceof AuthError || e.name === "AbortError") throw e;
    $("ups-state").textContent = `unavailable: ${e.message}`;
    report(e);
  });
}

async function signIn(key) {
  S.key = key;
  const who = await api("/v1/whoami");
  S.role = who.role;
  S.name = who.name;
  sessionStorage.setItem(KEY_STORE, key);
  const doc = await fetch("/openapi.json").then((r) => r.json());
  S.paths = new Set(Object.keys(doc.paths || {}));
  $("whoami").textContent = `${who.name} · ${who.role}`;
  $("logout").hidden = false;
  $("login").hidden = true;
  $("main").hidden = false;
  endSession(); // signing in again replaces the session: never two sets of timers
  const session = { timers: [], abort: new AbortController() };
  S.session = session;
  await refreshAll();
  if (S.session !== session) return;
  follow(session);
  const every = (fn, ms) => session.timers.push(setInterval(() => fn().catch(report), ms));
  every(loadOverview, 60000);
  every(loadAlerts, 15000);
  every(loadRecommendations, 60000);
  every(loadUps, 10000);
  every(loadOncall, 15000);
  every(loadIncidents, 30000); // issue 20 (warm-up progress)
  every(loadRiskTop, 30000); // issue 26 (story)
  every(loadCapacity, 30000); // issue 27
}

function endSession() {
  const s = S.session;
  S.session = null;
  if (!s) return;
  s.timers.forEach(clearInterval);
  s.abort.abort(); // the live stream and any request in flight
}

// the demo's on-call inbox (GET /v1/oncall/pages): a header link with the page count
async function loadOncall() {
  const link = $("oncall-link");
  if (!has("/v1/oncall/pages")) { link.hidden = true; return; }
  let body;
  try { body = await api("/v1/oncall/pages"); } catch (e) {
    if (e instanceof AuthError) throw e;
    link.hidden = true; // the link is an extra: its failure takes nothing else down
    return;
  }
  link.hidden = !body.receiver_running;
  link.textContent = `on-call pages (${body.pages.length})`;
}

function signOut(message) {
  endSession();
  S.key = null;
  sessionStorage.removeItem(KEY_STORE);
  $("main").hidden = true;
  $("logout").hidden = true;
  $("whoami").textContent = "";
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  setLive(false);
}

function start() {
  // /?key=... (wall screens): keep it for this tab, then drop it from the address bar
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get("key");
  if (fromUrl) {
    sessionStorage.setItem(KEY_STORE, fromUrl);
    params.delete("key");
    history.replaceState(null, "", location.pathname + (params.size ? `?${params}` : ""));
  }
  setInterval(() => { $("clock").textContent = new Date().toISOString().slice(11, 19) + "Z"; }, 1000);
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("key-input").value.trim();
    if (key) signIn(key).catch((e) => { if (e.name !== "AbortError") signOut(e.message); });
  });
  $("logout").addEventListener("click", () => signOut(""));
  $("whatif-compare").addEventListener("click", () => compareWhatIf().catch(report));  // issue 27
  // NOC wall screen: large type, remembered on this screen (?wall=1 sets it too)
  const wall = params.get("wall") === "1" || localStorage.getItem("dctwin.wall") === "1";
  document.body.classList.toggle("wall", wall);
  $("wall").addEventListener("click", () => {
    const on = document.body.classList.toggle("wall");
    localStorage.setItem("dctwin.wall", on ? "1" : "0");
    loadOverview().catch(report); // redraw the chart at the new size
  });
  $("drill-close").addEventListener("click", () => {
    $("drill").hidden = true; S.selectedRack = null; renderHeatmap();
  });
  for (const b of document.querySelectorAll(".mode")) {
    b.addEventListener("click", () => {
      document.querySelectorAll(".mode").forEach((x) => x.classList.toggle("on", x === b));
      S.mode = b.dataset.mode;
      renderHeatmap();
    });
  }
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) signIn(key).catch((e) => { if (e.name !== "AbortError") signOut(e.message); });
  else signOut("");
}

document.addEventListener("DOMContentLoaded", start);
