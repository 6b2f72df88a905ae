/**
 * Pipeline latency: a waterfall of the latest turn, voice-to-voice per turn
 * with rolling p50/p95, and component percentiles. The numbers come from a
 * TurnTracker (turns.js), whose definitions are those of GET /turns.
 */

import { lineChart } from "./charts.js";
import { axisMs, byId, el, formatMs, setText } from "./dom.js";

/** Turns in the chart and in the percentile table. */
const TURNS_SHOWN = 100;

const COMPONENT_LABELS = [
  ["stt_ms", "STT (reported)"],
  ["llm_ttft_ms", "LLM time to first token"],
  ["llm_total_ms", "LLM total"],
  ["tts_ttfa_ms", "TTS time to first audio"],
  ["tts_total_ms", "TTS total"],
  ["voice_to_voice_ms", "Voice-to-voice"],
];

/**
 * Waterfall rows: [label, css kind, start(turn), end(turn)] in ms since the
 * end of the user's speech (the turn's start). STT happened before it.
 */
const WATERFALL = [
  ["STT", "stt", (t) => (t.stt_ms != null ? -t.stt_ms : null), () => 0],
  ["LLM first token", "llm", (t) => t.marks.llm_start, (t) => t.marks.llm_first_token],
  ["LLM response", "llm", (t) => t.marks.llm_start, (t) => t.marks.llm_result],
  ["TTS first audio", "tts", (t) => t.marks.tts_start, (t) => t.marks.tts_first_audio],
  ["TTS synthesis", "tts", (t) => t.marks.tts_start, (t) => t.marks.tts_result],
  ["Voice-to-voice", "v2v", () => 0, (t) => (t.voice_to_voice_ms != null ? t.voice_to_voice_ms : null)],
];

export class LatencyPanel {
  constructor(tracker) {
    this.tracker = tracker;
    this.version = -1;
    this.panel = byId("panel-latency");
    this.summary = byId("lat-summary");
    this.waterfall = byId("waterfall");
    this.title = byId("wf-title");
    this.total = byId("wf-total");
    this.tableBody = byId("lat-table").tBodies[0];
    this.chart = lineChart(byId("lat-chart"), {
      time: false,
      xLabel: "turn",
      height: 150,
      yMin: 0,
      ySpan: 100,
      yFormat: axisMs,
      empty: "No timed turns yet: each turn with a first audio adds a point here.",
      reserve: true,
      series: [
        { label: "voice-to-voice", color: "#58a6ff", width: 1.5, points: true, format: formatMs },
        { label: "p50", color: "#3fb950", width: 1.5, format: formatMs },
        { label: "p95", color: "#d29922", width: 1.5, dash: [5, 4], format: formatMs },
      ],
    });
    this._renderWaterfall(null);
  }

  render() {
    if (this.tracker.version === this.version) return;
    this.version = this.tracker.version;
    const b = this.tracker.breakdown(TURNS_SHOWN);
    const timed = b.turns.filter((t) => t.voice_to_voice_ms != null).reverse();
    this.panel.dataset.turns = String(b.count);
    setText(this.summary, b.count
      ? `p50 ${formatMs(b.p50)} · p95 ${formatMs(b.p95)} · ${timed.length} of last ${b.count} turns timed`
      : "no turns yet");

    // Chart: one point per timed turn, numbered from the oldest shown.
    const xs = timed.map((_, i) => i + 1);
    this.chart.setData([xs, timed.map((t) => t.voice_to_voice_ms), timed.map((t) => t.rolling_p50_ms),
      timed.map((t) => t.rolling_p95_ms)]);

    this._renderWaterfall(b.turns[0] || null);
    this._renderTable(b.components);
  }

