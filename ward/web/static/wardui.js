// What the ward station and the staff view share: a call's card, sound per priority, the stream.

import { Sounder } from "/static/sound.js";
import { $, el, badge, age, clockTime, PRIORITY, openStream, Refresher } from "/static/ui.js";

const TIER_ORDER = ["high", "medium", "low", "info"];
const CUE_GATHER_MS = 150;       // events arriving together (a replay after a reconnect) sound once
const REFRESH_DEBOUNCE_MS = 80;  // a burst of events is one fetch of the view
const SOUNDING = new Set(["call.raised", "call.reminded", "call.escalated"]);
const STATE_TEXT = { raised: "Waiting for a nurse", annunciated: "Waiting for a nurse",
                     acknowledged: "Acknowledged", present: "Staff present" };

/** One active call: priority badge, room and bed, what, state, who it reaches, actions. */
export function callCard(call, actions) {
  const bed = call.bed ? ` · Bed ${call.bed}` : "";
  const state = call.acknowledged_by ? `Acknowledged by ${call.acknowledged_by}` : STATE_TEXT[call.state] || call.state;
  const reach = `→ ${call.reach.to}` + (call.reach.people.length ? `: ${call.reach.people.join(", ")}` : ": nobody assigned");
  return el("article", { class: `call ${call.priority} ${call.state}`, dataset: { room: call.room, call: call.id } },
    badge(call.priority),
    el("div", {},
      el("div", { class: "room" }, `Room ${call.room_name}`),
      el("div", { class: "what" }, `${call.label}${bed}`),
      el("div", { class: "state" }, state, " · ", age(call.raised_at_ms, " since raised")),
      el("div", { class: "reach" }, reach),
      call.clears === "in_room" ? el("div", { class: "meta" }, "cancel in the room only") : null,
      call.declined.length ? el("div", { class: "declined meta" }, `Declined by ${call.declined.join(", ")}`) : null),
    el("div", { class: "actions" }, ...actions));
}

export function alarmList(alarms) {
  return alarms.map((a) => el("li", { dataset: { room: a.room, type: a.type } }, a.text,
                              a.since_ms ? el("span", { class: "meta" }, " · ", age(a.since_ms)) : null));
}

/** Sound per priority for the calls this page cares about; ``wanted(event)`` filters. */
export class Cues {
  constructor() {
    this.sounder = new Sounder();
    this.pending = [];
    this.timer = null;
    this.sounder.onplay = (priority) => {
      const p = PRIORITY[priority];
      $("sound-last").textContent = `♪ ${p.shape} ${p.word} cue at ${clockTime(Date.now())}`;
    };
    $("sound").addEventListener("click", async (e) => {
      const button = e.currentTarget;
      if (this.sounder.enabled) await this.sounder.disable();
      else await this.sounder.enable();
      button.setAttribute("aria-pressed", String(this.sounder.enabled));
      button.textContent = this.sounder.enabled ? "♪ Sound on" : "Enable sound";
    });
  }

  /** A ward log record: a room's call event carries its priority as ``level``. */
  offer(record, priorityOf) {
    if (!SOUNDING.has(record.kind)) return;
    const priority = record.data.level || priorityOf(record.data);
    if (!priority) return;
    this.pending.push(priority);
    if (this.timer) return;
    this.timer = setTimeout(() => {
      const top = TIER_ORDER.find((t) => this.pending.includes(t));
      this.pending = [];
      this.timer = null;
      if (top && top !== "info") this.sounder.play(top);
    }, CUE_GATHER_MS);
  }
}

/** The live link: on every ward log record, ``onRecord`` and a debounced ``load``. */
export function follow({ session, endpoint, cursor, load, onRecord, lost }) {
  const refresher = new Refresher(load, REFRESH_DEBOUNCE_MS);
  const stream = openStream({
    endpoint, session, cursor,
    onEvent: (id, record) => { onRecord(record); refresher.schedule(); },
    onLive: () => refresher.schedule(), onFatal: lost,
  });
  return { stop() { refresher.cancel(); stream.stop(); } };
}
