// What each container uses: CPU, memory and pids in its row of the containers table (from
// GET /containers, read again every 5 s while one runs), and on demand a card with a plot of
// its CPU and one of its memory (GET /containers/{name}/stats, fetched re-bucketed like the
// GPU plots: each refresh asks only for the last, still-growing window and newer).

import { ApiError, get } from "./api.js";
import { niceScale } from "./axis.js";
import { $, clock, el, mib, number, setText, show } from "./dom.js";
import { stepFor } from "./gpus.js";
import { drawPlot, makePlot } from "./plot.js";

const REFRESH_MS = 5000;
const USE_FIELDS = ["cpu_percent", "memory_used_mb", "memory_limit_mb", "pids"];
const CPU = [{ key: "cpu", name: "CPU", text: (p) => number(p.raw.cpu_percent, " %", 1) }];
const MEMORY = [{ key: "memory", name: "memory", text: (p) => memoryValue(p.raw.memory_used_mb) }];

// A row's identity without its figures: a row is rebuilt when its container changed, not
// each time its use moved (which would lose a selection or a focused button).
export function rowKey(c) {
  const rest = { ...c };
  for (const field of USE_FIELDS) delete rest[field];
  return JSON.stringify(rest);
}

function memoryValue(value) {
  return value === null || value === undefined ? "–" : `${value.toFixed(1)} MiB`;
}

function memoryText(c) {
  if (c.memory_used_mb === null || c.memory_used_mb === undefined) return "–";
  return `${mib(c.memory_used_mb)} / ${c.memory_limit_mb === null ? "no limit" : mib(c.memory_limit_mb)}`;
}

// CPU in % of one core, over at least one core; memory in MiB, or GiB from 2 GiB up.
function cpuScale(points) {
  return niceScale(Math.max(100, ...points.map((p) => p.cpu || 0)));
}

function memoryScale(points) {
  const top = Math.max(1, ...points.map((p) => p.memory || 0)) * 1.1;
  if (top < 2048) return { ...niceScale(top), unit: "MiB" };
  const gib = niceScale(top / 1024);
  return { max: gib.max * 1024, ticks: gib.ticks.map((v) => v * 1024), unit: "GiB" };
}

function memoryTick(value, scale) {
  return scale.unit === "GiB" ? `${Number((value / 1024).toFixed(2))} GiB` : `${value} MiB`;
}

export class ContainerUse {
  constructor(view) {
    this.view = view; // the ContainerView: its containers, rows, refresh and banner
    this.plots = new Map(); // name -> {card, cpu, memory, latest, since, points}
    this.timer = null;
    this.generation = 0; // counts stops: an answer to a request made before one is dropped
    $("#plot-range").addEventListener("change", () => this.changeRange());
  }

  start() {
    this.stop();
    this.timer = setInterval(() => this.refresh(), REFRESH_MS);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
    this.generation += 1;
    this.plots.clear();
    $("#container-plots").replaceChildren();
    show($("#container-plots-box"), false);
  }

  get rangeS() {
    return Number($("#plot-range").value);
  }

  // The row's cell: CPU, memory and pids, and the button that opens its plots.
  cell(c) {
    const open = this.plots.has(c.name);
    return el("td", { class: "use", "data-label": "Use" },
      el("span", { class: "cpu" }), " ", el("span", { class: "memory" }), " ", el("span", { class: "pids" }),
      el("button", {
        type: "button", class: "plot-toggle", "aria-expanded": open ? "true" : "false",
        "aria-label": `Plot the use of ${c.name}`, onclick: () => this.toggle(c.name),
      }, "Plot"));
  }

  // After each render: every row's figures, in place; the plots of removed containers go.
  update() {
    for (const [name, { node }] of this.view.rows) {
      const c = this.view.containers.get(name);
      const cell = node.querySelector("td.use");
      if (!c || !cell) continue;
      setText(cell.querySelector(".cpu"), `${number(c.cpu_percent, " %", 1)} CPU`);
      setText(cell.querySelector(".memory"), memoryText(c));
      setText(cell.querySelector(".pids"), c.pids === null || c.pids === undefined ? "" : `${c.pids} pids`);
      cell.querySelector(".plot-toggle").setAttribute("aria-expanded", this.plots.has(name) ? "true" : "false");
    }
    for (const name of [...this.plots.keys()]) if (!this.view.containers.has(name)) this.close(name);
  }

  async refresh() {
    const busy = [...this.view.containers.values()].some((c) => c.status === "running");
    if (busy) await this.view.refresh();
    await Promise.all([...this.plots.keys()].map((name) => this.refreshPlot(name)));
  }

  changeRange() {
    for (const plot of this.plots.values()) plot.points = [];
    return Promise.all([...this.plots.keys()].map((name) => this.refreshPlot(name)));
  }

