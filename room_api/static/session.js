// The API session of a page: the bearer token (kept for this browser tab's session only), the
// nurse's name, and fetch() with the API's one error shape turned into an ApiError.
//
//   const session = new Session();
//   session.login("srt_…");
//   const room = await session.api("/api/v1/room");            // throws ApiError on 4xx/5xx
//   await session.api(`/api/v1/calls/${id}/ack`, { method: "POST", body: { by: session.name } });

const TOKEN_KEY = "smartroom.token";
const NAME_KEY = "smartroom.name";
// The HTTP Date header has 1 s resolution: a smaller difference is rounding, not a wrong clock.
const CLOCK_SKEW_MIN_MS = 2000;

export class ApiError extends Error {
  constructor(status, code, message, retryAfterS = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfterS = retryAfterS;
  }

  /** The error of a non-2xx response: {"error": {"status", "code", "message"}} when the API sent it. */
  static async from(resp) {
    let code = `http_${resp.status}`;
    let message = `${resp.status} ${resp.statusText || "error"}`;
    try {
      const body = await resp.json();
      if (body && body.error) ({ code, message } = body.error);
    } catch { /* not JSON: keep the status line */ }
    const retry = Number.parseInt(resp.headers.get("Retry-After") || "", 10);
    return new ApiError(resp.status, code, message, Number.isFinite(retry) ? retry : null);
  }
}

export class Session {
  constructor(storage = window.sessionStorage) {
    this.storage = storage;
    this.skewMs = 0;  // server clock minus this browser's clock, when they differ noticeably
  }

  get token() { return this.storage.getItem(TOKEN_KEY); }
  get name() { return this.storage.getItem(NAME_KEY); }
  set name(value) {
    if (value) this.storage.setItem(NAME_KEY, value);
    else this.storage.removeItem(NAME_KEY);
  }

  login(token) { this.storage.setItem(TOKEN_KEY, token.trim()); }

  logout() {
    this.storage.removeItem(TOKEN_KEY);
    this.storage.removeItem(NAME_KEY);
  }

  /** Now on the server's clock (times in the API are the server's epoch milliseconds). */
  now() { return Date.now() + this.skewMs; }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.token}`, ...extra };
  }

  noteServerDate(resp) {
    const date = Date.parse(resp.headers.get("Date") || "");
    if (Number.isNaN(date)) return;
    const skew = date - Date.now();
    this.skewMs = Math.abs(skew) > CLOCK_SKEW_MIN_MS ? skew : 0;
  }

  async api(path, { method = "GET", body } = {}) {
    if (!this.token) throw new ApiError(401, "logged_out", "not logged in");  // and no failed attempt counted
    const init = { method, headers: this.headers({ Accept: "application/json" }), cache: "no-store" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    this.noteServerDate(resp);
    if (!resp.ok) throw await ApiError.from(resp);
    return resp.json();
  }
}
