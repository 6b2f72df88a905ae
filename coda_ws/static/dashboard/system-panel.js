/** System: CPU, memory and GPU memory over time, from system_metrics events. */

import { lineChart } from "./charts.js";
import { byId, formatNumber, setText } from "./dom.js";

/** Samples kept per chart (at the default 5 s interval: 50 minutes). */
const MAX_POINTS = 600;

function formatUptime(seconds) {
  if (!Number.isFinite(seconds)) return "–";
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (h) return `${h} h ${String(m).padStart(2, "0")} min`;
  if (m) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  return `${s} s`;
}

/** Axis tick label: whole numbers (the axes step by whole 1/2/5 units), with separators. */
function tick(v) {
  return formatNumber(v, Number.isInteger(v) ? 0 : 1);
}

/** A value in a legend or tile: one decimal below 100, whole above. */
function value(v) {
  return formatNumber(v, Math.abs(v) < 100 ? 1 : 0);
}

export class SystemPanel {
  constructor() {
    this.x = [];
    this.cpu = [];
    this.mem = [];
    this.gpu = [];
    this.dirty = false;
    this.cpuValue = byId("sys-cpu");
    this.memValue = byId("sys-mem");
    this.gpuValue = byId("sys-gpu");
    this.uptimeValue = byId("sys-uptime");
    // The value tiles above the charts show the latest values: no legends.
    this.cpuChart = lineChart(byId("sys-cpu-chart"), {
      height: 100, yMin: 0, ySpan: 5, legend: false, yFormat: (v) => `${tick(v)}%`,
      empty: "CPU: none reported.",
      series: [{ label: "CPU %", color: "#58a6ff", fill: "rgba(88,166,255,0.12)", format: (v) => `${value(v)}%` }],
    });
    this.memChart = lineChart(byId("sys-mem-chart"), {
      height: 100, yMin: 0, ySpan: 10, legend: false, yFormat: tick,
      empty: "Memory: none reported.",
      series: [{ label: "Memory MB", color: "#a371f7", fill: "rgba(163,113,247,0.12)", format: (v) => `${value(v)} MB` }],
    });
    this.gpuChart = lineChart(byId("sys-gpu-chart"), {
      height: 100, yMin: 0, ySpan: 10, legend: false, yFormat: tick,
      empty: "GPU memory: none reported (no GPU, or nvidia-ml-py is not installed).",
      series: [{ label: "GPU MB", color: "#3fb950", fill: "rgba(63,185,80,0.12)", format: (v) => `${value(v)} MB` }],
    });
    this.emptyNote = byId("sys-empty");
    this.charts = byId("sys-charts");
    this.last = null;
  }

  ingest(event) {
    if (event.type !== "system_metrics" || !Number.isFinite(event.timestamp)) return;
    // uPlot needs ascending x: a sample older than the newest (another process's clock) is skipped.
    if (this.x.length && event.timestamp < this.x[this.x.length - 1]) return;
    this.x.push(event.timestamp);
    this.cpu.push(Number.isFinite(event.cpu_percent) ? event.cpu_percent : null);
    this.mem.push(Number.isFinite(event.memory_mb) ? event.memory_mb : null);
    this.gpu.push(Number.isFinite(event.gpu_vram_mb) ? event.gpu_vram_mb : null);
    if (this.x.length > MAX_POINTS) for (const list of [this.x, this.cpu, this.mem, this.gpu]) list.shift();
    this.last = event;
    this.dirty = true;
  }

  render() {
    if (!this.dirty) return;
    this.dirty = false;
    const e = this.last;
    setText(this.cpuValue, Number.isFinite(e.cpu_percent) ? `${formatNumber(e.cpu_percent, 1)}%` : "–");
    setText(this.memValue, Number.isFinite(e.memory_mb) ? `${formatNumber(e.memory_mb, 0)} MB` : "–");
    setText(this.gpuValue, Number.isFinite(e.gpu_vram_mb) ? `${formatNumber(e.gpu_vram_mb, 0)} MB` : "n/a");
    setText(this.uptimeValue, formatUptime(e.uptime_seconds));
    this.cpuChart.setData([this.x.slice(), this.cpu.slice()]);
    this.memChart.setData([this.x.slice(), this.mem.slice()]);
    this.gpuChart.setData([this.x.slice(), this.gpu.slice()]);
    this.emptyNote.hidden = true;
    this.charts.hidden = false;
  }
}
