// The host panel: RAM, cores and load from GET /metrics, Docker's and NVML's health from
// GET /healthz (which answers 503, with the same body, while Docker is down).

import { get } from "./api.js";
import { $, el } from "./dom.js";

async function health() {
  const response = await fetch("/healthz", { cache: "no-store" });
  return response.json();
}

// isCurrent(): false once the user signed out, so a late answer is not shown.
export async function refreshHost(isCurrent) {
  const [host, status] = await Promise.all([get("/metrics"), health()]);
  if (!isCurrent()) return;
  const used = host.ram_total_mb - host.ram_available_mb;
  const fact = (term, value, state = null) =>
    el("div", { class: state ? `fact ${state}` : "fact" }, el("dt", {}, term), el("dd", {}, value));
  const docker = status.docker.ok
    ? `up · ${status.docker.version} (API ${status.docker.api_version})`
    : `down: ${status.docker.error}`;
  const gpus = status.gpus.ok
    ? `up · ${status.gpus.count} GPUs · driver ${status.gpus.driver_version}`
    : `down: ${status.gpus.error}`;
  $("#host").replaceChildren(
    fact("Memory", `${(used / 1024).toFixed(1)} of ${(host.ram_total_mb / 1024).toFixed(1)} GiB used`),
    fact("CPU cores", `${host.cpu_cores} (${host.cpu_logical_cores} logical)`),
    fact("Load (1, 5, 15 min)", host.load_average.map((load) => load.toFixed(2)).join(", ")),
    fact("GPUs", String(host.gpu_count)),
    fact("Docker", docker, status.docker.ok ? "ok" : "bad"),
    fact("NVML", gpus, status.gpus.ok ? "ok" : "bad"),
    fact("deepdockd", status.version),
  );
  return status;
}
