// What both pages share: DOM helpers, priority badges, times, the login gate and error wording.

import { ApiError } from "./session.js";
import { EventStream } from "./stream.js";

export const $ = (id) => document.getElementById(id);

/** el("td", {class: "num", title: "…"}, "text", childNode, …) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") {
      for (const [k, v] of Object.entries(value)) if (v !== null && v !== undefined) node.dataset[k] = v;
    }
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

// Colour-blind safe: every priority has its own shape and word as well as its colour.
export const PRIORITY = {
  high: { shape: "▲", word: "HIGH" },
  medium: { shape: "◆", word: "MEDIUM" },
  low: { shape: "●", word: "LOW" },
  info: { shape: "ⓘ", word: "INFO" },
};

export function badge(priority) {
  const p = PRIORITY[priority] || { shape: "?", word: String(priority).toUpperCase() };
  return el("span", { class: `badge ${priority}` }, `${p.shape} ${p.word}`);
}

/** "45 s", "3 min 05 s", "2 h 03 min", "3 d 4 h" */
export function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${String(m % 60).padStart(2, "0")} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

export function clockTime(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** A span showing the time since ``ms``; refreshed by tickAges() every second (no network). */
export function age(ms, suffix = " ago") {
  return el("span", { class: "age", dataset: { sinceMs: String(ms), suffix } });
}

export function tickAges(session, root = document) {
  const now = session.now();
  for (const span of root.querySelectorAll(".age")) {
    span.textContent = duration(now - Number(span.dataset.sinceMs)) + span.dataset.suffix;
  }
}

/** The room's storage failure, over both pages: new calls are not recorded until it is fixed. */
export function renderDegraded(box, storage) {
  if (!storage || storage.state !== "failed") {
    box.hidden = true;
    return;
  }
  const waiting = Object.entries(storage.inputs_waiting || {}).map(([input, meaning]) => `${input} (${meaning})`);
  box.replaceChildren(
    el("strong", {}, "⚠ The room controller cannot record events"), ` (${storage.error}). `,
    "New calls are not stored or shown until it can; the nodes keep them and send them again. ",
    waiting.length ? el("strong", {}, `Check in person: ${waiting.join(", ")}.`) : "Check the room in person.");
  box.hidden = false;
}

/** What to tell a person about a failed request. */
export function errorText(err) {
  if (!(err instanceof ApiError)) return "Cannot reach the room controller; check the network and try again.";
  if (err.status === 401) return "That token was not accepted (401). Check it and log in again.";
  if (err.status === 403) return `Not allowed (403): ${err.message}.`;
  if (err.status === 429) return `Too many failed logins (429): try again in ${err.retryAfterS ?? "a few"} s.`;
  return `${err.message} (${err.status})`;
}

/** A dismissable message above the page's content. */
export class Notice {
  constructor(node) {
    this.node = node;
  }

  show(text, kind = "error") {
    this.node.className = `notice ${kind}`;
    this.node.replaceChildren(el("span", {}, text), el("button", { type: "button", onclick: () => this.hide() },
                                                            "Dismiss"));
    this.node.hidden = false;
  }

  hide() { this.node.hidden = true; }
}

/**
 * The login gate: the page's content shows only with a token the API accepts.
 *
 * ``verify()`` makes the page's first authorised request (and returns its answer, handed to
 * ``onReady``); ``forbidden`` is what to say when the token's role may not use this page.
 * Returns ``lost(err)`` for the page to call when a later request answers 401.
 */
export function loginGate({ session, verify, onReady, onLogout, forbidden, askName = false }) {
  const view = $("login"), app = $("app"), form = $("login-form"), error = $("login-error");
  const tokenInput = $("token"), nameInput = $("name"), submit = form.querySelector("button[type=submit]");
  let countdown = null;

  function showLogin(message = "") {
    app.hidden = true;
    view.hidden = false;
    $("logout").hidden = true;
    error.textContent = message;
    tokenInput.value = "";
    if (nameInput && session.name) nameInput.value = session.name;
    tokenInput.focus();
  }

  function waitBeforeRetry(seconds) {
    clearInterval(countdown);
    let left = seconds;
    submit.disabled = true;
    const tick = () => {
      if (left <= 0) {
        clearInterval(countdown);
        submit.disabled = false;
        error.textContent = "";
        return;
      }
      error.textContent = `Too many failed logins (429): try again in ${left} s.`;
      left -= 1;
    };
    tick();
    countdown = setInterval(tick, 1000);
  }

  async function enter() {
    try {
      const first = await verify();
      view.hidden = true;
      app.hidden = false;
      $("logout").hidden = false;
      onReady(first);
    } catch (err) {
      session.logout();
      if (err instanceof ApiError && err.status === 403) showLogin(forbidden(err));
      else if (err instanceof ApiError && err.status === 429) {
        showLogin();
        waitBeforeRetry(err.retryAfterS ?? 5);
      } else showLogin(errorText(err));
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = tokenInput.value.trim();
    if (!token) return;
    session.login(token);
    if (askName) session.name = nameInput.value.trim();
    error.textContent = "";
    enter();
  });

  $("logout").addEventListener("click", () => {
    onLogout();
    session.logout();
    showLogin("You are logged out.");
  });

  if (session.token && (!askName || session.name)) enter();
  else showLogin();

  return function lost(err) {
    onLogout();
    session.logout();
    showLogin(err && err.status === 403 ? forbidden(err)
      : "The room controller no longer accepts this token (401). Log in again.");
  };
}

// The link badge next to a page's title. ``onLive`` runs each time the stream is (back) up: a good
// moment to fetch whatever changed while the page was away.
export function linkIndicator(onLive) {
  return (state, detail) => {
    const link = $("link");
    if (state === "live") {
      link.textContent = "live";
      link.className = "link live";
      onLive();
    } else if (state === "reconnecting") {
      link.textContent = `reconnecting in ${(detail.delayMs / 1000).toFixed(1)} s…`;
      link.className = "link down";
    }
  };
}

// A page's live stream: named for the room's annunciation record, resuming exactly where the
// page's snapshot stands (``cursor``: no gap, no duplicate), with the link badge kept up to date.
export function openStream({ endpoint, session, cursor, onEvent, onLive, onFatal, onStatus = onLive }) {
  const stream = new EventStream({
    url: "/api/v1/events/stream?endpoint=" + encodeURIComponent(endpoint),
    session, lastEventId: cursor, onEvent, onState: linkIndicator(onLive), onFatal, onStatus,
  });
  stream.start();
  return stream;
}

export function showOffline() {
  $("link").textContent = "offline";
  $("link").className = "link down";
}

// A page's "fetch the room again": debounced, one fetch at a time, and once more if asked while
// one runs (so the last change is never missed). ``cancel`` on logout.
export class Refresher {
  constructor(load, delayMs) {
    Object.assign(this, { load, delayMs, timer: null, running: false, again: false });
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.run(), this.delayMs);
  }

  cancel() {
    clearTimeout(this.timer);
    this.again = false;
  }

  async run() {
    if (this.running) { this.again = true; return; }
    this.running = true;
    try {
      await this.load();
    } finally {
      this.running = false;
    }
    if (this.again) { this.again = false; this.schedule(); }
  }
}
