"""Tokens, scopes and the origin policy (docs/protocol.md sections 1 and 7).

Scopes:

``read``
    receive every event type, with content fields redacted;
``read:content``
    receive content fields (what the user said, prompts, responses, tool
    parameters and results, memory content); implies ``read``;
``publish``
    ``POST /events``;
``admin``
    ``/stats``, ``/metrics``, disconnecting clients.

Without auth configured the server trusts every client it accepts (all
scopes), accepts only what its origin policy allows, and takes ``POST
/events`` from loopback only.

Tokens are compared in constant time, never logged, and never read from the
query string (URLs end up in logs): clients send ``Authorization: Bearer
TOKEN`` or, from a browser, the subprotocol ``coda-ws.bearer.TOKEN`` next to
``coda-ws.v1``.
"""

import hmac
import ipaddress
import logging
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "ALL_SCOPES",
    "SCOPES",
    "AuthSpec",
    "Authenticator",
    "HostPolicy",
    "OriginPolicy",
    "bearer_token",
    "check_exposure",
    "is_loopback_host",
    "load_token_file",
    "new_token",
    "parse_host_header",
    "parse_tokens",
    "weak_token_reason",
]

log = logging.getLogger("coda_ws.auth")

SCOPES = ("read", "read:content", "publish", "admin")
ALL_SCOPES = frozenset(SCOPES)
BEARER_PREFIX = "coda-ws.bearer."
_MAX_TOKEN_LENGTH = 512

#: What ``auth=`` accepts: None, ``{token: scopes}`` or ``token -> scopes or None``.
AuthSpec = Mapping[str, str | Iterable[str]] | Callable[[str], str | Iterable[str] | None] | None


def _normalize_scopes(scopes: Any, where: str) -> frozenset[str]:
    if isinstance(scopes, str):
        scopes = [s.strip() for s in scopes.split(",") if s.strip()]
    try:
        names = frozenset(scopes)
    except TypeError:
        raise TypeError(f"{where}: scopes must be a list of strings, got {type(scopes).__name__}") from None
    unknown = sorted(str(s) for s in names if s not in ALL_SCOPES)
    if unknown:
        raise ValueError(f"{where}: unknown scope {unknown[0]!r} (known: {', '.join(SCOPES)})")
    if "read:content" in names:
        names |= {"read"}
    return names


def parse_tokens(text: str, where: str = "CODA_WS_TOKENS") -> dict[str, frozenset[str]]:
    """Parse ``"TOKEN=scope,scope TOKEN2=scope"`` (whitespace or newlines
    between entries; ``#`` starts a comment line) into ``{token: scopes}``.

    Raises:
        ValueError: an entry without ``=``, an empty or duplicate token, or
            an unknown scope; the message names the entry by position, never
            by its token.
    """
    tokens: dict[str, frozenset[str]] = {}
    entries: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entries.extend(line.split())
    for number, entry in enumerate(entries, 1):
        token, sep, scopes = entry.partition("=")
        if not sep or not token:
            raise ValueError(f"{where}: entry {number} must look like TOKEN=scope,scope")
        if token in tokens:
            raise ValueError(f"{where}: entry {number} repeats a token")
        tokens[token] = _normalize_scopes(scopes, f"{where} entry {number}")
    return tokens


def load_token_file(path: str | os.PathLike[str]) -> dict[str, frozenset[str]]:
    """Read tokens from a file in :func:`parse_tokens` format.

    Raises:
        OSError: the file cannot be read.
        ValueError: a malformed entry, or a file without any token (naming the file).
    """
    with open(path, encoding="utf-8") as handle:
        tokens = parse_tokens(handle.read(), where=str(path))
    if not tokens:
        raise ValueError(
            f"{os.fspath(path)}: no tokens in this file; add lines of TOKEN=scope,scope "
            "(`coda-ws token new --scopes read` prints one)"
        )
    return tokens


#: Tokens shorter than this, or made of fewer distinct characters, get a warning.
_WEAK_LENGTH = 16
_WEAK_DISTINCT = 8


