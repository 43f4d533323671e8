// Building the page from the API's answers. Every text the server sends (names, images,
// commands, messages) goes in as text, never as HTML: another user's container name or a
// process's command line must not become markup in an admin's page.

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.flat().filter((child) => child !== null && child !== undefined));
  return node;
}

export function $(selector) {
  return document.querySelector(selector);
}

export function show(node, visible) {
  node.hidden = !visible;
}

export function mib(value) {
  if (value === null || value === undefined) return "–";
  if (value >= 1024) return `${(value / 1024).toFixed(1)} GiB`;
  return `${Math.round(value)} MiB`;
}

export function number(value, unit, digits = 0) {
  if (value === null || value === undefined) return "–";
  return `${value.toFixed(digits)}${unit}`;
}

export function clock(date) {
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay ? clock(date) : date.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

// Sets a node's text only when it changed, so a refresh does not disturb a reader.
export function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}
