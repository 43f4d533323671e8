// A plot's readout: a vertical line and a dot per series at the point nearest the pointer,
// and a label with that point's time and values (with their units). It follows a mouse or
// a finger; with the keyboard, the arrow keys step through the points (Home, End), Escape
// hides it. The plot (plot.js) keeps what it drew in area.plotState; a redraw calls
// refreshHover, so the readout stays on the same point as the data grows.

import { clock, el } from "./dom.js";

export function attachHover(area) {
  const cursor = el("div", { class: "cursor", hidden: true });
  const readout = el("div", { class: "readout", hidden: true, "aria-live": "polite" });
  area.append(cursor, readout);
  area.hover = { cursor, readout, dots: new Map(), at: null }; // at: the time shown (ms)
  const fromPointer = (event) => {
    const state = area.plotState;
    if (!state) return;
    const box = area.getBoundingClientRect();
    const share = Math.min(Math.max((event.clientX - box.left) / box.width, 0), 1);
    showNearest(area, state.from + share * (state.to - state.from));
  };
  area.addEventListener("pointermove", fromPointer);
  area.addEventListener("pointerdown", fromPointer);
  area.addEventListener("pointerleave", (event) => {
    if (event.pointerType === "mouse" && document.activeElement !== area) hide(area);
  });
  area.addEventListener("blur", () => hide(area));
  area.addEventListener("keydown", (event) => onKey(area, event));
}

function onKey(area, event) {
  const points = drawn(area);
  if (!points.length) return;
  let index = area.hover.at === null ? points.length - 1 : nearestIndex(points, area.hover.at);
  if (event.key === "ArrowLeft") index = area.hover.at === null ? index : index - 1;
  else if (event.key === "ArrowRight") index += area.hover.at === null ? 0 : 1;
  else if (event.key === "Home") index = 0;
  else if (event.key === "End") index = points.length - 1;
  else if (event.key === "Escape") return hide(area);
  else return;
  event.preventDefault();
  showNearest(area, points[Math.min(Math.max(index, 0), points.length - 1)].t);
}

// The points inside the range with a value in at least one series.
function drawn(area) {
  const state = area.plotState;
  if (!state) return [];
  return state.points.filter((p) => p.t >= state.from &&
    state.series.some(({ key }) => p[key] !== null && p[key] !== undefined));
}

function nearestIndex(points, t) {
  let best = 0;
  for (let i = 1; i < points.length; i += 1) {
    if (Math.abs(points[i].t - t) < Math.abs(points[best].t - t)) best = i;
  }
  return best;
}

function showNearest(area, t) {
  const points = drawn(area);
  if (!points.length) return hide(area);
  area.hover.at = points[nearestIndex(points, t)].t;
  refreshHover(area);
}

function hide(area) {
  const { cursor, readout, dots } = area.hover;
  area.hover.at = null;
  cursor.hidden = true;
  readout.hidden = true;
  for (const dot of dots.values()) dot.hidden = true;
}

// Draws the readout again for the point shown (after a redraw: its values may have grown).
export function refreshHover(area) {
  const hover = area.hover;
  if (!hover || hover.at === null) return;
  const state = area.plotState;
  const points = drawn(area);
  if (!points.length) return hide(area);
  const point = points[nearestIndex(points, hover.at)];
  hover.at = point.t;
  const x = ((point.t - state.from) / Math.max(state.to - state.from, 1)) * 100;
  hover.cursor.style.left = `${x}%`;
  hover.cursor.hidden = false;
  const lines = [];
  for (const series of state.series) {
    let dot = hover.dots.get(series.key);
    if (!dot) {
      dot = el("span", { class: `dot ${series.key}`, hidden: true });
      hover.dots.set(series.key, dot);
      area.append(dot);
    }
    const value = point[series.key];
    dot.hidden = value === null || value === undefined;
    if (!dot.hidden) {
      dot.style.left = `${x}%`;
      dot.style.top = `${100 - (Math.min(Math.max(value, 0), state.scale.max) / state.scale.max) * 100}%`;
    }
    lines.push(el("span", { class: `value key ${series.key}`, dataset: { series: series.key } },
      `${series.name} ${series.text(point)}`));
  }
  const stamp = point.raw && point.raw.timestamp ? point.raw.timestamp : new Date(point.t).toISOString();
  hover.readout.replaceChildren(el("time", { datetime: stamp }, clock(new Date(point.t))), ...lines);
  // On the side of the line with more room.
  hover.readout.classList.toggle("left", x > 50);
  hover.readout.style.left = x > 50 ? "" : `${x}%`;
  hover.readout.style.right = x > 50 ? `${100 - x}%` : "";
  hover.readout.hidden = false;
}
