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

/**
 * The sessionStorage key of this server's token: one per page directory, so
 * two coda_ws servers mounted on one origin keep their own tokens.
 * sessionStorage stays in this tab and is never sent anywhere (unlike a cookie).
 */
function storageKey(loc = location) {
  return `coda-ws.token:${baseUrl(loc).pathname}`;
}

function storage() {
  try {
    return window.sessionStorage;
  } catch (err) {
    return null; // storage disabled (some privacy settings): the fragment still works
  }
}

/** The token to start with: the fragment's, else the one this tab entered before, else null. */
export function initialToken(loc = location) {
  const fromFragment = tokenFromFragment(loc);
  if (fromFragment) return fromFragment;
  const store = storage();
  return (store && store.getItem(storageKey(loc))) || null;
}

/** The fragment that carries `token` (empty without one). */
export function tokenFragment(token) {
  return token ? `#token=${encodeURIComponent(token)}` : "";
}

/**
 * Keep `token` for this tab: in sessionStorage and in the address's fragment
 * (replaced in place: no navigation, no request). `null` forgets it.
 */
export function rememberToken(token, loc = location) {
  const store = storage();
  if (store) {
    if (token) store.setItem(storageKey(loc), token);
    else store.removeItem(storageKey(loc));
  }
  const url = new URL(loc.href);
  url.hash = tokenFragment(token);
  if (url.href !== loc.href) history.replaceState(history.state, "", token ? url.href : url.href.replace(/#$/, ""));
}

/** Characters a token may have: it travels as a WebSocket subprotocol (an HTTP token, RFC 7230). */
export const TOKEN_CHARS = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** Headers for the server's HTTP endpoints. */
export function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}
