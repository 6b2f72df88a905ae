/**
 * The event log: every event, newest first, with type globs, a session
 * filter, free-text search, pause, and click-to-expand JSON.
 *
 * Bounded: the newest MAX_STORED events are kept in memory and at most
 * MAX_ROWS rows are in the DOM, however long the page streams. New events are
 * rendered once per animation frame, and of a burst only the rows that will
 * be visible are built.
 */

import { byId, el, formatMs, formatNumber, formatTime, setText, shortId, toJson } from "./dom.js";
import { typeMatcher } from "./glob.js";

export const MAX_ROWS = 200;
const MAX_STORED = 2000;
const MAX_SESSIONS = 50;
const SUMMARY_LENGTH = 160;
const ENVELOPE = new Set(["version", "seq", "timestamp", "type", "session_id"]);

function short(text, length = SUMMARY_LENGTH) {
  const value = String(text ?? "");
  return value.length > length ? `${value.slice(0, length)}…` : value;
}

function fieldsOf(event) {
  const out = {};
  for (const [key, value] of Object.entries(event)) if (!ENVELOPE.has(key)) out[key] = value;
  return out;
}

/** “text”, shortened; the redaction marker for null content. */
function quote(text, length = SUMMARY_LENGTH) {
  if (text == null) return "[redacted]";
  return `“${short(text, length)}”`;
}

/** A number with its unit, or nothing when the field is missing. */
function unit(value, suffix, digits = 0) {
  return Number.isFinite(value) ? `${formatNumber(value, digits)}${suffix}` : null;
}

/** "80%" for a 0..1 confidence or score. */
function percent(fraction) {
  return Number.isFinite(fraction) ? `${Math.round(fraction * 100)}%` : null;
}

/** "42 s", "3 min 05 s", "1 h 02 min". */
function duration(seconds) {
  if (!Number.isFinite(seconds)) return null;
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
}

/** Words of a snake_case name: "push_to_talk" -> "push to talk". */
function words(name) {
  return String(name ?? "").replaceAll("_", " ");
}

/**
 * A value as short readable text: strings quoted, objects as `key: value`
 * pairs, nested objects and long lists abbreviated.
 */
export function inline(value, depth = 0) {
  if (value === null || value === undefined) return "none";
  if (typeof value === "string") return depth ? `"${short(value, 60)}"` : short(value, 100);
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : formatNumber(value, 2);
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (Array.isArray(value)) {
    if (depth > 1) return `[${value.length}]`;
    const shown = value.slice(0, 5).map((v) => inline(v, depth + 1));
    return `[${shown.join(", ")}${value.length > 5 ? `, … ${value.length - 5} more` : ""}]`;
  }
  if (typeof value === "object") {
    const entries = Object.entries(value);
    if (depth > 1) return entries.length ? "{…}" : "{}";
    const shown = entries.slice(0, 6).map(([k, v]) => `${k}: ${inline(v, depth + 1)}`);
    const text = `${shown.join(", ")}${entries.length > 6 ? ", …" : ""}`;
    return depth ? `{${text}}` : text;
  }
  return String(value);
}

/** Parts joined with " · ", empty ones left out. */
function join(...parts) {
  return parts.filter((part) => part != null && part !== "").join(" · ");
}

function describeSystemInfo(data) {
  if (data == null || typeof data !== "object") return inline(data);
  const { event, ...rest } = data;
  if (event === "startup") return join(`startup${rest.version ? ` of ${rest.version}` : ""}`,
    rest.session_id ? `session ${shortId(rest.session_id)}` : null);
  if (event === "shutdown") return join("shutdown", rest.uptime_seconds != null ? `after ${duration(rest.uptime_seconds)}` : null);
  if (event === "performance_summary" && rest.data && typeof rest.data === "object") {
    const ops = Object.entries(rest.data.operation_timings || {}).filter(([, t]) => t && Number.isFinite(t.p95_ms));
    const slowest = ops.reduce((a, b) => (b[1].p95_ms > a[1].p95_ms ? b : a), ops[0] || null);
    const metrics = rest.data.system_metrics || {};
    return join("performance summary", `${ops.length} operation${ops.length === 1 ? "" : "s"} timed`,
      slowest ? `slowest ${slowest[0]} p95 ${formatMs(slowest[1].p95_ms)}` : null,
      Number.isFinite(metrics.cpu_percent) ? `cpu ${formatNumber(metrics.cpu_percent, 1)}%` : null);
  }
  return join(event ? words(event) : null, Object.keys(rest).length ? inline(rest) : null) || "info";
}

