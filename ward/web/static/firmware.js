// The ward's firmware page (/firmware, facilities): every room's nodes with board, running version
// and update state, the bundles the rooms hold, and ward rollouts with each room's and node's
// progress. GET /api/v1/firmware (polled: each poll is a few KB, no patient data), POST
// /api/v1/firmware/rollouts and .../{id}/stop; docs/ward.md, docs/firmware.md "Ward rollouts".

import { Session } from "/static/session.js";
import { $, el, age, errorText, loginGate, Notice, tickAges } from "/static/ui.js";

const POLL_ACTIVE_MS = 1000;  // while a ward rollout runs or is held: progress per node, live
const POLL_IDLE_MS = 5000;    // otherwise: versions change when someone flashes a node
const UPDATE_STATE = { waiting: "waiting", offered: "offered", accepted: "downloading", staged: "restarting",
                       confirmed: "confirmed", refused: "REFUSED", failed: "FAILED", rolled_back: "ROLLED BACK",
                       timeout: "NOT CONFIRMED", unreachable: "NOT CONNECTED" };
const BAD = new Set(["refused", "failed", "rolled_back", "timeout", "unreachable"]);

const session = new Session();
const notice = new Notice($("notice"));
let timer = null;
let doc = null;

const lost = loginGate({
  session, askName: true,
  verify: () => session.api("/api/v1/firmware"),
  onReady: (first) => { $("who").textContent = `Logged in as ${session.name}`; show(first); },
  onLogout: () => { clearTimeout(timer); timer = null; doc = null; },
  forbidden: (err) => `This token may not open the ward's firmware page (403; a facilities token can): ${err.message}.`,
});

async function load() {
  try {
    show(await session.api("/api/v1/firmware"));
    $("link").textContent = "live";
    $("link").className = "link up";
  } catch (err) {
    if (err.status === 401 || err.status === 403) { lost(err); return; }
    $("link").textContent = "offline";
    $("link").className = "link down";
    schedule(POLL_IDLE_MS);
  }
}

function schedule(ms) {
  clearTimeout(timer);
  timer = setTimeout(load, ms);
}

function updateText(u) {
  if (!u) return "—";
  const chunks = u.state === "accepted" && u.chunks ? ` (${u.chunks} chunks)` : "";
  return `${UPDATE_STATE[u.state] || u.state} ${u.version}${chunks}` + (u.reason ? ` — ${u.reason}` : "");
}

function show(next) {
  doc = next;
  $("link").textContent = "live";
  $("link").className = "link up";
  const select = $("fw-bundle");
  const chosen = select.value;
  select.replaceChildren(...next.bundles.map((b) => el("option", { value: b.sha256 },
    `${b.version} for ${b.board} (${b.sha256.slice(0, 12)}) — in ${b.rooms.length} of ${b.rooms.length + b.missing.length} rooms`)));
  if (chosen) select.value = chosen;
  holders();
  if (!$("fw-rooms").value) $("fw-rooms").value = next.rooms.map((r) => r.room).join(", ");
  $("fw-rollouts").replaceChildren(...next.rollouts.map(rolloutItem));
  $("fw-rooms-view").replaceChildren(...next.rooms.map(roomTable));
  tickAges(session);
  schedule(next.rollouts.some((r) => r.state === "running" || r.state === "held") ? POLL_ACTIVE_MS : POLL_IDLE_MS);
}

function holders() {
  const b = doc && doc.bundles.find((x) => x.sha256 === $("fw-bundle").value);
  if (!b) { $("fw-holders").textContent = doc && !doc.bundles.length ? "No room holds a verified bundle." : ""; return; }
  const refused = Object.entries(b.refused).map(([room, why]) => `${room} refuses it: ${why}`);
  $("fw-holders").textContent = [`Held by ${b.rooms.join(", ") || "no room"}`,
    b.missing.length ? `not held by ${b.missing.join(", ")}` : "", ...refused].filter(Boolean).join("; ");
}
$("fw-bundle").addEventListener("change", holders);

function rolloutItem(r) {
  const bad = r.state === "stopped" || r.state === "held";
  return el("li", { class: bad ? "bad" : "", dataset: { rollout: String(r.id), state: r.state } },
    el("div", { class: "head" }, `#${r.id} ${r.version} for ${r.board} by ${r.by}: ${r.state.toUpperCase()}`,
      r.reason ? ` — ${r.reason}` : "",
      el("span", { class: "meta" }, " · started ", age(r.started_ms, " ago")),
      r.state === "running" || r.state === "held" ? el("button", { type: "button", onclick: () => stop(r.id) },
        "Stop rollout") : null),
    el("ul", {}, ...r.rooms.map((p) => el("li", { class: p.state === "refused" || p.state === "stopped" ? "bad" : "",
                                                 dataset: { room: p.room, state: p.state } },
      el("strong", {}, `${p.room}: ${p.state}`), p.room_rollout ? ` (room rollout #${p.room_rollout})` : "",
      p.reason ? ` — ${p.reason}` : "",
      el("div", { class: "nodes" }, ...p.updates.map((u) => el("span", {
        class: `chip ${BAD.has(u.state) ? "bad" : u.state === "confirmed" ? "ok" : ""}`, dataset: { node: u.node } },
        `${u.node} ${UPDATE_STATE[u.state] || u.state}`))),
      skippedText(p.skipped)))));
}

function skippedText(skipped) {
  const byWhy = {};
  for (const [node, why] of Object.entries(skipped)) (byWhy[why] = byWhy[why] || []).push(node);
  const parts = Object.entries(byWhy).map(([why, nodes]) => `${nodes.join(", ")} (${why})`);
  return parts.length ? el("div", { class: "meta" }, `Left out: ${parts.join("; ")}`) : null;
}

function roomTable(room) {
  const status = { online: "online", offline: `OFFLINE (${room.reason})`, never_seen: "never connected" }[room.status];
  return el("div", { class: "fw-room", dataset: { room: room.room, status: room.status } },
    el("h3", {}, `${room.name} `, el("span", { class: "meta" }, status,
      room.reported_ms ? " · reported " : " · no firmware report", room.reported_ms ? age(room.reported_ms, " ago") : "")),
    el("table", { class: "report" },
      el("tr", {}, el("th", {}, "node"), el("th", {}, "board"), el("th", {}, "firmware"), el("th", {}, "updates"),
         el("th", {}, "update")),
      ...room.nodes.map((n) => el("tr", { dataset: { node: n.node } },
        el("td", {}, n.node), el("td", {}, n.hw || "—"), el("td", {}, n.fw || "—"),
        el("td", {}, n.online ? (n.ota ? "yes" : "no") : "offline"),
        el("td", { class: n.update && BAD.has(n.update.state) ? "status-offline" : "" }, updateText(n.update))))));
}

async function stop(id) {
  try {
    await session.api(`/api/v1/firmware/rollouts/${id}/stop`, { method: "POST", body: { by: session.name } });
    notice.hide();
  } catch (err) { notice.show(`Stop rollout #${id}: ${errorText(err)}`); }
  load();
}

$("fw-start").addEventListener("submit", async (e) => {
  e.preventDefault();
  const rooms = $("fw-rooms").value.split(/[\s,]+/).filter(Boolean);
  try {
    await session.api("/api/v1/firmware/rollouts", { method: "POST",
      body: { bundle: $("fw-bundle").value, rooms, by: session.name } });
    notice.hide();
  } catch (err) {
    if (err.status === 401) { lost(err); return; }
    notice.show(`Ward rollout: ${errorText(err)}`);
  }
  load();
});
