// The demo's on-call inbox: GET /v1/oncall/pages with the dashboard's key (this tab's
// sessionStorage), refreshed every 5 s; each page with its signature verdict.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

async function load() {
  const key = sessionStorage.getItem("dctwin.apikey");
  if (!key) { $("error").textContent = "sign in on the dashboard first (the key stays in that tab)"; return; }
  const res = await fetch("/v1/oncall/pages", { headers: { Authorization: `Bearer ${key}` } });
  const doc = await res.json();
  if (!res.ok) { $("error").textContent = doc.detail || `HTTP ${res.status}`; return; }
  $("error").textContent = doc.receiver_running ? ""
    : "no on-call receiver runs in this process (dctwin demo runs one)";
  const body = doc.pages;
  $("count").textContent = `${body.length} received`;
  const rows = $("rows");
  rows.replaceChildren();
  if (!body.length) {
    const tr = el("tr");
    const td = el("td", "sub", "nothing yet: a page arrives when an alert fires and routes here");
    td.colSpan = 4;
    tr.append(td);
    rows.append(tr);
  }
  for (const p of body) {
    const tr = el("tr");
    tr.dataset.testid = "page";
    tr.append(el("td", null, p.received_at));
    tr.append(el("td", p.signature_valid ? "valid" : "invalid",
                 p.signature_valid ? "signature valid" : "signature INVALID"));
    tr.append(el("td", null, `${p.status} (${p.receiver})`));
    const td = el("td");
    for (const a of p.alerts) {
      const line = el("div", null,
        `${a.status} ${a.labels?.alertname ?? ""}: ${a.annotations?.summary ?? ""} `);
      if (a.annotations?.runbook_url) {
        const link = el("a", null, "runbook");
        link.href = a.annotations.runbook_url;
        line.append(link);
      }
      td.append(line);
    }
    tr.append(td);
    rows.append(tr);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const tick = () => load().catch((e) => { $("error").textContent = e.message; });
  tick();
  setInterval(tick, 5000);
});
