// The room's live event stream, read with fetch() so that it can carry the Authorization header
// (EventSource cannot). Server-Sent Events are parsed here; a dropped stream is resumed with
// capped exponential backoff and Last-Event-ID, and the server replays exactly what was missed
// (event ids are log cursors). No polling: between reconnects the page waits for the stream.
//
//   const stream = new EventStream({
//     url: "/api/v1/events/stream?endpoint=nurse%20station", session, lastEventId: room.cursor,
//     onEvent: (id, event) => …, onState: (state, detail) => …, onFatal: (apiError) => …,
//     onStatus: ({reasons}) => …,   // `event: status`: something not (yet) in the log changed
//   });
//   stream.start();   …   stream.stop();

import { ApiError } from "./session.js";

export const BACKOFF_FIRST_MS = 250;   // a restart of the controller takes about a second
export const BACKOFF_MAX_MS = 10_000;  // a screen must not stay stale longer than this after a long outage
export const BACKOFF_JITTER = 0.2;     // ±20 %: screens do not all knock at the same moment

/** Incremental SSE parser (the HTML "event stream" format): push text, get complete events. */
export class SseParser {
  constructor() {
    this.buffer = "";
    this.data = [];
    this.event = "message";
    this.lastEventId = "";
    this.retryMs = null;
  }

  /** Returns the events completed by this chunk: [{id, event, data}]. */
  push(text) {
    this.buffer += text;
    const events = [];
    let start = 0;
    for (let i = 0; i < this.buffer.length; i++) {
      const ch = this.buffer[i];
      if (ch !== "\n" && ch !== "\r") continue;
      if (ch === "\r" && i + 1 === this.buffer.length) break;  // maybe the \r of a \r\n split across chunks
      const line = this.buffer.slice(start, i);
      if (ch === "\r" && this.buffer[i + 1] === "\n") i++;
      start = i + 1;
      const ev = this.line(line);
      if (ev) events.push(ev);
    }
    this.buffer = this.buffer.slice(start);
    return events;
  }

  line(line) {
    if (line === "") {
      if (!this.data.length) { this.event = "message"; return null; }
      const ev = { id: this.lastEventId, event: this.event, data: this.data.join("\n") };
      this.data = [];
      this.event = "message";
      return ev;
    }
    if (line.startsWith(":")) return null;  // a comment: the server's keep-alive ping
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retryMs = Number(value);
    return null;
  }
}

/** The wait before reconnect attempt ``failures`` (1, 2, …): doubling from the first, capped, jittered. */
export function backoffMs(failures, firstMs = BACKOFF_FIRST_MS, random = Math.random) {
  const base = Math.min(BACKOFF_MAX_MS, firstMs * 2 ** Math.max(0, failures - 1));
  return Math.round(base * (1 - BACKOFF_JITTER + 2 * BACKOFF_JITTER * random()));
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

export class EventStream {
  constructor({ url, session, lastEventId = null, onEvent, onState = () => {}, onFatal = () => {},
                onStatus = () => {} }) {
    Object.assign(this, { url, session, onEvent, onState, onFatal, onStatus });
    this.lastId = lastEventId === null ? null : Number(lastEventId);
    this.failures = 0;
    this.controller = null;
  }

  start() {
    if (this.controller) return;
    this.controller = new AbortController();
    this.run(this.controller.signal);
  }

  stop() {
    if (this.controller) this.controller.abort();
    this.controller = null;
  }

  async run(signal) {
    let firstMs = BACKOFF_FIRST_MS;
    while (!signal.aborted) {
      let waitMs = null;
      try {
        this.onState("connecting");
        const headers = this.session.headers({ Accept: "text/event-stream" });
        if (this.lastId !== null) headers["Last-Event-ID"] = String(this.lastId);
        const resp = await fetch(this.url, { headers, signal, cache: "no-store" });
        if (!resp.ok) {
          const err = await ApiError.from(resp);
          if (err.status === 401 || err.status === 403) {  // a new token is needed, retrying will not help
            this.onState("stopped", err);
            this.onFatal(err);
            return;
          }
          if (err.status === 429 && err.retryAfterS !== null) waitMs = err.retryAfterS * 1000;
          throw err;
        }
        this.failures = 0;
        this.onState("live");
        const parser = new SseParser();
        await this.read(resp.body, parser, signal);
        if (parser.retryMs !== null) firstMs = parser.retryMs;
      } catch (err) {
        if (signal.aborted) return;
        this.lastError = err;
      }
      if (signal.aborted) return;
      this.failures += 1;
      const delay = waitMs ?? backoffMs(this.failures, firstMs);
      this.onState("reconnecting", { delayMs: delay, failures: this.failures, error: this.lastError });
      await sleep(delay, signal);
    }
  }

  async read(body, parser, signal) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || signal.aborted) return;
        for (const ev of parser.push(value)) {
          if (ev.event === "status") {  // e.g. the storage failed: not in the log, so no id of its own
            try {
              this.onStatus(JSON.parse(ev.data));
            } catch (err) {
              console.error("status handler failed", err);
            }
            continue;
          }
          const id = Number(ev.id);
          if (this.lastId !== null && Number.isFinite(id) && id <= this.lastId) continue;  // already seen
          if (Number.isFinite(id) && ev.id !== "") this.lastId = id;
          let data;
          try {
            data = JSON.parse(ev.data);
          } catch {
            continue;  // not one of the room's events
          }
          try {
            this.onEvent(this.lastId, data);
          } catch (err) {
            console.error("event handler failed", err);  // one bad render must not drop the stream
          }
        }
      }
    } finally {
      reader.releaseLock();
    }
  }
}
