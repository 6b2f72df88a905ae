/**
 * The conversation panel: the current turn as it happens (interim and final
 * transcript, the response streaming in, tool calls and results, speech
 * progress) and the previous turns.
 *
 * Display turns follow the same boundaries as the latency breakdown where
 * they can (a turn ends at tts_result or conversation_turn), but start
 * earlier: at stt_start, so the interim transcript has somewhere to go.
 */

import { byId, el, formatMs, setText, shortId, toJson } from "./dom.js";

const MAX_PREVIOUS = 20;
const MAX_SESSIONS = 64;
const MAX_TOOLS = 20;
const MAX_TEXT = 4000; // characters of transcript or response kept per turn

const STARTS_TURN = new Set(["stt_start", "stt_interim", "stt_result", "llm_start"]);
const TURN_TYPES = /^(stt|llm|tts|tool|memory)_|^conversation_turn$/;

function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

/** Marks content a reader without read:content is not shown (the server sends null). */
export const REDACTED = "[redacted]";

function clip(text, event) {
  if (text == null) return event && event.redacted ? REDACTED : "";
  const value = typeof text === "string" ? text : String(text);
  return value.length > MAX_TEXT ? `${value.slice(0, MAX_TEXT)}…` : value;
}

/** A JSON value for display; the redaction marker as is. */
function shown(value) {
  return value === REDACTED ? value : toJson(value);
}

function newTurn(event) {
  return {
    session: event.session_id ?? null,
    startSeq: event.seq,
    startedAt: event.timestamp,
    listening: false,
    interim: "",
    transcript: "",
    confidence: null,
    model: null,
    response: "",
    streaming: false,
    llm: null, // {tokens, tps, ms}
    tools: new Map(), // call_id -> {name, params, result, error, ms}
    tts: null, // {percent, engine, voice, done, audioMs, success}
    memory: [],
    errors: [],
    ended: false,
  };
}

export class ConversationPanel {
  /** @param {{summaryFor: (turn: object) => object|null}} latency  per-turn timings lookup */
  constructor(latency) {
    this.latency = latency;
    this.currentNode = byId("conv-current");
    this.previousNode = byId("conv-previous");
    this.previousEmpty = byId("conv-previous-empty");
    this.sessionNode = byId("conv-session");
    this.current = new Map(); // session -> turn in progress (or just ended)
    this.active = null; // the session whose turn is shown
    this.previous = []; // ended turns, newest first
    this.dirty = true;
    this.previousDirty = true;
  }

  ingest(event) {
    const type = event.type;
    if (typeof type !== "string" || !TURN_TYPES.test(type)) return;
    const session = event.session_id ?? null;
    let turn = this.current.get(session);
    const idle = turn === undefined || turn.ended;
    const startsNew = STARTS_TURN.has(type)
      && (idle || (type === "stt_result" && turn.transcript) || (type === "stt_start" && turn.transcript));
    if (startsNew) {
      if (turn !== undefined) this._retire(turn);
      turn = newTurn(event);
      this.current.delete(session);
      this.current.set(session, turn);
      if (this.current.size > MAX_SESSIONS) this._retire(this.current.get(this.current.keys().next().value), true);
    } else if (turn === undefined) {
      if (type !== "conversation_turn") return;
      turn = newTurn(event); // a turn known only from its summary (e.g. from the replay)
      this.current.set(session, turn);
    }
    this.active = session;
    this._apply(turn, event);
    this.dirty = true;
  }

