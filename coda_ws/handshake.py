"""Every decision that can refuse a request before it reaches a view or the upgrade.

:class:`Gate` holds the server's access policies (hosts, origins, tokens) and
answers, for one request's WSGI environ and query arguments:

* :meth:`Gate.check_request`: is this request addressed to us (the Host
  allow-list, against DNS rebinding) and, when it comes from a browser page,
  from an origin we serve? Runs before every request, HTTP and upgrade alike.
* :meth:`Gate.upgrade`: is this a WebSocket handshake we accept, with which
  token scopes, and which options (protocol, filter, resume position, replay)?
* :meth:`Gate.http_scope`: may this HTTP request use a scope?

Each refusal is a :class:`~coda_ws.errors.HandshakeRefused` carrying the
HTTP status, a short code and a sentence (docs/protocol.md section 1); the
server turns it into the JSON body ``{"error": code, "message": sentence}``.
Nothing here touches sockets or the server's state: the client limits, which
need the registry, stay in the server. No request of any shape raises
anything else.
"""

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .auth import (
    Authenticator,
    AuthSpec,
    HostPolicy,
    OriginPolicy,
    bearer_token,
    is_loopback_host,
)
from .errors import HandshakeRefused
from .filters import EventFilter
from .protocol import V1_SUBPROTOCOL

__all__ = ["Gate", "UpgradeRequest", "hosts_from_env"]

_MAX_POSITION_DIGITS = 18  # positions beyond this are not numbers a client means


@dataclass(frozen=True)
class UpgradeRequest:
    """A WebSocket handshake the gate accepted.

    Attributes:
        v1: a v1 session (``?v=1``, the ``coda-ws.v1`` subprotocol, or ``since``).
        event_filter: the ``types``/``session_id`` filter.
        since: resume after this position, or None.
        epoch: the epoch ``since`` belongs to, or None.
        replay: send the replay frame (``replay=0`` skips it).
        scopes: the scopes of the client's token (every scope without auth).
    """

    v1: bool
    event_filter: EventFilter
    since: int | None
    epoch: str | None
    replay: bool
    scopes: frozenset[str]


def hosts_from_env(
    allowed_hosts: str | Iterable[str] | None, environ: Mapping[str, str] | None = None
) -> str | list[str] | None:
    """``allowed_hosts`` plus the hosts in ``CODA_WS_ALLOWED_HOSTS`` (comma-separated)."""
    text = (os.environ if environ is None else environ).get("CODA_WS_ALLOWED_HOSTS", "").strip()
    if not text:
        return (
            allowed_hosts if allowed_hosts is None or isinstance(allowed_hosts, str) else list(allowed_hosts)
        )
    extra = [host.strip() for host in text.split(",") if host.strip()]
    if allowed_hosts is None:
        return extra
    return [allowed_hosts, *extra] if isinstance(allowed_hosts, str) else [*allowed_hosts, *extra]


