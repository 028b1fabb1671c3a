// @sse-gateway/client — browser client for the sse-gateway SSE stream.
// One ES module, no dependencies. The same file is also the SharedWorker script:
// loaded in a SharedWorkerGlobalScope it serves the tabs' ports (see the bottom).
// SPDX-License-Identifier: Apache-2.0

const DEFAULT_RETRY = 1000; // ms, until the server sends `retry:`
const MAX_BACKOFF = 30000; // ms
const DEAD_AFTER = 45000; // ms without a byte = dead connection
const STREAM_CONTROL_WAIT = 2000; // ms to wait for `gateway.stream` after the first bytes
const TOKEN_ASK_TIMEOUT = 5000; // ms a tab has to answer a worker's token request
const PING_EVERY = 10000; // ms between worker pings of its ports
const BEAT_EVERY = 1000; // ms between leader heartbeats (no Web Locks)
const BEAT_LOST = 3000; // ms of leader silence before a follower claims leadership
const ID_FLUSH_EVERY = 1000; // ms, throttle of `{t:"id"}` broadcasts
const RECENT_IDS = 1000; // delivered event ids remembered per tab (duplicate filter)
const STORAGE_PREFIX = "sse-gateway:last-id:";

// ---------------------------------------------------------------------------
// Pure parts (exported for tests)
// ---------------------------------------------------------------------------

/**
 * Incremental text/event-stream parser (WHATWG SSE rules) that also reports
 * comments, `retry:` values and the gateway's `: topic <name>` comment.
 *
 * `feed(text)` takes decoded text (any chunking) and returns the items completed by it:
 * - `{type: "event", id, event, data, topic}`: `id` is the block's own `id:` value or
 *   `null`, `event` defaults to `"message"`, `topic` comes from a `: topic` comment of
 *   the same block or is `null`;
 * - `{type: "id", id}`: a block that set an id but carried no data (no event dispatched);
 * - `{type: "retry", ms}`;
 * - `{type: "comment", text}` (text after `:` and one optional space).
 */
export class SseParser {
  constructor() {
    this._line = ""; // partial line carried across chunks
    this._cr = false; // previous chunk ended with CR: a leading LF is the same line end
    this._start = true; // strip a leading BOM once
    this._data = [];
    this._event = "";
    this._id = undefined; // id set in the current block
    this._topic = null;
    /** The last event ID buffer (persists across events, per the SSE spec). */
    this.lastEventId = "";
  }

  /**
   * @param {string} text decoded UTF-8 text
   * @returns {Array<object>} completed items, in stream order
   */
  feed(text) {
    const out = [];
    if (!text) return out;
    if (this._start) {
      this._start = false;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    let pos = 0;
    if (this._cr) {
      this._cr = false;
      if (text.charCodeAt(0) === 10) pos = 1;
    }
    const eol = /\r\n|\r|\n/g;
    eol.lastIndex = pos;
    let m;
    while ((m = eol.exec(text)) !== null) {
      const line = this._line + text.slice(pos, m.index);
      this._line = "";
      pos = m.index + m[0].length;
      if (m[0] === "\r" && pos === text.length) this._cr = true;
      this._processLine(line, out);
    }
    this._line += text.slice(pos);
    return out;
  }

  _processLine(line, out) {
    if (line === "") return this._dispatch(out);
    if (line.charCodeAt(0) === 58 /* : */) {
      const text = line.charCodeAt(1) === 32 ? line.slice(2) : line.slice(1);
      if (text.startsWith("topic ")) this._topic = text.slice(6);
      out.push({ type: "comment", text });
      return undefined;
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    if (field === "data") this._data.push(value);
    else if (field === "event") this._event = value;
    else if (field === "id") {
      if (!value.includes("\0")) this._id = this.lastEventId = value;
    } else if (field === "retry") {
      if (/^[0-9]+$/.test(value)) out.push({ type: "retry", ms: Number(value) });
    }
    return undefined;
  }

  _dispatch(out) {
    const { _id: id, _topic: topic, _data: data, _event: event } = this;
    this._id = undefined;
    this._topic = null;
    this._data = [];
    this._event = "";
    if (data.length === 0) {
      if (id !== undefined) out.push({ type: "id", id });
      return;
    }
    out.push({
      type: "event",
      id: id === undefined ? null : id,
      event: event || "message",
      data: data.join("\n"),
      topic,
    });
  }
}

/**
 * Does a topic pattern match a topic? Tokens are dot-separated; `*` matches exactly
 * one token, `>` (last token only) one or more tokens.
 * @param {string} pattern e.g. `"orders.*"`, `"orders.>"`, `"orders.42"`
 * @param {string} topic a concrete topic, e.g. `"orders.42"`
 * @returns {boolean}
 */
export function matches(pattern, topic) {
  if (pattern === topic) return true;
  const p = pattern.split(".");
  const t = topic.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">" && i === p.length - 1) return t.length > i;
    if (i >= t.length) return false;
    if (p[i] !== "*" && p[i] !== t[i]) return false;
  }
  return p.length === t.length;
}

const TOKEN_RE = /^[A-Za-z0-9_-]+$/;

/**
 * Is this a topic the gateway accepts (1–256 bytes of dot-separated tokens of
 * `[A-Za-z0-9_-]`, with `*` tokens and a final `>` token allowed)?
 * @param {string} topic
 * @returns {boolean}
 */
export function isValidTopic(topic) {
  if (typeof topic !== "string" || topic.length < 1 || topic.length > 256) return false;
  const tokens = topic.split(".");
  return tokens.every(
    (tok, i) => TOKEN_RE.test(tok) || tok === "*" || (tok === ">" && i === tokens.length - 1),
  );
}

/**
 * Reconnection delay in ms: `retry` (the server's `retry:`, else `base`) doubled per
 * consecutive failure (`attempt`, 0 for the first reconnect after a clean end), capped
 * at `max`, with jitter: a uniform value in [50 %, 100 %] of that.
 * @param {number} attempt consecutive failures so far (0, 1, 2, …)
 * @param {{base?: number, max?: number, retry?: number, random?: () => number}} [opts]
 *   `base` initial delay when `retry` is not given (1000), `max` cap (30000),
 *   `random` a [0, 1) source (Math.random)
 * @returns {number} milliseconds
 */
export function backoff(attempt, { base = DEFAULT_RETRY, max = MAX_BACKOFF, retry, random = Math.random } = {}) {
  const n = Math.max(0, Math.min(Math.floor(attempt) || 0, 31));
  let start = typeof retry === "number" && retry >= 0 ? retry : base;
  if (n > 0) start = Math.max(start, 100); // a `retry: 0` must not make failures spin
  const value = Math.min(max, start * 2 ** n);
  return value * (0.5 + 0.5 * random());
}

