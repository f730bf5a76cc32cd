// Charts on the vendored uPlot (MIT, static/vendor/uplot), plus an HTML-table heat map.
// Every chart gets a text alternative for screen readers.
import { h, clear } from "./ui.js";

const PALETTE = ["#1f5fbf", "#d9480f", "#2b8a3e", "#ae3ec9", "#e8590c", "#1098ad", "#5c940d", "#c2255c"];

function width(el) {
  return Math.max(280, Math.floor(el.getBoundingClientRect().width || el.parentElement?.clientWidth || 600));
}

function watchResize(el, plot, height) {
  const ro = new ResizeObserver(() => plot.setSize({ width: width(el), height }));
  ro.observe(el);
}

function alt(el, text) {
  el.setAttribute("role", "img");
  el.setAttribute("aria-label", text);
}

// x: numbers (epoch seconds when xTime); series: [{label, values}]; marks: [{x, label}]
export function lineChart(el, { x, series, marks = [], yLabel = "", xTime = true, height = 260, title }) {
  clear(el);
  const markPlugin = {
    hooks: {
      draw: [(u) => {
        const ctx = u.ctx;
        ctx.save();
        marks.forEach((m, i) => {
          const px = u.valToPos(m.x, "x", true);
          if (!Number.isFinite(px)) return;
          ctx.strokeStyle = m.color ?? PALETTE[(i + 3) % PALETTE.length];
          ctx.setLineDash(m.dash ?? [6, 4]);
          ctx.lineWidth = 2 * devicePixelRatio;
          ctx.beginPath();
          ctx.moveTo(px, u.bbox.top);
          ctx.lineTo(px, u.bbox.top + u.bbox.height);
          ctx.stroke();
          ctx.setLineDash([]);
          ctx.fillStyle = ctx.strokeStyle;
          ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
          ctx.fillText(m.label, px + 4 * devicePixelRatio, u.bbox.top + (12 + 13 * i) * devicePixelRatio);
        });
        ctx.restore();
      }],
    },
  };
  const opts = {
    title, width: width(el), height,
    scales: { x: { time: xTime } },
    axes: [{}, { label: yLabel }],
    series: [{}, ...series.map((s, i) => ({ label: s.label, stroke: s.color ?? PALETTE[i % PALETTE.length], width: 2, points: { show: false } }))],
    plugins: [markPlugin],
  };
  const plot = new uPlot(opts, [x, ...series.map((s) => s.values)], el);
  watchResize(el, plot, height);
  alt(el, `${title ?? "Chart"}: ${series.map((s) => s.label).join(", ")}` +
    (marks.length ? `; marked: ${marks.map((m) => m.label).join(", ")}` : ""));
  return plot;
}

// labels: category names (or epoch seconds with xTime); series: [{label, values}]
export function barChart(el, { labels, series, stacked = true, xTime = false, height = 260, title, yLabel = "" }) {
  clear(el);
  const n = labels.length;
  const x = xTime ? labels : labels.map((_, i) => i);
  let data = series.map((s) => s.values.map((v) => v ?? 0));
  if (stacked) {
    const acc = new Array(n).fill(0);
    data = data.map((vals) => vals.map((v, i) => (acc[i] += v)));
    data.reverse(); // draw the tallest (the running total) first so each layer shows
  }
  const ordered = stacked ? [...series].reverse() : series;
  const bars = uPlot.paths.bars({ size: [0.8, 64] });
  const opts = {
    title, width: width(el), height,
    scales: { x: { time: xTime } },
    axes: [
      xTime ? {} : { values: (u, splits) => splits.map((i) => labels[Math.round(i)] ?? "") },
      { label: yLabel },
    ],
    series: [{}, ...ordered.map((s, i) => {
      const color = s.color ?? PALETTE[(stacked ? series.length - 1 - i : i) % PALETTE.length];
      return { label: s.label, fill: color, stroke: color, paths: bars, points: { show: false } };
    })],
  };
  const plot = new uPlot(opts, [x, ...data], el);
  watchResize(el, plot, height);
  const totals = series.map((s) => `${s.label} ${s.values.reduce((a, b) => a + (b ?? 0), 0)}`);
  alt(el, `${title ?? "Bar chart"} over ${n} ${xTime ? "periods" : "categories"}: ${totals.join(", ")}`);
  return plot;
}

// A grid of counts as an HTML table, each cell shaded by one of ten CSS classes.
export function heatmap(el, { rowLabels, colLabels, values, caption }) {
  clear(el);
  const max = Math.max(0, ...values.flat());
  const shade = (v) => (v <= 0 || max === 0 ? 0 : Math.max(1, Math.min(9, Math.ceil((9 * v) / max))));
  el.append(h("div", { class: "table-wrap" },
    h("table", { class: "heatmap" },
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, ""), colLabels.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rowLabels.map((r, i) => h("tr", {},
        h("th", { scope: "row" }, r),
        colLabels.map((c, j) => {
          const v = values[i]?.[j] ?? 0;
          return h("td", { class: `heat-${shade(v)}`, title: `${r} ${c}: ${v}`, "data-value": v }, v ? String(v) : "");
        })))))));
}
