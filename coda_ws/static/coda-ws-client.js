/**
 * coda-ws JavaScript client (ES module, no dependencies, no build step).
 *
 * Speaks protocol v1 of coda_ws (docs/protocol.md): a `hello` frame first, the
 * `replay` frame unpacked into single events, `resume` after a reconnect, and
 * application pings to notice connections that died without a close.
 *
 *   import { CodaEventClient } from "/static/coda-ws-client.js";
 *   const client = new CodaEventClient("ws://localhost:8765/ws", {
 *     types: ["llm_*", "stt_result"],
 *     onEvent: (event, meta) => console.log(event.seq, event.type, meta.replayed),
 *     onStatus: (status) => console.log(status.state),
 *     onGap: (gap) => console.warn("missed events:", gap.reason),
 *   });
 *
 * Guarantees:
 * - Each event is delivered at most once, in `seq` order, per epoch: after a
 *   reconnect the client resumes with `since=<last position>&epoch=<epoch>`
 *   and the server sends exactly what was missed; anything at or below the
 *   last delivered `seq` is dropped should it come again.
 * - When the server cannot recover (`resume` with `recovered: false`, e.g. a
 *   restarted server with a new epoch, or `reason: "lost"` with the `lost`
 *   [first, last] window a crashed journaled server could not keep), `onGap`
 *   is called before the replay frame of the new stream is delivered, so the
 *   caller can mark its state as stale.
 * - Reconnects use exponential backoff with jitter and never stop until
 *   `close()` is called, or until the `beforeReconnect` hook answers false
 *   (a page that learns the server refuses its token stops there instead of
 *   retrying forever).
 *
 * The token, when given, is offered as the subprotocol `coda-ws.bearer.TOKEN`
 * next to `coda-ws.v1` (browsers cannot set an Authorization header on a
 * WebSocket); it never appears in the URL.
 */

export const V1_SUBPROTOCOL = "coda-ws.v1";
export const BEARER_SUBPROTOCOL_PREFIX = "coda-ws.bearer.";

/** Connection states reported through `onStatus`. */
export const State = Object.freeze({
  CONNECTING: "connecting",
  CONNECTED: "connected",
  RECONNECTING: "reconnecting",
  CLOSED: "closed",
});

// Characters allowed in a subprotocol name (an HTTP token, RFC 7230).
const TOKEN_CHARS = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

const DEFAULTS = {
  types: null,
  sessionId: null,
  token: null,
  replay: true,
  pingInterval: 15000,
  pingTimeout: 10000,
  connectTimeout: 10000,
  minReconnectDelay: 250,
  maxReconnectDelay: 10000,
  onEvent: null,
  onStatus: null,
  onGap: null,
  onControl: null,
  beforeReconnect: null,
  WebSocket: null,
};

function normalizeTypes(types) {
  if (types == null) return null;
  const list = (Array.isArray(types) ? types : String(types).split(","))
    .map((t) => String(t).trim())
    .filter(Boolean);
  return list.length ? list : null;
}

/**
 * The WebSocket URL for `url`: http(s) becomes ws(s), a relative URL is
 * resolved against the current page.
 */
export function toWebSocketUrl(url) {
  const base = typeof location !== "undefined" ? location.href : undefined;
  const parsed = new URL(url, base);
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  else if (parsed.protocol === "https:") parsed.protocol = "wss:";
  if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
    throw new TypeError(`CodaEventClient: not a WebSocket URL: ${url}`);
  }
  parsed.hash = "";
  return parsed;
}

