// The nurse page (/): active calls highest priority first, with Acknowledge / Clear, the tone's
// silence, fall-risk per bed, occupancy, the corridor dome light and the room's recent history.
// State comes from GET /api/v1/room; the event stream says when it changed (docs/pages.md).
// After each render the page confirms which calls it has put on screen (POST /api/v1/calls/shown):
// that receipt, not the stream's delivery, is what counts as the call being shown to a nurse.

import { Session } from "./session.js";
import { Sounder } from "./sound.js";
import { $, el, badge, age, tickAges, clockTime, errorText, loginGate, Notice, PRIORITY, openStream, showOffline, Refresher,
         renderDegraded } from "./ui.js";

const HISTORY_LENGTH = 50;       // events shown in "recent history"
const HISTORY_SCAN = 500;        // log entries read at login to find them (most are raw node events)
const REFRESH_DEBOUNCE_MS = 80;  // a burst of events (a press is 2–4 entries) is one GET /api/v1/room
const CUE_GATHER_MS = 150;       // events arriving together (a replay after a reconnect) sound once
const SOUNDING = new Set(["call.raised", "call.reminded", "call.escalated"]);
const TIER_ORDER = ["high", "medium", "low", "info"];
const RECEIPT_MAX = 100;         // call ids in one receipt (the API's limit)

const STATE_TEXT = {
  raised: "Raised — not yet on a screen",
  annunciated: "Waiting for a nurse",
  acknowledged: "Acknowledged",
  present: "Staff present",
};
const OCCUPANCY_TEXT = { in_bed: "Patient in bed", in_bathroom: "Patient in the bathroom",
                         in_room: "Patient in the room", empty: "Room empty" };
const PATTERN_TEXT = { fast: "fast flash", slow: "slow flash", steady: "steady", off: "" };

const session = new Session();
const sounder = new Sounder();
const notice = new Notice($("notice"));
const calls = new Map();     // call id -> {label, priority, bed}: names calls in the history, also cleared ones
let history = [];            // newest first: {id, ts_ms, kind, data}
let stream = null;
let generation = 0;          // bumped on logout: answers to requests from before are dropped
const refresher = new Refresher(refresh, REFRESH_DEBOUNCE_MS);
let cueTimer = null;
let pendingCues = [];
const confirmed = new Set(); // calls this page has told the controller it displays
let receipting = false;      // one receipt request at a time; a render meanwhile is picked up after it
let confirmAgain = false;
let notAScreen = false;      // the token may not confirm (403: not a nurse's): this page is not a nurse screen
let loggedIn = false;
const screenName = () => `nurse page (${session.name})`;

const lost = loginGate({
  session,
  askName: true,
  verify: () => session.api("/api/v1/room"),
  onReady: start,
  onLogout: stop,
  forbidden: (err) => `This token may not open the nurse page (403): ${err.message}.`,
});

// ------------------------------------------------------------------ lifecycle
async function start(room) {
  loggedIn = true;
  $("who").textContent = `Logged in as ${session.name}`;
  render(room);
  await loadHistory(room.cursor);
  stream = openStream({ endpoint: screenName(), session, cursor: room.cursor, onEvent,
                        onLive: scheduleRefresh, onFatal: lost });
}

function stop() {
  loggedIn = false;
  generation += 1;
  refresher.cancel();
  if (stream) stream.stop();
  stream = null;
  showOffline();
  history = [];
  calls.clear();
  $("degraded").hidden = true;
  confirmed.clear();
  notAScreen = false;
  $("history").replaceChildren();
  notice.hide();
}


// ------------------------------------------------------------------ room state
const scheduleRefresh = () => refresher.schedule();

async function refresh() {
  if (!stream) return;  // logged out
  const gen = generation;
  try {
    const room = await session.api("/api/v1/room");
    if (gen === generation) render(room);
  } catch (err) {
    if (gen === generation && err.status === 401) lost(err);
    // otherwise the stream is down too; its reconnect brings a refresh
  }
}

function render(room) {
  $("title").textContent = room.room.name || room.room.id;
  document.title = `${room.room.name || room.room.id} — nurse station`;
  for (const c of room.calls) calls.set(c.id, { label: c.label, priority: c.priority, bed: c.bed });
  renderDegraded($("degraded"), room.storage);
  renderCalls(room.calls);
  renderOutputs(room.outputs);
  renderOccupancy(room.occupancy);
  renderBeds(room.room.beds, room.fall_risk, room.occupancy.beds, room.patients || {});
  renderHistory();
  tickAges(session);
  requestAnimationFrame(() => setTimeout(confirmShown, 0));  // after the frame that paints the calls
}