  toggle(name) {
    if (this.plots.has(name)) {
      this.close(name);
    } else {
      this.open(name);
      this.refreshPlot(name);
    }
    this.update();
  }

  open(name) {
    const title = `plot-${name}`;
    const plot = {
      cpu: makePlot(CPU, { scale: cpuScale, tick: (v) => `${v} %` }),
      memory: makePlot(MEMORY, { scale: memoryScale, tick: memoryTick }),
      latest: el("p", { class: "plot-caption muted" }),
      since: [el("span"), el("span")],
      points: [],
    };
    const figure = (frame, since, key, text) => el("figure", {}, frame,
      el("div", { class: "axis muted", "aria-hidden": "true" }, since, el("span", {}, "now")),
      el("figcaption", {}, el("span", { class: `key ${key}` }, text)));
    plot.card = el("section", { class: "card container-plot", "aria-labelledby": title, dataset: { name } },
      el("header", {}, el("h3", { id: title }, `${name} · use`),
        el("button", { type: "button", "aria-label": `Close the plot of ${name}`, onclick: () => this.toggle(name) }, "Close")),
      figure(plot.cpu, plot.since[0], "cpu", "CPU, % of one core"),
      figure(plot.memory, plot.since[1], "memory", "memory used"),
      plot.latest);
    this.plots.set(name, plot);
    $("#container-plots").append(plot.card);
    show($("#container-plots-box"), true);
    plot.card.scrollIntoView({ block: "nearest" });
  }

  close(name) {
    const plot = this.plots.get(name);
    if (plot) plot.card.remove();
    this.plots.delete(name);
    show($("#container-plots-box"), this.plots.size > 0);
  }

  async refreshPlot(name) {
    const plot = this.plots.get(name);
    if (!plot) return;
    const generation = this.generation;
    const rangeS = this.rangeS;
    const step = stepFor(rangeS);
    const since = encodeURIComponent(sinceFor(plot.points, step, rangeS));
    let answer;
    try {
      answer = await get(`/containers/${encodeURIComponent(name)}/stats?step=${step}&since=${since}`);
    } catch (error) {
      if (generation !== this.generation || !(error instanceof ApiError) || error.status === 401) return;
      if (error.status === 404) this.close(name); // removed meanwhile
      else this.view.banner(error.message, "refresh");
      return;
    }
    // Signed out, closed, or another range chosen meanwhile: this answer is not wanted.
    if (generation !== this.generation || this.plots.get(name) !== plot || rangeS !== this.rangeS) return;
    plot.points = merge(plot.points, answer.points, step, rangeS);
    this.draw(name, plot, step, rangeS);
  }

  draw(name, plot, step, rangeS) {
    const to = Date.now();
    const range = $("#plot-range").selectedOptions[0].textContent;
    for (const node of plot.since) setText(node, `${range} ago`);
    const last = plot.points[plot.points.length - 1];
    let summary = "no points yet";
    plot.latest.replaceChildren();
    if (last) {
      const text = `CPU ${CPU[0].text(last)}, memory ${MEMORY[0].text(last)}`;
      summary = `${plot.points.length} points: latest ${text}`;
      plot.latest.append("latest ", el("time", { datetime: last.raw.timestamp }, clock(new Date(last.t))), `: ${text}`);
    }
    const options = { from: to - rangeS * 1000, to, maxGapMs: step * 2500 };
    drawPlot(plot.cpu, plot.points, { ...options, label: `${name}, CPU, last ${range}, ${summary}` });
    drawPlot(plot.memory, plot.points, { ...options, label: `${name}, memory, last ${range}, ${summary}` });
  }
}

// The start of the last window held (windows are (k*step, (k+1)*step] of Unix time), or the
// start of the range when none is held (as gpus.js asks).
function sinceFor(points, step, rangeS) {
  const stepMs = step * 1000;
  const last = points[points.length - 1];
  const start = last
    ? Math.ceil(last.t / stepMs) * stepMs - stepMs
    : Math.floor((Date.now() - rangeS * 1000) / stepMs) * stepMs;
  return new Date(start).toISOString();
}

// The fresh points replace the window they start in and everything after it.
function merge(kept, fresh, step, rangeS) {
  const stepMs = step * 1000;
  if (fresh.length) {
    const windowStart = Math.ceil(Date.parse(fresh[0].timestamp) / stepMs) * stepMs - stepMs;
    kept = kept.filter((p) => p.t <= windowStart);
  }
  for (const raw of fresh) {
    kept.push({ t: Date.parse(raw.timestamp), cpu: raw.cpu_percent, memory: raw.memory_used_mb, raw });
  }
  const oldest = Date.now() - rangeS * 1000;
  return kept.filter((p) => p.t >= oldest);
}
