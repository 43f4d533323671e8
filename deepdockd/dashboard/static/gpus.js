// The GPU cards: the latest readings, a plot of the selected range, who holds each GPU and
// the processes on it. The series are fetched re-bucketed by the daemon (GET /metrics/gpus
// with step), and each refresh asks only for the last, still-growing window and newer.

import { get } from "./api.js";
import { $, clock, el, mib, number, setText, show } from "./dom.js";
import { drawPlot, makePlot } from "./plot.js";

const POINTS_PER_RANGE = 120;
// Both drawn in % (memory as a share of the total); the readout says memory in MiB too.
const SERIES = [
  { key: "utilization", name: "utilization", text: (p) => number(p.raw.utilization, " %", 1) },
  {
    key: "memory", name: "memory",
    text: (p) => (p.raw.memory_used === null ? "–"
      : `${Math.round(p.raw.memory_used)} MiB (${number(p.memory, " %", 1)})`),
  },
];

// One step per range, about 120 points each, never under the sampler's 10 s buckets.
export function stepFor(rangeS) {
  return Math.max(10, Math.round(rangeS / POINTS_PER_RANGE));
}

export class GpuView {
  constructor() {
    this.cards = new Map(); // GPU index -> {root, parts}
    this.series = new Map(); // GPU index -> [{t, utilization, memory, raw}]
    this.rangeS = Number($("#range").value);
    this.generation = 0; // counts resets: an answer to a request made before one is dropped
  }

  // Another range: the series are fetched again at its step.
  changeRange() {
    this.rangeS = Number($("#range").value);
    this.series.clear();
    return this.refresh();
  }

  // Signed out: nothing of the last session stays on the page.
  reset() {
    this.generation += 1;
    this.cards.clear();
    this.series.clear();
    $("#gpu-cards").replaceChildren();
  }

  get stepS() {
    return stepFor(this.rangeS);
  }

  async refresh() {
    const step = this.stepS;
    const generation = this.generation;
    const [gpus, latest, history] = await Promise.all([
      get("/gpus"),
      get("/metrics/gpus?limit=1"),
      get(`/metrics/gpus?step=${step}&since=${encodeURIComponent(this.sinceFor(step))}`),
    ]);
    // The range changed, or the user signed out, meanwhile: this answer is not wanted.
    if (step !== this.stepS || generation !== this.generation) return null;
    show($("#gpus-empty"), gpus.count === 0);
    const seen = new Set();
    for (const gpu of gpus.gpus) {
      seen.add(gpu.index);
      this.merge(gpu, history[String(gpu.index)] || []);
      const points = latest[String(gpu.index)] || [];
      this.render(gpu, points[points.length - 1] || null);
    }
    for (const [index, card] of this.cards) {
      if (!seen.has(index)) {
        card.root.remove();
        this.cards.delete(index);
      }
    }
    return gpus;
  }

  // The start of the last window held (windows are (k*step, (k+1)*step] of Unix time), or
  // the start of the range when none is held.
  sinceFor(step) {
    let newest = null;
    for (const points of this.series.values()) {
      const last = points[points.length - 1];
      if (last && (newest === null || last.t > newest)) newest = last.t;
    }
    const stepMs = step * 1000;
    // The first time, from a window's start: the oldest window is whole, not a part of one.
    const start = newest === null
      ? Math.floor((Date.now() - this.rangeS * 1000) / stepMs) * stepMs
      : Math.ceil(newest / stepMs) * stepMs - stepMs;
    return new Date(start).toISOString();
  }

  // The fresh points replace the window they start in and everything after it.
  merge(gpu, fresh) {
    let kept = this.series.get(gpu.index) || [];
    if (fresh.length) {
      const stepMs = this.stepS * 1000;
      const windowStart = Math.ceil(Date.parse(fresh[0].timestamp) / stepMs) * stepMs - stepMs;
      kept = kept.filter((p) => p.t <= windowStart);
    }
    for (const raw of fresh) {
      const total = gpu.memory_total_mib;
      const memory = raw.memory_used === null || !total ? null : (raw.memory_used / total) * 100;
      kept.push({ t: Date.parse(raw.timestamp), utilization: raw.utilization, memory, raw });
    }
    const oldest = Date.now() - this.rangeS * 1000;
    this.series.set(gpu.index, kept.filter((p) => p.t >= oldest));
  }

