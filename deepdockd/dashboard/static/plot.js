// A time-series plot in SVG: a few lines on a 0–100 % scale over a fixed time range, gaps
// where there are no points. Small on purpose: the dashboard needs lines, a grid and a
// label a screen reader can read, not a charting library.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 300;
const HEIGHT = 100;

function svg(tag, attributes = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

// An empty plot: a grid at 25, 50 and 75 %, and one path per series.
export function makePlot(series) {
  const root = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`, preserveAspectRatio: "none", role: "img", class: "plot",
  });
  const title = svg("title");
  root.append(title);
  for (const y of [25, 50, 75]) {
    root.append(svg("line", { x1: 0, x2: WIDTH, y1: y, y2: y, class: "grid" }));
  }
  for (const { key } of series) root.append(svg("path", { class: `line ${key}`, "data-series": key }));
  return root;
}

// Draws points [{t (ms), [key]: value 0–100 or null}] between from and to (ms). A gap longer
// than maxGapMs breaks the line, so a daemon that was down shows as a hole, not a ramp.
export function drawPlot(root, points, { from, to, maxGapMs, label }) {
  const span = Math.max(to - from, 1);
  for (const path of root.querySelectorAll("path")) {
    const key = path.dataset.series;
    const segments = [];
    let previous = null;
    for (const point of points) {
      const value = point[key];
      if (value === null || value === undefined || point.t < from) {
        previous = null;
        continue;
      }
      const x = ((point.t - from) / span) * WIDTH;
      const y = HEIGHT - (Math.min(Math.max(value, 0), 100) / 100) * HEIGHT;
      if (previous === null || point.t - previous > maxGapMs) segments.push([]);
      segments[segments.length - 1].push(`${x.toFixed(1)} ${y.toFixed(1)}`);
      previous = point.t;
    }
    // A lone point is drawn as a dot (a round cap on a line of almost no length).
    const d = segments.map((s) => `M${s.join("L")}${s.length === 1 ? "h0.1" : ""}`).join("");
    path.setAttribute("d", d);
  }
  root.querySelector("title").textContent = label;
  root.setAttribute("aria-label", label);
}
