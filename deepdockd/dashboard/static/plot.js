// A time-series plot in SVG: a few lines over a fixed time range, gaps where there are no
// points, a y-axis with its ticks and unit (axis.js) and a readout of the point under the
// pointer or the keyboard (hover.js). Small on purpose: the dashboard needs lines, a scale,
// a readout and a label a screen reader can read, not a charting library.

import { PERCENT, drawAxis } from "./axis.js";
import { el } from "./dom.js";
import { attachHover, refreshHover } from "./hover.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 300;
const HEIGHT = 100;

function svg(tag, attributes = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

// An empty plot. series: [{key, name, text(point): the value with its unit, for the
// readout}]. options.scale: a fixed scale ({max, ticks}) or a function of the points drawn
// that gives one (axis.js's niceScale); options.tick: a tick's label, with the unit.
export function makePlot(series, { scale = PERCENT, tick = (v) => `${v} %` } = {}) {
  const root = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`, preserveAspectRatio: "none", role: "img", class: "plot",
  });
  root.append(svg("title"), svg("g", { class: "grid-lines" }));
  for (const { key } of series) root.append(svg("path", { class: `line ${key}`, "data-series": key }));
  const area = el("div", { class: "plot-area", tabindex: "0", role: "group" }, root);
  attachHover(area);
  const frame = el("div", { class: "plot-frame" }, el("div", { class: "y-axis", "aria-hidden": "true" }), area);
  frame.plotOptions = { series, scale, tick };
  return frame;
}

// Draws points [{t (ms), [key]: value or null, raw?: the API's point}] between from and to
// (ms). A gap longer than maxGapMs breaks the line, so a daemon that was down shows as a
// hole, not a ramp.
export function drawPlot(frame, points, { from, to, maxGapMs, label }) {
  const { series, tick } = frame.plotOptions;
  const scale = typeof frame.plotOptions.scale === "function"
    ? frame.plotOptions.scale(points.filter((p) => p.t >= from))
    : frame.plotOptions.scale;
  const root = frame.querySelector("svg");
  const span = Math.max(to - from, 1);
  const yOf = (value) => HEIGHT - (Math.min(Math.max(value, 0), scale.max) / scale.max) * HEIGHT;
  root.querySelector(".grid-lines").replaceChildren(...scale.ticks.slice(1, -1).map((value) =>
    svg("line", { x1: 0, x2: WIDTH, y1: yOf(value).toFixed(1), y2: yOf(value).toFixed(1), class: "grid" })));
  drawAxis(frame.querySelector(".y-axis"), scale, tick);
  for (const path of root.querySelectorAll("path")) {
    const key = path.dataset.series;
    const segments = [];
    let previous = null;
    for (const point of points) {
      const value = point[key];
      if (value === null || value === undefined || point.t < from) {
        previous = null;
        continue;
      }
      const x = ((point.t - from) / span) * WIDTH;
      if (previous === null || point.t - previous > maxGapMs) segments.push([]);
      segments[segments.length - 1].push(`${x.toFixed(1)} ${yOf(value).toFixed(1)}`);
      previous = point.t;
    }
    // A lone point is drawn as a dot (a round cap on a line of almost no length).
    const d = segments.map((s) => `M${s.join("L")}${s.length === 1 ? "h0.1" : ""}`).join("");
    path.setAttribute("d", d);
  }
  root.querySelector("title").textContent = label;
  root.setAttribute("aria-label", label);
  const area = frame.querySelector(".plot-area");
  area.setAttribute("aria-label", `${label}. Arrow keys read the points one by one.`);
  area.plotState = { points, from, to, series, scale };
  refreshHover(area);
}