/** A one-line description of an event, in words, by type. */
export function describe(event) {
  if (event.redacted) return describeRedacted(event);
  const e = event;
  switch (e.type) {
    case "system_info": return describeSystemInfo(e.data);
    case "system_error": return `${e.level ?? "error"}: ${short(e.message)}`;
    case "system_metrics":
      return join(`cpu ${formatNumber(e.cpu_percent, 1)}%`, `mem ${formatNumber(e.memory_mb, 1)} MB`,
        e.gpu_vram_mb != null ? `gpu ${formatNumber(e.gpu_vram_mb, 0)} MB` : null,
        e.uptime_seconds != null ? `up ${duration(e.uptime_seconds)}` : null);
    case "system_status":
      return join(`${e.ready_components ?? "?"} of ${e.total_components ?? "?"} components ready`,
        e.failed_components ? `${e.failed_components} failed` : null, e.integration_health);
    case "stt_start": return `listening (${words(e.mode) || "no mode"})`;
    case "stt_interim": return join(`${quote(e.text)} (interim)`, percent(e.confidence));
    case "stt_result": return quote(e.text);
    case "llm_start": return join(e.model, short(e.prompt, 100));
    case "llm_token": return quote(e.token, 40);
    case "llm_result": return `${short(e.text, 100)} · ${e.token_count} tokens in ${formatMs(e.duration_ms)}`;
    case "tts_start": return `${e.engine}/${e.voice_id} · ${short(e.text, 100)}`;
    case "tts_progress": return `${formatNumber(e.progress_percent, 0)}%`;
    case "tts_result":
      return `${e.success ? "ok" : "failed"} · ${formatMs(e.audio_duration_ms)} of audio in ${formatMs(e.duration_ms)}`;
    case "tts_status": return `status ${words(e.status)}`;
    case "tool_call": return `${e.tool_name}(${short(inline(e.parameters), 100)})`;
    case "tool_result": return `${e.tool_name} → ${short(inline(e.result), 100)} · ${formatMs(e.duration_ms)}`;
    case "tool_error": return `${e.tool_name} failed: ${short(e.error)}`;
    case "memory_store":
      return join(`stored ${words(e.memory_type) || "memory"}`, quote(e.content_preview, 100),
        Number.isFinite(e.importance) ? `importance ${formatNumber(e.importance, 1)}` : null);
    case "memory_retrieve":
      return `recalled ${e.results_count ?? "?"} for ${quote(e.query, 100)}`;
    case "conversation_start": return `conversation ${short(e.conversation_id, 40)} started`;
    case "conversation_turn": return `#${e.turn_number} “${short(e.user_input, 60)}”`;
    case "conversation_end":
      return join(`conversation ${short(e.conversation_id, 40)} ended`,
        e.total_turns != null ? `${e.total_turns} turn${e.total_turns === 1 ? "" : "s"}` : null,
        e.duration_seconds != null ? duration(e.duration_seconds) : null);
    case "latency_trace": return `${e.component}.${e.operation} ${formatMs(e.duration_ms)}`;
    case "component_timing": {
      const timings = e.timings && typeof e.timings === "object" ? Object.entries(e.timings) : [];
      return `${e.component}: ${timings.map(([name, ms]) => `${words(name)} ${formatMs(ms)}`).join(", ") || "no timings"}`;
    }
    case "component_status":
      return join(`${e.component_type} ${words(e.state)}`,
        e.initialization_order != null ? `order ${e.initialization_order}` : null,
        Array.isArray(e.dependencies) && e.dependencies.length ? `needs ${e.dependencies.join(", ")}` : null);
    case "component_error":
      return join(`${e.component_type} ${words(e.state) || "error"}: ${short(e.error_message)}`,
        e.error_count > 1 ? `${e.error_count} errors` : null);
    case "component_health": return `${e.component_type}: ${short(inline(e.health_status), 120)}`;
    case "integration_metrics":
      return join(e.is_active ? "active" : "inactive",
        `${formatNumber(e.total_events_processed ?? 0)} events processed`,
        e.websocket_server_available === false ? "no server" : null);
    case "vad_start": return join("speech started", percent(e.confidence));
    case "vad_end":
      return join(`speech ended${Number.isFinite(e.duration_ms) ? ` after ${formatMs(e.duration_ms)}` : ""}`,
        percent(e.confidence));
    case "wake_word": return join(`wake word ${quote(e.word, 60)}`, percent(e.confidence));
    case "barge_in":
      return join(`user interrupted ${words(e.interrupted) || "the assistant"}`,
        Number.isFinite(e.played_ms) ? `after ${formatMs(e.played_ms)} of audio` : null);
    default: return describeGeneric(e);
  }
}

