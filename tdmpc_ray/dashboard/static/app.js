// tdmpc-ray sweep dashboard: renders the payload of /api/results (polled) or of an exported
// snapshot (window.DASHBOARD_DATA) as a best-trial card, three SVG plots and a trials table.
"use strict";
(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                  "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
  const MARGIN = { left: 52, right: 14, top: 10, bottom: 38 };
  const view = { data: null, selected: null, key: null };

  function el(tag, attrs = {}, text = null) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== null) node.textContent = text;
    return node;
  }

  function svgEl(parent, tag, attrs = {}, text = null) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== null) node.textContent = text;
    parent.appendChild(node);
    return node;
  }

  const fixed = (x, digits) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
  const steps = (x) => (x === null || x === undefined ? "–"
    : Math.round(x).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ","));
  const value = (v) => (v !== null && typeof v === "object" ? JSON.stringify(v) : String(v));
  const short = (x) => String(Number(x.toPrecision(6)));
  const tick = (x) => (Math.abs(x) >= 1e6 ? `${short(x / 1e6)}M`
    : Math.abs(x) >= 1e4 ? `${short(x / 1e3)}k` : short(x));

  function niceStep(span, count) {
    const raw = span / count;
    const base = Math.pow(10, Math.floor(Math.log10(raw)));
    const err = raw / base;
    return base * (err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1);
  }

  // [lo, hi, step] covering `values` on round numbers, optionally including zero.
  function niceDomain(values, withZero) {
    let lo = Math.min(...values), hi = Math.max(...values);
    if (withZero) { lo = Math.min(lo, 0); hi = Math.max(hi, 0); }
    if (lo === hi) { const pad = Math.abs(lo) * 0.1 || 1; lo -= pad; hi += pad; }
    const step = niceStep(hi - lo, 5);
    return [Math.floor(lo / step) * step, Math.ceil(hi / step) * step, step];
  }

  function ticks(lo, hi, step) {
    const out = [];
    for (let t = lo; t <= hi + step / 2; t += step) out.push(Number(t.toPrecision(12)));
    return out;
  }

  function clear(svg) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
  }

  function emptyPlot(svg, text) {
    clear(svg);
    const box = svg.viewBox.baseVal;
    svgEl(svg, "text", { x: box.width / 2, y: box.height / 2, "text-anchor": "middle",
                         class: "empty" }, text);
  }

  // Scatter/line plot. series: [{color, points: [[x, y]], titles, line, markers, hollow, width,
  // cls}].
  function plotXY(svg, series, { xLabel, yLabel, empty }) {
    const points = series.flatMap((s) => s.points);
    if (!points.length) { emptyPlot(svg, empty); return; }
    clear(svg);
    const { width: W, height: H } = svg.viewBox.baseVal;
    const [x0, x1, xs] = niceDomain(points.map((p) => p[0]), false);
    const [y0, y1, ys] = niceDomain(points.map((p) => p[1]), true);
    const sx = (x) => MARGIN.left + ((x - x0) / (x1 - x0)) * (W - MARGIN.left - MARGIN.right);
    const sy = (y) => H - MARGIN.bottom - ((y - y0) / (y1 - y0)) * (H - MARGIN.top - MARGIN.bottom);
    for (const t of ticks(y0, y1, ys)) {
      svgEl(svg, "line", { x1: MARGIN.left, x2: W - MARGIN.right, y1: sy(t), y2: sy(t), class: "grid" });
      svgEl(svg, "text", { x: MARGIN.left - 6, y: sy(t) + 4, "text-anchor": "end" }, tick(t));
    }
    for (const t of ticks(x0, x1, xs)) {
      svgEl(svg, "text", { x: sx(t), y: H - MARGIN.bottom + 15, "text-anchor": "middle" }, tick(t));
    }
    svgEl(svg, "line", { x1: MARGIN.left, x2: W - MARGIN.right, y1: H - MARGIN.bottom,
                         y2: H - MARGIN.bottom, class: "axis" });
    svgEl(svg, "text", { x: (W + MARGIN.left) / 2, y: H - 4, "text-anchor": "middle" }, xLabel);
    svgEl(svg, "text", { x: 12, y: H / 2, "text-anchor": "middle",
                         transform: `rotate(-90 12 ${H / 2})` }, yLabel);
    for (const s of series) {
      const g = svgEl(svg, "g", { class: s.cls || "series" });
      if (s.line && s.points.length > 1) {
        svgEl(g, "polyline", {
          points: s.points.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" "),
          fill: "none", stroke: s.color || "currentColor", "stroke-width": s.width || 1.5,
        });
      }
      if (s.markers) {
        s.points.forEach((p, i) => {
          const dot = svgEl(g, "circle", { cx: sx(p[0]), cy: sy(p[1]), r: s.width + 1.5,
                                           fill: s.hollow ? "#fff" : s.color, stroke: s.color,
                                           "stroke-width": 1.5 });
          svgEl(dot, "title", {}, s.titles[i]);
        });
      }
    }
  }

  // One column per task, names rotated under the axis, value above each column.
  function plotBars(svg, tasks, color) {
    const names = Object.keys(tasks).filter((k) => tasks[k] !== null);
    if (!names.length) { emptyPlot(svg, "No evaluation has finished for this trial yet."); return; }
    clear(svg);
    const { width: W, height: H } = svg.viewBox.baseVal;
    const top = 16, bottom = 120, left = MARGIN.left;
    const [, hi, step] = niceDomain(names.map((n) => tasks[n]), true);
    const sy = (v) => H - bottom - (v / hi) * (H - bottom - top);
    const slot = (W - left - MARGIN.right) / names.length;
    for (const t of ticks(0, hi, step)) {
      svgEl(svg, "line", { x1: left, x2: W - MARGIN.right, y1: sy(t), y2: sy(t), class: "grid" });
      svgEl(svg, "text", { x: left - 6, y: sy(t) + 4, "text-anchor": "end" }, tick(t));
    }
    names.forEach((name, i) => {
      const x = left + i * slot, v = tasks[name];
      const bar = svgEl(svg, "rect", { x: x + slot * 0.15, y: sy(v), width: slot * 0.7,
                                       height: sy(0) - sy(v), fill: color, class: "bar" });
      svgEl(bar, "title", {}, `${name}: ${fixed(v, 2)}`);
      svgEl(svg, "text", { x: x + slot / 2, y: sy(v) - 3, "text-anchor": "middle" }, fixed(v, 0));
      const cx = x + slot / 2, cy = sy(0) + 10;
      svgEl(svg, "text", { x: cx, y: cy, "text-anchor": "end", class: "bar-label",
                           transform: `rotate(-50 ${cx} ${cy})` }, name);
    });
  }

  function colorOf(data) {
    const colors = new Map(data.trials.map((t, i) => [t.id, COLORS[i % COLORS.length]]));
    return (id) => colors.get(id);
  }

  function renderDcoef(data, color) {
    const scored = data.trials.filter((t) => t.d_coef !== null && t.latest_score !== null);
    const byCoef = new Map();
    for (const t of scored) byCoef.set(t.d_coef, [...(byCoef.get(t.d_coef) || []), t.latest_score]);
    const mean = [...byCoef.entries()].sort((a, b) => a[0] - b[0])
      .map(([d, s]) => [d, s.reduce((a, b) => a + b, 0) / s.length]);
    const series = [{ cls: "mean", points: mean, line: true, width: 1.5 }];
    for (const t of scored) {
      series.push({ color: color(t.id), points: [[t.d_coef, t.latest_score]], markers: true,
                    hollow: t.status !== "TERMINATED", width: t.id === view.selected ? 3 : 1.5,
                    titles: [`${t.id}: d_coef ${t.d_coef}, score ${fixed(t.latest_score, 2)} at step ${steps(t.eval_step)}`] });
    }
    plotXY(document.getElementById("plot-dcoef"), series, {
      xLabel: "d_coef (0 = from scratch)", yLabel: "normalized score",
      empty: "No trial with d_coef has finished an evaluation yet." });
  }

  function renderSteps(data, color) {
    const series = data.trials.filter((t) => t.curve.length).map((t) => ({
      color: color(t.id), points: t.curve, line: true, markers: true,
      width: t.id === view.selected ? 3 : 1.5,
      titles: t.curve.map((p) => `${t.id} (d_coef ${t.d_coef}): ${fixed(p[1], 2)} at step ${steps(p[0])}`),
    }));
    plotXY(document.getElementById("plot-steps"), series, {
      xLabel: "training step", yLabel: "normalized score",
      empty: "No evaluation has finished yet." });
  }

  function renderTasks(data, color) {
    const trial = data.trials.find((t) => t.id === view.selected);
    document.getElementById("tasks-caption").textContent =
      `Per-task scores of ${trial.id} (d_coef ${trial.d_coef}) at step ${steps(trial.eval_step)}`;
    plotBars(document.getElementById("plot-tasks"), trial.tasks, color(trial.id));
  }

  function renderBest(data) {
    const box = document.getElementById("best");
    box.replaceChildren(el("h2", {}, "Best trial"));
    const best = data.trials.find((t) => t.id === data.best);
    if (!best) { box.appendChild(el("p", { class: "muted" }, "No evaluation has finished yet.")); return; }
    const dl = el("dl");
    const items = [
      ["best normalized score", fixed(best.best_score, 2), `at step ${steps(best.best_step)}`],
      ["latest", fixed(best.latest_score, 2), `at step ${steps(best.eval_step)}`],
      ["trial", best.id, best.status],
      ...data.varying.map((k) => [k, value(best.config[k]), ""]),
    ];
    for (const [k, v, note] of items) {
      const item = el("div");
      item.append(el("dt", {}, k), el("dd", {}, v), el("dd", { class: "muted" }, note));
      dl.appendChild(item);
    }
    box.appendChild(dl);
  }

  function renderTable(data, color) {
    const columns = [
      ["Trial", "", (t) => t.id], ["Status", "", (t) => t.status],
      ...data.varying.map((k) => [k, "", (t) => (k in t.config ? value(t.config[k]) : "")]),
      ["Step", "num", (t) => steps(t.step)], ["Latest score", "num", (t) => fixed(t.latest_score, 2)],
      ["Best score", "num", (t) => fixed(t.best_score, 2)],
      ["Updates/s", "num", (t) => fixed(t.updates_per_s, 1)],
    ];
    if (data.trials.some((t) => t.error)) columns.push(["Error", "error", (t) => t.error || ""]);
    const head = document.querySelector("#trials thead tr");
    head.replaceChildren(...columns.map(([name, cls]) => el("th", { class: cls }, name)));
    const body = document.querySelector("#trials tbody");
    body.replaceChildren(...data.trials.map((t) => {
      const tr = el("tr", { "data-trial": t.id, title: t.dir || t.id });
      if (t.id === view.selected) tr.classList.add("selected");
      for (const [name, cls, get] of columns) {
        const td = el("td", { class: cls, title: get(t) }, get(t));
        if (name === "Trial") td.prepend(el("span", { class: "swatch", style: `background:${color(t.id)}` }));
        if (name === "Status") td.replaceChildren(el("span", { class: `status ${t.status}` }, t.status));
        tr.appendChild(td);
      }
      tr.addEventListener("click", () => { view.selected = t.id; render(view.data); });
      return tr;
    }));
    const counts = {};
    for (const t of data.trials) counts[t.status] = (counts[t.status] || 0) + 1;
    document.getElementById("counts").textContent = `${data.trials.length}: ` +
      Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ");
    const shared = Object.entries(data.shared).map(([k, v]) => `${k}=${value(v)}`).join(", ");
    document.getElementById("shared").textContent = shared ? `Shared config: ${shared}` : "";
  }

  function showMessage(text) {
    const box = document.getElementById("message");
    box.hidden = !text;
    box.textContent = text || "";
  }

  function render(data) {
    view.data = data;
    document.getElementById("name").textContent = data.name;
    document.getElementById("root").textContent = data.root;
    showMessage(data.message);
    document.getElementById("content").hidden = !data.trials.length;
    if (!data.trials.length) return;
    if (!data.trials.some((t) => t.id === view.selected)) view.selected = data.best || data.trials[0].id;
    const color = colorOf(data);
    renderBest(data);
    renderDcoef(data, color);
    renderSteps(data, color);
    renderTasks(data, color);
    renderTable(data, color);
  }

  function poll() {
    fetch("api/results", { cache: "no-store" })
      .then((r) => { if (!r.ok) throw new Error(`HTTP ${r.status}`); return r.json(); })
      .then((data) => {
        const key = JSON.stringify({ ...data, read_at: 0 });
        if (key !== view.key) render(data);  // unchanged data: keep the DOM (and open tooltips)
        view.key = key;
        document.getElementById("freshness").textContent =
          `Updated ${new Date(data.read_at * 1000).toLocaleTimeString()}; refreshes every ${data.refresh_s} s.`;
        setTimeout(poll, data.refresh_s * 1000);
      })
      .catch((err) => {
        console.error(err);
        showMessage(`Dashboard update failed (${err.message}); retrying.`);
        view.key = null;
        setTimeout(poll, 5000);
      });
  }

  if (window.DASHBOARD_DATA) {
    render(window.DASHBOARD_DATA);
    document.getElementById("freshness").textContent =
      `Static snapshot taken ${new Date(window.DASHBOARD_DATA.read_at * 1000).toLocaleString()}.`;
  } else {
    poll();
  }
})();
