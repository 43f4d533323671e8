// The containers table: one row per container the token may see, kept current by GET
// /events (or by polling where the daemon runs without the live view), with the SSH command
// ready to copy and the life-cycle buttons.

import { ApiError, del, followEvents, get, post } from "./api.js";
import { $, el, show, when } from "./dom.js";
import { ContainerUse, rowKey } from "./containeruse.js";

const POLL_MS = 5000;
// The states in which a delete needs force (the API answers 409 without it).
const NEEDS_FORCE = new Set(["running", "paused", "restarting"]);

export class ContainerView {
  constructor(banner) {
    this.banner = banner;
    this.containers = new Map(); // name -> container, as the API last showed it
    this.rows = new Map(); // name -> {json, node}: a row is rebuilt only when its container changed
    this.stopEvents = null;
    this.pollTimer = null;
    this.generation = 0; // counts stops: an answer to a request made before one is dropped
    this.seenDuringRefresh = null; // events that came while a list was on its way
    this.use = new ContainerUse(this); // each row's CPU, memory and pids, and their plots
  }

  start() {
    this.stop();
    this.stopEvents = followEvents(
      (event) => this.onEvent(event),
      (state) => this.onStreamState(state),
    );
    this.use.start();
  }

  // Signed out: the stream closed, and nothing of the last session stays on the page.
  stop() {
    if (this.stopEvents) this.stopEvents();
    this.stopEvents = null;
    this.use.stop();
    this.generation += 1;
    clearInterval(this.pollTimer);
    this.pollTimer = null;
    this.containers.clear();
    this.rows.clear();
    $("#containers tbody").replaceChildren();
    $("#live").textContent = "";
  }

  onStreamState(state) {
    const live = $("#live");
    if (state === "live") {
      live.textContent = "live";
      this.refresh(); // whatever changed while the stream was away
    } else if (state === "down") {
      live.textContent = "reconnecting…";
    } else {
      live.textContent = `refreshed every ${POLL_MS / 1000} s`;
      clearInterval(this.pollTimer);
      this.pollTimer = setInterval(() => this.refresh(), POLL_MS);
    }
  }

  onEvent(event) {
    if (this.seenDuringRefresh) this.seenDuringRefresh.push(event);
    this.apply(event);
    this.render();
  }

  apply(event) {
    if (event.type === "removed") this.containers.delete(event.container.name);
    else this.containers.set(event.container.name, event.container);
  }

  async refresh() {
    const generation = this.generation;
    const seen = [];
    this.seenDuringRefresh = seen;
    try {
      const answer = await get("/containers");
      if (generation !== this.generation) return;
      this.containers = new Map(answer.containers.map((c) => [c.name, c]));
      for (const event of seen) this.apply(event); // newer than the list, or as new
      this.render();
    } catch (error) {
      if (generation === this.generation && error instanceof ApiError && error.status !== 401) {
        this.banner(error.message, "refresh");
      }
    } finally {
      if (this.seenDuringRefresh === seen) this.seenDuringRefresh = null;
    }
  }

  render() {
    const body = $("#containers tbody");
    const focused = body.contains(document.activeElement)
      ? document.activeElement.closest("tr").dataset.name : null;
    const containers = [...this.containers.values()].sort((a, b) => a.name.localeCompare(b.name));
    show($("#containers-empty"), containers.length === 0);
    const nodes = containers.map((c) => {
      const json = rowKey(c);
      const kept = this.rows.get(c.name);
      if (kept && kept.json === json) return kept.node;
      const node = this.row(c);
      this.rows.set(c.name, { json, node });
      return node;
    });
    for (const name of this.rows.keys()) if (!this.containers.has(name)) this.rows.delete(name);
    const current = [...body.children];
    if (nodes.length !== current.length || nodes.some((node, i) => node !== current[i])) {
      body.replaceChildren(...nodes);
    }
    this.use.update();
    // A button that was pressed may have been rebuilt: focus stays on that container's row.
    if (focused && !body.contains(document.activeElement) && this.rows.has(focused)) {
      this.rows.get(focused).node.querySelector(".actions button").focus();
    }
  }

