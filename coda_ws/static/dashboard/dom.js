/**
 * Small DOM helpers. Event data is only ever inserted as text (textContent),
 * never parsed as HTML.
 */

/**
 * Create an element. `props`: `class`, `text`, `title`, `dataset` (object),
 * `attrs` (object), `style` (object); children: nodes or strings (as text).
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  if (props.class) node.className = props.class;
  if (props.text != null) node.textContent = String(props.text);
  if (props.title != null) node.title = String(props.title);
  if (props.dataset) Object.assign(node.dataset, props.dataset);
  if (props.attrs) for (const [key, value] of Object.entries(props.attrs)) node.setAttribute(key, value);
  if (props.style) Object.assign(node.style, props.style);
  for (const child of children) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Set an element's text only when it changed (cheap to call every frame). */
export function setText(node, value) {
  const text = value == null ? "" : String(value);
  if (node.textContent !== text) node.textContent = text;
}

/** The element with this id, or an error naming it. */
export function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`dashboard: element #${id} is missing from the page`);
  return node;
}

/** "123 ms", "1.24 s", or an en dash for missing values. */
export function formatMs(ms) {
  if (ms == null || !Number.isFinite(ms)) return "–";
  if (Math.abs(ms) >= 10000) return `${(ms / 1000).toFixed(1)} s`;
  if (Math.abs(ms) >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  return `${Math.round(ms)} ms`;
}

/**
 * An axis tick in ms: "0", "250 ms", "1 s", "1.5 s". Ticks fall on whole
 * 1/2/5 steps, so no two ticks of one axis read the same.
 */
export function axisMs(ms) {
  if (!Number.isFinite(ms)) return "";
  if (ms === 0) return "0";
  if (Math.abs(ms) < 1000) return `${Math.round(ms)} ms`;
  return `${Number((ms / 1000).toFixed(3))} s`;
}

const numberFormats = new Map(); // digits -> Intl.NumberFormat (building one per call is slow)

/** A number with exactly `digits` decimals and thousands separators, or an en dash. */
export function formatNumber(value, digits = 0) {
  if (value == null || !Number.isFinite(value)) return "–";
  let format = numberFormats.get(digits);
  if (format === undefined) {
    format = new Intl.NumberFormat("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
    numberFormats.set(digits, format);
  }
  return format.format(value);
}

/** Local wall-clock time of an epoch-seconds timestamp, with milliseconds. */
export function formatTime(epochSeconds) {
  if (!Number.isFinite(epochSeconds)) return "–";
  const d = new Date(epochSeconds * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** A short form of a long id (first 8 characters). */
export function shortId(id) {
  return typeof id === "string" && id.length > 10 ? `${id.slice(0, 8)}…` : String(id ?? "–");
}

/** JSON for display; never throws. */
export function toJson(value, indent = 0) {
  try {
    return JSON.stringify(value, null, indent);
  } catch (err) {
    return String(value);
  }
}
