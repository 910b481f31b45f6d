// tdmpc-ray sweep dashboard: renders the payload of /api/results (polled) or of an exported
// snapshot (window.DASHBOARD_DATA) as a best-trial card, SVG plots (a score panel per swept key,
// score vs steps, paired difference vs scratch, training losses, per-task scores) and a trials
// table. Scores are drawn only where an evaluation ran, with their 95% intervals as error bars.
// Under the page's Content-Security-Policy: no inline script, style attribute or handler.
"use strict";
(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                  "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
  const MARGIN = { left: 52, right: 14, top: 10, bottom: 38 };
  const view = { data: null, selected: null, key: null, loss: "total_loss" };
  const NO_INTERVAL = "too few episodes for an interval";

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

  const known = (x) => x !== null && x !== undefined;
  const fixed = (x, digits) => (known(x) ? Number(x).toFixed(digits) : "–");
  const steps = (x) => (known(x) ? Math.round(x).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",") : "–");
  const value = (v) => (v !== null && typeof v === "object" ? JSON.stringify(v) : String(v));
  const short = (x) => String(Number(x.toPrecision(6)));
  const tick = (x) => (Math.abs(x) >= 1e6 ? `${short(x / 1e6)}M`
    : Math.abs(x) >= 1e4 ? `${short(x / 1e3)}k` : short(x));
  // A path shown by its last part (the whole value stays in the cell's tooltip).
  const brief = (v) => { const text = value(v); return text.includes("/") ? text.split("/").filter(Boolean).pop() || text : text; };
  // "23.40 [18.10, 28.90]", or "23.40 (too few episodes for an interval)" where none exists.
  const interval = (v, lo, hi, digits = 2) => (!known(v) ? "–"
    : known(lo) && known(hi) ? `${fixed(v, digits)} [${fixed(lo, digits)}, ${fixed(hi, digits)}]`
    : `${fixed(v, digits)} (${NO_INTERVAL})`);
  const scoreOf = (t) => interval(t.latest_score, t.latest_low, t.latest_high);
  const versus = (c) => (c && c.difference ? interval(c.difference.value, c.difference.low, c.difference.high)
    : c && c.error ? "error" : "–");
  const improvement = (c) => (c && c.probability_of_improvement ? interval(
    c.probability_of_improvement.value, c.probability_of_improvement.low, c.probability_of_improvement.high) : "–");

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
    for (let i = 0, t = lo; t <= hi + step / 2; i += 1, t = lo + i * step) {
      out.push(Math.abs(t) < step / 1e6 ? 0 : Number(t.toPrecision(12)));  // no "8.9e-18" for 0
    }
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

  // A vertical error bar from y=lo to y=hi at x (pixels), with caps.
  function errorBar(parent, x, y0, y1, color, title) {
    const g = svgEl(parent, "g", { class: "errorbar", stroke: color, "stroke-width": 1.3 });
    svgEl(g, "line", { x1: x, x2: x, y1: y0, y2: y1 });
    svgEl(g, "line", { x1: x - 4, x2: x + 4, y1: y0, y2: y0 });
    svgEl(g, "line", { x1: x - 4, x2: x + 4, y1: y1, y2: y1 });
    if (title) svgEl(g, "title", {}, title);
  }

  // Scatter/line plot. series: [{color, points: [[x, y, lo, hi]], titles, line, markers, hollow,
  // width, cls, dx}]; lo/hi (optional) draw an error bar; dx shifts the series by pixels.
  // categories: x values are indices into it, labelled by name; zero: draw y = 0.
  function plotXY(svg, series, { xLabel, yLabel, empty, categories, zero }) {
    const points = series.flatMap((s) => s.points);
    if (!points.length) { emptyPlot(svg, empty); return; }
    clear(svg);
    const { width: W, height: H } = svg.viewBox.baseVal;
    const bottom = categories ? MARGIN.bottom + 22 : MARGIN.bottom;
    const ys = points.flatMap((p) => [p[1], p[2], p[3]]).filter(known);
    const [x0, x1, xs] = categories ? [-0.5, categories.length - 0.5, 1]
      : niceDomain(points.map((p) => p[0]), false);
    const [y0, y1, yStep] = niceDomain(ys, true);
    const sx = (x) => MARGIN.left + ((x - x0) / (x1 - x0)) * (W - MARGIN.left - MARGIN.right);
    const sy = (y) => H - bottom - ((y - y0) / (y1 - y0)) * (H - MARGIN.top - bottom);
    for (const t of ticks(y0, y1, yStep)) {
      svgEl(svg, "line", { x1: MARGIN.left, x2: W - MARGIN.right, y1: sy(t), y2: sy(t), class: "grid" });
      svgEl(svg, "text", { x: MARGIN.left - 6, y: sy(t) + 4, "text-anchor": "end" }, tick(t));
    }
    if (categories) {
      categories.forEach((name, i) => {
        const cx = sx(i), cy = H - bottom + 14;
        svgEl(svg, "text", { x: cx, y: cy, "text-anchor": categories.length > 4 ? "end" : "middle",
                             class: "category",
                             transform: categories.length > 4 ? `rotate(-25 ${cx} ${cy})` : "" }, name);
      });
    } else {
      for (const t of ticks(x0, x1, xs)) {
        svgEl(svg, "text", { x: sx(t), y: H - bottom + 15, "text-anchor": "middle" }, tick(t));
      }
    }
    svgEl(svg, "line", { x1: MARGIN.left, x2: W - MARGIN.right, y1: H - bottom, y2: H - bottom, class: "axis" });
    if (zero && y0 < 0) {
      svgEl(svg, "line", { x1: MARGIN.left, x2: W - MARGIN.right, y1: sy(0), y2: sy(0), class: "zero" });
    }
    svgEl(svg, "text", { x: (W + MARGIN.left) / 2, y: H - 4, "text-anchor": "middle" }, xLabel);
    svgEl(svg, "text", { x: 12, y: (H - bottom) / 2 + MARGIN.top, "text-anchor": "middle",
                         transform: `rotate(-90 12 ${(H - bottom) / 2 + MARGIN.top})` }, yLabel);
    for (const s of series) {
      const g = svgEl(svg, "g", { class: s.cls || "series" });
      const px = (p) => sx(p[0]) + (s.dx || 0);
      if (s.line && s.points.length > 1) {
        svgEl(g, "polyline", {
          points: s.points.map((p) => `${px(p)},${sy(p[1])}`).join(" "),
          fill: "none", stroke: s.color || "currentColor", "stroke-width": s.width || 1.5,
        });
      }
      if (s.markers) {
        s.points.forEach((p, i) => {
          if (known(p[2]) && known(p[3])) errorBar(g, px(p), sy(p[2]), sy(p[3]), s.color, s.titles[i]);
          const dot = svgEl(g, "circle", { cx: px(p), cy: sy(p[1]), r: s.width + 1.5,
                                           fill: s.hollow ? "#fff" : s.color, stroke: s.color,
                                           "stroke-width": 1.5 });
          svgEl(dot, "title", {}, s.titles[i]);
        });
      }
    }
  }

  // One column per task with its 95% interval, names rotated under the axis.
  function plotBars(svg, tasks, intervals, color) {
    const names = Object.keys(tasks).filter((k) => tasks[k] !== null);
    if (!names.length) { emptyPlot(svg, "No evaluation has finished for this trial yet."); return; }
    clear(svg);
    const { width: W, height: H } = svg.viewBox.baseVal;
    const top = 16, bottom = 120, left = MARGIN.left;
    const bound = (n, i) => (intervals[n] && known(intervals[n][i]) ? intervals[n][i] : tasks[n]);
    const [, hi, step] = niceDomain(names.flatMap((n) => [tasks[n], bound(n, 1)]), true);
    const sy = (v) => H - bottom - (v / hi) * (H - bottom - top);
    const slot = (W - left - MARGIN.right) / names.length;
    for (const t of ticks(0, hi, step)) {
      svgEl(svg, "line", { x1: left, x2: W - MARGIN.right, y1: sy(t), y2: sy(t), class: "grid" });
      svgEl(svg, "text", { x: left - 6, y: sy(t) + 4, "text-anchor": "end" }, tick(t));
    }
    names.forEach((name, i) => {
      const x = left + i * slot, v = tasks[name];
      const [lo, up] = intervals[name] || [null, null];
      const label = `${name}: ${interval(v, lo, up)}`;
      const bar = svgEl(svg, "rect", { x: x + slot * 0.15, y: sy(v), width: slot * 0.7,
                                       height: sy(0) - sy(v), fill: color, class: "bar" });
      svgEl(bar, "title", {}, label);
      if (known(lo) && known(up)) errorBar(svg, x + slot / 2, sy(lo), sy(up), "#1f2328", label);
      svgEl(svg, "text", { x: x + slot / 2, y: sy(known(up) ? up : v) - 3, "text-anchor": "middle" },
            fixed(v, 0));
      const cx = x + slot / 2, cy = sy(0) + 10;
      svgEl(svg, "text", { x: cx, y: cy, "text-anchor": "end", class: "bar-label",
                           transform: `rotate(-50 ${cx} ${cy})` }, name);
    });
  }

  function colorOf(data) {
    const colors = new Map(data.trials.map((t, i) => [t.id, COLORS[i % COLORS.length]]));
    return (id) => colors.get(id);
  }

  // What tells a trial apart: its swept values ("recipe=reward, seed=1"), else its id.
  function label(data, t) {
    const parts = data.swept.map((k) => `${k}=${value(t.params[k])}`);
    return parts.join(", ") || t.id;
  }

  // Pixel offsets that spread trials sharing an x value side by side.
  function spread(items, xOf) {
    const groups = new Map();
    for (const t of items) groups.set(xOf(t), [...(groups.get(xOf(t)) || []), t]);
    const dx = new Map();
    for (const members of groups.values()) {
      members.forEach((t, j) => dx.set(t.id, (j - (members.length - 1) / 2) * 8));
    }
    return dx;
  }

  // One score panel per swept key: the latest score of every trial with its interval, at the
  // trial's value of the key (numbers on an axis, anything else as categories).
  function renderKeyPanels(data, color) {
    const box = document.getElementById("key-panels");
    box.replaceChildren();
    for (const key of data.swept) {
      const figure = el("figure", { class: "card", "data-key": key });
      const caption = el("figcaption", {}, `Normalized score vs ${key} `);
      caption.appendChild(el("span", { class: "muted" },
        "(latest evaluation per trial, 95% interval; hollow: not finished" +
        (key === "d_coef" ? "; 0 = from scratch" : "") + ")"));
      const svg = document.createElementNS(SVG_NS, "svg");
      svg.setAttribute("viewBox", "0 0 560 300");
      svg.setAttribute("id", `plot-key-${key}`);
      svg.setAttribute("role", "img");
      svg.setAttribute("aria-label", `score vs ${key}`);
      figure.append(caption, svg);
      box.appendChild(figure);
      const scored = data.trials.filter((t) => known(t.latest_score) && key in t.params);
      const distinct = [...new Map(scored.map((t) => [value(t.params[key]), t.params[key]])).values()];
      // A number axis where spacing means something: numbers, not seeds, three values or more.
      const numeric = key !== "seed" && distinct.length >= 3 && distinct.every((v) => typeof v === "number");
      const categories = numeric ? null : distinct
        .sort((a, b) => (typeof a === "number" && typeof b === "number" ? a - b : value(a).localeCompare(value(b))))
        .map(value);
      const xOf = (t) => (numeric ? t.params[key] : categories.indexOf(value(t.params[key])));
      const dx = spread(scored, xOf);
      const series = [];
      if (numeric) {
        const byX = new Map();
        for (const t of scored) byX.set(xOf(t), [...(byX.get(xOf(t)) || []), t.latest_score]);
        const mean = [...byX.entries()].sort((a, b) => a[0] - b[0])
          .map(([x, s]) => [x, s.reduce((a, b) => a + b, 0) / s.length]);
        series.push({ cls: "mean", points: mean, line: true, width: 1.5 });
      }
      for (const t of scored) {
        series.push({ color: color(t.id), points: [[xOf(t), t.latest_score, t.latest_low, t.latest_high]],
                      markers: true, dx: dx.get(t.id), hollow: t.status !== "TERMINATED",
                      width: t.id === view.selected ? 3 : 1.5,
                      titles: [`${t.id} (${label(data, t)}): ${scoreOf(t)} at step ${steps(t.eval_step)}`] });
      }
      plotXY(svg, series, { xLabel: key, yLabel: "normalized score", categories,
                            empty: `No trial has finished an evaluation yet.` });
    }
  }

  function renderSteps(data, color) {
    const series = data.trials.filter((t) => t.curve.length).map((t) => ({
      color: color(t.id), points: t.curve, line: true, markers: true,
      width: t.id === view.selected ? 3 : 1.5,
      titles: t.curve.map((p) => `${t.id} (${label(data, t)}): ${interval(p[1], p[2], p[3])} at step ${steps(p[0])}`),
    }));
    plotXY(document.getElementById("plot-steps"), series, {
      xLabel: "training step (evaluated steps only)", yLabel: "normalized score",
      empty: "No evaluation has finished yet." });
  }

  // Each trial's paired difference from its scratch trial (same env seeds), with its interval.
  function renderScratch(data, color) {
    const svg = document.getElementById("plot-scratch");
    const compared = data.trials.filter((t) => t.vs_scratch && t.vs_scratch.difference);
    const note = document.getElementById("scratch-note");
    note.textContent = data.scratch.length
      ? `scratch: ${data.scratch.map((id) => label(data, data.trials.find((t) => t.id === id))).join("; ")}`
      : "";
    const categories = compared.map((t) => label(data, t));
    const series = compared.map((t, i) => {
      const d = t.vs_scratch.difference;
      return { color: color(t.id), points: [[i, d.value, d.low, d.high]], markers: true,
               width: t.id === view.selected ? 3 : 1.5,
               titles: [`${t.id}: ${versus(t.vs_scratch)} vs scratch; P(> scratch) ${improvement(t.vs_scratch)}; ${t.vs_scratch.verdict}`] };
    });
    plotXY(svg, series, {
      xLabel: "trial", yLabel: "score − scratch", categories, zero: true,
      empty: data.scratch.length ? "No trial has an evaluation paired with scratch yet."
        : "This sweep has no scratch trial (d_coef 0 or recipe scratch)." });
  }

  // Each trial's training loss `view.loss` (chosen in the select) against the step.
  function renderLosses(data, color) {
    const names = [...new Set(data.trials.flatMap((t) => Object.keys(t.losses || {})))].sort();
    if (names.length && !names.includes(view.loss)) view.loss = names.includes("total_loss") ? "total_loss" : names[0];
    const select = document.getElementById("loss-metric");
    select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    select.value = view.loss;
    select.hidden = !names.length;
    const series = data.trials.filter((t) => t.losses && t.losses[view.loss]).map((t) => ({
      color: color(t.id), points: t.losses[view.loss], line: true, markers: t.losses[view.loss].length <= 60,
      width: t.id === view.selected ? 2.5 : 1,
      titles: t.losses[view.loss].map((p) => `${t.id} (${label(data, t)}): ${view.loss} ${short(p[1])} at step ${steps(p[0])}`),
    }));
    plotXY(document.getElementById("plot-losses"), series, {
      xLabel: "training step", yLabel: view.loss || "loss",
      empty: "No trial has reported a training loss yet." });
  }

  function renderTasks(data, color) {
    const trial = data.trials.find((t) => t.id === view.selected);
    document.getElementById("tasks-caption").textContent =
      `Per-task scores of ${trial.id} (${label(data, trial)}) at step ${steps(trial.eval_step)}, with 95% intervals`;
    plotBars(document.getElementById("plot-tasks"), trial.tasks, trial.task_intervals || {}, color(trial.id));
  }

  function renderBest(data) {
    const box = document.getElementById("best");
    box.replaceChildren(el("h2", {}, "Best trial (highest latest score)"));
    const best = data.trials.find((t) => t.id === data.best);
    if (!best) { box.appendChild(el("p", { class: "muted" }, "No evaluation has finished yet.")); return; }
    const dl = el("dl");
    const episodes = known(best.eval_episodes) ? `${best.eval_episodes} episodes per task, ` : "";
    const items = [
      ["normalized score [95% interval]", scoreOf(best), `${episodes}at step ${steps(best.eval_step)}`],
      ["vs scratch [95% interval]", versus(best.vs_scratch),
       best.vs_scratch && best.vs_scratch.verdict ? best.vs_scratch.verdict : best.scratch ? "this is the scratch trial" : ""],
      ["trial", best.id, best.status],
      ...data.swept.map((k) => [k, value(best.params[k]), ""]),
    ];
    for (const [k, v, note] of items) {
      const item = el("div");
      item.append(el("dt", {}, k), el("dd", {}, v), el("dd", { class: "muted" }, note));
      dl.appendChild(item);
    }
    box.appendChild(dl);
  }

  // Agents scored beside the sweep (the quickstart's teacher): their scores with intervals.
  function renderReferences(data) {
    const box = document.getElementById("references");
    const refs = data.references || [];
    box.hidden = !refs.length;
    box.querySelector("dl").replaceChildren(...refs.map((r) => {
      const item = el("div");
      const episodes = known(r.episodes) ? `${r.episodes} episodes per task` : "";
      item.append(el("dt", {}, r.name), el("dd", {}, r.error ? "unreadable" : interval(r.score, r.low, r.high)),
                  el("dd", { class: "muted" }, r.error || episodes));
      return item;
    }));
  }

  function renderTable(data, color) {
    const columns = [
      ["Trial", "id", (t) => t.id], ["Status", "", (t) => t.status],
      ...data.varying.map((k) => [k, "", (t) => (k in t.config ? brief(t.config[k]) : ""), (t) => value(t.config[k])]),
      ["Step", "num", (t) => steps(t.step)],
      ["Score [95% interval]", "num", scoreOf], ["Episodes", "num", (t) => fixed(t.eval_episodes, 0)],
      ["vs scratch [95% interval]", "num", (t) => (t.scratch ? "(scratch)" : versus(t.vs_scratch))],
      ["P(> scratch)", "num", (t) => (t.scratch ? "" : improvement(t.vs_scratch))],
      ["Updates/s", "num", (t) => fixed(t.updates_per_s, 1)],
    ];
    if (data.trials.some((t) => t.error || t.eval_error)) {
      columns.push(["Error", "error", (t) => t.error || t.eval_error || ""]);
    }
    const head = document.querySelector("#trials thead tr");
    head.replaceChildren(...columns.map(([name, cls]) => el("th", { class: cls }, name)));
    const body = document.querySelector("#trials tbody");
    body.replaceChildren(...data.trials.map((t) => {
      const tr = el("tr", { "data-trial": t.id, title: t.dir || t.id });
      if (t.id === view.selected) tr.classList.add("selected");
      for (const [name, cls, get, full] of columns) {
        const td = el("td", { class: cls, title: (full || get)(t) }, get(t));
        if (name === "Trial") {
          const swatch = el("span", { class: "swatch" });
          swatch.style.background = color(t.id);  // a CSSOM property: the CSP refuses style="..."
          td.prepend(swatch);
        }
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
    document.getElementById("shared").textContent = shared ? `Shared config (equal in every trial): ${shared}` : "";
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
    renderReferences(data);
    renderKeyPanels(data, color);
    renderSteps(data, color);
    renderScratch(data, color);
    renderLosses(data, color);
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

  document.getElementById("loss-metric").addEventListener("change", (event) => {
    view.loss = event.target.value;
    render(view.data);
  });

  if (window.DASHBOARD_DATA) {
    render(window.DASHBOARD_DATA);
    document.getElementById("freshness").textContent =
      `Static snapshot taken ${new Date(window.DASHBOARD_DATA.read_at * 1000).toLocaleString()}.`;
  } else {
    poll();
  }
})();