  _apply(turn, event) {
    switch (event.type) {
      case "stt_start":
        turn.listening = true;
        break;
      case "stt_interim":
        turn.listening = true;
        turn.interim = clip(event.text, event);
        break;
      case "stt_result":
        turn.listening = false;
        turn.interim = "";
        turn.transcript = clip(event.text, event);
        turn.confidence = event.confidence;
        turn.startSeq = event.seq;
        break;
      case "llm_start":
        turn.model = event.model;
        turn.streaming = true;
        break;
      case "llm_token":
        if (event.redacted) turn.response = REDACTED;
        else {
          turn.response = clip(typeof event.cumulative_text === "string"
            ? event.cumulative_text
            : turn.response + (event.token ?? ""));
        }
        turn.streaming = true;
        break;
      case "llm_result":
        if ((typeof event.text === "string" && event.text) || event.redacted) turn.response = clip(event.text, event);
        turn.streaming = false;
        turn.llm = { tokens: event.token_count, tps: event.tokens_per_second, ms: event.duration_ms };
        break;
      case "tool_call":
      case "tool_result":
      case "tool_error": {
        const id = String(event.call_id ?? "");
        const call = turn.tools.get(id) || { name: event.tool_name, params: null, result: undefined, error: null, ms: null };
        if (event.type === "tool_call") call.params = event.redacted ? REDACTED : event.parameters;
        if (event.type === "tool_result") {
          call.result = event.redacted ? REDACTED : event.result;
          call.ms = event.duration_ms;
        }
        if (event.type === "tool_error") call.error = event.error;
        if (turn.tools.size < MAX_TOOLS || turn.tools.has(id)) turn.tools.set(id, call);
        break;
      }
      case "tts_start":
        turn.tts = { percent: 0, engine: event.engine, voice: event.voice_id, done: false, audioMs: null, success: null };
        break;
      case "tts_progress":
        turn.tts = turn.tts || { percent: 0, engine: null, voice: null, done: false, audioMs: null, success: null };
        turn.tts.percent = Math.max(0, Math.min(100, Number(event.progress_percent) || 0));
        break;
      case "tts_result":
        turn.tts = turn.tts || { percent: 0, engine: null, voice: null, done: false, audioMs: null, success: null };
        turn.tts.done = true;
        turn.tts.success = event.success;
        turn.tts.audioMs = event.audio_duration_ms;
        if (event.success) turn.tts.percent = 100;
        turn.ended = true;
        turn.streaming = false;
        break;
      case "memory_store":
        if (turn.memory.length < 10) turn.memory.push(`stored: ${event.content_preview ?? REDACTED}`);
        break;
      case "memory_retrieve":
        if (turn.memory.length < 10) turn.memory.push(`recalled ${event.results_count} for “${event.query ?? REDACTED}”`);
        break;
      case "conversation_turn":
        if (!turn.transcript && typeof event.user_input === "string") turn.transcript = clip(event.user_input);
        if (!turn.response && typeof event.assistant_response === "string") turn.response = clip(event.assistant_response);
        turn.ended = true;
        turn.streaming = false;
        break;
      default:
        if (event.type.endsWith("_error") && turn.errors.length < 10) {
          turn.errors.push(`${event.type}: ${event.error ?? event.message ?? ""}`);
        }
    }
  }

  _retire(turn, drop = false) {
    if (drop) this.current.delete(turn.session);
    if (!turn.transcript && !turn.response) return; // nothing worth keeping
    this.previous.unshift(turn);
    if (this.previous.length > MAX_PREVIOUS) this.previous.length = MAX_PREVIOUS;
    this.previousDirty = true;
  }

  render() {
    if (this.dirty) {
      this.dirty = false;
      const turn = this.current.get(this.active);
      this.currentNode.replaceChildren(...(turn ? this._renderCurrent(turn) : [
        el("p", { class: "placeholder", text: "Waiting for the assistant to hear something…" }),
      ]));
      this.currentNode.dataset.state = !turn ? "idle" : turn.ended ? "done" : "live";
      setText(this.sessionNode, turn && turn.session ? `session ${shortId(turn.session)}` : "");
      if (turn) this.sessionNode.title = turn.session || "";
    }
    if (this.previousDirty) {
      this.previousDirty = false;
      this.previousNode.replaceChildren(...this.previous.map((turn) => this._renderPrevious(turn)));
      this.previousNode.hidden = this.previous.length === 0;
      this.previousEmpty.hidden = this.previous.length > 0;
    }
  }

