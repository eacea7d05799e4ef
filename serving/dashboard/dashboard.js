// Tributary monitoring dashboard: polls /v1/monitoring/summary and draws it with Plotly.
// Everything shown comes from that one JSON answer; text from the registry or
// Prometheus is inserted as text nodes, never as HTML.
"use strict";

const REFRESH_MS = 5000;
const KEY_STORE = "tributary-admin-key";
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const BAD = "#c62828";
const CONFIG = { displayModeBar: false, responsive: true };
const state = { renders: 0, failures: 0, last: null, timer: null };
window.tributaryDashboard = state; // read by the headless-browser test

// -- the API key: from the URL fragment (never sent to a server) or the key form ----------

function takeKeyFromFragment() {
  const match = /(?:^#|&)key=([^&]+)/.exec(window.location.hash);
  if (match) {
    sessionStorage.setItem(KEY_STORE, decodeURIComponent(match[1]));
    history.replaceState(null, "", window.location.pathname + window.location.search);
  }
}

function askForKey(reason) {
  document.getElementById("key-reason").textContent = reason;
  document.getElementById("key-form").hidden = false;
}

function setupKeyForm() {
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = document.getElementById("key-input").value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key);
    document.getElementById("key-form").hidden = true;
    refresh();
  });
}

// -- polling --------------------------------------------------------------------------------

function hours() {
  return document.getElementById("hours").value;
}

async function refresh() {
  clearTimeout(state.timer);
  if (document.hidden) { // a background tab polls nothing; coming back refreshes at once
    state.timer = setTimeout(refresh, REFRESH_MS);
    return;
  }
  const status = document.getElementById("status");
  try {
    const headers = {};
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) headers["X-API-Key"] = key;
    const response = await fetch(`/v1/monitoring/summary?hours=${hours()}`, { headers });
    if (response.status === 401 || response.status === 403) {
      const body = await response.json();
      askForKey(`Admin API key needed: ${body.error.message}.`);
      status.textContent = "waiting for an admin key";
      status.className = "status error";
      return;
    }
    if (!response.ok) throw new Error(`the API answered ${response.status}`);
    render(await response.json());
    status.textContent = `updated ${new Date().toLocaleTimeString()} · every ${REFRESH_MS / 1000} s`;
    status.className = "status";
  } catch (error) {
    state.failures += 1;
    status.textContent = `refresh failed: ${error.message}; retrying`;
    status.className = "status error";
  }
  state.timer = setTimeout(refresh, REFRESH_MS);
}

// -- small helpers --------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const pct = (v, digits = 2) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(digits)} %`);
const num = (v, digits = 3) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const shortTime = (iso) => (iso ? iso.replace("T", " ").replace(/(\.\d+)?(Z|\+00:00)$/, "Z") : "–");
const last = (values) => [...values].reverse().find((v) => v !== null && v !== undefined);

function colorOf(version, versions) {
  const index = Math.max(0, versions.indexOf(version));
  return PALETTE[index % PALETTE.length];
}

