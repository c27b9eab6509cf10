// The facilities page (/facilities): nodes and their health, technical alarms (read-only: only
// nurses acknowledge), provisioned nodes to adopt (bed and role), identify, rotate, replace or
// decommission, the environment against the room profile's limits with 24 h charts, and the
// gateway's counters. Live over the event stream (docs/pages.md).

import { ApiError, Session } from "./session.js";
import { plot } from "./plot.js";
import { MEASURES, formatValue } from "./measures.js";
import { FirmwarePanel } from "./firmware.js";
import { $, el, badge, age, tickAges, errorText, loginGate, Notice, openStream, showOffline, Refresher,
         renderDegraded } from "./ui.js";

const REFRESH_DEBOUNCE_MS = 250;   // node and environment changes come in bursts
const PLOTS_DEBOUNCE_MS = 2000;    // charts are heavier: one reload per burst of environment events
const HISTORY_SPAN_MS = 24 * 3600 * 1000;
const HISTORY_STEP = "10m";  // 144 buckets over a day: one every few pixels
const BLE_STATE = { stopped: "stopped", starting: "starting", scanning: "scanning",
                    degraded: "DEGRADED — not scanning" };
const STORAGE_STATE = { ok: "ok", readings_paused: "LOW ON SPACE — readings not stored",
                        failed: "FAILED — events cannot be stored" };
const PROFILE_MEASURES = ["temp_c", "rh_pct", "co2_ppm", "noise_db"];
const NOT_ENVIRONMENT = new Set(["batt_v"]);  // a node's battery, shown with the nodes

const session = new Session();
const notice = new Notice($("notice"));
let stream = null;
let generation = 0;  // bumped on logout: answers to requests from before are dropped
const refresher = new Refresher(refresh, REFRESH_DEBOUNCE_MS);
let firmware = null;  // the firmware panel (firmware.js), once logged in
let plotsTimer = null;
let room = null;

const lost = loginGate({
  session,
  verify: async () => {
    const gateway = await session.api("/api/v1/gateway");  // facilities and admin only: checks the role
    return { gateway, room: await session.api("/api/v1/room") };
  },
  onReady: start,
  onLogout: stop,
  forbidden: (err) => `This page needs a facilities or admin token (403): ${err.message}.`,
});

// ------------------------------------------------------------------ lifecycle
function start({ gateway, room: first }) {
  render(first, gateway);
  loadRegistry();
  loadPlots();
  firmware = firmware || new FirmwarePanel(session, lost);
  firmware.load();
  stream = openStream({ endpoint: "facilities page", session, cursor: first.cursor, onEvent,
                        onLive: scheduleRefresh, onFatal: lost });
}

function stop() {
  generation += 1;
  refresher.cancel();
  clearTimeout(plotsTimer);
  if (stream) stream.stop();
  stream = null;
  if (firmware) firmware.stop();
  showOffline();
  room = null;
  notice.hide();
  $("degraded").hidden = true;
}


function onEvent(_id, ev) {
  // Readings are not in the stream; any event is a good moment to fetch the current values.
  scheduleRefresh();
  if (ev.kind.startsWith("environment.")) {
    clearTimeout(plotsTimer);
    plotsTimer = setTimeout(loadPlots, PLOTS_DEBOUNCE_MS);
  }
}

const scheduleRefresh = () => refresher.schedule();

async function refresh() {
  if (!stream) return;  // logged out
  const gen = generation;
  try {
    const [next, gateway] = await Promise.all([session.api("/api/v1/room"), session.api("/api/v1/gateway")]);
    if (gen !== generation) return;
    const newMeasures = measures(next).some((m) => !room || !measures(room).includes(m));
    render(next, gateway);
    loadRegistry();
    if (newMeasures) loadPlots();
    if (firmware) firmware.load();  // a node's hello (a new version) comes as an event too
  } catch (err) {
    if (gen === generation && err.status === 401) lost(err);
  }
}

// ------------------------------------------------------------------ rendering
function render(next, gateway) {
  room = next;
  $("title").textContent = `${room.room.name || room.room.id} — facilities`;
  document.title = `${room.room.name || room.room.id} — facilities`;
  renderDegraded($("degraded"), room.storage);
  renderAlarms(room.calls.filter((c) => c.clears === "condition"));
  renderNodes(room.nodes);
  renderGateway(gateway, room.storage);
  renderEnvironment();
  tickAges(session);
}