  card(gpu) {
    let card = this.cards.get(gpu.index);
    if (card) return card;
    const parts = {
      health: el("span", { class: "badge" }),
      memory: el("dd"), utilization: el("dd"), power: el("dd"), temperature: el("dd"), fan: el("dd"),
      plot: makePlot(SERIES),
      latest: el("p", { class: "plot-caption muted" }),
      since: el("span"),
      holders: el("p", { class: "holders" }),
      processes: el("div", { class: "processes" }),
    };
    const root = el("article", { class: "card gpu", "aria-labelledby": `gpu-${gpu.index}-title` },
      el("header", {},
        el("h3", { id: `gpu-${gpu.index}-title` }, `GPU ${gpu.index} · ${gpu.name}`), parts.health),
      el("dl", { class: "readings" },
        el("div", { class: "wide" }, el("dt", {}, "Memory"), parts.memory),
        el("div", {}, el("dt", {}, "Utilization"), parts.utilization),
        el("div", {}, el("dt", {}, "Power"), parts.power),
        el("div", {}, el("dt", {}, "Temperature"), parts.temperature),
        el("div", {}, el("dt", {}, "Fan"), parts.fan)),
      el("figure", {}, parts.plot,
        el("div", { class: "axis muted", "aria-hidden": "true" }, parts.since, el("span", {}, "now")),
        el("figcaption", {},
          el("span", { class: "key utilization" }, "utilization"), " ",
          el("span", { class: "key memory" }, "memory used"), " ",
          parts.latest)),
      parts.holders, parts.processes);
    card = { root, parts };
    this.cards.set(gpu.index, card);
    $("#gpu-cards").append(root);
    return card;
  }

  render(gpu, now) {
    const { root, parts } = this.card(gpu);
    const lost = gpu.health !== "ok";
    root.classList.toggle("lost", lost);
    setText(parts.health, lost ? gpu.health : "healthy");
    const used = now ? now.memory_used : null;
    setText(parts.memory, `${mib(used)} / ${mib(gpu.memory_total_mib)}`);
    setText(parts.utilization, number(now && now.utilization, " %"));
    setText(parts.power, `${number(now && now.power_usage, " W")} / ${number(gpu.power_limit_w, " W")}`);
    setText(parts.temperature, number(now && now.temperature, " °C"));
    setText(parts.fan, number(now && now.fan_speed, " %"));
    this.renderPlot(gpu, parts);
    setText(parts.holders, holdersText(gpu));
    renderMigSlices(root, gpu);
    renderProfiling(root, gpu);
    // Redrawn only when they changed, so a selection of a command line survives a refresh.
    const processes = JSON.stringify(gpu.processes);
    if (parts.processes.dataset.shown !== processes) {
      parts.processes.dataset.shown = processes;
      parts.processes.replaceChildren(...processRows(gpu));
    }
  }

  renderPlot(gpu, parts) {
    const points = this.series.get(gpu.index) || [];
    const to = Date.now();
    const range = $("#range").selectedOptions[0].textContent;
    setText(parts.since, `${range} ago`);
    const last = points[points.length - 1];
    let label = `GPU ${gpu.index}, last ${range}: no points yet`;
    parts.latest.replaceChildren();
    if (last) {
      const util = last.raw.utilization === null ? "none" : `${last.raw.utilization.toFixed(1)} %`;
      const memory = last.raw.memory_used === null ? "none" : `${Math.round(last.raw.memory_used)} MiB`;
      label = `GPU ${gpu.index}, last ${range}, ${points.length} points: latest utilization ${util}, memory ${memory}`;
      parts.latest.append("latest ",
        el("time", { datetime: last.raw.timestamp }, clock(new Date(last.t))),
        `: ${util}, ${memory}`);
    }
    drawPlot(parts.plot, points, {
      from: to - this.rangeS * 1000, to, maxGapMs: this.stepS * 2500, label,
    });
  }
}

