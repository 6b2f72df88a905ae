/**
 * Per-turn pipeline latency, computed in the browser from the events as they
 * arrive.
 *
 * This is the same breakdown as `coda_ws/turns.py` (`GET /turns`), with the
 * same definitions: turn boundaries per session, marks, durations,
 * percentiles (linear interpolation) and the rolling window. Read that
 * module's docstring for them; any change must be made in both files (a
 * browser test compares the two on the same events).
 */

export const ROLLING_WINDOW = 20;

export const COMPONENTS = ["stt_ms", "llm_ttft_ms", "llm_total_ms", "tts_ttfa_ms", "tts_total_ms", "voice_to_voice_ms"];

export const MARKS = ["stt_result", "llm_start", "llm_first_token", "llm_result", "tts_start", "tts_first_audio", "tts_result"];

const ERROR_TYPES = new Set(["stt_error", "llm_error", "tts_error", "tool_error"]);

const FIRST_MARK = {
  llm_start: "llm_start",
  llm_token: "llm_first_token",
  tts_start: "tts_start",
  tts_progress: "tts_first_audio",
};

/** Most turns kept in memory (the oldest are dropped first). */
const MAX_TURNS = 1000;
/** Most sessions with an open turn (the oldest open turn is dropped first). */
const MAX_OPEN = 256;

/** The p-th percentile (0-100) of `values`, linearly interpolated; null when empty. */
export function percentile(values, p) {
  if (!values.length) return null;
  const ordered = [...values].sort((a, b) => a - b);
  const rank = (p / 100) * (ordered.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo);
}