function alarmDetail(c) {
  const d = c.detail || {};
  switch (c.type) {
    case "node_offline": return `node ${c.source.node}: ${d.reason || "offline"}`;
    case "node_cannot_deliver":
      return `node ${c.source.node}: ${d.sessions} connections in a row refused (${d.reason}), nothing delivered`;
    case "node_never_connected": return `node ${c.source.node}: ${d.reason}`;
    case "unmapped_input": return `node ${c.source.node}: ${d.reason} (pressed ${c.presses}×)`;
    case "low_battery":
      return `node ${c.source.node}: battery ${formatValue(d.batt_v, "batt_v")} V (below ${d.below_v} V)`;
    case "sensor_fault":
      return d.measure !== undefined
        ? `node ${c.source.node}: ${d.measure} reads ${formatValue(d.value, d.measure)}, not plausible`
        : `node ${c.source.node}: sensor ${d.sensor} reports fault ${d.code}`;
    case "environment": {
      const m = MEASURES[d.measure] || { name: d.measure, unit: "" };
      return `${m.name} ${formatValue(d.value, d.measure)} ${m.unit} — ${d.bound === "high" ? "above" : "below"} ` +
             `${d.limit} ${m.unit}`;
    }
    case "system_fault":
      if (d.error) return `${c.source.input.replace("system:", "")}: ${d.error}`;
      if (d.free_bytes !== undefined) {
        return `${mib(d.free_bytes)} free, below the ${mib(d.min_free_bytes)} kept for events: readings are not stored`;
      }
      return c.source.input ? c.source.input.replace("system:", "") : "";
    default: return c.source.node ? `node ${c.source.node}` : "";
  }
}

function renderAlarms(alarms) {
  if (!alarms.length) {
    $("alarms").replaceChildren(el("p", { class: "in-range" }, "No technical alarms"));
    return;
  }
  $("alarms").replaceChildren(...alarms.map((c) => el("div", {
    class: `alarm ${c.priority}`, dataset: { callId: c.id, type: c.type } },
    badge(c.priority),
    el("div", {},
      el("div", { class: "what" }, c.label),
      el("div", {}, alarmDetail(c)),
      el("div", { class: "meta" }, "raised ", age(c.raised_at_ms, " ago"),
         c.acknowledged_by ? ` · acknowledged by ${c.acknowledged_by}` : " · not acknowledged")))));
}

const num = (v, f = (x) => x) => (v === null || v === undefined ? "—" : f(v));

// A node's state in words (the controller's node state; the last two are technical alarms too).
const NODE_STATE = { online: "online", offline: "OFFLINE", cannot_deliver: "CANNOT DELIVER",
                     never_connected: "NEVER SEEN" };

function renderNodes(nodes) {
  const rows = nodes.map((n) => el("tr", { dataset: { node: n.id } },
    el("td", {}, n.id),
    el("td", { class: n.online ? "status-online" : "status-offline" },
       NODE_STATE[n.state] || (n.online ? "online" : "OFFLINE")),
    el("td", {}, n.last_seen_ms ? age(n.last_seen_ms, " ago") : "never"),
    el("td", { class: "num" }, num(n.batt_mv, (mv) => `${(mv / 1000).toFixed(2)} V`)),
    el("td", { class: "num" }, num(n.rssi, (r) => `${r} dBm`)),
    el("td", {}, num(n.fw)),
    el("td", {}, num(n.hw)),
    el("td", { class: "num" }, num(n.queued)),
    el("td", { class: "num" }, num(n.dropped))));
  const body = $("nodes").tBodies[0];
  body.replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { colspan: "9" }, "No node has checked in yet"))]));
}

// ------------------------------------------------------------------ adoption (the node registry)
const ROLES = ["bedside", "bathroom", "door", "wearable", "environment"];
const REGISTRY_STATE = { provisioned: "provisioned, not yet connected", waiting: "WAITING for adoption",
                         adopted: "adopted", decommissioned: "decommissioned" };

async function loadRegistry() {
  const gen = generation;
  try {
    const doc = await session.api("/api/v1/nodes");
    if (gen === generation) renderRegistry(doc.nodes);
  } catch (err) {
    if (gen !== generation) return;
    if (err instanceof ApiError && err.status === 401) lost(err);
    else if (!(err instanceof ApiError && err.status === 404)) notice.show(`Nodes: ${errorText(err)}`);
  }
}

async function act(node, action, body, done) {
  for (const key of [...drafts.keys()]) if (key.startsWith(`${node}/`)) drafts.delete(key);
  try {
    await session.api(`/api/v1/nodes/${encodeURIComponent(node)}/${action}`, { method: "POST", body });
    notice.show(done, "info");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) { lost(err); return; }
    notice.show(`${node}: ${errorText(err)}`);
  }
  loadRegistry();
}