class Gate:
    """The server's access policies and the checks made with them.

    Args:
        bind: the host the server binds to (its names are allowed Hosts).
        allowed_hosts, allowed_origins, auth: as ``CodaWebSocketServer``'s.

    Raises:
        ValueError / TypeError: a malformed host, origin or token table.

    Thread safety: immutable after construction; every method may run in
    many request threads at once.
    """

    def __init__(
        self,
        bind: str,
        allowed_hosts: str | Iterable[str] | None = None,
        allowed_origins: str | Iterable[str] | None = None,
        auth: AuthSpec = None,
    ) -> None:
        self.hosts = HostPolicy(hosts_from_env(allowed_hosts), bind)
        self.origins = OriginPolicy(allowed_origins)
        self.authenticator = Authenticator(auth)

    def check_request(self, environ: Mapping[str, Any]) -> None:
        """Refuse a request addressed to a foreign Host (421) or coming from a
        browser page on an origin that is not allowed (403).

        An Origin equal to the Host is trusted only when that Host is itself
        allowed explicitly (not merely let through by ``allowed_hosts="*"``):
        a DNS-rebinding page always sends an Origin equal to the Host.

        Raises:
            HandshakeRefused: with ``reason`` ``"host"`` or ``"origin"``.
        """
        host = environ.get("HTTP_HOST")
        if not self.hosts.allows(host):
            raise HandshakeRefused(
                421,
                "forbidden_host",
                f"host {host!r} is not served here (DNS rebinding defence): add it with allowed_hosts=[...], "
                "--allow-host or CODA_WS_ALLOWED_HOSTS",
                reason="host",
            )
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None and not self.origins.allows(
            origin, host or "", self.hosts.allows_explicitly(host)
        ):
            raise HandshakeRefused(
                403, "forbidden_origin", f"origin {origin!r} is not allowed", reason="origin"
            )

    def scopes(self, environ: Mapping[str, Any]) -> frozenset[str]:
        """The scopes of the request's token (every scope when auth is off).

        Never logs the token.

        Raises:
            HandshakeRefused: 401 when auth is on and the token is missing or unknown.
        """
        authenticator = self.authenticator
        if not authenticator.enabled:
            return authenticator.scopes_for(None) or frozenset()
        token = bearer_token(environ)
        if token is None:
            raise HandshakeRefused(401, "unauthorized", "a token is required: 'Authorization: Bearer TOKEN'")
        scopes = authenticator.scopes_for(token)
        if scopes is None:
            raise HandshakeRefused(401, "unauthorized", "unknown or invalid token")
        return scopes

    def http_scope(self, environ: Mapping[str, Any], scope: str) -> None:
        """May this HTTP request use ``scope``? Without auth, ``publish`` is
        allowed from loopback only and everything else is allowed.

        Raises:
            HandshakeRefused: 401 (no or bad token) or 403 (scope missing).
        """
        if not self.authenticator.enabled:
            if scope == "publish" and not is_loopback_host(environ.get("REMOTE_ADDR") or ""):
                raise HandshakeRefused(
                    403, "forbidden", "publishing is only allowed from loopback when auth is off"
                )
            return
        if scope not in self.scopes(environ):
            raise HandshakeRefused(403, "forbidden", f"this token does not have the {scope!r} scope")

    def upgrade(self, environ: Mapping[str, Any], args: Mapping[str, str]) -> UpgradeRequest:
        """Check a WebSocket handshake and parse its options.

        Args:
            environ: the request's WSGI environ.
            args: its query arguments (one value per name).

        Raises:
            HandshakeRefused: 400 for a malformed handshake or parameter
                (ASCII digits only for positions), 401/403 for tokens and scopes.
        """
        if environ.get("HTTP_SEC_WEBSOCKET_VERSION") != "13" or not environ.get("HTTP_SEC_WEBSOCKET_KEY"):
            raise HandshakeRefused(400, "bad_request", "not a WebSocket version 13 handshake")
        if "token" in args or "access_token" in args:
            raise HandshakeRefused(
                400,
                "bad_request",
                "tokens are not accepted in the query string; send 'Authorization: Bearer TOKEN' "
                "or the subprotocol coda-ws.bearer.TOKEN",
            )
        scopes = self.scopes(environ)
        if "read" not in scopes:
            raise HandshakeRefused(403, "forbidden", "this token does not have the 'read' scope")
        offered = [p.strip() for p in environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "").split(",") if p.strip()]
        v1 = V1_SUBPROTOCOL in offered
        version = args.get("v")
        if version is not None:
            if version not in ("0", "1"):
                raise HandshakeRefused(
                    400, "bad_request", f"unsupported protocol version v={version!r} (use v=1)"
                )
            v1 = v1 or version == "1"
        try:
            event_filter = EventFilter(args.get("types"), args.get("session_id") or None)
        except (TypeError, ValueError) as exc:
            raise HandshakeRefused(400, "bad_request", f"invalid types or session_id: {exc}") from None
        since_text = args.get("since")
        since = None
        if since_text is not None:
            if not (since_text.isascii() and since_text.isdigit()) or len(since_text) > _MAX_POSITION_DIGITS:
                raise HandshakeRefused(
                    400, "bad_request", f"since must be a non-negative integer, got {since_text!r}"
                )
            since = int(since_text)
            v1 = True
        epoch = args.get("epoch") or None
        if epoch is not None and since is None:
            raise HandshakeRefused(400, "bad_request", "epoch is only meaningful with since")
        replay = args.get("replay", "1")
        if replay not in ("0", "1"):
            raise HandshakeRefused(400, "bad_request", f"replay must be 0 or 1, got {replay!r}")
        return UpgradeRequest(v1, event_filter, since, epoch, replay == "1", scopes)
