// The ward station (/): every active call of the unit in priority order, technical alarms (rooms
// offline, events missing), the room grid with each corridor dome light, the shift's assignments
// and the unit's response times. State from GET /api/v1/ward; the ward stream says when it changed.

import { Session, ApiError } from "/static/session.js";
import { $, el, errorText, loginGate, Notice, showOffline, tickAges } from "/static/ui.js";
import { alarmList, callCard, Cues, follow } from "./wardui.js";

const session = new Session();
const notice = new Notice($("notice"));
const cues = new Cues();
let link = null;
let view = null;
let generation = 0;

const lost = loginGate({
  session, askName: true,
  verify: () => session.api("/api/v1/ward"),
  onReady: start, onLogout: stop,
  forbidden: (err) => `This token may not open the ward station (403): ${err.message}.`,
});

function start(first) {
  $("who").textContent = `Logged in as ${session.name}`;
  render(first);
  link = follow({ session, endpoint: "ward station", cursor: first.cursor, load: refresh, lost,
                  onRecord: (r) => cues.offer(r, (d) => priorityOf(d)) });
}

function stop() {
  generation += 1;
  if (link) link.stop();
  link = null;
  showOffline();
  notice.hide();
}

function priorityOf(data) {
  const call = view && view.calls.find((c) => c.id === data.call_id);
  return call ? call.priority : null;
}

async function refresh() {
  if (!link) return;
  const gen = generation;
  try {
    const next = await session.api("/api/v1/ward");
    if (gen === generation) render(next);
  } catch (err) {
    if (gen === generation && err.status === 401) lost(err);
  }
}

async function act(path, body, what, method = "POST") {
  try {
    await session.api(path, { method, body: { by: session.name, ...body } });
    notice.hide();
  } catch (err) {
    if (err instanceof ApiError && err.status === 409) notice.show(`${what}: refused by the room (409): ${err.message}`);
    else notice.show(`${what}: ${errorText(err)}`);
  }
  refresh();
}

function render(next) {
  view = next;
  $("title").textContent = next.ward.name;
  $("broker").textContent = next.broker === "connected" ? "" : "⚠ no connection to the broker";
  $("alarms").replaceChildren(...alarmList(next.alarms));
  const calls = next.calls.map((call) => {
    const base = `/api/v1/rooms/${encodeURIComponent(call.room)}/calls/${encodeURIComponent(call.id)}`;
    const actions = [];
    if (!call.acknowledged_at_ms) actions.push(el("button", { type: "button", class: "primary",
      onclick: () => act(`${base}/ack`, {}, `Acknowledge ${call.label}`) }, "Acknowledge"));
    // Emergencies are cancelled in the room: the room refuses a remote clear and says why.
    if (call.clears !== "condition") actions.push(el("button", { type: "button",
      onclick: () => act(`${base}/clear`, {}, `Clear ${call.label} in room ${call.room}`) }, "Clear"));
    return callCard(call, actions);
  });
  $("calls").replaceChildren(...(calls.length ? calls : [el("p", { class: "empty" }, "No active calls")]));
  $("grid").replaceChildren(...next.rooms.map(tile));
  renderShift(next.shift);
  tickAges(session);
}

function tile(room) {
  const dome = room.dome || { colour: "off", pattern: "off" };
  const status = { online: "online", offline: `OFFLINE (${room.reason})`, never_seen: "never connected" }[room.status];
  return el("div", { class: "tile", dataset: { room: room.room, status: room.status } },
    el("h3", {}, room.name),
    el("div", { class: "dome", role: "img", "aria-label": `dome light ${dome.colour}`,
                dataset: { colour: dome.colour, pattern: dome.pattern } }),
    el("div", { class: "status" }, status),
    el("div", { class: "meta" }, `${room.calls} active call${room.calls === 1 ? "" : "s"}`),
    room.status === "online" ? el("button", { type: "button",
      onclick: () => act(`/api/v1/rooms/${encodeURIComponent(room.room)}/silence`, {}, `Silence room ${room.room}`) },
      "Silence tone") : null);
}

function renderShift(shift) {
  if (!shift) { $("shift").replaceChildren(el("p", {}, "No shift set: calls go to the charge nurse's level at once.")); return; }
  const rows = Object.entries(shift.rooms).flatMap(([room, beds]) =>
    Object.entries(beds).map(([bed, nurse]) => el("li", {}, `${room} · ${bed === "*" ? "all beds" : `bed ${bed}`}: ${nurse}`)));
  $("shift").replaceChildren(el("p", {}, `${shift.name}: charge nurse ${shift.charge}; staff ${shift.staff.join(", ")}`),
                             el("ul", { id: "assignments" }, ...rows));
}

$("assign-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const rooms = {};
  for (const line of $("assign-rooms").value.split("\n").map((l) => l.trim()).filter(Boolean)) {
    const [room, bed, ...name] = line.split(/\s+/);
    (rooms[room] = rooms[room] || {})[bed] = name.join(" ");
  }
  const staff = $("assign-staff").value.split(",").map((s) => s.trim()).filter(Boolean);
  try {
    await session.api("/api/v1/assignments", { method: "PUT", body: {
      shift: $("assign-shift").value.trim(), charge: $("assign-charge").value.trim(), staff, rooms } });
    notice.show("Assignments saved.", "ok");
  } catch (err) { notice.show(`Assignments: ${errorText(err)}`); }
  refresh();
});

$("report-load").addEventListener("click", async () => {
  try {
    const r = await session.api("/api/v1/reports/response-times");
    const table = (title, groups) => el("table", { class: "report", dataset: { group: title } },
      el("tr", {}, el("th", {}, title), el("th", {}, "calls"), el("th", {}, "ack median s"), el("th", {}, "ack p90 s")),
      ...Object.entries(groups).map(([k, g]) => el("tr", {}, el("td", {}, k), el("td", {}, String(g.calls)),
        el("td", {}, fmt(g.to_ack_s.median)), el("td", {}, fmt(g.to_ack_s.p90)))));
    $("report").replaceChildren(table("room", r.rooms), table("priority", r.priorities), table("nurse", r.nurses));
  } catch (err) { notice.show(`Report: ${errorText(err)}`); }
});

const fmt = (v) => (v === null || v === undefined ? "–" : v.toFixed(1));
setInterval(() => tickAges(session), 1000);