function layout(extra) {
  return Object.assign({
    margin: { l: 52, r: 12, t: 8, b: 36 },
    font: { family: "system-ui, sans-serif", size: 11 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    legend: { orientation: "h", y: 1.12, x: 0 },
    xaxis: { type: "date", gridcolor: "#eef1f4", title: { text: "window end (UTC)" } },
    yaxis: { gridcolor: "#eef1f4", zeroline: false },
  }, extra);
}

function thresholdLine(value, axis) {
  const line = { type: "line", line: { color: BAD, dash: "dash", width: 1.5 } };
  if (axis === "x") return Object.assign(line, { xref: "x", yref: "paper", x0: value, x1: value, y0: 0, y1: 1 });
  return Object.assign(line, { xref: "paper", yref: "y", x0: 0, x1: 1, y0: value, y1: value });
}

// Draw ``traces`` in the panel, or say why there is nothing to draw.
function draw(id, traces, plotLayout, emptyMessage) {
  const node = document.getElementById(id);
  const points = traces.reduce((n, t) => n + (t.y || t.x || []).length, 0);
  if (!traces.length || points === 0) {
    if (node.dataset.state === "chart") Plotly.purge(node);
    node.replaceChildren(el("div", { class: "empty" }, emptyMessage));
    node.dataset.state = "empty";
    return;
  }
  if (node.dataset.state !== "chart") node.replaceChildren();
  Plotly.react(node, traces, plotLayout, CONFIG);
  node.dataset.state = "chart";
}

function lines(series, versions, { dashed = () => false, label = (s) => s.name } = {}) {
  return series.map((s) => ({
    type: "scatter", mode: s.x.length > 1 ? "lines" : "markers", name: label(s), x: s.x, y: s.y,
    line: { color: colorOf(s.model_version, versions), dash: dashed(s) ? "dash" : "solid", width: 2 },
    marker: { color: colorOf(s.model_version, versions), size: 6 },
    connectgaps: false,
  }));
}

// -- the panels -----------------------------------------------------------------------------

function render(summary) {
  const m = summary.metrics;
  const versions = m.versions || [];
  const why = m.message || "no data in this range";
  document.getElementById("model").textContent =
    `${summary.model} · profile ${summary.profile} · last ${summary.hours} h`;
  renderTiles(summary);
  draw("chart-kpis", lines(m.kpis, versions, { dashed: (s) => s.metric === "conversion" }),
    layout({ yaxis: { tickformat: ".1%", gridcolor: "#eef1f4" } }), why);
  draw("chart-requests", m.requests.map((s) => ({
    type: "bar", name: s.name, x: s.x, y: s.y, marker: { color: colorOf(s.model_version, versions) },
  })), layout({ barmode: "stack" }), why);
  const estimated = (s) => s.metric.startsWith("estimated_");
  // concept-drift detections: a dotted line at the window where ADWIN fired
  const detections = m.concept_drift.flatMap((s) => s.x.map((x) => ({ x, version: s.model_version })));
  draw("chart-auc", lines(m.auc, versions, { dashed: estimated }), layout({
    yaxis: { range: [0.4, 1], gridcolor: "#eef1f4" },
    shapes: detections.map((d) => Object.assign(thresholdLine(d.x, "x"), { line: { color: BAD, dash: "dot", width: 1.5 } })),
    annotations: detections.map((d) => ({
      x: d.x, y: 0.02, xref: "x", yref: "paper", text: `v${d.version} concept drift`, showarrow: false,
      xanchor: "left", font: { color: BAD, size: 10 },
    })),
  }), why);
  draw("chart-conversion", lines(m.conversion, versions, { dashed: estimated }),
    layout({ yaxis: { tickformat: ".1%", gridcolor: "#eef1f4" } }), why);
  renderScore(m, versions, why);
  draw("chart-score-psi", lines(m.score_psi, versions), layout({
    shapes: [thresholdLine(m.thresholds.psi, "y")], yaxis: { rangemode: "tozero", gridcolor: "#eef1f4" },
  }), why);
  renderDrift(m, why);
  draw("chart-freshness", lines(m.freshness, versions), layout({
    yaxis: { title: { text: "seconds" }, rangemode: "tozero", gridcolor: "#eef1f4" },
  }), why);
  renderDlq(summary.prometheus, summary.generated_at, summary.hours);
  renderAlerts(summary.prometheus);
  renderVersions(summary.registry);
  renderRetrains(summary.registry, summary.prometheus);
  state.last = summary;
  state.renders += 1;
}

function renderTiles(summary) {
  const m = summary.metrics;
  const registry = summary.registry;
  const focus = m.focus_version;
  const mine = (list, metric) => list.find((s) => s.model_version === focus && s.metric === metric);
  const value = (list, metric) => { const s = mine(list, metric); return s ? last(s.y) : null; };
  const set = (id, text, cls) => {
    const node = document.getElementById(id);
    node.textContent = text;
    node.className = `value ${cls || ""}`;
  };
  set("tile-champion", registry.champion ? `v${registry.champion}` : "none");
  set("tile-ctr", pct(value(m.kpis, "ctr")));
  set("tile-conversion", pct(value(m.kpis, "conversion")));
  set("tile-auc", num(value(m.auc, "estimated_roc_auc")));
  const prom = summary.prometheus;
  const firing = prom.alerts.filter((a) => a.state === "firing").length;
  set("tile-alerts", prom.available ? String(firing) : "?", firing ? "bad" : "good");
  const rates = prom.dlq_rate.map((s) => last(s.y)).filter((v) => v !== undefined);
  const worst = rates.length ? Math.max(...rates) : null;
  set("tile-dlq", prom.available ? pct(worst) : "?", worst !== null && worst > prom.dlq_threshold ? "bad" : "");
}

function renderScore(m, versions, why) {
  const dist = m.score_distribution;
  const note = document.getElementById("score-note");
  if (!dist) {
    note.textContent = "";
    draw("chart-score", [], {}, m.message || "no score shares for the champion in this range");
    return;
  }
  note.textContent = `v${dist.model_version}, window ending ${dist.window_end}` +
    (dist.score_psi === null ? "" : `, PSI ${num(dist.score_psi)}`);
  const bins = dist.bins.map((b) => `bin ${b}`);
  const traces = [{ type: "bar", name: "newest window", x: bins, y: dist.current,
    marker: { color: colorOf(dist.model_version, versions) } }];
  if (dist.reference.length) {
    traces.push({ type: "bar", name: "reference (validation)", x: bins, y: dist.reference,
      marker: { color: "#b0bac5" } });
  }
  draw("chart-score", traces, layout({
    barmode: "group", xaxis: { type: "category", title: { text: "reference score bin" } },
    yaxis: { tickformat: ".0%", gridcolor: "#eef1f4" },
  }), why);
}

function renderDrift(m, why) {
  const t = m.thresholds;
  document.getElementById("drift-note").textContent =
    m.drift_window ? `v${m.focus_version}, window ending ${m.drift_window}` : "";
  const numeric = [...m.numeric_drift].sort((a, b) => a.psi - b.psi);
  draw("chart-numeric-drift", [{
    type: "bar", orientation: "h", name: "PSI", y: numeric.map((d) => d.feature), x: numeric.map((d) => d.psi),
    marker: { color: numeric.map((d) => (d.psi >= t.psi ? BAD : "#4c78a8")) },
  }], layout({
    margin: { l: 150, r: 12, t: 8, b: 36 }, showlegend: false,
    xaxis: { title: { text: `PSI (threshold ${t.psi})` }, rangemode: "tozero", gridcolor: "#eef1f4" },
    yaxis: { type: "category", automargin: true }, shapes: [thresholdLine(t.psi, "x")],
  }), m.message || "no numeric drift for the champion in this range");
  const cats = [...m.categorical_drift].sort((a, b) => (a.js_distance || 0) - (b.js_distance || 0));
  const drifted = (d) => (d.js_distance || 0) >= t.js_distance;
  const pvalue = (d) => `χ² p = ${num(d.chi2_pvalue, 4)}${(d.chi2_pvalue ?? 1) < t.chi2_pvalue ? " (low)" : ""}`;
  draw("chart-categorical-drift", [{
    type: "bar", orientation: "h", name: "JS distance", y: cats.map((d) => d.feature),
    x: cats.map((d) => d.js_distance), text: cats.map(pvalue),
    textposition: "auto", marker: { color: cats.map((d) => (drifted(d) ? BAD : "#72b7b2")) },
    hovertemplate: "%{y}: JS %{x:.3f}, %{text}<extra></extra>",
  }], layout({
    margin: { l: 150, r: 12, t: 8, b: 36 }, showlegend: false,
    xaxis: { title: { text: `JS distance (threshold ${t.js_distance}); bar text: χ² p-value` },
      rangemode: "tozero", gridcolor: "#eef1f4" },
    yaxis: { type: "category", automargin: true }, shapes: [thresholdLine(t.js_distance, "x")],
  }), m.message || "no categorical drift for the champion in this range");
}

function renderDlq(prom, generatedAt, hoursShown) {
  const traces = prom.dlq_rate.map((s, i) => ({
    type: "scatter", mode: s.x.length > 2 ? "lines" : "lines+markers", name: s.name, x: s.x, y: s.y,
    line: { color: PALETTE[i % PALETTE.length], width: 2 },
  }));
  const end = new Date(generatedAt);
  const start = new Date(end.getTime() - hoursShown * 3600e3);
  draw("chart-dlq", traces, layout({
    xaxis: { type: "date", range: [start.toISOString(), end.toISOString()], gridcolor: "#eef1f4" },
    yaxis: { tickformat: ".1%", rangemode: "tozero", gridcolor: "#eef1f4" },
    shapes: [thresholdLine(prom.dlq_threshold, "y")],
  }), prom.available ? "no flow has read events in this range" : prom.message);
}

function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows.map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c))))));
}