/**
 * Any type without a presentation (a type of your own, or one newer than
 * this page): its fields in words, "name value", nulls left out.
 */
export function describeGeneric(event) {
  if (typeof event.error === "string") return short(event.error);
  const entries = Object.entries(fieldsOf(event)).filter(([, value]) => value !== null && value !== undefined);
  if (!entries.length) return words(event.type);
  const shown = entries.slice(0, 6).map(([key, value]) => {
    const text = typeof value === "string" ? `“${short(value, 60)}”` : inline(value, 1);
    return `${words(key)} ${text}`;
  });
  return short(join(...shown, entries.length > 6 ? `${entries.length - 6} more` : null));
}

const CATEGORIES = new Set(["stt", "llm", "tts", "tool", "memory", "conversation", "system", "latency", "component"]);
/** Voice moments: coloured with speech recognition. */
const VOICE_TYPES = new Set(["vad_start", "vad_end", "wake_word", "barge_in"]);

/** Redacted events: their non-content fields only (content is null for this reader). */
function describeRedacted(event) {
  const fields = fieldsOf(event);
  delete fields.redacted;
  const kept = Object.entries(fields).filter(([, value]) => value !== null);
  return short(join("[content redacted]", kept.length ? inline(Object.fromEntries(kept)) : null));
}

/** The colour group of a type: its prefix, "error" for *_error, else "other". */
function category(type) {
  const name = String(type);
  if (name.endsWith("_error")) return "error";
  if (VOICE_TYPES.has(name)) return "voice";
  const prefix = name.split("_")[0];
  return CATEGORIES.has(prefix) ? prefix : "other";
}

/** The shape of one row, filled in by EventLog._row (text only). */
const ROW_TEMPLATE = el("details", { class: "log-row" },
  el("summary", { class: "log-line" },
    el("span", { class: "log-seq" }),
    el("span", { class: "log-time" }),
    el("span", { class: "log-type" }),
    el("span", { class: "log-session" }),
    el("span", { class: "log-summary" }),
    el("span", { class: "tag", text: "replay", attrs: { hidden: "" } })));

export class EventLog {
  /** @param {() => void} requestRender  asks for a render in the next frame (after a filter change). */
  constructor(requestRender) {
    this.requestRender = requestRender;
    this.list = byId("log-rows");
    this.countNode = byId("log-count");
    this.foot = byId("log-foot");
    this.emptyNote = byId("log-empty");
    this.typesInput = byId("log-types");
    this.sessionSelect = byId("log-session");
    this.searchInput = byId("log-search");
    this.pauseButton = byId("log-pause");
    this.chips = [...byId("log-chips").querySelectorAll(".chip")];

    this.stored = []; // records, oldest first, at most MAX_STORED
    this.pending = []; // records not yet rendered (while running)
    this.total = 0;
    this.paused = false;
    this.unseen = 0; // events that arrived while paused
    this.sessions = new Set();
    this.sessionsDirty = false;
    this.needsRebuild = false;
    this.matchType = typeMatcher("");
    this.session = "";
    this.search = "";

    for (const chip of this.chips) chip.addEventListener("click", () => this._choosePreset(chip));
    this.typesInput.addEventListener("input", () => { this._syncChips(); this._filtersChanged(); });
    this.sessionSelect.addEventListener("change", () => this._filtersChanged());
    this.searchInput.addEventListener("input", () => this._filtersChanged());
    this.pauseButton.addEventListener("click", () => this.setPaused(!this.paused));
    // Expand lazily: the JSON of a row is built the first time it is opened.
    this.list.addEventListener("toggle", (ev) => this._onToggle(ev), true);
  }

  ingest(event, meta) {
    const record = { event, replayed: Boolean(meta && meta.replayed), text: null, category: category(event.type) };
    this.stored.push(record);
    // Trim in chunks, not one element per event.
    if (this.stored.length > MAX_STORED * 1.25) this.stored.splice(0, this.stored.length - MAX_STORED);
    this.total += 1;
    const session = event.session_id;
    if (typeof session === "string" && !this.sessions.has(session) && this.sessions.size < MAX_SESSIONS) {
      this.sessions.add(session);
      this.sessionsDirty = true;
    }
    if (this.paused) {
      this.unseen += 1;
      return;
    }
    if (this.needsRebuild) return; // the next render rebuilds from the store anyway
    this.pending.push(record);
    if (this.pending.length > MAX_ROWS * 4) {
      // A burst larger than the view: rebuilding from the store is cheaper and exact.
      this.pending = [];
      this.needsRebuild = true;
    }
  }

