/**
 * Charts, drawn by the vendored uPlot (static/vendor/, see its README).
 *
 * The page loads `vendor/uPlot.iife.min.js` as a classic script before the
 * modules; this is the only module that touches the `uPlot` global.
 *
 * What every chart guarantees:
 * - the legend shows the latest value of each series, and the hovered one
 *   while the pointer is over the plot (never a bare "–" while data exists);
 * - axis labels never repeat: ticks fall on whole steps of the axis's unit
 *   (whole seconds for clock time, 1/2/5 steps for numbers), and each axis
 *   formats its ticks at the precision of its step;
 * - axis labels never clip: the plot keeps room for half a label at its right
 *   edge and at its top;
 * - a chart without data shows its one-line empty state instead of a blank
 *   plot: in place of the whole figure, or (`reserve`) in a box of the plot's
 *   height under the figure's caption, for a chart whose data is sure to come
 *   (the page does not jump when it does).
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

/** 1, 2, 5, 10, 20, 50, ... up to 5e9: whole-number steps for counts, ms, MB and %. */
export const WHOLE_STEPS = (() => {
  const steps = [];
  for (let magnitude = 1; magnitude <= 1e9; magnitude *= 10) steps.push(magnitude, 2 * magnitude, 5 * magnitude);
  return steps;
})();

/** Clock-time steps in seconds: never below a second, so HH:MM:SS labels are distinct. */
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

/** The last non-null value of a series, or null. */
function latest(values) {
  for (let i = values.length - 1; i >= 0; i -= 1) if (values[i] != null) return values[i];
  return null;
}

/**
 * A line chart in `container` that follows the container's width.
 *
 * @param {HTMLElement} container  the chart's box; its parent `<figure>` (when
 *   there is one) gets `data-empty` while the chart has no data.
 * @param {object} options
 * @param {{label: string, color: string, width?: number, dash?: number[], points?: boolean,
 *   fill?: string, format?: (v: number) => string}[]} options.series  the y series.
 * @param {number} [options.height=140]
 * @param {boolean} [options.time=true]  x values are epoch seconds (else whole numbers).
 * @param {string} [options.xLabel]  label of the x values in the legend when not time.
 * @param {(v: number) => string} [options.yFormat]  tick labels of the y axis (whole steps).
 * @param {number} [options.yMin]  lowest y shown (e.g. 0).
 * @param {number} [options.yMax]  highest y shown (e.g. 100 for percentages).
 * @param {number} [options.ySpan=1]  least height of the y range, so a flat or tiny
 *   series still gets a few whole-step ticks (5 for a CPU %, 100 for ms).
 * @param {boolean} [options.legend=true]  show uPlot's legend under the chart.
 * @param {string} [options.empty]  the one-line text shown instead of the plot
 *   while no y value is known.
 * @param {boolean} [options.reserve=false]  keep the plot's height (and the
 *   figure's caption) while empty.
 * @returns {{setData: (data: number[][]) => void, points: () => number, empty: () => boolean,
 *   layout: () => object, uplot: object, destroy: () => void}}
 */