function number(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

function diffMs(times, later, earlier) {
  const a = times[later];
  const b = times[earlier];
  if (a === undefined || b === undefined) return null;
  return (a - b) * 1000;
}

class Turn {
  constructor(event, timestamp, epoch) {
    this.session_id = event.session_id ?? null;
    this.start_seq = event.seq ?? null;
    this.end_seq = null;
    this.started_at = timestamp;
    this.ended_at = null;
    this.status = "in_progress";
    this.stt_ms = null;
    this.times = {};
    this.tool_calls = 0;
    this.tool_ms = null;
    this.errors = 0;
    this.key = `${epoch ?? ""}:${this.start_seq}`;
  }

  summary() {
    const times = this.times;
    const audioAt = times.tts_first_audio !== undefined ? times.tts_first_audio : times.tts_result;
    const marks = {};
    for (const name of MARKS) marks[name] = times[name] !== undefined ? (times[name] - this.started_at) * 1000 : null;
    return {
      session_id: this.session_id,
      start_seq: this.start_seq,
      end_seq: this.end_seq,
      started_at: this.started_at,
      ended_at: this.ended_at,
      status: this.status,
      stt_ms: this.stt_ms,
      llm_ttft_ms: diffMs(times, "llm_first_token", "llm_start"),
      llm_total_ms: diffMs(times, "llm_result", "llm_start"),
      tts_ttfa_ms: diffMs(times, "tts_first_audio", "tts_start"),
      tts_total_ms: diffMs(times, "tts_result", "tts_start"),
      voice_to_voice_ms: audioAt === undefined ? null : (audioAt - this.started_at) * 1000,
      tool_calls: this.tool_calls,
      tool_ms: this.tool_ms,
      errors: this.errors,
      marks,
    };
  }
}

/** A turn known only from its summary (from `GET /turns`): it no longer changes. */
class FrozenTurn {
  constructor(summary, key) {
    this._summary = summary;
    this.key = key;
    this.started_at = summary.started_at;
  }

  summary() {
    const { rolling_p50_ms: _p50, rolling_p95_ms: _p95, ...rest } = this._summary;
    return rest;
  }
}

function stats(values) {
  return { count: values.length, p50: percentile(values, 50), p95: percentile(values, 95), p99: percentile(values, 99) };
}

/**
 * Follows the stream one event at a time. `breakdown(limit)` returns the
 * same shape as `turn_breakdown(events, limit)` in Python.
 */
export class TurnTracker {
  constructor() {
    this.reset();
  }

  reset() {
    this.epoch = null; // the stream's epoch, set by the owner: it keys turns with their start seq
    this._open = new Map(); // session key -> Turn
    this._turns = []; // Turn | FrozenTurn, in start order
    this._keys = new Map(); // key -> turn
    this.version = 0; // bumped on every change, so views redraw only when needed
  }

  /**
   * Follow a new stream (epoch). Turns still open in the old one can never
   * end: they are marked abandoned.
   */
  setEpoch(epoch) {
    if (epoch === this.epoch) return;
    if (this.epoch !== null) {
      for (const turn of this._open.values()) turn.status = "abandoned";
      this._open.clear();
      this.version += 1;
    }
    this.epoch = epoch;
  }

  /** Apply one event (a dict in wire form). Returns true when a turn changed. */
  feed(event) {
    if (event === null || typeof event !== "object") return false;
    const kind = event.type;
    const timestamp = number(event.timestamp);
    if (typeof kind !== "string" || timestamp === null) return false;
    const key = event.session_id ?? null;
    let turn = this._open.get(key);
    if (kind === "stt_result") {
      if (turn !== undefined) turn.status = "abandoned";
      turn = new Turn(event, timestamp, this.epoch);
      turn.times.stt_result = timestamp;
      turn.stt_ms = number(event.duration_ms);
      this._openTurn(key, turn);
      this.version += 1;
      return true;
    }
    if (kind === "llm_start" && turn === undefined) {
      turn = new Turn(event, timestamp, this.epoch);
      this._openTurn(key, turn);
    }
    if (turn === undefined) return false;
    const times = turn.times;
    if (Object.prototype.hasOwnProperty.call(FIRST_MARK, kind)) {
      const mark = FIRST_MARK[kind];
      if (times[mark] === undefined) times[mark] = timestamp;
    } else if (kind === "llm_result") {
      if (times.tts_start === undefined || times.llm_result === undefined) times.llm_result = timestamp;
    } else if (kind === "tool_call") {
      turn.tool_calls += 1;
    } else if (kind === "tool_result") {
      const duration = number(event.duration_ms);
      if (duration !== null) turn.tool_ms = turn.tool_ms === null ? duration : turn.tool_ms + duration;
    } else if (ERROR_TYPES.has(kind)) {
      turn.errors += 1;
    } else if (kind === "tts_result" || kind === "conversation_turn") {
      if (kind === "tts_result") times.tts_result = timestamp;
      turn.status = "complete";
      turn.ended_at = timestamp;
      turn.end_seq = event.seq ?? null;
      this._open.delete(key);
    } else {
      return false;
    }
    this.version += 1;
    return true;
  }

  /**
   * Add complete turns from a `GET /turns` answer that this tracker has not
   * seen (keyed by `epoch` and `start_seq`), keeping start order.
   */
  seed(turns, epoch) {
    let added = 0;
    for (const summary of turns) {
      if (!summary || summary.status !== "complete") continue;
      const key = `${epoch ?? ""}:${summary.start_seq}`;
      if (this._keys.has(key)) continue;
      const turn = new FrozenTurn(summary, key);
      this._keys.set(key, turn);
      this._turns.push(turn);
      added += 1;
    }
    if (added) {
      this._turns.sort((a, b) => a.started_at - b.started_at);
      this._trim();
      this.version += 1;
    }
    return added;
  }

  _openTurn(key, turn) {
    this._open.delete(key);
    this._open.set(key, turn);
    if (this._open.size > MAX_OPEN) this._open.delete(this._open.keys().next().value);
    this._turns.push(turn);
    this._keys.set(turn.key, turn);
    this._trim();
  }

  _trim() {
    while (this._turns.length > MAX_TURNS) this._keys.delete(this._turns.shift().key);
  }

  /** The summary (without rolling values) of the turn of this epoch that started at `seq`, or null. */
  summaryForSeq(seq, epoch = this.epoch) {
    const turn = this._keys.get(`${epoch ?? ""}:${seq}`);
    return turn ? turn.summary() : null;
  }

  /** The breakdown of the newest `limit` turns (see turn_breakdown in coda_ws/turns.py). */
  breakdown(limit = 20) {
    const summaries = [];
    const window = [];
    for (const turn of this._turns) {
      const summary = turn.summary();
      const value = summary.voice_to_voice_ms;
      if (value !== null) {
        window.push(value);
        if (window.length > ROLLING_WINDOW) window.shift();
      }
      summary.rolling_p50_ms = percentile(window, 50);
      summary.rolling_p95_ms = percentile(window, 95);
      summaries.push(summary);
    }
    const selected = summaries.slice(-limit).reverse();
    const v2v = selected.map((t) => t.voice_to_voice_ms).filter((v) => v !== null);
    const components = {};
    for (const name of COMPONENTS) components[name] = stats(selected.map((t) => t[name]).filter((v) => v !== null));
    return {
      turns: selected,
      count: selected.length,
      window: ROLLING_WINDOW,
      p50: percentile(v2v, 50),
      p95: percentile(v2v, 95),
      p99: percentile(v2v, 99),
      components,
    };
  }
}