  setPaused(paused) {
    this.paused = paused;
    this.pauseButton.setAttribute("aria-pressed", String(paused));
    if (!paused) {
      this.unseen = 0;
      this.pending = [];
      this.needsRebuild = true; // catch up from the store in one go
    }
    this._renderPauseLabel();
    this.requestRender();
  }

  _renderPauseLabel() {
    setText(this.pauseButton, this.paused ? `Resume${this.unseen ? ` (${this.unseen} new)` : ""}` : "Pause");
  }

  _choosePreset(chip) {
    this.typesInput.value = chip.dataset.types;
    this._syncChips();
    this._filtersChanged();
  }

  _syncChips() {
    const value = this.typesInput.value.trim();
    for (const chip of this.chips) chip.setAttribute("aria-pressed", String(chip.dataset.types === value));
  }

  _filtersChanged() {
    this.matchType = typeMatcher(this.typesInput.value);
    this.session = this.sessionSelect.value;
    this.search = this.searchInput.value.trim().toLowerCase();
    this.needsRebuild = true;
    this.requestRender();
  }

  _matches(record) {
    const event = record.event;
    if (!this.matchType(event.type)) return false;
    if (this.session && event.session_id != null && event.session_id !== this.session) return false;
    if (this.search) {
      if (record.text === null) record.text = toJson(event).toLowerCase();
      if (!record.text.includes(this.search)) return false;
    }
    return true;
  }

  _row(record) {
    // Cloning one prepared row is several times cheaper than building each
    // element anew, which matters when a burst replaces every row at once.
    const event = record.event;
    const details = ROW_TEMPLATE.cloneNode(true);
    const [seq, time, type, session, summary, tag] = details.firstChild.children;
    seq.textContent = String(event.seq);
    time.textContent = formatTime(event.timestamp);
    type.textContent = String(event.type);
    type.className = `log-type cat-${record.category}`;
    session.textContent = shortId(event.session_id ?? "–");
    if (event.session_id) session.title = event.session_id;
    summary.textContent = describe(event);
    if (record.replayed) tag.hidden = false;
    details.dataset.seq = String(event.seq);
    details.dataset.type = String(event.type);
    details._record = record;
    return details;
  }

  _onToggle(ev) {
    const details = ev.target;
    if (!(details instanceof HTMLDetailsElement) || !details.open || details.querySelector("pre")) return;
    details.append(el("pre", { class: "log-json", text: toJson(details._record.event, 2) }));
  }

  /** Update the DOM (once per frame). */
  render() {
    if (this.sessionsDirty) this._renderSessions();
    if (this.paused) {
      this._renderPauseLabel();
    } else if (this.needsRebuild) {
      this.needsRebuild = false;
      this.pending = [];
      const rows = [];
      for (let i = this.stored.length - 1; i >= 0 && rows.length < MAX_ROWS; i -= 1) {
        if (this._matches(this.stored[i])) rows.push(this._row(this.stored[i]));
      }
      this.list.replaceChildren(...rows);
    } else if (this.pending.length) {
      const batch = this.pending;
      this.pending = [];
      const fragment = document.createDocumentFragment();
      let added = 0;
      // Newest first, and only as many as can be shown.
      for (let i = batch.length - 1; i >= 0 && added < MAX_ROWS; i -= 1) {
        if (!this._matches(batch[i])) continue;
        fragment.append(this._row(batch[i]));
        added += 1;
      }
      // A fragment keeps its order: it holds the newest first, which goes on top.
      if (added) this.list.prepend(fragment);
      while (this.list.childElementCount > MAX_ROWS) this.list.lastElementChild.remove();
    }
    const shown = this.list.childElementCount;
    setText(this.countNode, `${this.total.toLocaleString("en-US")} events · ${shown} shown`);
    this.list.dataset.rows = String(shown);
    this.emptyNote.hidden = shown > 0;
    if (!shown) setText(this.emptyNote, this.total ? "No events match these filters." : "No events yet.");
    setText(this.foot, shown >= MAX_ROWS
      ? `Showing the newest ${MAX_ROWS} matching events; the last ${MAX_STORED} or more are kept for filtering.`
      : "");
  }

  _renderSessions() {
    this.sessionsDirty = false;
    const current = this.sessionSelect.value;
    const options = [el("option", { text: "all sessions", attrs: { value: "" } })];
    for (const session of this.sessions) {
      options.push(el("option", { text: shortId(session), title: session, attrs: { value: session } }));
    }
    this.sessionSelect.replaceChildren(...options);
    this.sessionSelect.value = current;
  }
}
