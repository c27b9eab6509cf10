// The staff view (/staff), phone-sized: the calls that reach the signed-in nurse (her rooms and
// beds; and, as the call escalates, the charge nurse's and everyone's), each with Accept / Decline.
// Accept acknowledges the call in its room in her name; Decline moves it on to the next level.

import { Session } from "/static/session.js";
import { $, el, errorText, loginGate, Notice, showOffline, tickAges } from "/static/ui.js";
import { alarmList, callCard, Cues, follow } from "./wardui.js";

const session = new Session();
const notice = new Notice($("notice"));
const cues = new Cues();
let link = null;
let me = null;
let generation = 0;

const lost = loginGate({
  session,
  verify: () => session.api("/api/v1/me"),
  onReady: start, onLogout: stop,
  forbidden: (err) => `This token is not a nurse's (403): ${err.message}.`,
});

function start(first) {
  render(first);
  link = follow({ session, endpoint: `staff view (${first.person})`, cursor: first.cursor, load: refresh, lost,
                  onRecord: (r) => onRecord(r) });
}

function stop() {
  generation += 1;
  if (link) link.stop();
  link = null;
  showOffline();
  notice.hide();
}

function onRecord(record) {
  // Sound only for calls that reach me: a routing change toward me, or a call of my rooms.
  const mine = me && me.calls.some((c) => c.id === record.data.call_id);
  const rooms = me ? me.rooms.map((r) => r.room) : [];
  if (mine || rooms.includes(record.data.room)) cues.offer(record, () => null);
  if (record.kind === "ward.routing" && me && me.charge) cues.offer({ kind: "call.escalated", data: record.data },
    () => "high");
}

async function refresh() {
  if (!link) return;
  const gen = generation;
  try {
    const next = await session.api("/api/v1/me");
    if (gen === generation) render(next);
  } catch (err) {
    if (gen === generation && err.status === 401) lost(err);
  }
}

async function act(call, what) {
  const path = `/api/v1/rooms/${encodeURIComponent(call.room)}/calls/${encodeURIComponent(call.id)}/${what}`;
  try {
    await session.api(path, { method: "POST", body: {} });
    notice.hide();
  } catch (err) { notice.show(`${what === "accept" ? "Accept" : "Decline"}: ${errorText(err)}`); }
  refresh();
}

function render(next) {
  me = next;
  $("who").textContent = `${next.person}${next.charge ? " · charge nurse" : ""}`;
  $("alarms").hidden = !next.charge;
  $("alarms").replaceChildren(...alarmList(next.alarms));
  const cards = next.calls.map((call) => {
    const actions = [];
    if (!call.acknowledged_at_ms) {
      actions.push(el("button", { type: "button", class: "primary", onclick: () => act(call, "accept") }, "Accept"));
      if (!call.declined.includes(next.person)) actions.push(el("button", { type: "button", onclick: () => act(call, "decline") }, "Decline"));
    }
    return callCard(call, actions);
  });
  $("calls").replaceChildren(...(cards.length ? cards : [el("p", { class: "empty" }, "No calls for you")]));
  $("mine").textContent = next.rooms.length
    ? "Your rooms: " + next.rooms.map((r) => (r.bed ? `${r.room} bed ${r.bed}` : r.room)).join(", ")
    : (next.on_shift ? "No rooms assigned to you." : "You are not on the current shift.");
  tickAges(session);
}

setInterval(() => tickAges(session), 1000);