// What facilities picked but not yet applied, per node and field: the table is redrawn on every
// room event, and a choice must survive that.
const drafts = new Map();

function select(node, name, options, value) {
  const key = `${node}/${name}`;
  const chosen = drafts.has(key) ? drafts.get(key) : value;
  return el("select", { name, "aria-label": name, onchange: (e) => drafts.set(key, e.target.value) },
    ...options.map(([v, text]) => el("option", { value: v, selected: v === chosen }, text)));
}

function adoptForm(n) {
  const beds = room ? room.room.beds : [];
  const bed = select(n.node, "bed", [["", "no bed"], ...beds.map((b) => [b, `bed ${b}`])], n.bed || beds[0] || "");
  const role = select(n.node, "role", ROLES.map((r) => [r, r]), n.role || "bedside");
  const go = el("button", { type: "button", class: "primary", onclick: () =>
    act(n.node, "assign", { bed: bed.value || null, role: role.value }, `${n.node} adopted as ${role.value}`) },
    n.state === "adopted" ? "Reassign" : "Adopt");
  return [bed, role, go];
}

function registryActions(n, waiting) {
  if (n.state === "decommissioned") return [];
  const out = [...adoptForm(n)];
  if (n.connected) {
    out.push(el("button", { type: "button", onclick: () => act(n.node, "identify", {}, `${n.node} is flashing its light`) },
                "Identify"));
  }
  if (n.state === "adopted" && n.connected) {
    out.push(el("button", { type: "button", onclick: () => act(n.node, "rotate", {}, `${n.node}: key rotation started`) },
                "Rotate key"));
  }
  if (n.state === "adopted" && waiting.length) {
    const by = select(n.node, "replacement", waiting.map((w) => [w.node, w.node]), waiting[0].node);
    out.push(by, el("button", { type: "button", onclick: () =>
      act(n.node, "replace", { new: by.value }, `${by.value} replaces ${n.node}`) }, "Replace by"));
  }
  out.push(el("button", { type: "button", class: "danger", onclick: () => {
    if (window.confirm(`Decommission ${n.node}? Its key stops working at once.`)) {
      act(n.node, "decommission", {}, `${n.node} decommissioned`);
    }
  } }, "Decommission"));
  return out;
}

function renderRegistry(nodes) {
  const waiting = nodes.filter((n) => n.state === "waiting" || n.state === "provisioned");
  const rows = nodes.map((n) => el("tr", { dataset: { registryNode: n.node, state: n.state } },
    el("td", {}, n.node),
    el("td", { class: n.state === "waiting" ? "status-offline" : "" },
       REGISTRY_STATE[n.state] || n.state, n.connected ? " · connected" : "",
       n.wrong_key ? ` · ${n.wrong_key} refused with a wrong key` : ""),
    el("td", {}, n.hw || "—"),
    el("td", {}, n.fw || "—"),
    el("td", {}, n.bed || "—"),
    el("td", {}, n.role || "—"),
    el("td", {}, Object.entries(n.inputs).map(([k, v]) => `${k} → ${words(v)}`).join(", ") ||
       (n.input_names.length ? `has ${n.input_names.join(", ")}` : "—")),
    el("td", { class: "actions" }, ...registryActions(n, waiting.filter((w) => w.node !== n.node)))));
  $("registry").tBodies[0].replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { colspan: "8" }, "No node provisioned yet: smartroom nodes provision --serial PORT …"))]));
}

const mib = (bytes) => bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(1)} GiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
const words = (key) => key.replace(/_/g, " ");

function deviceRows(devices) {
  if (!devices) return [["Pi-attached devices", "none"]];
  const rows = [["wired (GPIO) nodes", devices.gpio.nodes.join(", ") || "none"]];
  for (const [node, error] of Object.entries(devices.gpio.errors)) rows.push([`GPIO node ${node}`, `FAILED — ${error}`]);
  const ble = devices.ble;
  if (!ble) {
    rows.push(["Bluetooth", "not used in this room"]);
  } else {
    const state = BLE_STATE[ble.state] || ble.state;
    rows.push(["Bluetooth", ble.error ? `${state}: ${ble.error}` : state]);
    rows.push(["Bluetooth advertisements", String(ble.adverts)]);
    if (ble.failures) rows.push(["Bluetooth failed starts in a row", String(ble.failures)]);
  }
  return rows;
}