export class CodaEventClient {
  /**
   * Connects at once.
   *
   * @param {string} url  the stream's WebSocket URL (ws://host:port/ws, or an
   *   http(s) or relative URL that is converted).
   * @param {object} [options]
   * @param {string[]|string} [options.types]  event types or globs to receive.
   * @param {string} [options.sessionId]  only this session (and session-less events).
   * @param {string} [options.token]  bearer token (sent as a subprotocol).
   * @param {boolean} [options.replay=true]  ask for the replay frame on a fresh start.
   * @param {number} [options.pingInterval=15000]  ms between application pings (0: off).
   * @param {number} [options.pingTimeout=10000]  ms without any frame after a ping
   *   before the connection is considered dead and replaced.
   * @param {number} [options.connectTimeout=10000]  ms an opening handshake may take.
   * @param {number} [options.minReconnectDelay=250]  first reconnect delay, ms.
   * @param {number} [options.maxReconnectDelay=10000]  backoff cap, ms.
   * @param {(event: object, meta: {replayed: boolean, resumed: boolean}) => void} [options.onEvent]
   * @param {(status: object) => void} [options.onStatus]  see `status`; its
   *   `handshakeFailed` is true when the last attempt ended before the opening
   *   handshake completed (refused by the server, or the server unreachable).
   * @param {(gap: {reason: string, earliest: number|null, lost: number[]|null,
   *   previousEpoch: string|null, epoch: string, lastSeq: number}) => void} [options.onGap]
   *   `reason` is `epoch_changed`, `too_old`, `unknown_position` or `lost`; `lost`
   *   is the `[first, last]` window of seqs the server lost (reason `lost`), else null.
   * @param {(frame: object) => void} [options.onControl]  every control frame
   *   (hello, resume, replay, subscribed, pong, error), after the client handled it.
   * @param {(status: object) => boolean|Promise<boolean>} [options.beforeReconnect]
   *   asked before every reconnect, while the backoff delay runs; the reconnect
   *   waits for its answer, and `false` closes the client for good. It gets the
   *   status (`handshakeFailed` says the last attempt never opened). A hook
   *   that throws or rejects counts as `true` (and is logged).
   */
  constructor(url, options = {}) {
    const unknown = Object.keys(options).filter((key) => !(key in DEFAULTS));
    if (unknown.length) throw new TypeError(`CodaEventClient: unknown option(s) ${unknown.join(", ")}`);
    this._opts = { ...DEFAULTS, ...options };
    if (this._opts.token != null && !TOKEN_CHARS.test(String(this._opts.token))) {
      throw new TypeError("CodaEventClient: the token has characters a WebSocket subprotocol cannot carry");
    }
    this._url = toWebSocketUrl(url);
    this._types = normalizeTypes(this._opts.types);
    this._sessionId = this._opts.sessionId || null;
    this._WebSocket = this._opts.WebSocket || globalThis.WebSocket;

    this._ws = null;
    this._state = State.CONNECTING;
    this._closedByUser = false;
    this._epoch = null; // epoch of the stream we have a position in
    this._position = 0; // stream position: every event up to here was seen (or filtered out)
    this._lastDelivered = 0; // highest seq handed to onEvent in this epoch
    this._pendingResume = null; // {to, remaining} while a recovered resume is being replayed
    this._hello = null;
    this._attempt = 0; // failed attempts since the last hello
    this._sessions = 0; // hellos received: every one after the first is a reconnect
    this._retryTimer = 0; // not null: the first connect is already scheduled (below)
    this._connectTimer = null;
    this._pingTimer = null;
    this._deadTimer = null;
    this._pingId = 0;
    this._lastError = null;
    this._lastClose = null;
    this._handshakeFailed = false; // the last attempt ended before its opening handshake completed
    this._pendingPings = new Map(); // id -> {sentAt, resolve}

    // Connect from a microtask, so callbacks never run before the constructor
    // has returned (and the caller has its reference to the client).
    queueMicrotask(() => this._connect());
  }

  // -- public API --------------------------------------------------------------

  /** A snapshot of the connection, as passed to onStatus. */
  get status() {
    const hello = this._hello;
    return {
      state: this._state,
      epoch: this._epoch,
      lastSeq: this._lastDelivered,
      position: this._position,
      server: hello ? hello.server : null,
      clientId: hello ? hello.client_id : null,
      reconnects: this.reconnects,
      attempt: this._attempt,
      lastError: this._lastError,
      lastClose: this._lastClose,
      handshakeFailed: this._handshakeFailed,
    };
  }

  get state() { return this._state; }
  get epoch() { return this._epoch; }
  get lastSeq() { return this._lastDelivered; }
  /** How many times the client connected again after its first session. */
  get reconnects() { return Math.max(0, this._sessions - 1); }
  get filters() { return { types: this._types, sessionId: this._sessionId }; }

  /**
   * Replace the filters (on the open connection and for every reconnect).
   * Events already delivered stay delivered.
   */
  subscribe({ types = this._types, sessionId = this._sessionId } = {}) {
    this._types = normalizeTypes(types);
    this._sessionId = sessionId || null;
    this._send({ type: "subscribe", types: this._types, session_id: this._sessionId });
  }

  /**
   * Send an application ping; resolves with the round trip in ms (and the
   * server's last seq), rejects when the connection ends first.
   */
  ping() {
    return new Promise((resolve, reject) => {
      const id = ++this._pingId;
      if (!this._send({ type: "ping", id })) {
        reject(new Error("not connected"));
        return;
      }
      this._pendingPings.set(id, { sentAt: performance.now(), resolve, reject });
    });
  }

  /** Close for good (no reconnect). Idempotent. */
  close() {
    if (this._closedByUser) return;
    this._closedByUser = true;
    clearTimeout(this._retryTimer);
    this._detach(1000, "client closed");
    this._setState(State.CLOSED);
  }

  // -- connection ----------------------------------------------------------------

