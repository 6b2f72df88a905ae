/**
 * The debug page: a raw live tail of the stream (filtered by the server, with
 * the same subscribe frame any client can send) and a form that publishes a
 * test event through POST <base>/events.
 */

import { CodaEventClient } from "../coda-ws-client.js";
import { byId, el, setText, toJson } from "./dom.js";
import { EVENT_SAMPLES, EVENT_TYPES } from "./event-types.js";
import { parsePatterns } from "./glob.js";
import { StreamAccess } from "./access.js";
import { authHeaders, httpUrl, streamUrl } from "./page.js";

const MAX_LINES = 500;

const tail = byId("tail");
const pill = byId("status-pill");
const typesInput = byId("tail-types");
const sessionInput = byId("tail-session");
const followBox = byId("tail-follow");
const form = byId("emit-form");
const typeSelect = byId("emit-type");
const sessionField = byId("emit-session");
const fieldsArea = byId("emit-fields");
const sendButton = byId("emit-send");
const answer = byId("emit-answer");
const hint = byId("emit-hint");

let pending = [];
let scheduled = false;

function line(text, kind) {
  return el("li", { dataset: { kind }, text });
}

function flush() {
  scheduled = false;
  const batch = pending.length > MAX_LINES ? pending.slice(-MAX_LINES) : pending;
  pending = [];
  const atBottom = tail.scrollHeight - tail.scrollTop - tail.clientHeight < 24;
  const fragment = document.createDocumentFragment();
  for (const [text, kind] of batch) fragment.append(line(text, kind));
  tail.append(fragment);
  while (tail.childElementCount > MAX_LINES) tail.firstElementChild.remove();
  tail.dataset.lines = String(tail.childElementCount);
  if (followBox.checked && atBottom) tail.scrollTop = tail.scrollHeight;
}

function push(text, kind) {
  pending.push([text, kind]);
  if (pending.length > MAX_LINES * 2) pending = pending.slice(-MAX_LINES);
  if (!scheduled) {
    scheduled = true;
    requestAnimationFrame(flush);
  }
}

function setPublish(hello) {
  // The server lists the token's scopes in hello when auth is on; without them
  // (auth off) loopback clients may publish, and the POST's answer tells.
  const scopes = Array.isArray(hello && hello.scopes) ? hello.scopes : null;
  const allowed = hello ? scopes === null || scopes.includes("publish") : false;
  sendButton.disabled = !allowed;
  form.dataset.publish = String(allowed);
  setText(hint, !hello
    ? "Waiting for the server…"
    : allowed
      ? `POST ${httpUrl("events").pathname} publishes the event through the same stream.`
      : "Your token lacks the publish scope: sending is disabled.");
}

function connect(token) {
  return new CodaEventClient(streamUrl(), {
    token,
    beforeReconnect: (status) => access.beforeReconnect(status),
    onEvent(event, meta) {
      push(`${meta.replayed ? "[replay] " : ""}${toJson(event)}`, "event");
    },
    onControl(frame) {
      if (frame.type === "replay") {
        const count = Array.isArray(frame.events) ? frame.events.length : 0;
        push(`{"type":"replay","events":[… ${count} events, listed below …]}`, "control");
        return;
      }
      push(toJson(frame), "control");
      if (frame.type === "hello") setPublish(frame);
    },
    onStatus(status) {
      access.observe(status);
      if (access.refusal) return;
      pill.dataset.state = status.state;
      setText(pill, status.state);
    },
    onGap(gap) {
      push(`-- stream not resumed (${gap.reason}); earlier events may be missing --`, "control");
    },
  });
}

const access = new StreamAccess({
  connect,
  onToken() {
    // Keep the token when going back to the dashboard.
    byId("dashboard-link").hash = access.fragment;
  },
  onRefused(refusal) {
    if (!refusal) return;
    pill.dataset.state = "unauthorized";
    setText(pill, refusal.reason === "missing" ? "token needed" : "token refused");
    setPublish(null);
  },
});
access.start();

byId("tail-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const types = parsePatterns(typesInput.value);
  access.client.subscribe({ types: types.length ? types : null, sessionId: sessionInput.value.trim() || null });
});
byId("tail-clear").addEventListener("click", () => {
  tail.replaceChildren();
  tail.dataset.lines = "0";
});

// -- emit form ------------------------------------------------------------------

typeSelect.replaceChildren(...EVENT_TYPES.map((type) => el("option", { text: type, attrs: { value: type } })));
typeSelect.value = "system_info";

/** Samples of the types the server knows and this page does not (types of your own), from /schema. */
const schemaSamples = {};

function fillSample() {
  const name = typeSelect.value;
  const sample = (Object.hasOwn(EVENT_SAMPLES, name) && EVENT_SAMPLES[name]) || (Object.hasOwn(schemaSamples, name) && schemaSamples[name]) || {};
  fieldsArea.value = JSON.stringify(sample, null, 2);
}
typeSelect.addEventListener("change", fillSample);
fillSample();
setPublish(null);

/** A placeholder value for a field's JSON Schema: its default, else an empty value of its kind. */
function placeholder(schema) {
  if (!schema || typeof schema !== "object") return null;
  if ("default" in schema) return schema.default;
  const kind = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  return { string: "", integer: 0, number: 0.0, boolean: false, array: [], object: {} }[kind] ?? null;
}

async function addRegisteredTypes() {
  let schema;
  try {
    const response = await fetch(httpUrl("schema"), { cache: "no-store" });
    if (!response.ok) return;
    schema = await response.json();
  } catch (err) {
    return; // the form keeps the built-in types
  }
  const envelope = new Set(["version", "seq", "timestamp", "type", "session_id", "redacted"]);
  for (const [name, definition] of Object.entries(schema.$defs || {})) {
    if (Object.hasOwn(EVENT_SAMPLES, name)) continue; // not `in`: a type may be named "constructor"
    const properties = definition.properties || {};
    const contentTypes = (definition.else && definition.else.properties) || {};
    const sample = {};
    for (const [field, fieldSchema] of Object.entries(properties)) {
      if (!envelope.has(field)) sample[field] = placeholder(contentTypes[field] || fieldSchema);
    }
    schemaSamples[name] = sample;
    typeSelect.append(el("option", { text: name, attrs: { value: name } }));
  }
}
addRegisteredTypes();

function showAnswer(text, ok) {
  answer.hidden = false;
  answer.dataset.ok = String(ok);
  setText(answer, text);
}

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  let fields;
  try {
    fields = JSON.parse(fieldsArea.value || "{}");
  } catch (err) {
    showAnswer(`The fields are not valid JSON: ${err.message}`, false);
    return;
  }
  if (fields === null || typeof fields !== "object" || Array.isArray(fields)) {
    showAnswer("The fields must be a JSON object.", false);
    return;
  }
  const body = { type: typeSelect.value, ...fields };
  const session = sessionField.value.trim();
  if (session) body.session_id = session;
  sendButton.disabled = true;
  try {
    const response = await fetch(httpUrl("events"), {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json", ...authHeaders(access.token) },
      body: JSON.stringify(body),
    });
    const text = await response.text();
    let detail = text;
    try {
      detail = toJson(JSON.parse(text));
    } catch (err) {
      detail = text.length > 300 ? `${text.slice(0, 300)}…` : text;
    }
    showAnswer(`${response.status} ${response.statusText} ${detail}`.trim(), response.status === 202);
  } catch (err) {
    showAnswer(`Request failed: ${err.message}`, false);
  } finally {
    sendButton.disabled = form.dataset.publish !== "true";
  }
});

window.codaDebug = {
  get client() { return access.client; },
  access,
};