function storageRows(storage) {
  if (!storage) return [];
  const rows = [["room database", STORAGE_STATE[storage.state] || storage.state]];
  if (storage.error && storage.state === "failed") rows.push(["database error", storage.error]);
  if (storage.free_bytes !== null) {
    rows.push(["free space", `${mib(storage.free_bytes)} (readings stop below ${mib(storage.min_free_bytes)})`]);
  }
  return rows;
}

function renderGateway(gateway, storage) {
  const rows = [];
  for (const [key, value] of Object.entries(gateway)) {
    if (key === "devices") {
      rows.push(...deviceRows(value));
    } else if (value && typeof value === "object" && !Array.isArray(value)) {
      const entries = Object.entries(value);
      if (!entries.length) rows.push([words(key), "0"]);
      for (const [sub, v] of entries) rows.push([`${words(key)}: ${words(sub)}`, String(v)]);
    } else rows.push([words(key), Array.isArray(value) ? value.join(", ") || "none" : String(value)]);
  }
  rows.push(...storageRows(storage));
  $("gateway").replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", { class: "num" }, v))));
}

function measures(r) {
  const found = Object.keys(r.environment).filter((m) => !NOT_ENVIRONMENT.has(m));
  const wanted = r.room.profile === "airborne_isolation" ? [...PROFILE_MEASURES, "pressure_pa"] : PROFILE_MEASURES;
  return [...new Set([...wanted, ...found])];
}

function limitText(low, high, unit) {
  if (low !== null && low !== undefined && high !== null && high !== undefined) return `limits ${low}–${high} ${unit}`;
  if (high !== null && high !== undefined) return `limit ≤ ${high} ${unit}`;
  if (low !== null && low !== undefined) return `limit ≥ ${low} ${unit}`;
  return "no limit in this room's profile";
}

function renderEnvironment() {
  const box = $("environment");
  for (const measure of measures(room)) {
    const meta = MEASURES[measure] || { name: measure, unit: "" };
    let card = box.querySelector(`[data-measure="${measure}"]`);
    if (!card) {  // the chart is kept across refreshes; only the current values are redrawn
      card = el("div", { class: "measure", dataset: { measure } },
        el("h3", {}, meta.name), el("div", { class: "current" }),
        el("div", { class: "plot-box" }, el("p", { class: "no-history" }, "loading history…")));
      box.append(card);
    }
    const env = room.environment[measure];
    const current = card.querySelector(".current");
    if (!env) {
      current.replaceChildren(el("div", { class: "now" }, "—"), el("div", { class: "meta" }, "no reading yet"));
      continue;
    }
    const hasRule = "in_range" in env;
    const status = !hasRule ? null : env.in_range
      ? el("span", { class: "in-range" }, "in range")
      : el("span", { class: "out-of-range" }, env.alarm ? "out of range — alarm" : "out of range");
    current.replaceChildren(
      el("div", { class: "now" }, `${formatValue(env.value, measure)} ${meta.unit} `, status),
      el("div", { class: "meta" }, `${limitText(env.low, env.high, meta.unit)} · from ${env.node}, `,
         age(env.ts_ms, " ago")));
  }
}

// ------------------------------------------------------------------ charts
async function loadPlots() {
  if (!room) return;
  const to = session.now();
  await Promise.all(measures(room).map((m) => loadPlot(m, to - HISTORY_SPAN_MS, to)));
}

async function loadPlot(measure, from, to) {
  const box = document.querySelector(`[data-measure="${measure}"] .plot-box`);
  if (!box) return;
  const meta = MEASURES[measure] || { name: measure, unit: "" };
  const q = new URLSearchParams({ measure, from: String(Math.round(from)), to: String(Math.round(to)),
                                  step: HISTORY_STEP });
  const gen = generation;
  try {
    const series = await session.api(`/api/v1/readings?${q}`);
    if (gen !== generation) return;
    if (!series.buckets.length) {
      box.replaceChildren(el("p", { class: "no-history" }, "no readings in the last 24 h"));
      return;
    }
    const env = room && room.environment[measure];
    const limits = series.limits || {};
    box.replaceChildren(plot(series, { unit: meta.unit, title: meta.name,
                                       low: limits.low ?? env?.low ?? null, high: limits.high ?? env?.high ?? null }));
  } catch (err) {
    if (gen !== generation) return;
    if (err instanceof ApiError && err.status === 404) {
      box.replaceChildren(el("p", { class: "no-history" }, "no history yet"));
    } else if (err instanceof ApiError && err.status === 401) {
      lost(err);
    } else {
      box.replaceChildren(el("p", { class: "no-history" }, errorText(err)));
    }
  }
}

$("reload-plots").addEventListener("click", loadPlots);
setInterval(() => tickAges(session), 1000);