// ------------------------------------------------------------------ receipts: what this screen shows
// Calls on screen that no nurse screen has confirmed yet (data-shown="no"), once per call, and only
// while the page is visible: a hidden tab shows nobody anything. Failures retry at the next render.
async function confirmShown() {
  if (receipting) { confirmAgain = true; return; }
  if (!loggedIn || notAScreen || document.visibilityState !== "visible") return;
  const ids = [...document.querySelectorAll('#calls article.call[data-shown="no"]')]
    .map((row) => row.dataset.callId).filter((id) => !confirmed.has(id)).slice(0, RECEIPT_MAX);
  if (!ids.length) return;
  const gen = generation;
  receipting = true;
  try {
    await session.api("/api/v1/calls/shown", { method: "POST", body: { calls: ids, by: screenName() } });
    if (gen === generation) ids.forEach((id) => confirmed.add(id));
  } catch (err) {
    if (gen !== generation) return;
    if (err.status === 401) lost(err);
    else if (err.status === 403) notAScreen = true;  // e.g. a facilities token: it may look, it is no nurse screen
  } finally {
    receipting = false;
  }
  if (confirmAgain) { confirmAgain = false; confirmShown(); }
}
document.addEventListener("visibilitychange", confirmShown);

function renderCalls(list) {
  const box = $("calls");
  if (!list.length) {
    box.replaceChildren(el("div", { class: "empty" }, "✓ No active calls"));
    return;
  }
  box.replaceChildren(...list.map(callRow));
}

function callRow(c) {
  const need = c.detail && c.detail.need ? ` (${c.detail.need})` : "";
  const where = c.detail && c.detail.where ? ` in the ${c.detail.where}` : "";
  const who = c.state === "acknowledged" ? ` by ${c.acknowledged_by}`
    : c.state === "present" && c.present_by ? ` (${c.present_by})` : "";
  const extra = [
    c.presses > 1 ? `pressed ${c.presses}×` : null,
    c.reminders ? `reminder ${c.reminders}` : null,
    c.source.node ? `from ${c.source.node}/${c.source.input}` : null,
    c.type === "system_fault" && c.detail.error ? `${c.source.input.replace("system:", "")}: ${c.detail.error}` : null,
    c.clears === "in_room" ? "cancel in the room only" : c.clears === "condition" ? "clears when fixed" : null,
  ].filter(Boolean).join(" · ");
  const escalation = c.escalation_level > 1
    ? el("div", { class: "escalated" }, `⚠ Escalated to ${c.escalated_to || "the next level"} (level ${c.escalation_level})`)
    : el("div", { class: "meta" }, `Escalation level 1: ${c.escalated_to || "primary nurse"}`);
  const actions = el("div", { class: "actions" });
  if (c.acknowledged_at_ms === null) {
    actions.append(el("button", { type: "button", class: "primary ack", onclick: (e) => act(e, c, "ack") },
                      "Acknowledge"));
  }
  if (c.clears === "routine") {
    actions.append(el("button", { type: "button", class: "clear", onclick: (e) => act(e, c, "clear") }, "Clear"));
  }
  return el("article", { class: `call ${c.priority} ${c.state}`,
                         dataset: { callId: c.id, priority: c.priority, state: c.state,
                                    shown: c.annunciated_at_ms === null ? "no" : "yes" } },
    badge(c.priority),
    el("div", {},
      el("div", { class: "what" }, `${c.label}${need}${where}`, c.bed ? ` · Bed ${c.bed}` : ""),
      c.patient ? el("div", { class: "patient" }, `Patient: ${patientName(c.patient)}`) : null,
      el("div", { class: "state" }, `${STATE_TEXT[c.state] || c.state}${who} · `, age(c.raised_at_ms, " since raised")),
      escalation,
      extra ? el("div", { class: "meta" }, extra) : null),
    actions);
}

