// The dashboard: sign-in, the four views, and their refreshes. Everything it shows comes
// from this daemon's API with the signed-in token, so a user sees their own containers and
// an admin everyone's.

import { ApiError, get, token, whenUnauthorized } from "./api.js";
import { ContainerView } from "./containers.js";
import { CreateView } from "./create.js";
import { $, show } from "./dom.js";
import { GpuView } from "./gpus.js";
import { refreshHost } from "./host.js";
import { clearUsage, refreshUsage } from "./usage.js";

const VIEWS = ["gpus", "containers", "create", "host", "usage"];
const REFRESH_MS = { gpus: 5000, host: 10000 };

let session = null; // {who: {user, role} or null while unknown, generation}
let signingIn = false;
let generation = 0; // counts sign-outs: an answer to a request made before one is dropped
let timers = [];
let views = null; // made once: their controls' listeners are added once

// One line above the views. A refresh's error goes away when a refresh succeeds again; an
// action's stays until the next action.
let bannerSource = null;

function banner(message, source = "action") {
  const node = $("#banner");
  node.textContent = message;
  bannerSource = message ? source : null;
  show(node, Boolean(message));
}

function refreshed() {
  if (bannerSource === "refresh") banner("");
}

// A token in the URL's fragment (#token=…, which browsers never send to the server) is moved
// into sessionStorage and taken out of the address bar.
function tokenFromFragment() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!match) return;
  try {
    token.set(decodeURIComponent(match[1]));
  } catch {
    // A mangled %-escape: no token; the form asks for one.
  }
  history.replaceState(null, "", location.pathname + location.search);
}

function showSignIn(message = "") {
  stopAll();
  session = null;
  token.clear();
  for (const id of ["#views", "#who", ...VIEWS.map((v) => `#view-${v}`)]) show($(id), false);
  banner("");
  show($("#sign-in"), true);
  $("#token-error").textContent = message;
  $("#token").value = "";
  $("#token").focus();
}

function stopAll() {
  generation += 1;
  for (const timer of timers) clearInterval(timer);
  timers = [];
  views.containers.stop();
  views.gpus.reset();
  views.create.reset();
  $("#host").replaceChildren();
  clearUsage();
  const dialog = $("#confirm");
  if (dialog.open) dialog.close("cancel");
}

// Runs task now and every ms while this session lasts.
function every(ms, task) {
  const mine = generation;
  const run = () => task()
    .then(() => { if (mine === generation) refreshed(); })
    .catch((error) => { if (mine === generation) banner(error.message, "refresh"); });
  run();
  timers.push(setInterval(run, ms));
}

function isCurrent(mine) {
  return () => mine === generation;
}

function open(view) {
  if (!VIEWS.includes(view)) view = "gpus";
  for (const name of VIEWS) show($(`#view-${name}`), name === view);
  for (const button of document.querySelectorAll("#views button")) {
    if (button.dataset.view === view) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  if (location.hash !== `#${view}`) history.replaceState(null, "", `#${view}`);
  if (!session) return;
  const current = isCurrent(generation);
  if (view === "create") views.create.refresh(current).catch((error) => banner(error.message, "refresh"));
  if (view === "host") refreshHost(current).catch((error) => banner(error.message, "refresh"));
  if (view === "usage") refreshUsage(current).catch((error) => banner(error.message, "refresh"));
}

// Who is signed in, from GET /quota, which needs Docker: while Docker does not answer, the
// page works without it (as a user's page) and asks again with the host's refresh.
async function learnWho() {
  if (!session || session.who) return;
  const mine = generation;
  const quota = await get("/quota");
  if (mine !== generation) return;
  session.who = { user: quota.caller.user, role: quota.caller.role };
  document.body.classList.toggle("admin", quota.caller.role === "admin");
  $("#who-name").textContent = `${quota.caller.user}${quota.caller.role === "admin" ? " (admin)" : ""}`;
}

async function start(value) {
  if (signingIn) return;
  signingIn = true;
  try {
    stopAll();
    if (value) token.set(value);
    await get("/metrics"); // checks the token (401: not valid) without needing Docker
    session = { who: null };
    $("#who-name").textContent = "signed in";
    document.body.classList.remove("admin");
    show($("#sign-in"), false);
    show($("#views"), true);
    show($("#who"), true);
    banner("");
    const current = isCurrent(generation);
    learnWho().catch((error) => banner(error.message, "refresh"));
    views.containers.start();
    // The create form's GPU checkboxes follow the same answers as the cards.
    every(REFRESH_MS.gpus, async () => {
      const gpus = await views.gpus.refresh();
      if (gpus && current()) views.create.showGpus(gpus);
    });
    every(REFRESH_MS.host, () => Promise.all([refreshHost(current), learnWho()]));
    open(location.hash.slice(1));
  } finally {
    signingIn = false;
  }
}

function main() {
  views = {
    gpus: new GpuView(),
    containers: new ContainerView(banner),
    // A new container: the table and the GPUs' holders at once, not at the next refresh.
    create: new CreateView(() => {
      views.containers.refresh();
      views.gpus.refresh()
        .then((gpus) => { if (gpus) views.create.showGpus(gpus); })
        .catch(() => {}); // the next timed refresh says what is wrong
    }),
  };
  $("#range").addEventListener("change", () => {
    if (session) views.gpus.changeRange().catch((error) => banner(error.message, "refresh"));
  });
  tokenFromFragment();
  // No message for the first try without a token: a daemon with auth on asks for one.
  whenUnauthorized((error) => showSignIn(token.get() ? error.message : ""));
  $("#sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await start($("#token").value.trim());
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) $("#token-error").textContent = error.message;
    }
  });
  $("#sign-out").addEventListener("click", () => showSignIn());
  for (const button of document.querySelectorAll("#views button")) {
    button.addEventListener("click", () => open(button.dataset.view));
  }
  // With a saved token, or none (a daemon with auth off, on loopback, needs none).
  start(token.get()).catch((error) => {
    if (!(error instanceof ApiError && error.status === 401)) showSignIn(error.message);
  });
}

main();
