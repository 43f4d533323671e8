// A plot's y-axis: the scale (its top and its ticks) and the tick labels beside the plot.
// The labels are HTML, not SVG text: the plot's SVG stretches to its box, which would
// stretch text too.

import { el } from "./dom.js";

// 0 to 100 %, ticks every 25: utilization, and memory as a share of the total.
export const PERCENT = { max: 100, ticks: [0, 25, 50, 75, 100] };

// A scale from 0 to a round number at or above top (1, 2, 2.5 or 5 times a power of ten),
// in four or five steps: 0–100, 0–250, 0–2000.
export function niceScale(top) {
  const wanted = top > 0 && Number.isFinite(top) ? top : 1;
  const raw = wanted / 4;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s * 4 >= wanted - 1e-9);
  const count = Math.ceil(wanted / step - 1e-9);
  const ticks = Array.from({ length: count + 1 }, (_, i) => Number((i * step).toPrecision(12)));
  return { max: ticks[count], ticks };
}

// Fills the axis (a box beside the plot, of its height) with one label per tick, each at its
// height as a share of the box; redrawn only when the ticks changed. format(value, scale):
// a tick's label with its unit.
export function drawAxis(axis, scale, format) {
  const labels = scale.ticks.map((value) => format(value, scale));
  const shown = JSON.stringify([scale.max, labels]);
  if (axis.dataset.shown === shown) return;
  axis.dataset.shown = shown;
  axis.replaceChildren(...scale.ticks.map((value, i) => {
    const tick = el("span", { class: "tick" }, labels[i]);
    tick.style.top = `${100 - (value / scale.max) * 100}%`;
    return tick;
  }));
}