function renderOutputs(outputs) {
  const { dome, tone } = outputs;
  const lamp = $("dome");
  lamp.dataset.colour = dome.colour;
  lamp.dataset.pattern = dome.pattern;
  $("dome-presence").classList.toggle("on", dome.presence);
  $("dome-presence").classList.toggle("ending", Boolean(dome.presence_ending));
  const light = dome.colour === "off" ? "off" : `${dome.colour}, ${PATTERN_TEXT[dome.pattern] || dome.pattern}`;
  const green = dome.presence_ending ? " + green, blinking (staff presence ends soon)"
    : dome.presence ? " + green (staff present)" : "";
  $("dome-text").textContent = `Dome: ${light}${green}`;
  const p = PRIORITY[tone.pattern];
  const reminder = dome.presence_ending && tone.pattern === "low";
  $("tone-text").textContent = reminder ? `In-room tone: ${p.shape} presence reminder`
    : tone.silenced ? "In-room tone: silenced"
    : p ? `In-room tone: ${p.shape} ${tone.pattern}` : "In-room tone: off";
}

function renderOccupancy(occ) {
  $("occupancy").replaceChildren(
    el("li", { class: "lamp-text" }, OCCUPANCY_TEXT[occ.state] || occ.state),
    el("li", { id: "staff" }, occ.staff_present
      ? `Staff present in the room (ends by itself at ${clockTime(occ.presence_ends_at_ms)}; `
        + "pressing presence during its reminder renews it)"
      : "No staff in the room"),
    el("li", {}, `Room presence: ${occ.room ? "yes" : "no"} · bathroom: ${occ.bath ? "occupied" : "free"}`));
}

// A patient is named only when the hospital's admission system (HL7 ADT) said who lies in the bed.
const patientName = (p) => `${p.name || p.id}${p.name ? ` (${p.id})` : ""}`;

function renderBeds(beds, fallRisk, inBed, patients) {
  $("beds").replaceChildren(...beds.map((bed) => {
    const on = Boolean(fallRisk[bed]);
    const patient = patients[bed] ? ` · ${patientName(patients[bed])}` : "";
    return el("li", { dataset: { bed } },
      el("span", {}, `Bed ${bed}: ${inBed[bed] ? "occupied" : "empty"}${patient}`),
      el("button", { type: "button", class: "fall-risk", "aria-pressed": String(on),
                     onclick: (e) => setFallRisk(e, bed, !on) }, `Fall risk: ${on ? "ON" : "off"}`));
  }));
}

// ------------------------------------------------------------------ nurse actions
async function send(button, path, method, body) {
  const gen = generation;
  button.disabled = true;
  try {
    await session.api(path, { method, body: { by: session.name, ...body } });
    if (gen !== generation) return;
    notice.hide();
  } catch (err) {
    if (gen !== generation) return;
    if (err.status === 401) { lost(err); return; }
    notice.show(errorText(err));
    button.disabled = false;
  }
  scheduleRefresh();
}

const act = (event, call, what) =>
  send(event.currentTarget, `/api/v1/calls/${encodeURIComponent(call.id)}/${what}`, "POST");
const setFallRisk = (event, bed, enabled) =>
  send(event.currentTarget, `/api/v1/beds/${encodeURIComponent(bed)}/fall-risk`, "PUT", { enabled });
$("silence").addEventListener("click", (e) => send(e.currentTarget, "/api/v1/room/silence", "POST"));

// ------------------------------------------------------------------ the stream and the history
function onEvent(id, ev) {
  if (ev.kind === "call.raised") {
    calls.set(ev.data.call_id, { label: humanize(ev.data.type), priority: ev.data.level, bed: ev.data.bed });
  }
  if (ev.kind !== "node.event") {
    addHistory([{ id, ...ev }]);
    renderHistory();
  }
  if (SOUNDING.has(ev.kind)) {
    const priority = ev.data.level && ev.kind === "call.raised" ? ev.data.level : calls.get(ev.data.call_id)?.priority;
    if (priority) queueCue(priority);
  }
  scheduleRefresh();
}

async function loadHistory(cursor) {
  const gen = generation;
  try {
    const after = Math.max(0, cursor - HISTORY_SCAN);
    const page = await session.api(`/api/v1/events?after=${after}&limit=${HISTORY_SCAN}`);
    if (gen !== generation) return;
    for (const ev of page.events) {
      if (ev.kind === "call.raised" && !calls.has(ev.data.call_id)) {
        calls.set(ev.data.call_id, { label: humanize(ev.data.type), priority: ev.data.level, bed: ev.data.bed });
      }
    }
    addHistory(page.events.filter((ev) => ev.kind !== "node.event" && ev.id <= cursor).reverse());
    renderHistory();
  } catch (err) {
    if (gen === generation && err.status === 401) lost(err);
  }
}

