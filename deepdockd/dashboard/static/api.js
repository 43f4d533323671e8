// The API, as the page speaks to it: same-origin requests with the bearer token, the API's
// own error answers as ApiError, NDJSON streams line by line, and /events (Server-Sent
// Events) read with fetch, since EventSource cannot send an Authorization header.

const TOKEN_KEY = "deepdockd.token";

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }

  // The form fields the API named: {"user_name": "...", "ssh_keys.0": "..."}.
  get fields() {
    if (this.details.fields) return this.details.fields;
    if (this.details.field) return { [this.details.field]: this.message };
    return {};
  }
}

let onUnauthorized = () => {};

export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

function headers(extra = {}) {
  const value = token.get();
  return value ? { Authorization: `Bearer ${value}`, ...extra } : extra;
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not the API's JSON (a proxy's page): the status line is all there is.
  }
  const error = body && body.error;
  if (error) return new ApiError(response.status, error.code, error.message, error.details);
  return new ApiError(response.status, "http_error", `HTTP ${response.status} ${response.statusText}`);
}

async function send(method, path, body, extraHeaders = {}, signal = undefined) {
  const sent = token.get();
  const init = { method, headers: headers(extraHeaders), signal, cache: "no-store" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "unreachable", "deepdockd does not answer (is it running?)");
  }
  if (!response.ok) {
    const error = await errorOf(response);
    // Signed out only if this token is still the one in use (not a late answer to the last
    // session's request).
    if (response.status === 401 && token.get() === sent) onUnauthorized(error);
    throw error;
  }
  return response;
}

export async function get(path, signal) {
  return (await send("GET", path, undefined, {}, signal)).json();
}

export async function post(path, body) {
  return (await send("POST", path, body)).json();
}

export async function del(path) {
  return (await send("DELETE", path)).json();
}

// POST with an NDJSON answer: onLine(object) for each line; the last line is returned.
export async function postStream(path, body, onLine) {
  const response = await send("POST", path, body, { Accept: "application/x-ndjson" });
  let last = null;
  if (!(response.headers.get("Content-Type") || "").startsWith("application/x-ndjson")) {
    return response.json();  // a pull that ended before its first event answers plainly
  }
  for await (const line of lines(response)) {
    if (!line.trim()) continue;
    last = JSON.parse(line);
    onLine(last);
  }
  return last;
}

// The body's lines, without their line ends (LF or CRLF), however the chunks split them.
async function* lines(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += value;
    const parts = buffered.split("\n");
    buffered = parts.pop();
    yield* parts.map((line) => (line.endsWith("\r") ? line.slice(0, -1) : line));
  }
  if (buffered) yield buffered;
}

// One field of a Server-Sent Events line: "data: x" is ["data", "x"] (one space dropped).
function sseField(line) {
  const colon = line.indexOf(":");
  if (colon === -1) return [line, ""];
  const value = line.slice(colon + 1);
  return [line.slice(0, colon), value.startsWith(" ") ? value.slice(1) : value];
}

// Follows GET /events: onEvent({type, container}) for each change, onState("live" | "down"
// | "off"). Comes back after a break with Last-Event-ID; "off" (the daemon runs with
// live_view = false) ends it, and the caller polls instead. Returns a function that stops it.
export function followEvents(onEvent, onState) {
  const control = new AbortController();
  let lastId = null;
  (async () => {
    while (!control.signal.aborted) {
      try {
        const extra = lastId ? { "Last-Event-ID": lastId } : {};
        const response = await send("GET", "/events", undefined, extra, control.signal);
        onState("live");
        let data = [];
        let id = null;
        for await (const line of lines(response)) {
          if (line === "") { // the end of an event
            if (id !== null) lastId = id;
            if (data.length) onEvent(JSON.parse(data.join("\n")));
            data = [];
            id = null;
            continue;
          }
          if (line.startsWith(":")) continue; // a comment: the heartbeat
          const [name, value] = sseField(line);
          if (name === "data") data.push(value);
          else if (name === "id") id = value;
        }
      } catch (error) {
        if (control.signal.aborted) return;
        const off = error instanceof ApiError && error.status === 503
          && error.details && error.details.setting === "live_view";
        if (off) {
          onState("off");
          return;
        }
        if (error instanceof ApiError && error.status === 401) return;
      }
      onState("down");
      await new Promise((resolve) => setTimeout(resolve, 3000));
    }
  })();
  return () => control.abort();
}
