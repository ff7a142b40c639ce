// A tiny SVG line chart: a few series on up to two y-axes against time, with shaded bands
// (re-formations) behind them. Built with DOM calls only; labels are text nodes.

const NS = "http://www.w3.org/2000/svg";
const PAD = { left: 48, right: 52, top: 12, bottom: 22 };

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== null) node.textContent = String(text);
  return node;
}

function extent(values, floorZero) {
  let lo = Math.min(...values), hi = Math.max(...values);
  if (floorZero) lo = Math.min(0, lo);
  if (!isFinite(lo) || !isFinite(hi)) return [0, 1];
  if (hi === lo) hi = lo + 1;
  return [lo, hi];
}

function label(value) {
  const a = Math.abs(value);
  return a >= 1000 ? value.toFixed(0) : a >= 10 ? value.toFixed(1) : value.toPrecision(3);
}

// series: [{name, points: [[t, v]], axis: "left"|"right", cls, step: bool}]
// bands: [{from, to, cls, title}]
export function lineChart({ series, bands = [], start, end, width = 900, height = 220 }) {
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
  const all = series.flatMap((s) => s.points.map((p) => p[0]));
  const t0 = start ?? Math.min(...all), t1 = Math.max(end ?? -Infinity, ...all, t0 + 1);
  const x = (t) => PAD.left + ((t - t0) / (t1 - t0)) * (width - PAD.left - PAD.right);
  const scales = {};
  for (const axis of ["left", "right"]) {
    const values = series.filter((s) => s.axis === axis).flatMap((s) => s.points.map((p) => p[1]));
    if (!values.length) continue;
    const [lo, hi] = extent(values, true);
    scales[axis] = (v) => height - PAD.bottom - ((v - lo) / (hi - lo)) * (height - PAD.top - PAD.bottom);
    const ax = axis === "left" ? PAD.left - 4 : width - PAD.right + 4;
    for (const v of [lo, (lo + hi) / 2, hi]) {
      root.append(svg("text", { x: ax, y: scales[axis](v) + 4, class: `tick tick-${axis}`,
        "text-anchor": axis === "left" ? "end" : "start" }, label(v)));
    }
  }
  for (const band of bands) {
    const x0 = x(Math.max(band.from, t0)), x1 = x(Math.min(band.to, t1));
    const rect = svg("rect", { x: x0, y: PAD.top, width: Math.max(2, x1 - x0),
      height: height - PAD.top - PAD.bottom, class: `band ${band.cls || ""}` });
    rect.append(svg("title", {}, band.title || ""));
    root.append(rect);
  }
  root.append(svg("line", { x1: PAD.left, x2: width - PAD.right, y1: height - PAD.bottom,
    y2: height - PAD.bottom, class: "axis" }));
  for (const t of [t0, (t0 + t1) / 2, t1]) {
    root.append(svg("text", { x: x(t), y: height - 6, class: "tick", "text-anchor": "middle" },
      new Date(t * 1000).toTimeString().slice(0, 8)));
  }
  for (const s of series) {
    if (!s.points.length || !scales[s.axis]) continue;
    const y = scales[s.axis];
    let d = "";
    s.points.forEach(([t, v], i) => {
      if (i === 0) d += `M${x(t)},${y(v)}`;
      else d += s.step ? `H${x(t)}V${y(v)}` : `L${x(t)},${y(v)}`;
    });
    root.append(svg("path", { d, class: `line ${s.cls || ""}` }));
  }
  const legend = svg("g", { class: "legend" });
  series.forEach((s, i) => {
    legend.append(svg("text", { x: PAD.left + 8 + i * 150, y: PAD.top + 12,
      class: `legend-item ${s.cls || ""}` }, `— ${s.name}`));
  });
  root.append(legend);
  return root;
}