def weak_token_reason(token: str) -> str | None:
    """Why ``token`` is easy to guess (too short, too few distinct characters), or None."""
    if len(token) < _WEAK_LENGTH:
        return f"it has {len(token)} characters (use at least {_WEAK_LENGTH})"
    if len(set(token)) < _WEAK_DISTINCT:
        return f"it uses only {len(set(token))} distinct characters"
    return None


def new_token() -> str:
    """A strong random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def bearer_token(environ: Mapping[str, Any]) -> str | None:
    """The token a request carries (Authorization header or bearer subprotocol), or None."""
    header = environ.get("HTTP_AUTHORIZATION", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    for protocol in environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "").split(","):
        protocol = protocol.strip()
        if protocol.startswith(BEARER_PREFIX):
            return protocol[len(BEARER_PREFIX) :] or None
    return None


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Authenticator:
    """Decides which scopes a token grants.

    Args:
        auth: ``None`` (auth off: every accepted client has every scope), a
            dict ``{token: scopes}``, or a callable ``token -> scopes or None``
            for an external identity system. Tokens from the environment
            variable ``CODA_WS_TOKENS`` are added to a dict (or used alone when
            ``auth`` is None and the variable is set).

    Raises:
        TypeError / ValueError: a malformed token table (never naming a token).
    """

    def __init__(self, auth: AuthSpec = None, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        from_env = environ.get("CODA_WS_TOKENS", "").strip()
        self._callable: Callable[[str], Any] | None = None
        self._tokens: list[tuple[bytes, frozenset[str]]] | None = None
        if callable(auth):
            self._callable = auth
        elif auth is not None or from_env:
            tokens: dict[str, frozenset[str]] = {}
            if auth is not None:
                if not isinstance(auth, dict):
                    raise TypeError(
                        f"auth must be a dict of token -> scopes or a callable, got {type(auth).__name__}"
                    )
                for number, (token, scopes) in enumerate(auth.items(), 1):
                    if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_LENGTH:
                        raise ValueError(
                            f"auth: token {number} must be a non-empty string of at most 512 characters"
                        )
                    tokens[token] = _normalize_scopes(scopes, f"auth token {number}")
            if from_env:
                tokens.update(parse_tokens(from_env))
            if not tokens:
                raise ValueError("auth: no tokens configured")
            for number, token in enumerate(tokens, 1):
                reason = weak_token_reason(token)
                if reason is not None:  # never log the token itself
                    log.warning(
                        "token %d of %d is weak: %s; `coda-ws token new` makes a strong one",
                        number,
                        len(tokens),
                        reason,
                    )
            self._tokens = [(token.encode("utf-8"), scopes) for token, scopes in tokens.items()]

    @property
    def enabled(self) -> bool:
        return self._callable is not None or self._tokens is not None

    def scopes_for(self, token: str | None) -> frozenset[str] | None:
        """The scopes ``token`` grants, or None when it is unknown.

        Constant time with respect to the token's content: every configured
        token is compared with ``hmac.compare_digest``.
        """
        if not self.enabled:
            return ALL_SCOPES
        if not token or len(token) > _MAX_TOKEN_LENGTH:
            return None
        if self._callable is not None:
            try:
                scopes = self._callable(token)
            except Exception:
                log.exception("auth callable failed; refusing the token")
                return None
            if scopes is None:
                return None
            try:
                return _normalize_scopes(scopes, "auth callable")
            except (TypeError, ValueError):
                log.exception("auth callable returned invalid scopes; refusing the token")
                return None
        candidate = token.encode("utf-8")
        found = None
        for known, scopes in self._tokens or ():
            if hmac.compare_digest(known, candidate) and found is None:
                found = scopes
        return found


class OriginPolicy:
    """Which browser origins may open the stream (cross-site WebSocket hijacking defence).

    Allowed: requests without ``Origin`` (non-browser clients), pages on
    ``localhost`` / loopback addresses (any port), pages on the host the
    request was addressed to (same host and port, and only when that host is
    itself allowed by the :class:`HostPolicy`: see :meth:`allows`), and
    ``allowed`` origins (``"*"`` allows every origin).

    ``"null"`` (the Origin of pages opened from a file, of sandboxed iframes
    and of some redirects) is refused unless listed explicitly; listing it is
    logged as a warning, because any page can make itself a ``null`` origin.
    """

    def __init__(self, allowed: str | Iterable[str] | None = None) -> None:
        if allowed is None:
            allowed = ()
        elif isinstance(allowed, str):
            allowed = [allowed]
        origins = set()
        for origin in allowed:
            if not isinstance(origin, str) or not origin:
                raise ValueError(
                    f"allowed_origins must be origin strings like 'https://host:port', got {origin!r}"
                )
            if origin == "null":
                log.warning(
                    "allowed_origins includes 'null': pages opened from files, sandboxed iframes and some "
                    "redirects send 'Origin: null', and any web page can make itself such a page, so every "
                    "site the user visits may read the stream; list the dashboard's real origin instead if "
                    "you can"
                )
            elif origin != "*":
                parts = urlsplit(origin)
                if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
                    raise ValueError(
                        f"allowed_origins: {origin!r} is not an origin (scheme://host[:port], '*', or 'null' "
                        "for pages opened from a file)"
                    )
            origins.add(origin.rstrip("/").lower())
        self.allowed = frozenset(origins)

    def allows(self, origin: str | None, host_header: str, host_allowed: bool = True) -> bool:
        """True when a request with this ``Origin`` (None if absent) may connect.

        ``host_allowed``: whether ``host_header`` is a host the server was
        told to serve (not merely let through by ``allowed_hosts="*"``). An
        Origin equal to the Host is accepted only then: a DNS-rebinding page
        always has an Origin equal to the Host it sends.
        """
        if origin is None or "*" in self.allowed:
            return True
        normalized = origin.rstrip("/").lower()
        if normalized in self.allowed:
            return True
        try:
            parts = urlsplit(normalized)
            hostname = parts.hostname
        except ValueError:
            return False
        if hostname is None or parts.scheme not in ("http", "https"):
            return False
        if is_loopback_host(hostname):
            return True
        return host_allowed and bool(host_header) and parts.netloc == host_header.lower()


def check_exposure(host: str, port: int | str, *, authenticated: bool, insecure: bool) -> None:
    """Refuse to serve a non-loopback address without tokens (principle 9).

    The one refusal every way of serving makes (``start()``, ``coda-ws serve``,
    a gunicorn node). With ``insecure`` it logs a warning instead.

    Raises:
        CodaWSError: naming the address and the three ways out.
    """
    if is_loopback_host(host) or authenticated:
        return
    if not insecure:
        from .errors import CodaWSError

        raise CodaWSError(
            f"refusing to serve {host}:{port} without authentication: anyone who can reach it could read what "
            "the user says. Configure tokens (--token-file FILE, the CODA_WS_TOKENS environment variable, or "
            "auth={'TOKEN': ['read']} in Python; `coda-ws token new` makes one), bind to localhost, or accept "
            "the risk with --insecure (insecure=True in Python, CODA_WS_INSECURE=1)."
        )
    log.warning(
        "serving %s:%s without authentication (insecure): every client can read every event", host, port
    )


def parse_host_header(value: str) -> str | None:
    """The host name of a ``Host`` header (lowercase, no port, no brackets,
    no trailing dot), or None when it is malformed."""
    value = value.strip().lower()
    if not value:
        return None
    if value.startswith("["):  # [v6] or [v6]:port
        host, _, rest = value[1:].partition("]")
        if not host or (rest and not (rest.startswith(":") and _is_port(rest[1:]))):
            return None
        return host
    host, sep, port = value.rpartition(":")
    if sep:
        if ":" in host or not _is_port(port):
            return None
    else:
        host = value
    host = host.rstrip(".")
    if not host or any(c in host for c in "/\\@ ?#"):
        return None
    return host


_HOST_NAME = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5


_WILDCARD_BINDS = ("", "0.0.0.0", "::")


class HostPolicy:
    """Which ``Host`` headers the server answers (the DNS-rebinding defence).

    A web page on ``evil.example`` whose DNS answer flips to 127.0.0.1 can
    reach a local server, but its requests still say ``Host: evil.example``.
    Allowed, on any port: ``localhost`` and its subdomains, loopback IP
    addresses (v4 and v6), the address the server is bound to and, for a
    non-loopback bind, the machine's own host names and IP addresses, plus
    ``allowed`` (host names or IPs; ``".example.com"`` or
    ``"*.example.com"`` also allows its subdomains). ``"*"`` turns the check
    off. A request without a ``Host`` header (HTTP/1.0 tools) is allowed:
    every browser sends one.

    Args:
        allowed: extra hosts (a string or a list of strings).
        bind: the host the server binds to.

    Raises:
        ValueError: an entry that is not a host name or IP address.
    """

    def __init__(self, allowed: str | Iterable[str] | None = None, bind: str = "localhost") -> None:
        if allowed is None:
            allowed = ()
        elif isinstance(allowed, str):
            allowed = [allowed]
        names: set[str] = set()
        suffixes: set[str] = set()
        self.everything = False
        for entry in allowed:
            if not isinstance(entry, str) or not entry.strip():
                raise ValueError(f"allowed_hosts must be host names or IP addresses, got {entry!r}")
            entry = entry.strip().lower()
            if entry == "*":
                self.everything = True
                continue
            subdomains = entry.startswith(("*.", "."))
            host = entry.lstrip("*").lstrip(".").rstrip(".").strip("[]")
            if not _HOST_NAME.match(host) and not _is_ip(host):
                raise ValueError(
                    f"allowed_hosts: {entry!r} is not a host name or IP address (no scheme or port; "
                    "'.example.com' allows its subdomains, '*' allows every host)"
                )
            if subdomains:
                suffixes.add("." + host)
            names.add(host)
        names.update(_bound_names(bind))
        self.names = frozenset(names)
        self.suffixes = tuple(sorted(suffixes))

    def allows(self, host_header: str | None) -> bool:
        """True when a request with this ``Host`` header (None if absent) may be answered."""
        if host_header is None or self.everything:
            return True
        return self.allows_explicitly(host_header)

    def allows_explicitly(self, host_header: str | None) -> bool:
        """True when ``host_header`` names an allowed host, not counting ``"*"``."""
        if host_header is None:
            return False
        host = parse_host_header(host_header)
        if host is None:
            return False
        if host in self.names or host == "localhost" or host.endswith(".localhost") or is_loopback_host(host):
            return True
        return host.endswith(self.suffixes) if self.suffixes else False


def _bound_names(bind: str) -> set[str]:
    """The host names and addresses a server bound to ``bind`` is reached by."""
    bind = (bind or "").strip().lower().strip("[]")
    if is_loopback_host(bind):
        return {bind}
    names = set() if bind in _WILDCARD_BINDS else {bind}
    try:
        hostname = socket.gethostname().lower()
        names.update({hostname, socket.getfqdn().lower()})
    except OSError:
        hostname = None
    if bind in _WILDCARD_BINDS:
        try:
            import psutil

            for addresses in psutil.net_if_addrs().values():
                for address in addresses:
                    if address.family in (socket.AF_INET, socket.AF_INET6):
                        names.add(address.address.split("%")[0].lower())
        except Exception:  # interface enumeration is best effort; allowed_hosts covers the rest
            log.debug("could not list network interfaces", exc_info=True)
    for name in [bind] if bind not in _WILDCARD_BINDS else [hostname] if hostname else []:
        try:
            for *_, sockaddr in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP):
                names.add(str(sockaddr[0]).split("%")[0].lower())
        except OSError:
            pass  # a name that does not resolve: the name itself is still allowed
    names.discard("")
    return names
