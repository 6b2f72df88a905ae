/**
 * Where this page lives and how to reach the server that served it.
 *
 * Every URL is derived from `location`, relative to the page's directory, so
 * the same files work standalone (page at `/`, stream at `/ws`) and mounted
 * under a prefix (page at `/coda-ws/`, stream at `/coda-ws/ws`).
 */

/** The directory of the page: `/` for `/` and `/debug`, `/coda-ws/` for `/coda-ws/`. */
export function baseUrl(loc = location) {
  return new URL(".", loc.href);
}

/** An HTTP URL of the server, relative to the page's directory (`"turns"`, `"stats"`). */
export function httpUrl(path, loc = location) {
  return new URL(path, baseUrl(loc));
}

/** The stream's WebSocket URL (ws: or wss: to match the page). */
export function streamUrl(loc = location) {
  const url = new URL("ws", baseUrl(loc));
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

/**
 * The token from the URL fragment (`#token=...`), or null. The fragment never
 * reaches the server, so the token stays out of request logs; it is sent as a
 * WebSocket subprotocol and as an Authorization header on HTTP requests.
 */
export function tokenFromFragment(loc = location) {
  const hash = loc.hash.startsWith("#") ? loc.hash.slice(1) : loc.hash;
  const token = new URLSearchParams(hash).get("token");
  return token ? token : null;
}

/** Headers for the server's HTTP endpoints. */
export function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}
