// The dashboard: today's signals with filters, a fan chart of the selected asset, the monitor, the latest backtest.
// Plain JS over the JSON API (no build step, no library); the fan chart is drawn as SVG.
"use strict";

const HORIZONS = ["1d", "1w", "2w", "1m", "2m"];
const $ = (id) => document.getElementById(id);
let rows = [];
let selected = null;

function fmt(x, digits = 2) { return x === null || x === undefined ? "" : Number(x).toFixed(digits); }
function pct(x) { return x === null || x === undefined ? "" : (100 * x).toFixed(2) + "%"; }

async function getJSON(path) {
  const response = await fetch(path);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
}

function renderSignals() {
  const symbol = $("f-symbol").value.trim().toUpperCase();
  const horizon = $("f-horizon").value;
  const signal = $("f-signal").value;
  const shown = rows.filter((r) => (!symbol || r.symbol.toUpperCase().includes(symbol)) &&
    (!horizon || r.horizon === horizon) && (!signal || r.signal === signal));
  const body = $("signals").tBodies[0];
  body.replaceChildren();
  for (const r of shown) {
    const tr = document.createElement("tr");
    tr.dataset.symbol = r.symbol;
    if (r.symbol === selected) tr.classList.add("selected");
    cell(tr, r.symbol, "text");
    cell(tr, r.horizon, "text");
    cell(tr, r.signal, r.signal);
    cell(tr, fmt(r.prob_up, 3));
    cell(tr, fmt(r.confidence, 3));
    cell(tr, pct(r.expected_return));
    cell(tr, fmt(r.last_close));
    cell(tr, fmt(r.close_q05));
    cell(tr, fmt(r.close_q95));
    cell(tr, r.realised_close === null ? "pending" : fmt(r.realised_close));
    cell(tr, r.model, "text");
    tr.addEventListener("click", () => selectSymbol(r.symbol));
    body.appendChild(tr);
  }
  $("signals-note").textContent = `${shown.length} of ${rows.length} signals`;
}

async function loadSignals() {
  const day = $("f-as-of").value;
  try {
    const data = await getJSON("v1/signals" + (day ? `?as_of=${day}` : ""));
    rows = data.signals;
    $("as-of").textContent = data.as_of ? `as of ${data.as_of}` : "no signals logged yet";
    if (data.as_of && !day) $("f-as-of").value = data.as_of;
    renderSignals();
    if (rows.length && (!selected || !rows.some((r) => r.symbol === selected))) selectSymbol(rows[0].symbol);
  } catch (err) {
    $("signals-note").textContent = `signals: ${err.message}`;
  }
}

function svg(name, attrs, parent) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  parent.appendChild(el);
  return el;
}

