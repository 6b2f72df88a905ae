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

/** A one-line description of an event, by type. */
export function describe(event) {
  if (event.redacted) return describeRedacted(event);
  const e = event;
  switch (e.type) {
    case "stt_start": return `mode ${e.mode}`;
    case "stt_interim": return `“${short(e.text)}” (interim)`;
    case "stt_result": return `“${short(e.text)}”`;
    case "llm_start": return `${e.model} · ${short(e.prompt, 100)}`;
    case "llm_token": return toJson(e.token);
    case "llm_result": return `${short(e.text, 100)} · ${e.token_count} tokens in ${formatMs(e.duration_ms)}`;
    case "tts_start": return `${e.engine}/${e.voice_id} · ${short(e.text, 100)}`;
    case "tts_progress": return `${formatNumber(e.progress_percent, 0)}%`;
    case "tts_result":
      return `${e.success ? "ok" : "failed"} · ${formatMs(e.audio_duration_ms)} of audio in ${formatMs(e.duration_ms)}`;
    case "tool_call": return `${e.tool_name}(${short(toJson(e.parameters), 100)})`;
    case "tool_result": return `${e.tool_name} → ${short(toJson(e.result), 100)} · ${formatMs(e.duration_ms)}`;
    case "system_metrics":
      return `cpu ${formatNumber(e.cpu_percent, 1)}% · mem ${formatNumber(e.memory_mb, 1)} MB`
        + (e.gpu_vram_mb != null ? ` · gpu ${formatNumber(e.gpu_vram_mb, 0)} MB` : "");
    case "system_error": return `${e.level}: ${short(e.message)}`;
    case "latency_trace": return `${e.component}.${e.operation} ${formatMs(e.duration_ms)}`;
    case "conversation_turn": return `#${e.turn_number} “${short(e.user_input, 60)}”`;
    default:
      if (typeof e.error === "string") return short(e.error);
      return short(toJson(fieldsOf(e)));
  }
}

const CATEGORIES = new Set(["stt", "llm", "tts", "tool", "memory", "conversation", "system", "latency", "component"]);

/** The colour group of a type: its prefix, "error" for *_error, else "other". */
/** Redacted events: their non-content fields only (content is null for this reader). */
function describeRedacted(event) {
  const fields = fieldsOf(event);
  delete fields.redacted;
  const kept = Object.entries(fields).filter(([, value]) => value !== null);
  return short(`[content redacted] ${toJson(Object.fromEntries(kept))}`);
}

function category(type) {
  const name = String(type);
  if (name.endsWith("_error")) return "error";
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
