/**
 * Connected clients, from GET <base>/stats (admin scope). The panel stays
 * hidden while the endpoint is missing (404) or the token may not read it
 * (401/403); it then stops asking.
 */

import { byId, el, formatNumber, setText, shortId, toJson } from "./dom.js";
import { authHeaders, httpUrl } from "./page.js";

const POLL_MS = 3000;
const GIVE_UP = new Set([401, 403, 404]);

function pick(obj, ...keys) {
  for (const key of keys) if (obj[key] !== undefined && obj[key] !== null) return obj[key];
  return null;
}

function since(value) {
  if (value == null) return "–";
  const seconds = typeof value === "number" ? value : Date.parse(value) / 1000;
  if (!Number.isFinite(seconds)) return String(value);
  const age = Math.max(0, Date.now() / 1000 - seconds);
  if (age < 60) return `${Math.round(age)} s ago`;
  if (age < 3600) return `${Math.round(age / 60)} min ago`;
  return `${(age / 3600).toFixed(1)} h ago`;
}

function describeFilters(filters) {
  if (!filters) return "all";
  const types = Array.isArray(filters.types) ? filters.types.join(",") : filters.types;
  const parts = [types || "all types"];
  if (filters.session_id) parts.push(`session ${shortId(filters.session_id)}`);
  return parts.join(" · ");
}

export class ClientsPanel {
  constructor(token) {
    this.token = token;
    this.panel = byId("panel-clients");
    this.body = byId("clients-table").tBodies[0];
    this.count = byId("clients-count");
    this.timer = null;
    this.stopped = false;
    this.generation = 0; // polls of an earlier start() (another token) are dropped
  }

  /** Start polling (again) with `token`; a poll in flight for an older token is ignored. */
  start(token = this.token) {
    clearTimeout(this.timer);
    this.token = token;
    this.stopped = false;
    this.generation += 1;
    this._poll(this.generation);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  async _poll(generation = this.generation) {
    this.timer = null;
    if (this.stopped || generation !== this.generation) return;
    let response;
    try {
      response = await fetch(httpUrl("stats"), {
        headers: { Accept: "application/json", ...authHeaders(this.token) },
        cache: "no-store",
      });
      if (generation !== this.generation) return;
    } catch (err) {
      if (generation !== this.generation) return;
      // Server unreachable (restarting?): hide for now and try again later.
      this._hide("server unreachable");
      this._schedule(POLL_MS * 3);
      return;
    }
    if (GIVE_UP.has(response.status)) {
      this._hide(`/stats answered ${response.status}`);
      this.stop();
      return;
    }
    if (!response.ok) {
      this._hide(`/stats answered ${response.status}`);
      this._schedule(POLL_MS * 3);
      return;
    }
    let stats;
    try {
      stats = await response.json();
      if (generation !== this.generation) return;
    } catch (err) {
      this._hide("/stats did not answer JSON");
      this.stop();
      return;
    }
    this._render(stats);
    this._schedule(POLL_MS);
  }

  _schedule(ms) {
    const generation = this.generation;
    if (!this.stopped) this.timer = setTimeout(() => this._poll(generation), ms);
  }

  _hide(reason) {
    this.panel.hidden = true;
    this.panel.dataset.unavailable = reason;
    document.body.classList.remove("has-clients");
  }

  _render(stats) {
    const clients = Array.isArray(stats.clients) ? stats.clients : [];
    this.panel.hidden = false;
    delete this.panel.dataset.unavailable;
    document.body.classList.add("has-clients");
    setText(this.count, `${clients.length} connected`);
    this.body.replaceChildren(...clients.slice(0, 200).map((c) => {
      const id = pick(c, "id", "client_id");
      return el("tr", { dataset: { client: String(id) } },
        el("td", { class: "mono", text: shortId(id), title: String(id) }),
        el("td", { class: "mono", text: pick(c, "address", "remote_address") ?? "–" }),
        el("td", { text: describeFilters(pick(c, "filters", "filter")), title: toJson(pick(c, "filters", "filter")) }),
        el("td", { text: formatNumber(pick(c, "queue_depth", "queue", "queued")) }),
        el("td", { text: formatNumber(pick(c, "lag")) }),
        el("td", { text: formatNumber(pick(c, "sent", "events_sent", "frames_sent")) }),
        el("td", { text: formatNumber(pick(c, "dropped", "events_dropped", "conflated")) }),
        el("td", { text: since(pick(c, "connected_since", "connected_at", "since")) }));
    }));
  }
}