function drawFan(data) {
  const chart = $("fan");
  chart.replaceChildren();
  const W = 640, H = 300, L = 56, R = 12, T = 12, B = 28;
  const bands = data.bands.filter((b) => b.q05 !== null && b.q95 !== null);
  const points = [...data.history, ...data.realised].map((p) => p.close).filter((c) => c !== null);
  const prices = points.concat(bands.flatMap((b) => [b.q05, b.q95]));
  if (!prices.length) return;
  const bars = data.history.map((p) => p.bar).concat(bands.map((b) => b.bars), data.realised.map((p) => p.bar));
  const x0 = Math.min(...bars, 0), x1 = Math.max(...bars, 1);
  const lo = Math.log(Math.min(...prices)), hi = Math.log(Math.max(...prices)) + 1e-9;
  // history on the left 65% of the width, the horizons on the right 35%, whatever their lengths in bars
  const split = L + 0.65 * (W - L - R);
  const x = (b) => (b <= 0 ? L + (b - x0) / Math.max(-x0, 1) * (split - L) : split + b / x1 * (W - R - split));
  const y = (p) => T + (hi - Math.log(p)) / (hi - lo) * (H - T - B);
  const line = (pts) => pts.map(([a, b], i) => `${i ? "L" : "M"}${x(a).toFixed(1)},${y(b).toFixed(1)}`).join("");
  for (let k = 0; k <= 4; k++) {
    const p = Math.exp(lo + (hi - lo) * k / 4);
    svg("line", { x1: L, x2: W - R, y1: y(p), y2: y(p), stroke: "#eee" }, chart);
    svg("text", { x: L - 4, y: y(p) + 4, "text-anchor": "end", "font-size": 10 }, chart).textContent = p.toPrecision(4);
  }
  svg("line", { x1: x(0), x2: x(0), y1: T, y2: H - B, stroke: "#aaa", "stroke-dasharray": "3 3" }, chart);
  const start = [[0, data.last_close]];
  const edge = (key) => start.concat(bands.map((b) => [b.bars, b[key]]));
  const area = (a, b, opacity) => svg("path", {
    d: line(edge(a)) + line(edge(b).reverse()).replace(/^M/, "L") + "Z", fill: "#1f77b4", "fill-opacity": opacity,
  }, chart);
  if (bands.length && data.last_close !== null) {
    area("q05", "q95", 0.15);
    area("q25", "q75", 0.3);
    const med = bands.filter((b) => b.median !== null);
    if (med.length) svg("path", { d: line(start.concat(med.map((b) => [b.bars, b.median]))), stroke: "#1f77b4",
      fill: "none" }, chart);
  }
  const hist = data.history.filter((p) => p.close !== null).map((p) => [p.bar, p.close]);
  if (hist.length) svg("path", { d: line(hist), stroke: "#111", fill: "none", "stroke-width": 1.2 }, chart);
  const after = data.realised.filter((p) => p.close !== null).map((p) => [p.bar, p.close]);
  if (after.length) svg("path", { d: line(start.concat(after)), stroke: "#888", fill: "none" }, chart);
  for (const b of bands) {
    const t = svg("text", { x: x(b.bars), y: y(b.q95) - 3, "text-anchor": "middle", "font-size": 10,
      class: b.signal }, chart);
    t.textContent = `${b.horizon} ${b.signal} ${fmt(b.prob_up, 2)}`;
  }
  svg("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", "font-size": 10 }, chart).textContent =
    `bars from the close of ${data.as_of} (history left of the dashed line, horizons right of it)`;
}

async function selectSymbol(symbol) {
  selected = symbol;
  for (const tr of $("signals").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.symbol === symbol);
  $("fan-symbol").textContent = symbol;
  const day = $("f-as-of").value;
  try {
    drawFan(await getJSON(`v1/fan?symbol=${encodeURIComponent(symbol)}&days=60` + (day ? `&as_of=${day}` : "")));
  } catch (err) {
    $("fan").replaceChildren();
    $("fan-symbol").textContent = `${symbol}: ${err.message}`;
  }
}

async function loadMonitor() {
  const badge = $("monitor");
  try {
    const report = await getJSON("v1/monitor");
    badge.textContent = `monitor ${report.status}`;
    badge.className = `status ${report.status.replace(" ", "_")}`;
    const body = $("monitor-table").tBodies[0];
    body.replaceChildren();
    for (const m of report.models) {
      const tr = document.createElement("tr");
      cell(tr, m.model, "text");
      cell(tr, m.horizon, "text");
      cell(tr, m.status, `text ${m.status}`);
      cell(tr, m.n);
      cell(tr, m.reason, "text");
      cell(tr, m.tripped_on || "", "text");
      body.appendChild(tr);
    }
  } catch (err) {
    badge.textContent = `monitor: ${err.message}`;
  }
}

for (const h of HORIZONS) $("f-horizon").add(new Option(h, h));
for (const id of ["f-symbol", "f-horizon", "f-signal"]) $(id).addEventListener("input", renderSignals);
$("f-as-of").addEventListener("change", loadSignals);
$("equity").addEventListener("error", () => { $("equity").hidden = true; $("equity-note").hidden = false; });
loadSignals();
loadMonitor();
