/**
 * Charts, drawn by the vendored uPlot (static/vendor/, see its README).
 *
 * The page loads `vendor/uPlot.iife.min.js` as a classic script before the
 * modules; this is the only module that touches the `uPlot` global.
 */

function uPlotLib() {
  const lib = globalThis.uPlot;
  if (typeof lib !== "function") throw new Error("dashboard: vendor/uPlot.iife.min.js did not load");
  return lib;
}

/** HH:MM:SS of an epoch-seconds value (local time). */
function clockTime(seconds) {
  const d = new Date(seconds * 1000);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
}

function cssVar(name, fallback) {
  const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return value || fallback;
}

/**
 * A line chart in `container` that follows the container's width.
 *
 * @param {HTMLElement} container
 * @param {object} options
 * @param {{label: string, color: string, width?: number, dash?: number[], points?: boolean,
 *   fill?: string, format?: (v: number) => string}[]} options.series  the y series.
 * @param {number} [options.height=140]
 * @param {boolean} [options.time=true]  x values are epoch seconds (else plain numbers).
 * @param {string} [options.xLabel]  label of the x values in the legend when not time.
 * @param {(v: number) => string} [options.yFormat]  tick labels of the y axis.
 * @param {number} [options.yMin]  lowest y shown (e.g. 0).
 * @param {number} [options.yMax]  highest y shown (e.g. 100 for percentages).
 * @param {boolean} [options.legend=true]  show uPlot's live legend under the chart.
 * @returns {{setData: (data: number[][]) => void, points: () => number, destroy: () => void}}
 */
export function lineChart(container, options) {
  const UPlot = uPlotLib();
  const { series, height = 140, time = true, xLabel = "", yFormat, yMin, yMax, legend = true } = options;
  const axis = cssVar("--chart-axis", "#8b949e");
  const grid = cssVar("--chart-grid", "rgba(255,255,255,0.06)");
  const font = `11px ${cssVar("--font-sans", "sans-serif")}`;
  const yRange = (u, min, max) => {
    const lo = yMin !== undefined ? Math.min(yMin, min ?? yMin) : min;
    let hi = yMax !== undefined ? Math.max(yMax, max ?? yMax) : max;
    if (lo === null || hi === null || lo === undefined || hi === undefined) return [yMin ?? 0, yMax ?? 1];
    if (hi === lo) hi = lo + 1;
    return [lo, yMax !== undefined ? hi : hi + (hi - lo) * 0.1];
  };
  const opts = {
    width: Math.max(120, container.clientWidth),
    height,
    padding: [8, 8, 0, 0],
    scales: { x: { time }, y: { range: yRange } },
    legend: { show: legend, live: true },
    cursor: { drag: { x: false, y: false }, points: { size: 6 } },
    axes: [
      {
        stroke: axis, font, size: 28, space: time ? 70 : 40,
        grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1, size: 4 },
        values: time
          ? (u, ticks) => ticks.map(clockTime)
          : (u, ticks) => ticks.map((t) => (Number.isInteger(t) ? String(t) : "")),
      },
      {
        stroke: axis, font, size: 60, space: 24,
        grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1, size: 4 },
        ...(yFormat ? { values: (u, ticks) => ticks.map(yFormat) } : {}),
      },
    ],
    series: [
      time
        ? { label: "time", value: (u, v) => (v == null ? "–" : clockTime(v)) }
        : { label: xLabel, value: (u, v) => (v == null ? "–" : String(v)) },
      ...series.map((s) => ({
        label: s.label,
        stroke: s.color,
        width: s.width ?? 1.5,
        dash: s.dash,
        fill: s.fill,
        spanGaps: true,
        points: { show: s.points ?? false, size: 5, fill: s.color },
        value: (u, v) => (v == null ? "–" : (s.format || yFormat || String)(v)),
      })),
    ],
  };
  let data = [[], ...series.map(() => [])];
  const chart = new UPlot(opts, data, container);
  container.dataset.points = "0";

  const observer = new ResizeObserver(() => {
    const width = Math.max(120, container.clientWidth);
    if (width !== chart.width) chart.setSize({ width, height });
  });
  observer.observe(container);

  return {
    setData(next) {
      data = next;
      chart.setData(next);
      container.dataset.points = String(next[0].length);
    },
    points: () => data[0].length,
    destroy() {
      observer.disconnect();
      chart.destroy();
    },
  };
}