/**
 * The routing table: subscriptions by id, each with its topic pattern and owner (a tab,
 * a port, …). Patterns are reference-counted.
 */
export class Router {
  constructor() {
    /** @type {Map<string, {pattern: string, owner: any}>} */
    this._subs = new Map();
    /** @type {Map<string, number>} */
    this._counts = new Map();
  }

  /** Number of subscriptions. */
  get size() {
    return this._subs.size;
  }

  /**
   * Adds (or replaces) a subscription.
   * @param {string} subId @param {string} pattern @param {any} owner
   */
  add(subId, pattern, owner) {
    this.remove(subId);
    this._subs.set(subId, { pattern, owner });
    this._counts.set(pattern, (this._counts.get(pattern) || 0) + 1);
  }

  /**
   * Removes a subscription.
   * @param {string} subId
   * @returns {{pattern: string, owner: any} | null} the removed entry
   */
  remove(subId) {
    const entry = this._subs.get(subId);
    if (!entry) return null;
    this._subs.delete(subId);
    const n = this._counts.get(entry.pattern) - 1;
    if (n > 0) this._counts.set(entry.pattern, n);
    else this._counts.delete(entry.pattern);
    return entry;
  }

  /**
   * Removes every subscription of an owner.
   * @param {any} owner
   * @returns {string[]} the removed subscription ids
   */
  removeOwner(owner) {
    const ids = [];
    for (const [id, entry] of this._subs) if (entry.owner === owner) ids.push(id);
    for (const id of ids) this.remove(id);
    return ids;
  }

  /** @returns {Set<string>} the distinct patterns wanted */
  topics() {
    return new Set(this._counts.keys());
  }

  /**
   * Where an event goes: subscriptions whose pattern matches `event.topic`, or, when
   * the event has no topic (the gateway's own), every subscription (only those whose
   * pattern is in `active`, when given). An event with a topic reached the stream, so
   * its topic is on the stream: it is routed by its topic alone (the answer confirming
   * an added topic travels apart from the stream and may come after its first events).
   * Grouped by owner, in insertion order.
   * @param {{topic?: string|null}} event
   * @param {Set<string>} [active] the stream's confirmed topics
   * @returns {Array<{owner: any, subIds: string[]}>}
   */
  route(event, active) {
    const topic = event.topic == null ? null : event.topic;
    const seen = new Map();
    return this._select((p) => {
      if (topic === null) return !active || active.has(p);
      if (!seen.has(p)) seen.set(p, matches(p, topic));
      return seen.get(p);
    });
  }

  /**
   * Subscriptions with exactly this pattern (every subscription when `pattern` is null).
   * @param {string|null} pattern
   * @returns {Array<{owner: any, subIds: string[]}>}
   */
  byPattern(pattern) {
    return this._select((p) => pattern === null || p === pattern);
  }

  _select(keep) {
    const groups = new Map();
    for (const [id, { pattern, owner }] of this._subs) {
      if (!keep(pattern)) continue;
      let list = groups.get(owner);
      if (!list) groups.set(owner, (list = []));
      list.push(id);
    }
    return [...groups].map(([owner, subIds]) => ({ owner, subIds }));
  }
}

/** An error reported to `onError`: an HTTP status and the gateway's error code. */
export class GatewayError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, code?: string, topic?: string|null}} [info]
   */
  constructor(message, { status = 0, code = "", topic = null } = {}) {
    super(message);
    this.name = "GatewayError";
    this.status = status;
    this.code = code;
    this.topic = topic;
  }

  toJSON() {
    return { message: this.message, status: this.status, code: this.code, topic: this.topic };
  }

  static from(obj) {
    return obj instanceof GatewayError ? obj : new GatewayError(String(obj && obj.message), obj || {});
  }
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