  _renderWaterfall(turn) {
    if (!turn) {
      setText(this.title, "Latest turn");
      setText(this.total, "");
      this.waterfall.replaceChildren(el("p", { class: "placeholder", text: "The waterfall of the latest turn appears here." }));
      return;
    }
    const status = turn.status === "complete" ? "" : ` (${turn.status.replace("_", " ")})`;
    setText(this.title, `Latest turn${status}`);
    setText(this.total, turn.voice_to_voice_ms != null ? `voice-to-voice ${formatMs(turn.voice_to_voice_ms)}` : "");
    const spans = WATERFALL.map(([label, kind, start, end]) => ({ label, kind, start: start(turn), end: end(turn) }));
    const known = spans.flatMap((s) => [s.start, s.end]).filter((v) => v != null);
    const lo = Math.min(0, ...known);
    const hi = Math.max(1, ...known);
    const scale = (v) => `${(((v - lo) / (hi - lo)) * 100).toFixed(3)}%`;
    const rows = spans.map(({ label, kind, start, end }) => {
      const track = el("div", { class: "wf-track" });
      const zero = el("div", { class: "wf-zero" });
      zero.style.left = scale(0);
      track.append(zero);
      const measured = start != null && end != null;
      if (measured) {
        const bar = el("div", { class: `wf-bar wf-${kind}` });
        bar.style.left = scale(Math.min(start, end));
        bar.style.width = `max(2px, ${(((Math.abs(end - start)) / (hi - lo)) * 100).toFixed(3)}%)`;
        track.append(bar);
      }
      return el("div", { class: "wf-row", dataset: { kind } },
        el("span", { class: "wf-label", text: label }),
        track,
        el("span", { class: "wf-value", text: measured ? formatMs(end - start) : "–" }));
    });
    const ticks = el("div", { class: "wf-ticks" });
    const tick = (value, text, align) => {
      const node = el("span", { class: `wf-tick wf-tick-${align}`, text });
      node.style.left = scale(value);
      ticks.append(node);
    };
    // Labels never overlap or repeat: the zero label only where it cannot run
    // into an end label (about 56 px each, with a gap; a phone's track is
    // narrow), and no end label while nothing is measured after 0 (the zero
    // line stays either way).
    const zeroAt = (0 - lo) / (hi - lo);
    const track = Math.max(60, this.waterfall.clientWidth - 200);
    const room = Math.min(0.5, 56 / track);
    const endsAtZero = hi <= 1;
    if (lo < 0) tick(lo, formatMs(lo), "start");
    if (lo === 0) tick(0, "0", "start");
    else if (endsAtZero) tick(hi, "0", "end");
    else if (zeroAt > room && zeroAt < 1 - room) tick(0, "0", "middle");
    if (!endsAtZero) tick(hi, formatMs(hi), "end");
    const axis = el("div", { class: "wf-row wf-axis" }, el("span"), ticks, el("span"));
    const notes = [turn.marks.stt_result !== null ? "0 = end of user speech (stt_result)" : "0 = llm_start (no speech input)"];
    if (turn.tool_calls) {
      notes.push(`${turn.tool_calls} tool call${turn.tool_calls > 1 ? "s" : ""}, ${formatMs(turn.tool_ms)} in tools`);
    }
    if (turn.errors) notes.push(`${turn.errors} error${turn.errors > 1 ? "s" : ""}`);
    const caption = el("p", { class: "wf-caption", text: notes.join(" · ") });
    this.waterfall.replaceChildren(el("div", { class: "wf-rows" }, ...rows, axis), caption);
  }

  _renderTable(components) {
    const rows = COMPONENT_LABELS.map(([key, label]) => {
      const s = components[key];
      return el("tr", { dataset: { component: key } },
        el("th", { attrs: { scope: "row" }, text: label }),
        el("td", { text: formatMs(s.p50) }),
        el("td", { text: formatMs(s.p95) }),
        el("td", { text: formatMs(s.p99) }),
        el("td", { class: "muted", text: String(s.count) }));
    });
    this.tableBody.replaceChildren(...rows);
  }
}