  _renderCurrent(turn) {
    const nodes = [];
    // User: final transcript, or the interim one while listening.
    const user = el("div", { class: "bubble bubble-user", dataset: { section: "transcript" } },
      el("div", { class: "bubble-label", text: "User" }));
    if (turn.transcript) {
      user.append(el("p", { class: "bubble-text", dataset: { kind: "final" }, text: turn.transcript }));
      if (Number.isFinite(turn.confidence)) {
        user.append(el("span", { class: "tag", text: `conf ${(turn.confidence * 100).toFixed(0)}%` }));
      }
    } else if (turn.interim) {
      user.append(el("p", { class: "bubble-text interim", dataset: { kind: "interim" }, text: turn.interim }));
    } else if (turn.listening) {
      user.append(el("p", { class: "bubble-text interim", text: "listening…" }));
    }
    if (turn.transcript || turn.interim || turn.listening) nodes.push(user);

    if (turn.response || turn.streaming) {
      const assistant = el("div", { class: "bubble bubble-assistant", dataset: { section: "response" } },
        el("div", { class: "bubble-label", text: turn.model ? `Assistant · ${turn.model}` : "Assistant" }));
      const text = el("p", { class: "bubble-text", text: turn.response });
      if (turn.streaming) text.append(el("span", { class: "caret", attrs: { "aria-hidden": "true" } }));
      assistant.append(text);
      if (turn.llm) {
        const tps = Number.isFinite(turn.llm.tps) ? `${turn.llm.tps.toFixed(1)} tok/s` : "";
        assistant.append(el("span", { class: "tag", text: `${turn.llm.tokens ?? "?"} tokens ${tps}` }));
      }
      nodes.push(assistant);
    }

    if (turn.tools.size) {
      const list = el("ul", { class: "tools", dataset: { section: "tools" } });
      for (const call of turn.tools.values()) {
        const state = call.error ? "error" : call.result !== undefined ? "done" : "running";
        const item = el("li", { class: "tool", dataset: { state } },
          el("span", { class: "tool-name", text: call.name ?? "tool" }),
          el("code", { class: "tool-params", text: call.params == null ? "" : shown(call.params) }));
        if (state === "done") {
          item.append(el("span", { class: "tool-arrow", text: "→" }),
            el("code", { class: "tool-result", text: shown(call.result) }),
            el("span", { class: "tag", text: formatMs(call.ms) }));
        } else if (state === "error") {
          item.append(el("span", { class: "tool-error", text: `failed: ${call.error}` }));
        } else {
          item.append(el("span", { class: "tag", text: "running…" }));
        }
        list.append(item);
      }
      nodes.push(list);
    }

    if (turn.tts) {
      const pct = turn.tts.percent;
      const label = turn.tts.done
        ? (turn.tts.success === false ? "Speech failed" : `Spoken · ${formatMs(turn.tts.audioMs)} of audio`)
        : `Speaking · ${pct.toFixed(0)}%`;
      const progress = { role: "progressbar", "aria-label": "Speech synthesis", "aria-valuemin": "0", "aria-valuemax": "100",
        "aria-valuenow": String(Math.round(pct)) };
      const bar = el("div", { class: "progress", attrs: progress },
        el("div", { class: "progress-fill", style: { width: `${pct}%` } }));
      const engine = [turn.tts.engine, turn.tts.voice].filter(Boolean).join(" · ");
      nodes.push(el("div", { class: "speech", dataset: { section: "tts", percent: String(Math.round(pct)) } },
        el("div", { class: "speech-head" }, el("span", { text: label }), el("span", { class: "muted small", text: engine })),
        bar));
    }

    for (const line of turn.memory) nodes.push(el("p", { class: "note note-memory", text: line }));
    for (const line of turn.errors) nodes.push(el("p", { class: "note note-error", text: line }));
    if (!nodes.length) nodes.push(el("p", { class: "placeholder", text: "Turn started…" }));
    return nodes;
  }

  _renderPrevious(turn) {
    const summary = this.latency.summaryFor(turn);
    const v2v = summary ? summary.voice_to_voice_ms : null;
    return el("li", { class: "prev-turn", dataset: { seq: String(turn.startSeq ?? "") } },
      el("div", { class: "prev-user", text: turn.transcript || "(no transcript)" }),
      el("div", { class: "prev-assistant", text: turn.response || "(no response)" }),
      el("div", { class: "prev-meta" },
        turn.tools.size ? el("span", { class: "tag", text: plural(turn.tools.size, "tool call") }) : null,
        v2v != null ? el("span", { class: "tag tag-accent", text: `voice-to-voice ${formatMs(v2v)}` }) : null,
        turn.session ? el("span", { class: "muted small", text: shortId(turn.session) }) : null));
  }
}