function holdersText(gpu) {
  if (gpu.mig_mode) return "MIG mode: given out only as its slices";
  if (gpu.containers === null) return "Holders unknown: Docker does not answer.";
  if (gpu.containers.length) return `Held by ${gpu.containers.join(", ")}`;
  if (gpu.held) return "Held by another user's container";
  return "Free";
}

function processRows(gpu) {
  if (!gpu.processes || gpu.processes.length === 0) return [];
  const rows = gpu.processes.map((p) => {
    if (p.pid === undefined) {
      const memory = p.memory_used_mib === null ? "memory not reported" : mib(p.memory_used_mib);
      return el("li", {}, `another user's process: ${memory}`);
    }
    const where = p.container ? `${p.container}${p.owner ? ` (${p.owner})` : ""}` : `host${p.owner ? ` (${p.owner})` : ""}`;
    const sm = p.sm_utilization === null ? "" : `, SM ${p.sm_utilization.toFixed(0)} %`;
    return el("li", { class: p.stray ? "stray" : null },
      el("span", {}, `pid ${p.pid} · ${where} · ${mib(p.memory_used_mib)}${sm}${p.stray ? " · stray" : ""}`),
      p.command ? el("code", { class: "command" }, p.command) : null);
  });
  return [el("p", { class: "muted" }, "Processes"), el("ul", { class: "process-list" }, rows)];
}

// --- MIG: a GPU in MIG mode is given out as its slices; its card lists each with its
// memory and holder (a section of the card's own, made when the GPU first shows MIG mode).

function renderMigSlices(root, gpu) {
  let box = root.querySelector(":scope > .mig-slices");
  if (!gpu.mig_mode) {
    if (box) box.remove();
    return;
  }
  if (!box) {
    box = el("section", { class: "mig-slices", "aria-label": `GPU ${gpu.index} MIG slices` });
    root.append(box);
  }
  const slices = gpu.mig_slices || [];
  const shown = JSON.stringify(slices);
  if (box.dataset.shown === shown) return;
  box.dataset.shown = shown;
  const rows = slices.map((slice) => el("li", { class: slice.held ? "held" : null },
    `${slice.id} · ${slice.profile} · ${mib(slice.memory_used_mib)} / ${mib(slice.memory_total_mib)} · ${migHolderText(slice)}`));
  box.replaceChildren(
    el("p", { class: "muted" }, `MIG mode: ${slices.length} slices, each given out as a GPU (gpu_ids "${gpu.index}:N")`),
    el("ul", { class: "mig-list" }, rows));
}

function migHolderText(slice) {
  if (slice.holders === null) return "holder unknown: Docker does not answer";
  if (slice.holders.length) return `held by ${slice.holders.map((h) => `${h.container} (${h.owner})`).join(", ")}`;
  return slice.held ? "held by another user's container" : "free";
}

// --- GPM: the profiling metrics of Hopper and newer GPUs (GET /gpus' "profiling", ratios 0..1),
// in readings of their own under the card's others; none on a GPU without GPM.

const PROFILING = [
  { key: "sm_active", name: "SM activity" },
  { key: "tensor_active", name: "Tensor activity" },
  { key: "sm_occupancy", name: "SM occupancy" },
  { key: "dram_active", name: "DRAM activity" },
];

function renderProfiling(root, gpu) {
  let box = root.querySelector(":scope > .profiling");
  const profiling = gpu.profiling || null;
  if (!profiling) {
    if (box) box.remove();
    return;
  }
  if (!box) {
    box = el("dl", { class: "readings profiling", "aria-label": `GPU ${gpu.index} profiling (GPM)` });
    root.querySelector(":scope > dl.readings").after(box);
  }
  box.replaceChildren(...PROFILING.filter(({ key }) => profiling[key] !== null).map(({ key, name }) =>
    el("div", { "data-metric": key }, el("dt", {}, name), el("dd", {}, number(profiling[key] * 100, " %")))));
}