  row(c) {
    const running = c.status === "running" || c.status === "paused"; // a paused one is stopped too
    const host = location.hostname;
    const ssh = c["ssh-port"] === null ? null : `ssh -p ${c["ssh-port"]} ${c.ssh_user}@${host}`;
    // Each service through deepdockd's proxy (its host port is on the host's loopback only).
    const ports = Object.keys(c.ports).map((inside) => {
      const href = `/containers/${encodeURIComponent(c.name)}/proxy/${Number(inside)}/`;
      return el("a", {
        href, target: "_blank", rel: "noopener noreferrer",
        "aria-label": `Open port ${inside} of ${c.name}`,
        onclick: (event) => this.openService(event, c, href),
      }, `${inside} ↗`);
    });
    const action = (label, handler, extra = {}) =>
      el("button", { type: "button", "aria-label": `${label} ${c.name}`, onclick: handler, ...extra }, label);
    return el("tr", { "data-name": c.name },
      el("th", { scope: "row" }, c.name),
      el("td", {},
        el("span", { class: `status ${c.status}` }, c.status),
        c.stopped_reason ? el("div", { class: "muted reason" }, c.stopped_reason) : null),
      el("td", { class: "image" }, c.image.join(", ")),
      el("td", { "data-label": "GPUs" }, c.gpus.length ? c.gpus.join(", ") : "–"),
      this.use.cell(c),
      el("td", { class: "admin-only", "data-label": "Owner" }, c.owner),
      el("td", {}, ssh ? el("div", { class: "ssh" },
        el("code", {}, ssh),
        el("button", {
          type: "button", class: "copy", "aria-label": `Copy the SSH command of ${c.name}`,
          onclick: (event) => copy(ssh, event.currentTarget),
        }, "Copy")) : "–"),
      el("td", { class: "ports", "data-label": ports.length ? "Ports" : null }, ...interleave(ports, " ")),
      el("td", { "data-label": "Lease ends" }, c.expires_at ? when(c.expires_at) : "no lease"),
      el("td", {}, el("div", { class: "actions" },
        running
          ? action("Stop", () => this.act(c, "stop"))
          : action("Start", () => this.act(c, "start")),
        pauseButton(c, action, (verb) => this.act(c, verb)),
        commitButton(c, action, (tag) => this.run(c, () =>
          post(`/containers/${encodeURIComponent(c.name)}/commit`, { tag }))),
        action("Restart", () => this.act(c, "restart")),
        action("Delete", () => this.remove(c), { class: "danger" }))));
  }

  // The token is traded for a cookie scoped to the container's proxy path (HttpOnly, so no
  // page reads it), and the service opens in a tab of its own with no opener: its pages run
  // on this origin, and must not reach this tab's sessionStorage, where the token is.
  async openService(event, c, href) {
    event.preventDefault();
    try {
      await post(`/containers/${encodeURIComponent(c.name)}/proxy-session`);
      this.banner("");
      window.open(href, "_blank", "noopener,noreferrer");
    } catch (error) {
      this.banner(error.message);
    }
  }

  act(c, verb) {
    return this.run(c, () => post(`/containers/${encodeURIComponent(c.name)}/${verb}`));
  }

  // One request on a container's behalf: its buttons off meanwhile, the API's error in the
  // banner, and the list read again after.
  async run(c, request) {
    this.busy(c.name, true);
    try {
      await request();
      this.banner("");
    } catch (error) {
      this.banner(error.message);
    } finally {
      this.busy(c.name, false);
      await this.refresh();
    }
  }

  async remove(c) {
    const needsForce = NEEDS_FORCE.has(c.status);
    const dialog = $("#confirm");
    $("#confirm-title").textContent = `Delete ${c.name}?`;
    $("#confirm-text").textContent = c.home_volume
      ? `The container goes; its home volume ${c.home_volume} is kept.`
      : "The container and its files go (its home is not in a volume).";
    show($("#confirm-force-row"), needsForce);
    $("#confirm-force").checked = false;
    dialog.returnValue = ""; // Escape closes it without a value: not the last "ok"
    const answer = await new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true });
      dialog.showModal();
    });
    if (answer !== "ok") return;
    const force = needsForce && $("#confirm-force").checked;
    await this.run(c, () => del(`/containers/${encodeURIComponent(c.name)}${force ? "?force=true" : ""}`));
  }

  busy(name, on) {
    const row = this.rows.get(name);
    if (row) for (const button of row.node.querySelectorAll(".actions button")) button.disabled = on;
  }
}

function interleave(items, separator) {
  return items.flatMap((item, i) => (i ? [separator, item] : [item]));
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    // No clipboard (plain HTTP on another host): select the text for Ctrl+C instead.
    getSelection().selectAllChildren(button.previousElementSibling);
    button.textContent = "Selected";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 2000);
}

// Pause a running container (its processes freeze; it keeps its GPUs and its lease), resume a
// paused one; nothing for a container in any other state.
function pauseButton(c, action, act) {
  if (c.status === "running") return action("Pause", () => act("pause"));
  if (c.status === "paused") return action("Resume", () => act("unpause"));
  return null;
}

// Commit a running container to an image of the caller's, under a tag asked for in a prompt
// (docs/images.md#committing-a-container); the API's refusal (a bad or taken tag) shows in
// the banner.
function commitButton(c, action, commit) {
  if (c.status !== "running") return null;
  return action("Commit", () => {
    const tag = prompt(`Commit ${c.name} to an image of yours, tagged:`, `${c.name}:1`);
    if (tag && tag.trim()) return commit(tag.trim());
    return null;
  });
}
