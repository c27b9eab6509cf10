// The facilities page's firmware panel: each node's version and update, the bundles the controller
// offers, and staged rollouts (the first node alone, then the rest; stopped by the first node that
// refuses, fails or rolls back). GET /api/v1/firmware, POST /api/v1/firmware/rollouts; docs/pages.md.

import { $, el, age, errorText } from "./ui.js";

const POLL_MS = 2000;  // while a rollout runs: each node's progress, a chunk count every poll

const UPDATE_STATE = { waiting: "waiting", offered: "offered", accepted: "downloading", staged: "restarting",
                       confirmed: "confirmed", refused: "REFUSED", failed: "FAILED", rolled_back: "ROLLED BACK",
                       timeout: "NOT CONFIRMED", unreachable: "NOT CONNECTED" };
const BAD = new Set(["refused", "failed", "rolled_back", "timeout", "unreachable"]);

export class FirmwarePanel {
  constructor(session, onLost) {
    this.session = session;
    this.onLost = onLost;
    this.timer = null;
    this.doc = null;
    $("fw-start").addEventListener("submit", (e) => { e.preventDefault(); this.start(); });
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
    this.doc = null;
  }

  async load() {
    try {
      this.doc = await this.session.api("/api/v1/firmware");
    } catch (err) {
      if (err.status === 401) this.onLost(err);
      $("fw-error").textContent = err.status === 404 ? "This controller serves no firmware updates." : errorText(err);
      return;
    }
    $("fw-error").textContent = "";
    this.render(this.doc);
    clearTimeout(this.timer);
    if (this.doc.rollouts.some((r) => r.state === "running")) this.timer = setTimeout(() => this.load(), POLL_MS);
  }

  render(doc) {
    $("fw-nodes").tBodies[0].replaceChildren(...doc.nodes.map((n) => {
      const u = n.update;
      return el("tr", { dataset: { node: n.node } },
        el("td", {}, n.node),
        el("td", {}, n.fw || "—"),
        el("td", {}, n.online ? (n.ota ? "yes" : "no (no key or old firmware)") : "offline"),
        el("td", { class: u && BAD.has(u.state) ? "status-offline" : "" },
           u ? `${UPDATE_STATE[u.state] || u.state} ${u.version}` + (u.reason ? ` — ${u.reason}` : "") : "—"),
        el("td", { class: "num" }, u ? String(u.chunks) : "—"),
        el("td", {}, u && u.at_ms ? age(u.at_ms, " ago") : ""));
    }));
    const select = $("fw-bundle");
    const chosen = select.value;
    select.replaceChildren(...doc.bundles.map((b) => el("option", { value: b.sha256 },
      `${b.name}: ${b.version} for ${b.board} (${b.sha256.slice(0, 12)}, ${b.files} files)`)));
    if (chosen) select.value = chosen;
    $("fw-none").hidden = doc.bundles.length > 0;
    if (!$("fw-order").value) $("fw-order").value = doc.nodes.filter((n) => n.ota).map((n) => n.node).join(", ");
    $("fw-bad").replaceChildren(...doc.bad_bundles.map((b) => el("li", {}, `${b.folder}: ${b.error}`)));
    $("fw-rollouts").replaceChildren(...doc.rollouts.slice().reverse().map((r) => el("li", {
      class: r.state === "stopped" || r.state === "interrupted" ? "status-offline" : "",
      dataset: { rollout: String(r.id), state: r.state } },
      `#${r.id} ${r.version} by ${r.actor}: ${r.state.toUpperCase()}`,
      r.reason ? ` — ${r.reason}` : "",
      el("span", { class: "meta" }, " · ", r.nodes.map((u) => `${u.node} ${UPDATE_STATE[u.state] || u.state}`).join(", ")))));
    const refused = doc.refused.map((r) => `${r.node}: ${r.reason} ×${r.count}`);
    $("fw-refused").textContent = refused.length ? `Refused or failed updates: ${refused.join("; ")}` : "";
  }

  async start() {
    const nodes = $("fw-order").value.split(/[\s,]+/).filter(Boolean);
    $("fw-error").textContent = "";
    try {
      await this.session.api("/api/v1/firmware/rollouts", { method: "POST",
        body: { bundle: $("fw-bundle").value, nodes } });
    } catch (err) {
      if (err.status === 401) this.onLost(err);
      $("fw-error").textContent = errorText(err);
      return;
    }
    await this.load();
  }
}