function addHistory(events) {
  const seen = new Set(history.map((h) => h.id));
  history = [...events.filter((e) => !seen.has(e.id)), ...history]
    .sort((a, b) => b.id - a.id).slice(0, HISTORY_LENGTH);
}

function renderHistory() {
  $("history").replaceChildren(...history.map((ev) => {
    const c = ev.data.call_id ? calls.get(ev.data.call_id) : null;
    return el("li", { dataset: { eventId: String(ev.id), kind: ev.kind, callId: ev.data.call_id } },
      el("time", { datetime: new Date(ev.ts_ms).toISOString() }, clockTime(ev.ts_ms)),
      c ? `${PRIORITY[c.priority]?.shape || ""} ` : "",
      describe(ev, c));
  }));
}

function humanize(type) {
  const words = String(type).replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function describe(ev, call) {
  const d = ev.data;
  const name = call ? `${call.label}${call.bed ? ` (bed ${call.bed})` : ""}` : "a call";
  switch (ev.kind) {
    case "call.raised": return `${name} raised by ${d.by}`;
    case "call.repeated": return `${name} pressed again (${d.presses}×)`;
    case "call.annunciated": return `${name} shown on ${d.by}`;
    case "call.acknowledged": return `${name} acknowledged by ${d.by}`;
    case "call.present": return `Staff present for ${name}`;
    case "call.cleared": return `${name} cleared by ${d.by}`;
    case "call.escalated": return `${name} escalated to ${d.to}`;
    case "call.reminded": return `${name}: reminder ${d.n}, not cleared — re-signalled`;
    case "call.clear_refused": return `Clear refused for ${name}: ${d.reason}`;
    case "call.noted": return `${name}: ${d.note}`;
    case "call.delivery": return `${name}: ${d.status} (${d.by})`;
    case "bed.patient": return d.patient ? `Bed ${d.bed}: ${patientName(d.patient)} (${d.reason.replace(/_/g, " ")})`
      : `Bed ${d.bed}: patient left (${d.reason.replace(/_/g, " ")})`;
    case "staff.presence":
      if (d.timed_out) return `Staff presence ended by itself: ${d.by} — calls held for it run again`;
      if (d.renewed) return `Staff presence renewed (${d.by})`;
      return d.present ? `Staff arrived (${d.by})` : `Staff left (${d.by})`;
    case "staff.presence_reminder":
      return `Staff presence ends at ${clockTime(d.ends_at_ms)}: press presence in the room to stay`;
    case "presence.changed":
      if (d.area === "bed") return `Bed ${d.bed}: patient ${d.present ? "in bed" : "got up"}`;
      return `${d.area === "bath" ? "Bathroom" : "Room"} presence ${d.present ? "detected" : "ended"}`;
    case "bed.fall_risk": return `Bed ${d.bed}: fall risk ${d.enabled ? "on" : "off"} (${d.by})`;
    case "tone.silenced": return `Tone silenced by ${d.by} until ${clockTime(d.until_ms)}`;
    case "node.online": return `Node ${d.node} online`;
    case "node.offline": return `Node ${d.node} offline (${d.reason})`;
    case "environment.excursion": return `${d.measure} ${d.value} out of range (${d.bound} limit ${d.limit})`;
    case "environment.recovered": return `${d.measure} back in range (${d.value})`;
    default: return ev.kind;
  }
}

// ------------------------------------------------------------------ sound
function queueCue(priority) {
  pendingCues.push(priority);
  if (cueTimer) return;
  cueTimer = setTimeout(() => {
    const top = TIER_ORDER.find((t) => pendingCues.includes(t));
    pendingCues = [];
    cueTimer = null;
    if (top && top !== "info") sounder.play(top);
  }, CUE_GATHER_MS);
}

sounder.onplay = (priority) => {
  const p = PRIORITY[priority];
  $("sound-last").textContent = `♪ ${p.shape} ${p.word} cue at ${clockTime(Date.now())}`;
};

$("sound").addEventListener("click", async (e) => {
  const button = e.currentTarget;
  if (sounder.enabled) await sounder.disable();
  else await sounder.enable();
  button.setAttribute("aria-pressed", String(sounder.enabled));
  button.textContent = sounder.enabled ? "♪ Sound on" : "Enable sound";
  if (!sounder.enabled) $("sound-last").textContent = "";
});

setInterval(() => tickAges(session), 1000);  // "time since raised" counts up locally, no requests
