/**
 * Access to a server that requires tokens: the page's stream client, the
 * token it uses, and the in-page prompt for one.
 *
 * Browsers hide the HTTP status of a refused WebSocket handshake: a 401, a 403,
 * a full server (503) and an unreachable one all end as a close before the
 * socket opened. So after each such failure the page asks the server over
 * plain HTTP, with the same token, whether it may read the stream
 * (`GET events?since=<past any stream>&limit=1`, which needs the `read` scope
 * and answers an empty array). The client's `beforeReconnect` hook waits for
 * that answer (while its backoff delay runs), so no retry goes out before it:
 * a 401 or 403 with the server's JSON refusal stops the client for good and
 * shows the prompt; anything else (success, a network error, a 404 from an
 * older server) is not about the token, and the client retries as usual.
 *
 * A token entered in the prompt is kept in sessionStorage and in the page's
 * fragment (`#token=`), never in the query string or a cookie; the client is
 * replaced by a new one that offers it. A token the server refuses is
 * forgotten and the prompt says why.
 */

import { byId, setText } from "./dom.js";
import { authHeaders, httpUrl, initialToken, rememberToken, TOKEN_CHARS, tokenFragment, tokenFromFragment } from "./page.js";

/**
 * The probe: a position past any stream (18 digits, the most the server
 * parses), so the answer is an empty array however much history it holds.
 */
export const PROBE_PATH = "events?since=999999999999999999&limit=1";

/**
 * Ask the server whether `token` may read the stream.
 *
 * @returns {Promise<{verdict: "ok"|"refused"|"unknown", status: number|null,
 *   error: string|null, message: string|null}>} `refused` only for a 401 or
 *   403 answered by coda_ws (a JSON body with `error`).
 */
export async function probeAccess(token) {
  let response;
  try {
    response = await fetch(httpUrl(PROBE_PATH), {
      headers: { Accept: "application/json", ...authHeaders(token) },
      cache: "no-store",
      credentials: "same-origin",
      signal: AbortSignal.timeout(5000), // a black-holed probe must not hold the reconnect back
    });
  } catch (err) {
    return { verdict: "unknown", status: null, error: "unreachable", message: String(err && err.message) };
  }
  if (response.ok) return { verdict: "ok", status: response.status, error: null, message: null };
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null; // not coda_ws's refusal (a proxy's page, an older server's 404)
  }
  const error = body && typeof body.error === "string" ? body.error : null;
  const message = body && typeof body.message === "string" ? body.message : null;
  const refused = (response.status === 401 || response.status === 403) && error !== null;
  return { verdict: refused ? "refused" : "unknown", status: response.status, error, message };
}

export class StreamAccess {
  /**
   * @param {object} options
   * @param {(token: string|null) => {close: () => void, state: string}} options.connect
   *   makes a stream client that offers `token`, with `beforeReconnect` set to
   *   this object's `beforeReconnect`; its onStatus must call `observe`.
   * @param {(token: string|null) => void} [options.onToken]  the token changed (a new client runs).
   * @param {(refusal: {reason: string, message: string}|null) => void} [options.onRefused]
   *   the server refused the page (null: the prompt was answered, a new client runs).
   */
  constructor({ connect, onToken = () => {}, onRefused = () => {} }) {
    this._connect = connect;
    this._onToken = onToken;
    this._onRefused = onRefused;
    this.token = initialToken();
    this.client = null;
    this.refusal = null;
    this.prompt = byId("auth-prompt");
    this.text = byId("auth-text");
    this.form = byId("auth-form");
    this.input = byId("auth-token");
    this.form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this._submit(this.input.value);
    });
    // Someone edits #token= in the address bar: use it (a fragment change does not reload the page).
    window.addEventListener("hashchange", () => {
      const token = tokenFromFragment();
      if (token && token !== this.token) this.useToken(token);
    });
  }

  /** Connect with the initial token (from the fragment or this tab's storage). */
  start() {
    if (this.token) rememberToken(this.token);
    this.client = this._connect(this.token);
    this._onToken(this.token);
    return this.client;
  }

  /** The fragment that carries the current token, for links to the other page. */
  get fragment() {
    return tokenFragment(this.token);
  }

  /** Replace the client by one that offers `token`. */
  useToken(token) {
    if (this.client) this.client.close();
    this.token = token || null;
    rememberToken(this.token);
    this.refusal = null;
    setText(this.text, "Connecting with this token…");
    this.text.dataset.kind = "pending";
    this._onRefused(null);
    this.client = this._connect(this.token);
    this._onToken(this.token);
  }

  /** Feed every status of the current client here (from its onStatus). */
  observe(status) {
    if (status.state === "connected") this.prompt.hidden = true;
  }

  /**
   * The client's `beforeReconnect` hook: after an attempt that never opened,
   * ask the server why; false (stop for good) when it refuses this page's token.
   */
  async beforeReconnect(status) {
    if (!status.handshakeFailed) return true; // a session that ended: not about the token
    const client = this.client;
    const answer = await probeAccess(this.token);
    if (answer.verdict !== "refused" || client !== this.client) return true;
    this._showRefusal(answer);
    return false;
  }

  _showRefusal(answer) {
    const hadToken = Boolean(this.token);
    let reason;
    let text;
    if (!hadToken) {
      reason = "missing";
      text = "This page could not connect: the server requires a token and none was given. "
        + "Paste one below.";
    } else if (answer.status === 403) {
      reason = "forbidden";
      text = `The server refused this token: ${answer.message || "it may not read the stream"}. `
        + "Use a token with the read scope.";
    } else {
      reason = "refused";
      text = `The server refused this token (${answer.message || "unknown or invalid token"}). `
        + "Check it, or paste another one.";
    }
    if (hadToken) rememberToken(null); // a refused token is not offered again on reload
    this.refusal = { reason, message: text, status: answer.status };
    setText(this.text, text);
    this.text.dataset.kind = hadToken ? "refused" : "missing";
    this.prompt.dataset.reason = reason;
    this.prompt.hidden = false;
    this.input.value = "";
    this.input.setAttribute("aria-invalid", String(hadToken));
    this._onRefused(this.refusal);
    this.input.focus();
  }

  _submit(raw) {
    const token = raw.trim();
    if (!token) {
      this._invalid("Paste a token first.");
      return;
    }
    if (!TOKEN_CHARS.test(token)) {
      this._invalid("That is not a token: tokens have letters, digits and - . _ ~ + ! # $ % & ' * ^ ` | only "
        + "(no spaces).");
      return;
    }
    this.input.removeAttribute("aria-invalid");
    this.input.value = "";
    this.useToken(token);
  }

  _invalid(text) {
    setText(this.text, text);
    this.text.dataset.kind = "invalid";
    this.input.setAttribute("aria-invalid", "true");
    this.input.focus();
  }
}