function randomId() {
  const bytes = new Uint8Array(8);
  if (globalThis.crypto && globalThis.crypto.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function safeCall(fn, arg) {
  if (typeof fn !== "function") return;
  try {
    fn(arg);
  } catch (e) {
    // Never let a callback break delivery to the others; surface it asynchronously.
    if (typeof globalThis.reportError === "function") globalThis.reportError(e);
    else
      setTimeout(() => {
        throw e;
      });
  }
}

function abortError() {
  const e = new Error("aborted");
  e.name = "AbortError";
  return e;
}

/** Resolves like `p` unless `signal` aborts first. */
function abortable(p, signal) {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(abortError());
    const onAbort = () => reject(abortError());
    signal.addEventListener("abort", onAbort, { once: true });
    Promise.resolve(p).then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

/** `Retry-After` in ms (seconds or an HTTP date), or null. */
function retryAfterMs(res) {
  const value = res.headers && res.headers.get("Retry-After");
  if (!value) return null;
  if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, at - Date.now());
}

/** Builds a GatewayError from a non-success response (its JSON error body if any). */
async function responseError(res, topic = null) {
  let code = "";
  let message = `HTTP ${res.status}`;
  try {
    const body = await res.json();
    if (body && typeof body.error === "string") code = body.error;
    if (body && typeof body.message === "string") message = body.message;
  } catch {
    // not JSON: keep the status line
  }
  return new GatewayError(message, { status: res.status, code, topic });
}

function discard(res) {
  try {
    if (res.body && !res.bodyUsed) res.body.cancel().catch(() => {});
  } catch {
    // nothing to release
  }
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function sameSet(a, b) {
  if (a.size !== b.size) return false;
  for (const x of a) if (!b.has(x)) return false;
  return true;
}

/** Calls `fn` at most once per `ms` (leading and trailing). */
function throttle(fn, ms) {
  let timer = null;
  let pending = false;
  const run = () => {
    timer = null;
    if (!pending) return;
    pending = false;
    fn();
    timer = setTimeout(run, ms);
  };
  return {
    call() {
      pending = true;
      if (!timer) run();
    },
    cancel() {
      clearTimeout(timer);
      timer = null;
      pending = false;
    },
  };
}

/** Remembers the last `capacity` ids (a set with FIFO eviction). */
class RecentIds {
  constructor(capacity) {
    this._cap = capacity;
    this._set = new Set();
  }

  /** @returns {boolean} true when the id was new (and is now remembered) */
  add(id) {
    if (this._set.has(id)) return false;
    this._set.add(id);
    if (this._set.size > this._cap) this._set.delete(this._set.values().next().value);
    return true;
  }
}

function storageKey(base) {
  return STORAGE_PREFIX + base;
}

function loadLastId(base) {
  try {
    return globalThis.sessionStorage ? globalThis.sessionStorage.getItem(storageKey(base)) : null;
  } catch {
    return null;
  }
}

function saveLastId(base, id) {
  try {
    const s = globalThis.sessionStorage;
    if (!s) return;
    if (id) s.setItem(storageKey(base), id);
    else s.removeItem(storageKey(base));
  } catch {
    // storage full or denied: resume after a reload is best effort
  }
}

function normalizeBase(base) {
  const b = base != null ? String(base) : globalThis.location && globalThis.location.origin;
  if (!b) throw new TypeError("sse-gateway: `base` is required outside a browser page");
  return b.replace(/\/+$/, "");
}

// ---------------------------------------------------------------------------
// The connection manager: one stream, its topics, credentials and reconnects
// ---------------------------------------------------------------------------

/**
 * Owns the stream and the routing table. It reports to `out`:
 * `event(ev)`, `reset(reason)`, `close(reason)`, `error(topic|null, err)`,
 * `state(s)`, `lastId(id)`, `topics(list)` (the stream's confirmed topics).
 * @private
 */
class Connection {
  constructor({ base, fetch, getToken, lastId, out }) {
    this.base = base;
    this._fetch = fetch;
    this._getToken = getToken || null;
    this.out = out;
    this.router = new Router();
    this.lastId = lastId || null;
    this.state = "idle";
    /** Topics the open stream has (confirmed by the server). */
    this.active = new Set();
    this._confirmedEver = new Set();
    this._rejected = new Set();
    this._topicsKey = "";
    this._retry = DEFAULT_RETRY;
    this._attempt = 0;
    this._authFails = 0;
    this._ticketsOff = false;
    this._fresh = true;
    this._running = false;
    this._closed = false;
    this._halted = null; // "error" | "closed": stopped until reconnect() (or a topic change for "error")
    this._ctl = null;
    this._abortReason = null;
    this._streamId = null;
    this._streamControl = undefined;
    this._timers = {};
    this._wake = null;
    this._syncing = false;
    this._syncAgain = false;
    this._syncAttempt = 0;
    this._probe = false; // after a 403 for several topics: open with one, add the others by POST
    this._sawNoStreamControl = false;
  }

  add(subId, topic, owner) {
    this.router.add(subId, topic, owner);
    if (this._rejected.delete(topic)) this._scheduleSync(); // a new subscription tries a refused topic again
    this._changed();
  }

  remove(subId) {
    if (this.router.remove(subId)) this._changed();
  }

  removeOwner(owner) {
    if (this.router.removeOwner(owner).length) this._changed();
  }

  /** Forgets errors and rejections and reconnects now. */
  reconnect() {
    if (this._closed) return;
    this._halted = null;
    this._rejected.clear();
    this._authFails = 0;
    this._attempt = 0;
    this._probe = false;
    if (this._running) this._abort("restart");
    else this._scheduleSync();
  }

  /** Stops everything (timers, fetches). `silent`: no final "closed" state report. */
  close(silent = false) {
    if (this._closed) return;
    this._closed = true;
    this._abort("closed");
    for (const key of Object.keys(this._timers)) this._clearTimer(key);
    if (!silent) this._setState("closed");
  }

  // -- topic set --------------------------------------------------------------

  _wanted() {
    const set = this.router.topics();
    for (const t of this._rejected) set.delete(t);
    return set;
  }

  _changed() {
    const topics = this.router.topics();
    for (const t of this._rejected) if (!topics.has(t)) this._rejected.delete(t);
    for (const t of this._confirmedEver) if (!topics.has(t)) this._confirmedEver.delete(t);
    const key = [...topics].sort().join("\n");
    if (key === this._topicsKey) return;
    this._topicsKey = key;
    if (this._halted === "error") {
      this._halted = null;
      this._authFails = 0;
      this._attempt = 0;
    }
    this._scheduleSync();
  }

  _scheduleSync() {
    // A timer rather than a microtask: batches changes arriving as separate messages too.
    if (this._timers.sync || this._closed) return;
    this._setTimer("sync", 0, () => this._sync());
  }

  _sync() {
    if (this._closed || this._halted) return;
    const wanted = this._wanted();
    if (wanted.size === 0) {
      if (this._running) this._abort("idle");
      return;
    }
    if (!this._running) {
      this._fresh = true;
      this._run();
      return;
    }
    if (this.state !== "open" || this._streamControl === undefined) return; // the next open includes them
    if (sameSet(wanted, this.active)) return;
    if (this._streamControl === false) {
      this._abort("restart"); // no live topic changes on this gateway: reopen with the full set
      return;
    }
    if (this._syncing) {
      this._syncAgain = true;
      return;
    }
    this._postChanges(wanted);
  }

  async _postChanges(wanted) {
    const add = [...wanted].filter((t) => !this.active.has(t));
    const remove = [...this.active].filter((t) => !wanted.has(t));
    this._syncing = true;
    try {
      await this._post(this._streamId, this._ctl.signal, add, remove);
    } catch (e) {
      if (!(e && e.name === "AbortError")) this._syncLater(null);
    } finally {
      this._syncing = false;
      if (this._syncAgain) {
        this._syncAgain = false;
        this._scheduleSync();
      }
    }
  }

  /** POST /streams/{id}; splits a refused batch to find the refused topic(s). */
  async _post(streamId, signal, add, remove) {
    const headers = { "Content-Type": "application/json" };
    if (this._getToken) {
      const token = await abortable(Promise.resolve().then(() => this._getToken()), signal);
      if (token) headers.Authorization = "Bearer " + token;
    }
    const res = await this._fetch(`${this.base}/streams/${encodeURIComponent(streamId)}`, {
      method: "POST",
      headers,
      body: JSON.stringify({ add, remove }),
      cache: "no-store",
      signal,
    });
    if (streamId !== this._streamId || signal.aborted) return discard(res);
    if (res.status === 200) return this._posted(await res.json(), add);
    if (res.status === 404) {
      discard(res);
      return this._abort("restart"); // the stream is gone
    }
    const err = await responseError(res);
    if (res.status === 400 || res.status === 401 || res.status === 403) {
      if (add.length + (remove.length ? 1 : 0) > 1) {
        if (remove.length) await this._post(streamId, signal, [], remove);
        for (const t of add) if (!signal.aborted) await this._post(streamId, signal, [t], []);
        return undefined;
      }
      if (add.length === 0) return this._abort("restart"); // a refused removal: reopen with the wanted set
      this._reject(add[0], err);
      return undefined;
    }
    const busy = res.status === 503 || res.status === 429;
    if (res.status === 503) for (const t of add) this.out.error(t, new GatewayError(err.message, { ...err, topic: t }));
    return this._syncLater(busy ? retryAfterMs(res) : null);
  }

  _posted(body, added) {
    this._syncAttempt = 0;
    this._setActive(Array.isArray(body && body.topics) ? body.topics : []);
    for (const t of added) {
      if (this.active.has(t)) continue;
      console.warn("sse-gateway: a topic change was accepted but the topic is missing from the stream");
      this._reject(t, new GatewayError("topic not added", { status: 200, code: "not_added", topic: t }));
    }
  }

  _reject(topic, err) {
    this._rejected.add(topic);
    this.out.error(topic, new GatewayError(err.message, { status: err.status, code: err.code, topic }));
  }

  _syncLater(ms) {
    const delay = ms != null ? ms : backoff(this._syncAttempt++, { retry: this._retry });
    this._clearTimer("syncRetry");
    this._setTimer("syncRetry", delay, () => this._scheduleSync());
  }

  _setActive(list) {
    this.active = new Set(list);
    for (const t of list) this._confirmedEver.add(t);
    this.out.topics([...this.active]);
  }

  // -- the connect loop -------------------------------------------------------

  async _run() {
    this._running = true;
    try {
      while (!this._closed && !this._halted) {
        let topics = [...this._wanted()];
        if (this._probe && topics.length > 1) topics = [topics.find((t) => this._confirmedEver.has(t)) || topics[0]];
        if (!topics.length) {
          this._setState("idle");
          break;
        }
        this._setState(this._fresh ? "connecting" : "reconnecting");
        this._fresh = false;
        const outcome = await this._attemptOnce(topics);
        const delay = this._next(outcome, topics);
        if (delay == null) break;
        if (delay > 0 && !this._closed && !this._halted) {
          this._setState("reconnecting");
          await this._sleep(delay);
        }
      }
    } finally {
      this._running = false;
    }
  }

  /** What to do after an attempt: a delay in ms, or null to stop. */
  _next(outcome, topics) {
    const retryBackoff = () => backoff(this._attempt++, { retry: this._retry });
    switch (outcome.kind) {
      case "ended":
      case "dead":
        return retryBackoff();
      case "retry": {
        const d = outcome.after != null ? outcome.after : retryBackoff();
        if (outcome.after != null) this._attempt++;
        return d;
      }
      case "token_expired":
        return 0; // a fresh ticket, resuming from the last id
      case "revoked":
        this._halt("closed");
        this.out.close("revoked");
        return null;
      case "auth":
        if (this._forbidden(outcome, topics)) return 0;
        this.out.error(null, outcome.error);
        if (++this._authFails >= 2) {
          this._halt("error");
          return null;
        }
        return 0;
      case "bad":
        return this._badRequest(outcome.error, topics);
      default: // "idle", "restart", "closed"
        return 0;
    }
  }

  /**
   * 403 on open: the gateway refuses a stream when one of its topics is not allowed.
   * One topic: refuse that topic only. Several: open with one and add the others by
   * POST, which refuses them one by one (needs live topic changes).
   */
  _forbidden(outcome, topics) {
    const err = outcome.error;
    if (!outcome.opening || err.status !== 403 || err.code === "revoked") return false;
    if (topics.length === 1) {
      this._reject(topics[0], err);
      return true;
    }
    if (this._sawNoStreamControl) return false;
    this._probe = true;
    return true;
  }

  /** 400 on open: blame the topics never confirmed on a stream, else stop. */
  _badRequest(err, topics) {
    const suspects = topics.filter((t) => !this._confirmedEver.has(t));
    if (!suspects.length) {
      this.out.error(null, err);
      this._halt("error");
      return null;
    }
    for (const t of suspects) this._reject(t, err);
    return 0;
  }

  _halt(kind) {
    this._halted = kind;
    this._setState(kind);
  }

  async _attemptOnce(topics) {
    const ctl = new AbortController();
    this._ctl = ctl;
    this._abortReason = null;
    this._lastByte = Date.now();
    this._watch(ctl);
    try {
      const auth = await this._credentials(ctl.signal);
      if (auth.outcome) return auth.outcome;
      const res = await this._fetch(this._streamUrl(topics, auth.ticket), {
        headers: this._streamHeaders(auth.token),
        cache: "no-store",
        signal: ctl.signal,
      });
      if (res.status !== 200 || !res.body) return await this._failure(res, true);
      return await this._read(res, topics, ctl);
    } catch (e) {
      if (ctl.signal.aborted) return { kind: this._abortReason || "closed" };
      return { kind: "retry", error: e };
    } finally {
      ctl.abort();
      this._clearTimer("watchdog");
      this._clearTimer("streamControl");
      this._ctl = null;
      this._streamId = null;
      this._streamControl = undefined;
      if (this.active.size) this._setActive([]);
    }
  }

  _streamUrl(topics, ticket) {
    const query = topics.map((t) => "topic=" + encodeURIComponent(t)).join("&");
    return `${this.base}/events?${query}${ticket ? "&ticket=" + encodeURIComponent(ticket) : ""}`;
  }

  _streamHeaders(token) {
    const headers = { Accept: "text/event-stream" };
    if (this.lastId) headers["Last-Event-ID"] = this.lastId;
    if (token) headers.Authorization = "Bearer " + token;
    return headers;
  }

  /** A fresh ticket (or the JWT when tickets are disabled); `{}` without getToken. */
  async _credentials(signal) {
    if (!this._getToken) return {};
    let token;
    try {
      token = await abortable(Promise.resolve().then(() => this._getToken()), signal);
    } catch (e) {
      if (signal.aborted) throw e;
      return { outcome: { kind: "retry", error: e } };
    }
    if (!token) return {};
    if (this._ticketsOff) return { token };
    const res = await this._fetch(`${this.base}/tickets`, {
      method: "POST",
      headers: { Authorization: "Bearer " + token },
      cache: "no-store",
      signal,
    });
    if (res.status === 201) {
      const body = await res.json();
      return { ticket: body && body.ticket };
    }
    if (res.status === 404) {
      discard(res);
      this._ticketsOff = true; // tickets disabled on this gateway: send the JWT as a header
      return { token };
    }
    return { outcome: await this._failure(res, false) };
  }

  async _failure(res, opening) {
    const error = await responseError(res);
    if (res.status === 401 || res.status === 403) return { kind: "auth", error, opening };
    if (res.status === 429 || res.status === 503) return { kind: "retry", error, after: retryAfterMs(res) };
    if (res.status === 400 && opening) return { kind: "bad", error };
    return { kind: "retry", error };
  }

  async _read(res, topics, ctl) {
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser();
    let opened = false;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return { kind: "ended" };
      this._lastByte = Date.now();
      if (!opened) {
        opened = true;
        this._opened(topics);
      }
      for (const item of parser.feed(decoder.decode(value, { stream: true }))) {
        const outcome = this._item(item);
        if (outcome) return outcome;
      }
      if (ctl.signal.aborted) return { kind: this._abortReason || "closed" };
    }
  }

  _opened(topics) {
    this._attempt = 0;
    this._authFails = 0;
    this._syncAttempt = 0;
    this._probe = false;
    this._setActive(topics);
    this._setState("open");
    this._setTimer("streamControl", STREAM_CONTROL_WAIT, () => this._noStreamControl());
  }

  _noStreamControl() {
    if (this._streamControl !== undefined) return;
    this._streamControl = false;
    this._sawNoStreamControl = true;
    this._scheduleSync();
  }

  _item(item) {
    switch (item.type) {
      case "retry":
        this._retry = item.ms;
        return null;
      case "id":
        this._setLastId(item.id);
        return null;
      case "comment":
        if (item.text === "heartbeat") this._noStreamControl();
        return null;
      default:
        return this._event(item);
    }
  }

  _event(item) {
    if (item.id !== null) this._setLastId(item.id);
    const type = item.event;
    if (type === "gateway.stream") return this._streamInfo(item.data);
    this._noStreamControl();
    if (type === "gateway.reset") {
      this.out.reset(reasonOf(item.data));
      return null;
    }
    if (type === "gateway.close") {
      const reason = reasonOf(item.data);
      if (reason === "revoked") return { kind: "revoked" };
      return { kind: reason === "token_expired" ? "token_expired" : "ended" };
    }
    if (type.startsWith("gateway.")) return null; // a reserved event this client does not know
    this.out.event({ id: item.id, event: type, data: item.data, topic: item.topic });
    return null;
  }

  _streamInfo(data) {
    const info = parseJson(data);
    if (!info || typeof info.stream !== "string") {
      console.warn("sse-gateway: malformed gateway.stream event");
      return null;
    }
    this._streamId = info.stream;
    this._streamControl = true;
    this._clearTimer("streamControl");
    if (Array.isArray(info.topics)) this._setActive(info.topics);
    this._scheduleSync();
    return null;
  }

  _setLastId(id) {
    const value = id || null;
    if (value === this.lastId) return;
    this.lastId = value;
    this.out.lastId(value);
  }

  _setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.out.state(state);
  }

  // -- timers and cancellation -----------------------------------------------

  /** Aborts the current attempt (or wakes the backoff sleep). */
  _abort(reason) {
    this._abortReason = reason;
    if (this._ctl) this._ctl.abort();
    if (this._wake) this._wake();
  }

  _watch(ctl) {
    const check = () => {
      const idle = Date.now() - this._lastByte;
      if (idle < DEAD_AFTER) return this._setTimer("watchdog", DEAD_AFTER - idle, check);
      this._abortReason = "dead";
      return ctl.abort();
    };
    this._setTimer("watchdog", DEAD_AFTER, check);
  }

  _sleep(ms) {
    return new Promise((resolve) => {
      this._wake = () => {
        this._clearTimer("sleep");
        this._wake = null;
        resolve();
      };
      this._setTimer("sleep", ms, this._wake);
    });
  }

  _setTimer(key, ms, fn) {
    this._clearTimer(key);
    this._timers[key] = setTimeout(() => {
      delete this._timers[key];
      fn();
    }, ms);
  }

  _clearTimer(key) {
    if (this._timers[key] === undefined) return;
    clearTimeout(this._timers[key]);
    delete this._timers[key];
  }
}

function reasonOf(data) {
  const body = parseJson(data);
  return body && typeof body.reason === "string" ? body.reason : "unknown";
}

// ---------------------------------------------------------------------------
// Page side: the client object and its transports
// ---------------------------------------------------------------------------

function pickMode(shared) {
  const hasWorker = typeof SharedWorker === "function";
  const hasChannel = typeof BroadcastChannel === "function";
  if (shared === "none") return "none";
  if (shared === "broadcast") return hasChannel ? "broadcast" : "none";
  if (shared === "worker" || shared === "auto" || shared == null) {
    if (hasWorker) return "worker";
    return hasChannel ? "broadcast" : "none";
  }
  throw new TypeError(`sse-gateway: unknown shared mode ${JSON.stringify(shared)}`);
}

class Client {
  constructor(opts = {}) {
    this.base = normalizeBase(opts.base);
    this._getToken = typeof opts.getToken === "function" ? opts.getToken : null;
    const f = opts.fetch || globalThis.fetch;
    this._fetch = (url, init) => f.call(globalThis, url, init);
    this._workerUrl = opts.workerUrl;
    this.tabId = randomId();
    this.state = "idle";
    /** @type {((state: string) => void) | null} */
    this.onStateChange = null;
    this.lastId = loadLastId(this.base);
    this.isLeader = false;
    this._subs = new Map();
    this._seq = 0;
    this._recent = new RecentIds(RECENT_IDS);
    this._closed = false;
    this.mode = pickMode(opts.shared);
    this._transport = this._makeTransport(this.mode);
    this._listen();
  }

  /**
   * Subscribes to a topic (or a wildcard pattern).
   * @returns {{id: string, topic: string, unsubscribe: () => void}}
   */
  subscribe(topic, onEvent, handlers = {}) {
    if (this._closed) throw new Error("sse-gateway: the client is closed");
    if (!isValidTopic(topic)) throw new TypeError(`sse-gateway: invalid topic ${JSON.stringify(topic)}`);
    if (typeof onEvent !== "function") throw new TypeError("sse-gateway: onEvent must be a function");
    const id = `${this.tabId}.${++this._seq}`;
    const { onReset, onClose, onError } = handlers || {};
    this._subs.set(id, { id, topic, onEvent, onReset, onClose, onError });
    this._transport.sub(id, topic);
    return {
      id,
      topic,
      unsubscribe: () => {
        if (this._subs.delete(id) && !this._closed) this._transport.unsub(id);
      },
    };
  }

  /** Forgets errors and reconnects now (also after a `revoked` close). */
  reconnect() {
    if (!this._closed) this._transport.reconnect();
  }

  /** This tab leaves: its subscriptions end, timers and fetches are cancelled. */
  close() {
    if (this._closed) return;
    this._closed = true;
    this._unlisten();
    this._transport.close();
    this._subs.clear();
    this._setState("closed");
  }

  // -- called by transports ---------------------------------------------------

  _deliver(subIds, event) {
    if (event.id && !this._recent.add(event.id)) return; // a duplicate (leader hand-over)
    Object.freeze(event); // shared by every subscription of this tab
    for (const id of subIds) {
      const sub = this._subs.get(id);
      if (sub) safeCall(sub.onEvent, event);
    }
  }

  _resetAll(reason) {
    for (const sub of [...this._subs.values()]) safeCall(sub.onReset, reason);
  }

  _closeAll(reason) {
    for (const sub of [...this._subs.values()]) safeCall(sub.onClose, reason);
  }

  _errorTopic(topic, error) {
    for (const sub of [...this._subs.values()]) if (topic == null || sub.topic === topic) safeCall(sub.onError, error);
  }

  _errorSubs(subIds, error) {
    for (const id of subIds) {
      const sub = this._subs.get(id);
      if (sub) safeCall(sub.onError, error);
    }
  }

  _setState(state) {
    if (state === this.state || (this._closed && state !== "closed")) return;
    this.state = state;
    safeCall(this.onStateChange, state);
  }

  _setLastId(id) {
    if (id === undefined || id === this.lastId) return;
    this.lastId = id;
    saveLastId(this.base, id);
  }

  /** The SharedWorker could not start: continue with a BroadcastChannel leader. */
  _fallback() {
    if (this._closed) return;
    this._transport.close();
    this.mode = typeof BroadcastChannel === "function" ? "broadcast" : "none";
    this._transport = this._makeTransport(this.mode);
    for (const sub of this._subs.values()) this._transport.sub(sub.id, sub.topic);
  }

  _makeTransport(mode) {
    if (mode === "worker") {
      try {
        return new WorkerTransport(this);
      } catch {
        this.mode = mode = typeof BroadcastChannel === "function" ? "broadcast" : "none";
      }
    }
    if (mode === "broadcast") return new BroadcastTransport(this);
    return new LocalTransport(this);
  }

  _listen() {
    if (typeof window === "undefined" || typeof window.addEventListener !== "function") return;
    this._onHide = () => this._transport.suspend();
    this._onShow = (e) => e.persisted && this._transport.resume();
    this._onActive = () => document.visibilityState !== "hidden" && this._transport.focused();
    window.addEventListener("pagehide", this._onHide);
    window.addEventListener("pageshow", this._onShow);
    window.addEventListener("focus", this._onActive);
    if (typeof document !== "undefined") document.addEventListener("visibilitychange", this._onActive);
  }

  _unlisten() {
    if (!this._onHide) return;
    window.removeEventListener("pagehide", this._onHide);
    window.removeEventListener("pageshow", this._onShow);
    window.removeEventListener("focus", this._onActive);
    if (typeof document !== "undefined") document.removeEventListener("visibilitychange", this._onActive);
  }
}

/** Builds the `out` of a Connection that delivers to this tab's subscriptions. */
function localOut(client, conn) {
  return {
    event: (ev) => client._deliver(conn().router.route(ev, conn().active).flatMap((r) => r.subIds), ev),
    reset: (reason) => client._resetAll(reason),
    close: (reason) => client._closeAll(reason),
    error: (topic, err) => client._errorTopic(topic, err),
    state: (s) => client._setState(s),
    lastId: (id) => client._setLastId(id),
    topics: () => {},
  };
}

/** shared: "none" — the connection manager runs in this page. */
class LocalTransport {
  constructor(client) {
    this.conn = new Connection({
      base: client.base,
      fetch: client._fetch,
      getToken: client._getToken,
      lastId: client.lastId,
      out: localOut(client, () => this.conn),
    });
  }

  sub(id, topic) {
    this.conn.add(id, topic, "local");
  }

  unsub(id) {
    this.conn.remove(id);
  }

  reconnect() {
    this.conn.reconnect();
  }

  close() {
    this.conn.close(true);
  }

  suspend() {}

  resume() {}

  focused() {}
}

/** shared: "worker" — the stream lives in a SharedWorker running this same module. */
class WorkerTransport {
  constructor(client) {
    this.client = client;
    this._alive = false;
    this._open();
  }

  /** Connects to the worker (again after a bfcache restore: `bye` closed the old port). */
  _open() {
    const client = this.client;
    this.worker = new SharedWorker(client._workerUrl || import.meta.url, {
      type: "module",
      name: "sse-gateway:" + client.base,
    });
    this.worker.onerror = () => {
      if (!this._alive) client._fallback();
    };
    this.port = this.worker.port;
    this.port.onmessage = (e) => this._message(e.data);
    if (typeof this.port.start === "function") this.port.start();
    this._hello();
  }

  _post(msg) {
    try {
      this.port.postMessage(msg);
    } catch {
      // port closed
    }
  }

  _hello() {
    const c = this.client;
    this._post({ t: "hello", lastId: c.lastId, base: c.base, auth: !!c._getToken });
  }

  sub(id, topic) {
    this._post({ t: "sub", id, topic });
  }

  unsub(id) {
    this._post({ t: "unsub", id });
  }

  reconnect() {
    this._post({ t: "reconnect" });
  }

  focused() {
    this._post({ t: "active" });
  }

  suspend() {
    this._post({ t: "bye" });
  }

  resume() {
    this.port.onmessage = null;
    this._open();
    for (const sub of this.client._subs.values()) this.sub(sub.id, sub.topic);
  }

  close() {
    this._post({ t: "bye" });
    this.port.onmessage = null;
    this.port.close();
  }

  _message(msg) {
    if (!msg || typeof msg !== "object") return;
    this._alive = true;
    const c = this.client;
    if (msg.lastId !== undefined) c._setLastId(msg.lastId);
    switch (msg.t) {
      case "ev":
        return c._deliver(msg.subs || [], msg.event);
      case "reset":
        return c._resetAll(msg.reason);
      case "close":
        return c._closeAll(msg.reason);
      case "err":
        return c._errorSubs(msg.subs || [], GatewayError.from(msg.error));
      case "state":
        return c._setState(msg.state);
      case "ping":
        return this._post({ t: "pong" });
      case "token?":
        return this._answerToken(msg.req);
      default:
        return undefined; // "id" (handled above) or unknown
    }
  }

  _answerToken(req) {
    const getToken = this.client._getToken;
    Promise.resolve()
      .then(() => (getToken ? getToken() : null))
      .then(
        (token) => this._post({ t: "token", req, token: token || null }),
        () => this._post({ t: "token", req, token: null, failed: true }),
      );
  }
}

/** shared: "broadcast" — one tab (the leader) holds the stream and broadcasts events. */
class BroadcastTransport {
  constructor(client) {
    this.client = client;
    this.tab = client.tabId;
    this.router = new Router(); // this tab's subscriptions, for local routing
    this.active = new Set(); // the leader's confirmed topics
    this.conn = null; // set while leader
    this._closed = false;
    this._lastBeat = 0;
    this._timers = [];
    this._idFlush = throttle(() => this._post({ t: "id", lastId: this.conn && this.conn.lastId }), ID_FLUSH_EVERY);
    // Every tab's subscriptions, as announced on the channel, kept by every tab: a tab
    // that becomes leader opens the stream with ALL of them at once, resuming from the
    // last id (adding them later would miss what was published in between).
    this.known = new Map(); // subId -> {tab, topic}
    this.ch = new BroadcastChannel("sse-gateway:" + client.base);
    this.ch.onmessage = (e) => this._message(e.data);
    this._post({ t: "hello", tab: this.tab });
    this._elect();
  }

  _post(msg) {
    if (!this._closed) this.ch.postMessage(msg);
  }

  // -- election ---------------------------------------------------------------

  _elect() {
    const locks = typeof navigator !== "undefined" && navigator.locks;
    if (locks && typeof locks.request === "function") {
      this._lockCtl = new AbortController();
      locks
        .request("sse-gateway-leader:" + this.client.base, { signal: this._lockCtl.signal }, () => {
          if (this._closed) return undefined;
          return new Promise((resolve) => {
            this._release = resolve;
            this._lead();
          });
        })
        .catch(() => {});
      return;
    }
    // No Web Locks: heartbeat election. Claim quickly when nobody answers the hello.
    this._timers.push(setTimeout(() => this._claimIfSilent(250), 250));
    this._timers.push(setInterval(() => this._tick(), BEAT_EVERY));
  }

  _tick() {
    if (this.conn) this._post({ t: "beat", tab: this.tab });
    else this._claimIfSilent(BEAT_LOST + Math.random() * 500);
  }

  _claimIfSilent(ms) {
    if (!this.conn && !this._closed && Date.now() - this._lastBeat > ms) this._lead();
  }

  /** Another tab says it leads (heartbeat election): the larger tab id wins a conflict. */
  _heardLeader(tab) {
    this._lastBeat = Date.now();
    if (tab === this.tab) return;
    if (this.conn && !this._release) {
      if (tab < this.tab) return this._post({ t: "leader", tab: this.tab });
      this._stepDown();
    }
    return undefined;
  }

  _lead() {
    if (this._closed || this.conn) return;
    this.client.isLeader = true;
    this.conn = new Connection({
      base: this.client.base,
      fetch: this.client._fetch,
      getToken: this.client._getToken,
      lastId: this.client.lastId,
      out: this._leaderOut(),
    });
    this._post({ t: "leader", tab: this.tab });
    for (const [id, topic] of this._own()) this.conn.add(id, topic, this.tab);
    for (const [id, { tab, topic }] of this.known) this.conn.add(id, topic, tab);
  }

  /** Keeps the other tabs' subscriptions as they announce them. */
  _remember(msg) {
    if (msg.tab === this.tab) return;
    if (msg.t === "sub" && isValidTopic(msg.topic)) this.known.set(msg.id, { tab: msg.tab, topic: msg.topic });
    else if (msg.t === "unsub") this.known.delete(msg.id);
    else if (msg.t === "bye") {
      for (const [id, sub] of this.known) if (sub.tab === msg.tab) this.known.delete(id);
    }
  }

  _stepDown() {
    if (!this.conn) return;
    this.conn.close(true);
    this.conn = null;
    this._idFlush.cancel();
    this.client.isLeader = false;
    this._announceAll();
  }

  _leaderOut() {
    const send = (msg) => {
      this._post(msg);
      this._fromLeader(msg);
    };
    return {
      event: (event) => send({ t: "ev", event, lastId: this.conn.lastId }),
      reset: (reason) => send({ t: "reset", reason, lastId: this.conn.lastId }),
      close: (reason) => send({ t: "close", reason }),
      error: (topic, err) => send({ t: "err", topic, error: err.toJSON() }),
      state: (state) => send({ t: "state", state }),
      topics: (topics) => send({ t: "topics", topics }),
      lastId: (id) => {
        this.client._setLastId(id);
        this._idFlush.call();
      },
    };
  }

  // -- subscriptions ------------------------------------------------------------

  *_own() {
    for (const sub of this.client._subs.values()) yield [sub.id, sub.topic];
  }

  _announceAll() {
    for (const [id, topic] of this._own()) this._post({ t: "sub", tab: this.tab, id, topic });
  }

  sub(id, topic) {
    this.router.add(id, topic, this.tab);
    this._post({ t: "sub", tab: this.tab, id, topic });
    if (this.conn) this.conn.add(id, topic, this.tab);
  }

  unsub(id) {
    this.router.remove(id);
    this._post({ t: "unsub", tab: this.tab, id });
    if (this.conn) this.conn.remove(id);
  }

  reconnect() {
    if (this.conn) this.conn.reconnect();
    else this._post({ t: "reconnect", tab: this.tab });
  }

  focused() {}

  suspend() {
    this._post({ t: "bye", tab: this.tab });
  }

  resume() {
    this._post({ t: "hello", tab: this.tab });
    this._announceAll();
  }

  close() {
    this._post({ t: "bye", tab: this.tab });
    this._closed = true;
    for (const t of this._timers) {
      clearTimeout(t);
      clearInterval(t);
    }
    this._idFlush.cancel();
    if (this.conn) this.conn.close(true);
    this.conn = null;
    this.client.isLeader = false;
    if (this._release) this._release();
    if (this._lockCtl) this._lockCtl.abort();
    this.ch.onmessage = null;
    this.ch.close();
  }

  // -- messages -----------------------------------------------------------------

  _message(msg) {
    if (!msg || typeof msg !== "object" || this._closed) return;
    switch (msg.t) {
      case "beat":
      case "leader":
        this._heardLeader(msg.tab);
        if (msg.t === "leader" && msg.tab !== this.tab) this._announceAll();
        return;
      case "hello":
        return this._greet();
      case "sub":
      case "unsub":
      case "bye":
        this._remember(msg);
        return this._leaderHandles(msg);
      case "reconnect":
        return this._leaderHandles(msg);
      default:
        return this._fromLeader(msg);
    }
  }

  /** A new tab joined: the leader tells it who leads, the state, topics and last id. */
  _greet() {
    if (!this.conn) return;
    this._post({ t: "beat", tab: this.tab });
    this._post({ t: "state", state: this.conn.state });
    this._post({ t: "topics", topics: [...this.conn.active] });
    if (this.conn.lastId) this._post({ t: "id", lastId: this.conn.lastId });
  }

  _leaderHandles(msg) {
    const conn = this.conn;
    if (!conn) return;
    if (msg.t === "sub" && isValidTopic(msg.topic)) conn.add(msg.id, msg.topic, msg.tab);
    else if (msg.t === "unsub") conn.remove(msg.id);
    else if (msg.t === "bye") conn.removeOwner(msg.tab);
    else if (msg.t === "reconnect") conn.reconnect();
  }

  /** Messages the leader broadcasts (and applies to itself). */
  _fromLeader(msg) {
    const c = this.client;
    if (msg.lastId !== undefined) c._setLastId(msg.lastId);
    switch (msg.t) {
      case "ev":
        return c._deliver(this._route(msg.event), msg.event);
      case "reset":
        return c._resetAll(msg.reason);
      case "close":
        return c._closeAll(msg.reason);
      case "err":
        return c._errorTopic(msg.topic, GatewayError.from(msg.error));
      case "state":
        return c._setState(msg.state);
      case "topics":
        this.active = new Set(msg.topics);
        return undefined;
      default:
        return undefined;
    }
  }

  _route(event) {
    return this.router.route(event, this.active).flatMap((r) => r.subIds);
  }
}

/**
 * Creates a client. See README.md.
 * @param {object} [options]
 * @param {string} [options.base] gateway origin (default: this page's origin)
 * @param {() => Promise<string|null>} [options.getToken] returns a JWT (or null)
 * @param {"auto"|"worker"|"broadcast"|"none"} [options.shared] how tabs share one stream
 * @param {string|URL} [options.workerUrl] URL of this module for the SharedWorker
 * @param {typeof fetch} [options.fetch] fetch implementation (tests, custom transports)
 */
export function connect(options = {}) {
  return new Client(options);
}

// ---------------------------------------------------------------------------
// Worker side: this module running as a SharedWorker
// ---------------------------------------------------------------------------

/**
 * Serves tabs' ports from a SharedWorker scope: one stream for all of them.
 * Called automatically when this module is loaded as a SharedWorker.
 * @param {{onconnect: any, location?: {origin: string}}} scope
 * @param {{fetch?: typeof fetch}} [options]
 */
export function serveWorker(scope, options = {}) {
  const hub = new WorkerHub(scope, options.fetch || ((url, init) => globalThis.fetch(url, init)));
  scope.onconnect = (e) => hub.connect(e.ports[0]);
  return hub;
}

class WorkerHub {
  constructor(scope, fetchImpl) {
    this.scope = scope;
    this._fetch = fetchImpl;
    this.ports = new Set();
    this.conn = null;
    this._reqSeq = 0;
    this._pending = new Map();
    this._ping = null;
    this._idFlush = throttle(() => this._all({ t: "id", lastId: this.conn.lastId }), ID_FLUSH_EVERY);
  }

  connect(port) {
    const rec = { port, missed: 0, active: Date.now(), auth: false };
    port.onmessage = (e) => this._message(rec, e.data);
    if (typeof port.start === "function") port.start();
    this.ports.add(rec);
    if (!this._ping) this._ping = setInterval(() => this._pingAll(), PING_EVERY);
  }

  _send(rec, msg) {
    try {
      rec.port.postMessage(msg);
    } catch {
      this._drop(rec);
    }
  }

  _all(msg) {
    for (const rec of [...this.ports]) this._send(rec, msg);
  }

  _pingAll() {
    for (const rec of [...this.ports]) {
      if (rec.missed >= 2) this._drop(rec);
      else {
        rec.missed++;
        this._send(rec, { t: "ping" });
      }
    }
  }

  _drop(rec) {
    if (!this.ports.delete(rec)) return;
    try {
      rec.port.close();
    } catch {
      // already closed
    }
    if (this.conn) this.conn.removeOwner(rec);
    if (!this.ports.size) {
      clearInterval(this._ping);
      this._ping = null;
    }
  }

  _message(rec, msg) {
    if (!msg || typeof msg !== "object") return;
    rec.missed = 0;
    if (msg.t !== "pong") rec.active = Date.now();
    switch (msg.t) {
      case "hello":
        return this._hello(rec, msg);
      case "sub":
        if (isValidTopic(msg.topic)) this._conn().add(msg.id, msg.topic, rec);
        return undefined;
      case "unsub":
        return this.conn && this.conn.remove(msg.id);
      case "bye":
        return this._drop(rec);
      case "reconnect":
        return this.conn && this.conn.reconnect();
      case "token":
        return this._tokenAnswer(msg);
      default:
        return undefined; // "pong", "active"
    }
  }

  _hello(rec, msg) {
    rec.auth = !!msg.auth;
    this._conn(msg);
    const reply = { t: "state", state: this.conn.state };
    if (this.conn.lastId) reply.lastId = this.conn.lastId; // never erase the tab's stored id
    this._send(rec, reply);
  }

  _conn(hello) {
    if (this.conn) return this.conn;
    const origin = this.scope.location && this.scope.location.origin;
    this.conn = new Connection({
      base: normalizeBase((hello && hello.base) || origin),
      fetch: this._fetch,
      getToken: () => this._askToken(),
      lastId: hello && hello.lastId,
      out: this._out(),
    });
    return this.conn;
  }

  _out() {
    const toSubs = (routes, make) => {
      for (const { owner, subIds } of routes) this._send(owner, make(subIds));
    };
    return {
      event: (event) =>
        toSubs(this.conn.router.route(event, this.conn.active), (subs) => ({
          t: "ev",
          subs,
          event,
          lastId: this.conn.lastId,
        })),
      reset: (reason) => this._all({ t: "reset", reason, lastId: this.conn.lastId }),
      close: (reason) => this._all({ t: "close", reason }),
      error: (topic, err) => toSubs(this.conn.router.byPattern(topic), (subs) => ({ t: "err", subs, error: err.toJSON() })),
      state: (state) => this._all({ t: "state", state }),
      lastId: () => this._idFlush.call(),
      topics: () => {},
    };
  }

  /** Asks the most recently active tab for a token; another one after 5 s of silence. */
  _askToken() {
    const candidates = [...this.ports].filter((r) => r.auth).sort((a, b) => b.active - a.active);
    if (!candidates.length) return Promise.resolve(null);
    const req = ++this._reqSeq;
    return new Promise((resolve, reject) => {
      let timer = null;
      const settle = (fn, value) => {
        clearTimeout(timer);
        this._pending.delete(req);
        fn(value);
      };
      const next = () => {
        clearTimeout(timer);
        const rec = candidates.shift();
        if (!rec) return settle(reject, new GatewayError("no tab answered the token request", { code: "no_token" }));
        if (!this.ports.has(rec)) return next();
        this._send(rec, { t: "token?", req });
        timer = setTimeout(next, TOKEN_ASK_TIMEOUT);
        return undefined;
      };
      this._pending.set(req, { resolve: (token) => settle(resolve, token), next });
      next();
    });
  }

  _tokenAnswer(msg) {
    const pending = this._pending.get(msg.req);
    if (!pending) return;
    if (msg.failed) pending.next();
    else pending.resolve(msg.token || null);
  }
}

if (typeof SharedWorkerGlobalScope !== "undefined" && self instanceof SharedWorkerGlobalScope) {
  serveWorker(self);
}
