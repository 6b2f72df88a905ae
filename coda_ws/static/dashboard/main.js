/**
 * The live dashboard: one CodaEventClient feeds every panel.
 *
 * Events are queued as they arrive and applied once per animation frame
 * (requestAnimationFrame): the panels' state takes every event, but the DOM
 * is updated once per frame, not once per event. During a burst (many events
 * per frame) the DOM is updated at most every BURST_RENDER_MS, so the page
 * keeps answering clicks while thousands of events stream in; a user action
 * (a filter change) renders at the next frame regardless. Control frames
 * (hello) go through the same queue so they are applied in stream order.
 *
 * On a server that requires tokens, StreamAccess (access.js) owns the client:
 * when the server refuses the page it stops the client and shows the token
 * prompt; a token entered there replaces the client by a new one. Events the
 * panels already applied are not applied twice when that happens.
 */

import { CodaEventClient } from "../coda-ws-client.js";
import { ClientsPanel } from "./clients-panel.js";
import { ConnectionPanel } from "./connection-panel.js";
import { ConversationPanel } from "./conversation-panel.js";
import { EventLog } from "./event-log.js";
import { LatencyPanel } from "./latency-panel.js";
import { StreamAccess } from "./access.js";
import { authHeaders, httpUrl, streamUrl } from "./page.js";
import { SystemPanel } from "./system-panel.js";
import { TurnTracker } from "./turns.js";

/** Past turns asked from GET /turns when the dashboard joins a stream. */
const SEED_TURNS = 200;
/** Events in one frame from which the frame counts as part of a burst. */
const BURST_EVENTS = 50;
/** Least time between two DOM updates during a burst, in ms. */
const BURST_RENDER_MS = 150;

const tracker = new TurnTracker();
const connection = new ConnectionPanel();
const conversation = new ConversationPanel({ summaryFor: (turn) => tracker.summaryForSeq(turn.startSeq) });
const latency = new LatencyPanel(tracker);
const system = new SystemPanel();
const log = new EventLog(() => schedule(true));
const clients = new ClientsPanel(null);
let clientsToken; // the token the clients panel polls with (undefined: not started)

const queue = [];
let scheduled = false;
let urgent = false; // a user action waits for the next render
let lastRenderAt = 0;
let burstUntil = 0; // renders are spaced out until then
let seededEpoch = null;
// The seq of the last event the panels have applied (the client's lastSeq runs
// ahead of it while events wait in the queue for the next frame).
let appliedSeq = 0;
// The stream position the panels have taken events up to (across clients: a
// client made for a new token starts afresh and would deliver them again).
let seenEpoch = null;
let seenSeq = 0;

function schedule(now = false) {
  urgent = urgent || now;
  if (scheduled) return;
  scheduled = true;
  // Background tabs get no animation frames: fall back to a timer there, so the
  // queue is still drained (and stays bounded) while nobody looks.
  if (document.hidden) setTimeout(flush, 250);
  else requestAnimationFrame(flush);
}

function flush() {
  scheduled = false;
  const batch = queue.splice(0, queue.length);
  const now = performance.now();
  if (batch.length >= BURST_EVENTS) burstUntil = now + BURST_RENDER_MS;
  let live = 0;
  for (const item of batch) {
    if (item.hello) {
      tracker.setEpoch(item.hello.epoch);
      continue;
    }
    const { event, meta } = item;
    if (item.epoch === seenEpoch && event.seq <= seenSeq) continue; // applied before (an earlier client)
    seenEpoch = item.epoch;
    seenSeq = event.seq;
    appliedSeq = event.seq;
    if (!meta.replayed) live += 1;
    // The turn tracker is seeded from GET /turns, so replayed (partial) events are not fed to it.
    if (!meta.replayed) tracker.feed(event);
    conversation.ingest(event);
    system.ingest(event);
    log.ingest(event, meta);
  }
  connection.countEvents(live);
  if (urgent || now >= burstUntil || now - lastRenderAt >= BURST_RENDER_MS) {
    urgent = false;
    lastRenderAt = now;
    render();
  } else {
    schedule(); // the state is up to date; the DOM follows in a later frame
  }
}

function render() {
  connection.render(appliedSeq);
  conversation.render();
  latency.render();
  system.render();
  log.render();
}

async function seedTurns(hello) {
  if (seededEpoch === hello.epoch) return;
  seededEpoch = hello.epoch;
  try {
    const response = await fetch(httpUrl(`turns?limit=${SEED_TURNS}`), {
      headers: authHeaders(access.token),
      cache: "no-store",
    });
    if (!response.ok) throw new Error(`GET turns answered ${response.status}`);
    const body = await response.json();
    // Turns that started after the hello are built from the live events instead.
    const earlier = (body.turns || []).filter((t) => t.start_seq <= hello.seq);
    if (tracker.seed(earlier, hello.epoch)) schedule();
  } catch (err) {
    // No breakdown history (older server, or gone again): live turns still show,
    // and the next hello of this epoch tries again.
    seededEpoch = null;
    console.warn("dashboard: could not load past turns:", err);
  }
}

function connect(token) {
  return new CodaEventClient(streamUrl(), {
    token,
    beforeReconnect: (status) => access.beforeReconnect(status),
    onEvent(event, meta) {
      queue.push({ event, meta, epoch: access.client ? access.client.epoch : null });
      schedule();
    },
    onStatus(status) {
      connection.setStatus(status);
      access.observe(status);
      schedule();
    },
    onGap(gap) {
      connection.showGap(gap);
    },
    onControl(frame) {
      if (frame.type === "hello") {
        queue.push({ hello: frame });
        schedule();
        seedTurns(frame);
        if (clientsToken !== access.token) {
          clientsToken = access.token;
          clients.start(access.token);
        }
      }
    },
  });
}

const access = new StreamAccess({
  connect,
  onToken() {
    // Keep the token when moving to the debug page (the fragment never reaches the server).
    document.getElementById("debug-link").hash = access.fragment;
  },
  onRefused(refusal) {
    connection.setRefused(refusal);
  },
});
access.start();

// Events/s decays to zero when the stream is quiet: redraw the connection panel now and then.
setInterval(() => connection.render(appliedSeq), 1000);

// For tests and for poking around from the console.
window.codaDashboard = {
  get client() { return access.client; },
  access,
  tracker,
  log,
  panels: { connection, conversation, latency, system, log, clients },
  charts: { latency: latency.chart, cpu: system.cpuChart, memory: system.memChart, gpu: system.gpuChart },
};
