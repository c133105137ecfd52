// dctwin dashboard: colour scales and inline-SVG line charts (no dependencies).
// Loaded before app.js; defines TEMP_STOPS, SCORE_STOPS, colour() and lineChart().
"use strict";

// temperature -> colour: blue (cool) .. green .. yellow .. red (hot)
const TEMP_STOPS = [[30, [59, 130, 246]], [50, [34, 197, 94]], [65, [234, 179, 8]],
                    [75, [249, 115, 22]], [85, [239, 68, 68]]];
const SCORE_STOPS = [[0, [34, 197, 94]], [0.5, [234, 179, 8]], [0.8, [249, 115, 22]],
                     [1, [239, 68, 68]]];
function colour(v, stops) {
  if (v == null) return null;
  if (v <= stops[0][0]) return `rgb(${stops[0][1]})`;
  for (let i = 1; i < stops.length; i++) {
    const [x1, c1] = stops[i];
    const [x0, c0] = stops[i - 1];
    if (v <= x1) {
      const t = (v - x0) / (x1 - x0);
      return `rgb(${c0.map((c, j) => Math.round(c + (c1[j] - c) * t))})`;
    }
  }
  return `rgb(${stops[stops.length - 1][1]})`;
}

// ---------------------------------------------------------------- SVG line chart
const SVGNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}

// digits..maxDigits decimals on the y axis; minSpan: the axis spans at least this much
// (a flat PUE of 1.085 draws as 1.07..1.10, not 1.085000..1.085010)
function lineChart(container, series, { unit = "", digits = 1, maxDigits = 3, minSpan = 0,
                                        title = "", empty = "no history yet" } = {}) {
  // drawn in CSS pixels of the container, so text keeps its shape at any size
  const W = Math.max(container.clientWidth, 200), H = Math.max(container.clientHeight, 80);
  const R = 10, T = 10, B = Math.round(parseFloat(getComputedStyle(container).fontSize) * 1.4);
  let L = 52; // widened below to fit the y labels
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  const pts = series.flatMap((s) => s.points).filter((p) => p[1] != null);
  container.replaceChildren(root);
  if (pts.length < 2) {
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" },
                    empty));
    return;
  }
  let [tmin, tmax] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [vmin, vmax] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (vmax - vmin < minSpan) { // widen around the middle
    const mid = (vmax + vmin) / 2;
    [vmin, vmax] = [mid - minSpan / 2, mid + minSpan / 2];
  }
  const pad = (vmax - vmin) * 0.1 || Math.abs(vmax) * 0.01 || 1;
  vmin -= pad; vmax += pad;
  if (tmax === tmin) tmax = tmin + 1;
  // enough decimals that three tick labels differ, however flat the series
  const span = Math.max(vmax - vmin - 2 * pad, 1e-9);
  const dg = Math.min(maxDigits, Math.max(digits, Math.ceil(-Math.log10(span / 2)) + 1));
  const yLabels = [vmin + pad, (vmin + vmax) / 2, vmax - pad].map((v) => [v,
    `${v.toFixed(dg)}${unit}`]);
  const charW = parseFloat(getComputedStyle(container).fontSize) * 0.72 * 0.62; // tick text
  L = Math.max(L, 10 + charW * Math.max(...yLabels.map(([, s]) => s.length)));
  const x = (t) => L + ((t - tmin) / (tmax - tmin)) * (W - L - R);
  const y = (v) => T + (1 - (v - vmin) / (vmax - vmin)) * (H - T - B);
  root.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  root.append(svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  for (const [v, label] of yLabels) {
    root.append(svg("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end" }, label));
  }
  const secs = tmax - tmin < 15 * 60000; // short spans need seconds to tell labels apart
  for (const [t, anchor] of [[tmin, "start"], [(tmin + tmax) / 2, "middle"], [tmax, "end"]]) {
    root.append(svg("text", { x: x(t), y: H - 6, "text-anchor": anchor },
                    new Date(t).toISOString().slice(11, secs ? 19 : 16)));
  }
  if (title) root.append(svg("text", { x: L + 6, y: T + 12, class: "title" }, title));
  for (const s of series) {
    let d = "";
    let pen = "M";
    for (const [t, v] of s.points) {
      if (v == null) { pen = "M"; continue; }
      d += `${pen}${x(t).toFixed(1)},${y(v).toFixed(1)} `;
      pen = "L";
    }
    root.append(svg("path", { d, fill: "none", stroke: s.colour, "stroke-width": 2,
                              "vector-effect": "non-scaling-stroke" }));
  }
}