  _buildUrl() {
    const url = new URL(this._url.href);
    const params = url.searchParams;
    params.set("v", "1");
    if (this._types) params.set("types", this._types.join(","));
    else params.delete("types");
    if (this._sessionId) params.set("session_id", this._sessionId);
    else params.delete("session_id");
    if (this._epoch !== null) {
      params.set("since", String(this._position));
      params.set("epoch", this._epoch);
    } else {
      params.delete("since");
      params.delete("epoch");
    }
    if (!this._opts.replay && this._epoch === null) params.set("replay", "0");
    return url.href;
  }

  _connect() {
    this._retryTimer = null;
    if (this._closedByUser) return;
    this._setState(this._sessions || this._attempt ? State.RECONNECTING : State.CONNECTING);
    const protocols = [V1_SUBPROTOCOL];
    if (this._opts.token != null) protocols.push(BEARER_SUBPROTOCOL_PREFIX + this._opts.token);
    let ws;
    try {
      ws = new this._WebSocket(this._buildUrl(), protocols);
    } catch (err) {
      this._lastError = String(err && err.message ? err.message : err);
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    let opened = false;
    ws.onmessage = (msg) => this._onMessage(ws, msg);
    ws.onclose = (ev) => this._onClose(ws, ev, opened);
    ws.onerror = () => { this._lastError = "connection error"; };
    ws.onopen = () => {
      if (ws !== this._ws) return;
      opened = true;
      clearTimeout(this._connectTimer);
      this._handshakeFailed = false;
      this._startPings();
    };
    this._connectTimer = setTimeout(() => {
      if (ws !== this._ws || ws.readyState !== 0) return;
      this._handshakeFailed = true;
      this._lastError = `no handshake within ${this._opts.connectTimeout} ms`;
      this._detach(1000, "handshake timeout");
      this._scheduleReconnect();
    }, this._opts.connectTimeout);
  }

  _onClose(ws, ev, opened) {
    if (ws !== this._ws) return; // an old socket we already gave up on
    this._lastClose = { code: ev.code, reason: ev.reason };
    // Closed before it opened: the server refused the handshake (browsers hide the
    // HTTP status: 401, 403, 503 and a network failure all look alike here) or
    // could not be reached. A page can ask the server why over HTTP.
    this._handshakeFailed = !opened;
    this._ws = null;
    clearTimeout(this._connectTimer);
    this._stopPings();
    this._failPings("connection closed");
    if (this._closedByUser) return;
    this._scheduleReconnect();
  }

  /** Give up on the current socket at once (handlers removed), optionally closing it. */
  _detach(code, reason) {
    const ws = this._ws;
    this._ws = null;
    clearTimeout(this._connectTimer);
    this._stopPings();
    this._failPings(reason);
    if (!ws) return;
    ws.onmessage = ws.onclose = ws.onerror = ws.onopen = null;
    try {
      ws.close(code, reason);
    } catch (err) {
      // Already closing, or a code the browser refuses: the socket is dropped either way.
      this._lastError = String(err && err.message ? err.message : err);
    }
  }

  _scheduleReconnect() {
    if (this._closedByUser || this._retryTimer !== null) return;
    const { minReconnectDelay: min, maxReconnectDelay: max } = this._opts;
    const ceiling = Math.min(max, min * 2 ** Math.min(this._attempt, 16));
    // "Equal jitter": half fixed, half random, so clients restarted together spread out
    // but none retries sooner than half the backoff.
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this._attempt += 1;
    this._setState(State.RECONNECTING, { retryInMs: Math.round(delay) });
    const hook = this._opts.beforeReconnect;
    if (typeof hook !== "function") {
      this._retryTimer = setTimeout(() => this._connect(), delay);
      return;
    }
    // Reconnect when both the delay and the hook are done; a close() in the
    // meantime (it clears the timer and sets _closedByUser) wins.
    const status = this.status;
    const waited = new Promise((resolve) => { this._retryTimer = setTimeout(resolve, delay); });
    const answer = Promise.resolve()
      .then(() => hook(status))
      .then((allowed) => allowed !== false, (err) => {
        console.error("CodaEventClient beforeReconnect hook failed:", err);
        return true;
      });
    answer.then((allowed) => {
      if (!allowed && !this._closedByUser) this.close(); // at once, not after the delay
    });
    Promise.all([answer, waited]).then(([allowed]) => {
      if (allowed && !this._closedByUser) this._connect();
    });
  }

  _send(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  // -- liveness --------------------------------------------------------------------

  _startPings() {
    this._stopPings();
    const interval = this._opts.pingInterval;
    if (!interval) return;
    this._pingTimer = setInterval(() => {
      const id = ++this._pingId;
      if (!this._send({ type: "ping", id })) return;
      if (this._deadTimer === null) {
        // Any frame from the server (not only the pong) proves the connection alive.
        this._deadTimer = setTimeout(() => this._onDead(), this._opts.pingTimeout);
      }
    }, interval);
  }

  _stopPings() {
    clearInterval(this._pingTimer);
    clearTimeout(this._deadTimer);
    this._pingTimer = null;
    this._deadTimer = null;
  }

  _failPings(reason) {
    for (const pending of this._pendingPings.values()) pending.reject(new Error(reason));
    this._pendingPings.clear();
  }

  _onDead() {
    this._deadTimer = null;
    this._lastError = `no answer to ping within ${this._opts.pingTimeout} ms`;
    this._lastClose = { code: 4000, reason: "ping timeout" };
    this._detach(4000, "ping timeout");
    this._scheduleReconnect();
  }

  // -- frames ------------------------------------------------------------------------

  _onMessage(ws, msg) {
    if (ws !== this._ws) return;
    if (this._deadTimer !== null) {
      clearTimeout(this._deadTimer);
      this._deadTimer = null;
    }
    if (typeof msg.data !== "string") return; // the protocol sends text frames only
    let frame;
    try {
      frame = JSON.parse(msg.data);
    } catch (err) {
      this._lastError = "server sent invalid JSON";
      return;
    }
    if (frame === null || typeof frame !== "object") return;
    if (typeof frame.seq === "number" && typeof frame.version === "string") {
      this._deliver(frame, false);
      return;
    }
    switch (frame.type) {
      case "hello": this._onHello(frame); break;
      case "resume": this._onResume(frame); break;
      case "replay": this._onReplay(frame); break;
      case "pong": this._onPong(frame); break;
      default: break; // subscribed, error and future frames: for onControl only
    }
    this._call("onControl", frame);
  }

  _onHello(frame) {
    this._hello = frame;
    this._attempt = 0;
    this._sessions += 1;
    if (this._epoch === null) {
      this._epoch = frame.epoch;
      this._position = frame.seq;
      this._lastDelivered = 0;
    }
    // When resuming, the resume frame that follows says where we stand.
    this._setState(State.CONNECTED);
  }

  _onResume(frame) {
    const hello = this._hello;
    if (frame.recovered) {
      if (frame.count > 0) this._pendingResume = { to: frame.to, remaining: frame.count };
      else this._position = Math.max(this._position, frame.to);
      this._emitStatus();
      return;
    }
    const previousEpoch = this._epoch;
    const lastSeq = this._lastDelivered;
    if (hello.epoch !== previousEpoch) this._lastDelivered = 0; // a new stream: seqs start again
    this._epoch = hello.epoch;
    this._position = hello.seq;
    this._pendingResume = null;
    this._call("onGap", {
      reason: frame.reason,
      earliest: frame.earliest ?? null,
      lost: Array.isArray(frame.lost) ? frame.lost : null,
      previousEpoch,
      epoch: hello.epoch,
      lastSeq,
    });
    this._emitStatus();
  }

  _onReplay(frame) {
    if (!Array.isArray(frame.events)) return;
    for (const event of frame.events) {
      if (event && typeof event === "object" && typeof event.seq === "number") this._deliver(event, true);
    }
  }

  _onPong(frame) {
    const pending = this._pendingPings.get(frame.id);
    if (!pending) return;
    this._pendingPings.delete(frame.id);
    pending.resolve({ rtt: performance.now() - pending.sentAt, seq: frame.seq });
  }

  _deliver(event, replayed) {
    const seq = event.seq;
    const resume = this._pendingResume;
    let resumed = false;
    if (!replayed) {
      if (resume !== null) {
        resumed = true;
        resume.remaining -= 1;
        if (resume.remaining <= 0 || seq >= resume.to) {
          this._pendingResume = null;
          this._position = Math.max(this._position, resume.to, seq);
        } else {
          this._position = Math.max(this._position, seq);
        }
      } else {
        this._position = Math.max(this._position, seq);
      }
    }
    if (seq <= this._lastDelivered) return; // already delivered: never twice
    this._lastDelivered = seq;
    this._call("onEvent", event, { replayed, resumed });
  }

  // -- callbacks ---------------------------------------------------------------------

  _setState(state, extra) {
    this._state = state;
    this._emitStatus(extra);
  }

  _emitStatus(extra) {
    this._call("onStatus", extra ? { ...this.status, ...extra } : this.status);
  }

  _call(name, ...args) {
    const fn = this._opts[name];
    if (typeof fn !== "function") return;
    try {
      fn(...args);
    } catch (err) {
      // A failing callback must not break the stream; report it where developers look.
      console.error(`CodaEventClient ${name} callback failed:`, err);
    }
  }
}

export default CodaEventClient;