function pill(text, cls) {
  return el("span", { class: `pill ${cls || text}` }, text);
}

function fill(id, content, emptyMessage) {
  const node = document.getElementById(id);
  node.replaceChildren(content || el("div", { class: "empty" }, emptyMessage));
  node.dataset.state = content ? "table" : "empty";
}

// rules name their runbook section by repository path (docs/runbook.md#...): link it only
// when it is a URL, else show the path
function runbookLink(alert) {
  const url = alert.runbook_url;
  if (!url) return alert.name;
  if (/^https?:\/\//.test(url)) return el("a", { href: url, rel: "noreferrer" }, alert.name);
  return el("span", {}, alert.name, el("br"), el("code", {}, url));
}

function renderAlerts(prom) {
  if (!prom.available || !prom.alerts.length) {
    fill("alerts", null, prom.available ? "no alerts firing or pending" : prom.message);
    return;
  }
  fill("alerts", table(["alert", "state", "severity", "version", "feature", "value", "since", "summary"],
    prom.alerts.map((a) => [
      runbookLink(a),
      pill(a.state), pill(a.severity || "–"), a.model_version || "–", a.feature || "–",
      num(a.value), shortTime(a.active_at), a.summary || "",
    ])));
}

// the retrain worker's evidence (training/retrain_request.py): what fired, where, how far
const EVIDENCE_KEYS = ["alert", "metric", "feature", "model_version", "value", "threshold", "window", "incident"];

function evidenceText(evidence) {
  if (evidence === null || evidence === undefined) return "";
  if (typeof evidence !== "object") return String(evidence);
  const keys = EVIDENCE_KEYS.filter((k) => k in evidence);
  const shown = keys.length ? keys : Object.keys(evidence);
  return shown.map((k) => `${k}=${typeof evidence[k] === "object" ? JSON.stringify(evidence[k]) : evidence[k]}`).join(", ");
}

function renderVersions(registry) {
  const chain = [...registry.previous_champions, registry.champion].filter((v) => v);
  document.getElementById("history").textContent = chain.length ? `champions: ${chain.map((v) => `v${v}`).join(" → ")}` : "";
  if (!registry.available || !registry.versions.length) {
    fill("versions", null, registry.message || "no versions registered");
    return;
  }
  fill("versions", table(["version", "aliases", "kind", "created", "gates", "champion since", "why it was trained"],
    registry.versions.map((v) => [
      `v${v.version}`,
      el("span", {}, ...v.aliases.map((a) => pill(a))),
      v.kind || "–", shortTime(v.created_at),
      v.gates ? pill(`${v.gates} ${v.gates_passed}/${v.gates_total}`, v.gates) : "not gated",
      v.promoted_at ? shortTime(v.promoted_at) : (registry.previous_champions.includes(v.version) || registry.champion === v.version ? "(set directly)" : "–"),
      v.retrain_reason ? el("span", {}, v.retrain_reason, el("br"), el("code", {}, evidenceText(v.retrain_evidence)))
        : (v.rolled_back_from ? `rolled back from v${v.rolled_back_from}` : "–"),
    ])));
}

function renderRetrains(registry, prom) {
  const rows = [];
  const lastRun = registry.last_retrain;
  if (lastRun) {
    rows.push(["last job", pill(lastRun.outcome), lastRun.version ? `v${lastRun.version}` : "–",
      shortTime(lastRun.finished_at), el("code", {}, lastRun.detail || "")]);
  }
  for (const v of registry.versions.filter((x) => x.retrain_reason)) {
    rows.push(["retrained", pill(v.gates || "not gated", v.gates), `v${v.version}`, shortTime(v.created_at),
      el("span", {}, v.retrain_reason, el("br"), el("code", {}, evidenceText(v.retrain_evidence)))]);
  }
  const runs = Object.entries(prom.retrain_runs || {}).map(([k, n]) => `${k}: ${Math.round(n)}`).join(", ");
  if (runs) rows.push(["jobs in range", "", "", "", runs]);
  const why = registry.available ? "no retrain yet" : registry.message;
  fill("retrains", rows.length ? table(["", "outcome", "version", "when", "reason and evidence"], rows) : null, why);
}

// -- start ------------------------------------------------------------------------------------

takeKeyFromFragment();
setupKeyForm();
document.getElementById("hours").addEventListener("change", refresh);
document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
refresh();
