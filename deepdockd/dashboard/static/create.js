// The create form: images from GET /images (or pulled here, with a progress bar fed by the
// pull's NDJSON stream), GPUs as checkboxes saying who holds each, and the API's validation
// errors shown beside the field they name.

import { ApiError, get, post, postStream } from "./api.js";
import { $, el, setText, show } from "./dom.js";

// The API's field names (the first part of "ssh_keys.0", "env.FOO") and the control of each.
const CONTROLS = {
  name: "#c-name", image: "#c-image", user_name: "#c-user", password: "#c-password",
  ssh_keys: "#c-keys", env: "#c-env", ports: "#c-ports", memory_mb: "#c-memory", cpus: "#c-cpus",
  lease_hours: "#c-lease", shm_size_mb: "#c-shm", persistent_home: "#c-home",
  idle_reclaim: "#c-idle", gpu_ids: "#c-gpus", repo_tag: "#c-pull",
};

export class CreateView {
  constructor(onCreated) {
    this.onCreated = onCreated;
    $("#create-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.create();
    });
    $("#pull-button").addEventListener("click", () => this.pull());
  }

  // Signed out: the form forgets what was typed.
  reset() {
    $("#create-form").reset();
    clearErrors();
    for (const selector of ["#c-image", "#c-gpu-list", "#create-status", "#pull-status"]) {
      $(selector).replaceChildren();
    }
    show($("#pull-progress"), false);
  }

  // isCurrent(): false once the user signed out, so a late answer is not shown.
  async refresh(isCurrent) {
    const [, gpus] = await Promise.all([this.loadImages(null, isCurrent), get("/gpus")]);
    if (isCurrent()) this.showGpus(gpus);
  }

  async loadImages(select = null, isCurrent = () => true) {
    const { images } = await get("/images");
    if (!isCurrent()) return;
    const chooser = $("#c-image");
    const chosen = select || chooser.value;
    const options = images.flatMap((image) => {
      const names = image.tags.length ? image.tags : [image.id];
      return names.map((name) => el("option", { value: name }, `${name} (${image.size_mb} MB)`));
    });
    chooser.replaceChildren(...(options.length ? options : [el("option", { value: "" }, "no images yet: pull one")]));
    if (chosen && [...chooser.options].some((o) => o.value === chosen)) chooser.value = chosen;
  }

  // A checkbox per GPU saying who holds it (a GPU in MIG mode: one per MIG slice). Kept in
  // place when the GPUs are the same, only the words changing, so a refresh never takes a
  // tick or the focus away.
  showGpus(gpus) {
    const list = $("#c-gpu-list");
    const choices = gpuChoices(gpus.gpus);
    const shown = [...list.querySelectorAll("input")].map((box) => box.value).join(",");
    if (shown !== choices.map((choice) => choice.value).join(",") || choices.length === 0) {
      const boxes = choices.map(({ id, value }) => el("div", { class: "check" },
        el("input", { type: "checkbox", id, value }), el("label", { for: id })));
      list.replaceChildren(...(boxes.length ? boxes : [el("p", { class: "muted" }, "No GPUs on this host.")]));
    }
    for (const choice of choices) setText(list.querySelector(`label[for="${choice.id}"]`), choice.text);
  }

  // The request body, or throws {field: message} for what the page itself can tell is wrong.
  body() {
    const value = (selector) => $(selector).value.trim();
    const problems = {};
    const body = { name: value("#c-name"), image: value("#c-image"), user_name: value("#c-user") };
    if ($("#c-password").value) body.password = $("#c-password").value;
    const keys = value("#c-keys").split("\n").map((line) => line.trim()).filter(Boolean);
    if (keys.length) body.ssh_keys = keys;
    const env = {};
    value("#c-env").split("\n").map((line) => line.trim()).filter(Boolean).forEach((line, i) => {
      const at = line.indexOf("=");
      if (at < 1) problems.env = `line ${i + 1}: write NAME=value`;
      else env[line.slice(0, at)] = line.slice(at + 1);
    });
    if (Object.keys(env).length) body.env = env;
    const ports = value("#c-ports").split(/[\s,]+/).filter(Boolean);
    if (ports.some((port) => !/^\d+$/.test(port))) problems.ports = "ports are numbers, e.g. 8888 6006";
    else if (ports.length) body.ports = ports.map(Number);
    const numbers = [
      ["memory_mb", "#c-memory"], ["cpus", "#c-cpus"], ["shm_size_mb", "#c-shm"], ["lease_hours", "#c-lease"],
    ];
    for (const [field, selector] of numbers) {
      if ($(selector).validity.badInput) problems[field] = "write a number";
      else if (value(selector) !== "") body[field] = Number(value(selector));
    }
    body.persistent_home = $("#c-home").checked;
    if (!$("#c-idle").checked) body.idle_reclaim = false;
    // A whole GPU by its index, a MIG slice as "1:0".
    body.gpu_ids = [...$("#c-gpu-list").querySelectorAll("input:checked")]
      .map((box) => (box.value.includes(":") ? box.value : Number(box.value)));
    if (Object.keys(problems).length) throw problems;
    return body;
  }

  async create() {
    clearErrors();
    const button = $("#create-button");
    const status = $("#create-status");
    let body;
    try {
      body = this.body();
    } catch (problems) {
      showErrors(problems);
      return;
    }
    button.disabled = true;
    status.textContent = `Creating ${body.name}… (an image without SSH gets it installed: this can take a minute)`;
    try {
      const made = await post("/containers/create", body);
      status.replaceChildren(`Created ${made.name}. Log in with `,
        el("code", {}, `ssh -p ${made["ssh-port"]} ${body.user_name}@${location.hostname}`));
      $("#c-password").value = "";
      this.onCreated(made);
    } catch (error) {
      status.textContent = "";
      if (!(error instanceof ApiError)) {
        showErrors({ _: `the create's answer could not be read: ${error.message}` });
        return;
      }
      const fields = error.fields;
      if (Object.keys(fields).length) showErrors(fields);
      else showErrors({ _: error.message });
    } finally {
      button.disabled = false;
    }
  }

  async pull() {
    clearErrors();
    const reference = $("#c-pull").value.trim();
    if (!reference) {
      showErrors({ repo_tag: "write the image to pull, e.g. ubuntu:24.04" });
      return;
    }
    const bar = $("#pull-progress");
    const status = $("#pull-status");
    const layers = new Map();
    bar.value = 0;
    show(bar, true);
    $("#pull-button").disabled = true;
    status.textContent = `Pulling ${reference}…`;
    try {
      const result = await postStream("/images", { repo_tag: reference }, (line) => {
        if (line.status === undefined) return;
        if (line.layer) layers.set(line.layer, layerProgress(layers.get(line.layer), line));
        const total = [...layers.values()].reduce((sum, l) => sum + (l.total || 0), 0);
        const done = [...layers.values()].reduce((sum, l) => sum + (l.done || 0), 0);
        const complete = [...layers.values()].filter((l) => l.complete).length;
        if (total) bar.value = Math.min(done / total, 1);
        status.textContent = `${line.status}: ${megabytes(done)} of ${megabytes(total)}, ${complete} of ${layers.size} layers complete`;
      });
      if (!result || !result.id) {
        status.textContent = "";
        const message = result && result.error ? result.error.message : "the pull's stream ended without a result";
        showErrors({ repo_tag: message });
        show(bar, false);
        return;
      }
      bar.value = bar.max;
      status.textContent = result.message;
      await this.loadImages(result.tags[0] || result.id);
    } catch (error) {
      status.textContent = "";
      show(bar, false);
      const message = error instanceof ApiError ? error.message : `the pull's stream broke: ${error.message}`;
      showErrors({ repo_tag: message });
    } finally {
      $("#pull-button").disabled = false;
    }
  }
}

