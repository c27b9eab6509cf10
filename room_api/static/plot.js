// A readings chart as inline SVG: the min–max band and the mean of each bucket, with the room
// profile's limits as dashed lines. Input is the answer of GET /api/v1/readings.
//
//   box.replaceChildren(plot(series, { unit: "°C", low: 21, high: 24 }));

const SVG = "http://www.w3.org/2000/svg";
const W = 600, H = 200;
const PAD = { left: 50, right: 10, top: 12, bottom: 26 };
const GAP_STEPS = 1.5;  // buckets further apart than this many steps have no readings between them

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

function fmt(v) {
  const a = Math.abs(v);
  return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(2);
}

/** Runs of buckets without a gap, so the band and the line do not bridge missing data. */
function runs(buckets, stepMs) {
  const out = [];
  let run = [];
  for (const b of buckets) {
    if (run.length && b.start_ms - run[run.length - 1].start_ms > stepMs * GAP_STEPS) {
      out.push(run);
      run = [];
    }
    run.push(b);
  }
  if (run.length) out.push(run);
  return out;
}

export function plot(series, { unit = "", low = null, high = null, title = "" } = {}) {
  const buckets = [...series.buckets].sort((a, b) => a.start_ms - b.start_ms);
  const limits = [low, high].filter((v) => v !== null && v !== undefined);
  const values = buckets.flatMap((b) => [b.min, b.max]).concat(limits);
  let lo = Math.min(...values), hi = Math.max(...values);
  if (!Number.isFinite(lo)) { lo = 0; hi = 1; }
  const pad = (hi - lo) * 0.1 || Math.abs(hi) * 0.05 || 1;
  lo -= pad;
  hi += pad;
  const x0 = series.from_ms, x1 = Math.max(series.to_ms, x0 + 1);
  const half = series.step_ms / 2;  // a bucket's values are drawn at its middle
  const x = (ms) => PAD.left + ((ms - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
  const y = (v) => PAD.top + (1 - (v - lo) / (hi - lo)) * (H - PAD.top - PAD.bottom);

  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img",
                            "aria-label": `${title} over the last 24 hours` });
  root.append(svg("title", {}, `${title}: ${buckets.length} buckets of ${Math.round(series.step_ms / 60000)} min`));
  root.append(svg("rect", { class: "frame", x: PAD.left, y: PAD.top, width: W - PAD.left - PAD.right,
                            height: H - PAD.top - PAD.bottom }));
  for (const run of runs(buckets, series.step_ms)) {
    if (run.length === 1) {  // a lone bucket has no band to draw: a bar from min to max and a dot
      const [b] = run, cx = x(b.start_ms + half);
      root.append(svg("line", { class: "mean", x1: cx, x2: cx, y1: y(b.min), y2: y(b.max) }));
      root.append(svg("circle", { class: "point", cx, cy: y(b.mean), r: 3.5 }));
      continue;
    }
    const top = run.map((b) => `${x(b.start_ms + half).toFixed(1)},${y(b.max).toFixed(1)}`);
    const bottom = run.slice().reverse().map((b) => `${x(b.start_ms + half).toFixed(1)},${y(b.min).toFixed(1)}`);
    root.append(svg("polygon", { class: "band", points: [...top, ...bottom].join(" ") }));
    root.append(svg("polyline", { class: "mean",
                                  points: run.map((b) => `${x(b.start_ms + half).toFixed(1)},${y(b.mean).toFixed(1)}`).join(" ") }));
  }
  for (const [name, v] of [["low", low], ["high", high]]) {
    if (v === null || v === undefined) continue;
    root.append(svg("line", { class: `limit ${name}`, x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v) }));
    root.append(svg("text", { class: "limit-label", x: W - PAD.right - 4, y: y(v) - 3, "text-anchor": "end" },
                    `${name} ${fmt(v)} ${unit}`));
  }
  for (const v of [lo + pad, (lo + hi) / 2, hi - pad]) {
    root.append(svg("text", { class: "tick", x: PAD.left - 4, y: y(v) + 4, "text-anchor": "end" }, fmt(v)));
  }
  const hours = (x1 - x0) / 3_600_000;
  for (const [frac, label] of [[0, `−${Math.round(hours)} h`], [0.5, `−${Math.round(hours / 2)} h`], [1, "now"]]) {
    const anchor = frac === 0 ? "start" : frac === 1 ? "end" : "middle";
    root.append(svg("text", { class: "tick", x: x(x0 + frac * (x1 - x0)), y: H - 6, "text-anchor": anchor }, label));
  }
  return root;
}