export function lineChart(container, options) {
  const UPlot = uPlotLib();
  const {
    series, height = 140, time = true, xLabel = "", yFormat = String, yMin, yMax, ySpan = 1,
    legend = true, empty = "No data yet.", reserve = false,
  } = options;
  const axis = cssVar("--chart-axis", "#8b949e");
  const grid = cssVar("--chart-grid", "rgba(255,255,255,0.06)");
  const font = `11px ${cssVar("--font-sans", "sans-serif")}`;
  const yRange = (u, min, max) => {
    let lo = yMin !== undefined ? Math.min(yMin, min ?? yMin) : min;
    let hi = yMax !== undefined ? Math.max(yMax, max ?? yMax) : max;
    if (lo == null || hi == null) return [yMin ?? 0, (yMin ?? 0) + ySpan];
    if (yMax === undefined) hi += (hi - lo) * 0.1;
    if (hi - lo < ySpan) {
      if (yMin !== undefined || yMax !== undefined) hi = lo + ySpan;
      else [lo, hi] = [(lo + hi) / 2 - ySpan / 2, (lo + hi) / 2 + ySpan / 2];
    }
    return [lo, hi];
  };
  // Whole-number x (turn numbers): keep a third of a step of room at each end.
  // Clock time: whole seconds at both ends, so a young stream (two samples
  // half a second apart) still gets a tick, and a tick at the end has room.
  // From the data itself: for a single x value uPlot widens min/max on its own
  // (by 86 400 000 on a seconds scale), which would leave the axis without a tick.
  const xRange = (u) => {
    const xs = u.data[0];
    if (!xs || !xs.length) return [0, 1];
    const first = xs[0];
    const last = xs[xs.length - 1];
    return time
      ? [Math.floor(first), Math.max(Math.ceil(last), Math.floor(first) + 1)]
      : [Math.min(first, last - 1) - 0.3, last + 0.3];
  };
  // axis index -> {splits, values, min, max}: the labels as last computed, and the
  // scale they were computed for (uPlot skips the callback for an axis without ticks).
  const labels = new Map();
  const record = (index, format) => (u, splits) => {
    const scale = u.scales[index === 0 ? "x" : "y"];
    // A tick outside the scale (uPlot can place one past the end) gets no label.
    const values = splits.map((v) => (v == null || v < scale.min - 1e-9 || v > scale.max + 1e-9 ? "" : format(v)));
    labels.set(index, { splits: splits.slice(), values, min: scale.min, max: scale.max });
    return values;
  };
  const xFormat = time ? clockTime : (v) => (Number.isInteger(v) ? String(v) : "");
  const legendValue = (format, index) => (u, v, sidx, idx) => {
    // uPlot passes idx == null when the pointer is not over the plot: show the latest value then.
    const value = idx == null ? latest(u.data[index]) : v;
    return value == null ? "–" : format(value);
  };
  const opts = {
    width: Math.max(120, container.clientWidth),
    height,
    // top, right, bottom, left: room for half a y label above the top tick and
    // half an x label beyond the last one (a clock time is about 50 px wide).
    padding: [10, time ? 30 : 14, 0, 0],
    scales: { x: { time, range: xRange }, y: { range: yRange } },
    legend: { show: legend, live: true },
    cursor: { drag: { x: false, y: false }, points: { size: 6 } },
    axes: [
      {
        stroke: axis, font, size: 28, space: time ? 70 : 40, incrs: time ? TIME_STEPS : WHOLE_STEPS,
        grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1, size: 4 },
        values: record(0, xFormat),
      },
      {
        stroke: axis, font, size: 60, space: 24, incrs: WHOLE_STEPS,
        grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1, size: 4 },
        values: record(1, yFormat),
      },
    ],
    series: [
      { label: time ? "time" : xLabel, value: legendValue(xFormat, 0) },
      ...series.map((s, i) => ({
        label: s.label,
        stroke: s.color,
        width: s.width ?? 1.5,
        dash: s.dash,
        fill: s.fill,
        spanGaps: true,
        // Points when asked for, and always for a lone sample (a line needs two).
        points: { show: (u, i, i0, i1) => Boolean(s.points) || i1 === i0, size: 5, fill: s.color },
        value: legendValue(s.format || yFormat, i + 1),
      })),
    ],
  };
  let data = [[], ...series.map(() => [])];
  const figure = container.closest("figure");
  const emptyNode = document.createElement("p");
  emptyNode.className = reserve ? "empty chart-empty chart-empty-reserved" : "empty chart-empty";
  emptyNode.textContent = empty;
  if (reserve) {
    emptyNode.style.minHeight = `${height + (legend ? 26 : 0)}px`; // the plot and its legend row
    container.after(emptyNode);
  } else {
    (figure || container).after(emptyNode);
  }
  const chart = new UPlot(opts, data, container);
  container.dataset.points = "0";

  const setEmpty = (isEmpty) => {
    emptyNode.hidden = !isEmpty;
    if (figure && !reserve) figure.hidden = isEmpty;
    else container.hidden = isEmpty;
    container.dataset.empty = String(isEmpty);
  };
  setEmpty(true);

  const observer = new ResizeObserver(() => {
    const width = Math.max(120, container.clientWidth);
    if (container.clientWidth > 0 && width !== chart.width) chart.setSize({ width, height });
  });
  observer.observe(container);

  return {
    setData(next) {
      data = next;
      setEmpty(!next.slice(1).some((values) => values.some((v) => v != null)));
      chart.setData(next);
      // Not hovered: refresh the legend so it shows the newest values.
      if (chart.cursor.idx == null) chart.setLegend({ idx: null }, false);
      container.dataset.points = String(next[0].length);
    },
    points: () => data[0].length,
    uplot: chart,
    empty: () => container.dataset.empty === "true",
    /**
     * Where the axis labels were drawn, in CSS pixels of the chart's canvas
     * (for tests): per axis, each label's text and box.
     */
    layout() {
      const ctx = document.createElement("canvas").getContext("2d");
      ctx.font = font;
      const ratio = window.devicePixelRatio || 1;
      const plot = { left: chart.bbox.left / ratio, top: chart.bbox.top / ratio,
        width: chart.bbox.width / ratio, height: chart.bbox.height / ratio };
      const current = [...labels.entries()].filter(([index, { min, max }]) => {
        const scale = chart.scales[index === 0 ? "x" : "y"];
        return scale.min === min && scale.max === max;
      });
      const axes = current.map(([index, { splits, values }]) => {
        const horizontal = index === 0;
        const spec = opts.axes[index];
        const boxes = splits.map((value, i) => {
          const text = values[i];
          const width = ctx.measureText(text).width;
          if (horizontal) {
            const x = plot.left + chart.valToPos(value, "x");
            return { text, left: x - width / 2, right: x + width / 2 };
          }
          const y = plot.top + chart.valToPos(value, "y");
          const right = plot.left - spec.ticks.size - (spec.gap ?? 5);
          return { text, left: right - width, right, top: y - 6, bottom: y + 6 };
        }).filter((box) => box.text !== "");
        return { axis: horizontal ? "x" : "y", labels: boxes };
      });
      return { width: chart.width, height: chart.height, plot, axes };
    },
    destroy() {
      observer.disconnect();
      chart.destroy();
      emptyNode.remove();
    },
  };
}
