// The usage view: GPU-hours over the last 30 days from GET /usage (a user's own, an admin's
// everyone's), one bar per owner: its length the hours held, its darker part the hours busy.
// The numbers are text beside each bar, and each bar's label says them for a screen reader.

import { get } from "./api.js";
import { $, el, show, when } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 100;
const HEIGHT = 10;

function rect(width, kind) {
  const node = document.createElementNS(SVG, "rect");
  for (const [name, value] of Object.entries({ x: 0, y: 0, width, height: HEIGHT, class: kind })) {
    node.setAttribute(name, value);
  }
  return node;
}

function bar(row, most) {
  const held = row.gpu_hours_held;
  const busy = row.gpu_hours_busy;
  const scale = most > 0 ? WIDTH / most : 0;
  const label = `${row.owner}: ${held.toFixed(2)} GPU-hours held, ${busy.toFixed(2)} busy`;
  const chart = document.createElementNS(SVG, "svg");
  for (const [name, value] of Object.entries({
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`, preserveAspectRatio: "none", class: "usage-bar",
    "aria-hidden": "true",
  })) chart.setAttribute(name, value);
  chart.append(rect((held * scale).toFixed(2), "held"), rect((busy * scale).toFixed(2), "busy"));
  return el(
    "li", { class: "usage-row", "aria-label": label, dataset: { owner: row.owner } },
    el("span", { class: "usage-owner" }, row.owner),
    chart,
    el("span", { class: "usage-hours" }, `${held.toFixed(2)} h held · ${busy.toFixed(2)} h busy`),
  );
}

// isCurrent(): false once the user signed out, so a late answer is not shown.
export async function refreshUsage(isCurrent) {
  const answer = await get("/usage?by=owner");
  if (!isCurrent()) return;
  const most = Math.max(0, ...answer.rows.map((row) => row.gpu_hours_held));
  $("#usage-range").textContent = `${when(answer.from)} to ${when(answer.to)}`;
  $("#usage").replaceChildren(...answer.rows.map((row) => bar(row, most)));
  show($("#usage-empty"), answer.rows.length === 0);
}

export function clearUsage() {
  $("#usage").replaceChildren();
  $("#usage-range").textContent = "";
}