function layerProgress(previous, line) {
  const layer = previous || { total: 0, done: 0, complete: false };
  if (line.status === "Downloading" && line.total) {
    layer.total = line.total;
    layer.done = line.current || 0;
  } else if (["Download complete", "Pull complete", "Already exists"].includes(line.status)) {
    layer.done = layer.total;
    layer.complete = line.status !== "Download complete";
  }
  return layer;
}

function megabytes(bytes) {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

function clearErrors() {
  for (const node of document.querySelectorAll("#create-form .field-error")) node.textContent = "";
  for (const node of document.querySelectorAll("#create-form [aria-invalid]")) node.removeAttribute("aria-invalid");
}

// {field: message}: each beside its control ("ssh_keys.1" beside the keys), the rest above
// the Create button.
function showErrors(problems) {
  let first = null;
  for (const [field, message] of Object.entries(problems)) {
    const text = Array.isArray(message) ? message.join("; ") : String(message);
    const selector = CONTROLS[field.split(".")[0]];
    const control = selector ? $(selector) : null;
    if (!control) {
      $("#create-error").textContent = text;
      continue;
    }
    const error = errorNodeFor(control);
    const where = fieldPart(field);
    error.textContent = error.textContent ? `${error.textContent}; ${where}${text}` : `${where}${text}`;
    control.setAttribute("aria-invalid", "true");
    first = first || control;
  }
  // A fieldset takes no focus: its first checkbox does.
  if (first) (first.matches("fieldset") ? first.querySelector("input") || first : first).focus();
}

// "ssh_keys.1" is the second key; "env.HOME" (or "env.HOME.key", "env.HOME.value", as
// marshmallow names a dict's parts) the variable HOME.
function fieldPart(field) {
  const [name, part] = field.replace(/\.(key|value)$/, "").split(/\.(.*)/s);
  if (part === undefined) return "";
  if (/^\d+$/.test(part)) return `${name === "ssh_keys" ? "key" : "item"} ${Number(part) + 1}: `;
  return `${part}: `;
}

function errorNodeFor(control) {
  const id = `${control.id}-error`;
  let node = document.getElementById(id);
  if (!node) {
    node = el("p", { class: "field-error", id });
    control.closest(".field").append(node);
    const described = control.getAttribute("aria-describedby");
    control.setAttribute("aria-describedby", described ? `${described} ${id}` : id);
  }
  return node;
}

// What the GPU checkboxes offer: each whole GPU, or, for a GPU in MIG mode (which is given
// only as its slices), each of its MIG slices, with who holds it.
export function gpuChoices(gpus) {
  const choices = [];
  for (const gpu of gpus) {
    if (gpu.mig_mode) {
      for (const slice of gpu.mig_slices || []) {
        const holders = slice.holders || [];
        const holder = holders.length ? `held by ${holders.map((h) => h.container).join(", ")}`
          : slice.held ? "held by another user" : "free";
        choices.push({
          id: `c-gpu-${slice.id.replace(":", "-")}`, value: slice.id,
          text: `MIG ${slice.id} · ${slice.profile} of GPU ${gpu.index} — ${holder}`,
        });
      }
      continue;
    }
    const holder = gpu.containers && gpu.containers.length
      ? `held by ${gpu.containers.join(", ")}`
      : gpu.held ? "held by another user" : gpu.health !== "ok" ? `lost: ${gpu.health}` : "free";
    choices.push({ id: `c-gpu-${gpu.index}`, value: String(gpu.index), text: `GPU ${gpu.index} · ${gpu.name} — ${holder}` });
  }
  return choices;
}
