"""The connected clients: admitting them, counting them, closing them.

:class:`ClientRegistry` owns everything that concerns the set of WebSocket
clients rather than one of them: the limits (``max_clients``,
``max_clients_per_address``, counted from the moment a handshake is accepted,
so handshakes in progress count too), the upgrade itself (subscribe, the
handshake response held until the client is registered, the first frames),
the registry of connected clients, every counter of ``get_stats()`` about
clients, and closing them all. Each client's session is its
:class:`~coda_ws.connection.Connection`; the registry starts it in the
request thread and unregisters it when it ends.

Lock: ``_lock`` guards the client table, the slot counts and every counter
below; it is never held across I/O, a handler, or a log call that could block
(snapshots are taken under it and acted on outside it).
"""

import logging
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

from . import framing
from ._transport import ServerTransport
from .bus import EventBus
from .connection import Connection, GuardedSocket, SessionSettings
from .deadline import Deadline
from .errors import HandshakeRefused
from .handshake import UpgradeRequest
from .protocol import CLOSE_ABNORMAL, PROTOCOL_VERSION, SERVER_NAME, V1_SUBPROTOCOL
from .wire import redact_event

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["ClientRegistry", "RegistryLimits", "RegistryStats"]

log = logging.getLogger("coda_ws.server")

#: The counters ``get_stats()`` reports as plain numbers.
_TOTALS = (
    "total_connections",
    "events_sent",
    "errors",
    "invalid_messages",
    "handler_errors",
    "rejected_handshakes",
    "rate_limited",
)


@dataclass(frozen=True)
class RegistryLimits:
    """The limits and sizes the registry applies to every client.

    Attributes:
        max_clients: concurrent clients (and handshakes in progress).
        max_clients_per_address: of those, from one peer IP.
        max_message_size: the largest client frame, bytes.
        max_replay_bytes: the largest replay frame, bytes.
        write_timeout: seconds a write may wait for a client that reads nothing (None: no limit).
    """

    max_clients: int
    max_clients_per_address: int
    max_message_size: int
    max_replay_bytes: int
    write_timeout: float | None


class RegistryStats(TypedDict):
    """:meth:`ClientRegistry.stats`: the clients' part of ``get_stats()``
    (``docs/observability.md`` describes every key)."""

    total_connections: int
    events_sent: int
    errors: int
    invalid_messages: int
    handler_errors: int
    rejected_handshakes: int
    rate_limited: int
    current_connections: int
    disconnects: dict[str, int]  # reason -> count
    disconnect_codes: dict[str, int]  # close code as a string ("1006": no close frame) -> count
    resumes: dict[str, int]  # "recovered" or the reason it was not -> count
    rejected_requests: dict[
        str, int
    ]  # "host" (421) and "origin" (403) -> requests refused before anything else


class _Hooks:
    """What each Connection needs from the server (its SessionHooks), and no more."""

    __slots__ = ("_registry",)

    def __init__(self, registry: "ClientRegistry") -> None:
        self._registry = registry

    def connected(self, conn: Connection) -> None:
        self._registry._run_handlers("connect", conn.id)

    def message(self, conn: Connection, data: dict[str, Any]) -> None:
        self._registry._run_handlers("message", conn.id, data)

    def count(self, name: str) -> None:
        self._registry.count(name)

    def last_seq(self) -> int:
        seq: int = self._registry.bus.last_seq
        return seq


class ClientRegistry:
    """Admits, keeps, counts and closes the WebSocket clients of one server.

    Args:
        bus: the stream clients follow.
        limits: see :class:`RegistryLimits`.
        settings: every session's keepalive and rate limit.
        run_handlers: ``run_handlers(kind, *args)`` runs the server's
            ``connect``/``disconnect``/``message`` handlers (it isolates and
            counts their failures).

    Thread safety: every method may be called from any thread.
    """

    def __init__(
        self,
        bus: EventBus,
        limits: RegistryLimits,
        settings: SessionSettings,
        run_handlers: Callable[..., None],
    ) -> None:
        self.bus = bus
        self.limits = limits
        self._settings = settings
        self._run_handlers = run_handlers
        self._hooks = _Hooks(self)
        # _lock guards everything below; _changed (same lock) is notified
        # whenever a client is registered or unregistered.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._clients: dict[str, Connection] = {}
        self._reserved = 0  # handshakes in progress, counted against max_clients
        self._per_address: dict[str, int] = {}  # peer IP -> clients and handshakes in progress from it
        self._totals = dict.fromkeys(_TOTALS, 0)
        self._rejected_requests = {"host": 0, "origin": 0}
        self._disconnects: dict[str, int] = {}
        self._disconnect_codes: dict[str, int] = {}  # close code as a string ("1006": no close frame)
        self._resumes: dict[str, int] = {}  # "recovered" or the reason it was not -> count

    # -- counters --------------------------------------------------------------------

    def count(self, name: str, amount: int = 1) -> None:
        """Add to one of the plain counters of :meth:`stats`."""
        with self._lock:
            self._totals[name] += amount

    def count_refusal(self, refused: HandshakeRefused, upgrade: bool) -> None:
        """Count a request refused before anything else (host or origin)."""
        with self._lock:
            if refused.reason is not None:
                self._rejected_requests[refused.reason] += 1
            if upgrade:
                self._totals["rejected_handshakes"] += 1

    def stats(self) -> RegistryStats:
        """The registry's part of ``get_stats()`` (a consistent snapshot)."""
        with self._lock:
            totals = dict(self._totals)
            connections = list(self._clients.values())
            disconnects = dict(self._disconnects)
            disconnect_codes = dict(self._disconnect_codes)
            resumes = dict(self._resumes)
            rejected = dict(self._rejected_requests)
        return RegistryStats(
            total_connections=totals["total_connections"],
            events_sent=totals["events_sent"] + sum(conn.frames_sent for conn in connections),
            errors=totals["errors"] + sum(conn.errors for conn in connections),
            invalid_messages=totals["invalid_messages"],
            handler_errors=totals["handler_errors"],
            rejected_handshakes=totals["rejected_handshakes"],
            rate_limited=totals["rate_limited"],
            current_connections=len(connections),
            disconnects=disconnects,
            disconnect_codes=disconnect_codes,
            resumes=resumes,
            rejected_requests=rejected,
        )

    # -- the table --------------------------------------------------------------------

    def snapshot(self) -> dict[str, Connection]:
        """A copy of the client table: client id -> :class:`Connection`."""
        with self._lock:
            return dict(self._clients)

    def ids(self) -> list[str]:
        """The ids of the connected clients."""
        with self._lock:
            return list(self._clients)

    def __len__(self) -> int:
        return len(self._clients)

    def wait_for(self, min_clients: int, deadline: Deadline) -> bool:
        """Block until at least ``min_clients`` are connected; False when ``deadline`` passes first."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._clients) >= min_clients, deadline.remaining())

    def close_all(self, code: int, reason: str, timeout: float) -> int:
        """Close every client with ``code`` once it has the events already
        dispatched; shut down the sockets of clients still connected when 4/5
        of ``timeout`` has passed. Returns how many were still connected when
        ``timeout`` seconds had passed."""
        deadline = Deadline(timeout)
        grace = deadline.earlier(timeout / 5)  # healthy clients answer the close frame well before
        # What each client gets before its close frame: everything emitted so
        # far, not only what is dispatched (under load the dispatcher may lag).
        head = max(self.bus.head, self.bus.deliverable_seq)
        for conn in self.snapshot().values():
            conn.request_close(code, reason, after=head)
        with self._changed:
            self._changed.wait_for(lambda: not self._clients, grace.remaining())
            stragglers = list(self._clients.values())
        for conn in stragglers:
            conn.sock.shutdown()
        with self._changed:
            self._changed.wait_for(lambda: not self._clients, deadline.remaining())
            return len(self._clients)

    # -- one client's life ---------------------------------------------------------------

    def serve(
        self, environ: "WSGIEnvironment", raw_sock: socket.socket, peer: str, upgrade: UpgradeRequest
    ) -> bool:
        """Admit a client whose handshake the gate accepted, run its session in
        this (request) thread, and unregister it when it ends.

        Returns False when the WebSocket handshake itself failed (the caller
        answers 400), True once a session ran.

        Raises:
            HandshakeRefused: 503 when a client limit is reached (nothing was written).
        """
        self._reserve(peer)
        environ["coda_ws.socket_taken"] = True  # no HTTP response may follow
        raw_sock.settimeout(
            None
        )  # the handshake deadline is over; the reader blocks as long as the client lives
        _tune_socket(raw_sock)
        sock = GuardedSocket(raw_sock, write_timeout=self.limits.write_timeout)
        try:
            conn = self._accept(environ, peer, sock, upgrade)
        except Exception as exc:
            with self._lock:
                self._reserved -= 1
                self._release_address_locked(peer)
            log.warning("WebSocket handshake with %s failed: %s", peer, exc)
            try:
                sock.release()  # simple-websocket's refusal, if it wrote one
            except OSError:
                pass
            sock.shutdown()
            return False
        try:
            conn.run()
        except Exception:
            log.exception("client %s: writer failed", conn.id)
            conn.disconnect_reason = conn.disconnect_reason or "internal_error"
        finally:
            conn.end()
            self._unregister(conn)
        return True

    def _reserve(self, address: str) -> None:
        """Count a handshake in progress against both client limits.

        Raises:
            HandshakeRefused: 503 naming the limit reached.
        """
        limits = self.limits
        with self._lock:
            if len(self._clients) + self._reserved >= limits.max_clients:
                raise HandshakeRefused(
                    503, "too_many_clients", f"client limit reached ({limits.max_clients})"
                )
            held = self._per_address.get(address, 0)
            if held >= limits.max_clients_per_address:
                raise HandshakeRefused(
                    503,
                    "too_many_clients",
                    f"client limit per address reached ({limits.max_clients_per_address} from {address})",
                )
            self._per_address[address] = held + 1
            self._reserved += 1

    def _release_address_locked(self, address: str) -> None:
        left = self._per_address.get(address, 0) - 1
        if left > 0:
            self._per_address[address] = left
        else:
            self._per_address.pop(address, None)

    def _accept(
        self, environ: "WSGIEnvironment", peer: str, sock: GuardedSocket, upgrade: UpgradeRequest
    ) -> Connection:
        """Subscribe, perform the handshake, queue the first frames and
        register the client, then let its handshake response out."""
        # Long: the handshake's steps in the one order that keeps a client from missing or doubling
        # an event (subscribe before the handshake, register before the response leaves)
        client_id = str(uuid.uuid4())
        threading.current_thread().name = f"coda-ws-client:{client_id[:8]}"
        subscription = self.bus.subscribe(
            types=upgrade.event_filter, since=upgrade.since, epoch=upgrade.epoch, reader_id=client_id
        )
        sock.on_close = subscription.wake.set
        # "Too slow" (4008) means the client does not read, not that its writer
        # thread was not scheduled while a burst was emitted.
        subscription.blocked = lambda: sock.blocked_since is not None
        handshake_environ = dict(environ)
        handshake_environ["werkzeug.socket"] = sock
        # Decline permessage-deflate: compressing per connection costs 2.4-3.9x
        # the CPU per message (docs/architecture.md), and events are small.
        handshake_environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
        # Hold the handshake response until the client is registered: a client
        # whose connect() returned is in server.clients (as in the original).
        sock.hold()
        try:
            transport = ServerTransport(
                handshake_environ,
                subprotocols=[V1_SUBPROTOCOL],
                max_message_size=self.limits.max_message_size,
                reader_name=f"coda-ws-reader:{client_id[:8]}",
                wake=subscription.wake,
            )
            address = f"{environ.get('REMOTE_ADDR', '?')}:{environ.get('REMOTE_PORT', '?')}"
            conn = Connection(
                client_id,
                transport,
                sock,
                subscription,
                address=address,
                peer=peer,
                user_agent=environ.get("HTTP_USER_AGENT", ""),
                v1=upgrade.v1,
                scopes=upgrade.scopes,
                settings=self._settings,
                hooks=self._hooks,
            )
            self._post_initial_frames(conn, upgrade)
        except BaseException:
            subscription.close()  # not yet registered: nothing else would ever close it
            raise
        with self._lock:
            self._reserved -= 1
            self._clients[client_id] = conn
            self._totals["total_connections"] += 1
            resume = subscription.resume
            if resume is not None:
                result = "recovered" if resume.recovered else resume.reason or "unknown"
                self._resumes[result] = self._resumes.get(result, 0) + 1
            self._changed.notify_all()
        try:
            sock.release()  # the handshake response: the client may now see it is connected
        except OSError:
            pass  # the client is gone already: its reader ends, and so does the session
        log.info(
            "client %s connected from %s (%s)",
            client_id,
            address,
            "v1" if conn.v1 else "legacy",
            extra={
                "client_id": client_id,
                "address": address,
                "protocol": 1 if conn.v1 else 0,
                "user_agent": conn.user_agent,
            },
        )
        return conn

    def _post_initial_frames(self, conn: Connection, upgrade: UpgradeRequest) -> None:
        """hello (v1), the resume answer (v1, when asked), the replay frame."""
        sub = conn.subscription
        replay = sub.replay
        if conn.redact:
            replay = [redact_event(event) for event in replay]
        replay_frame = None
        included = 0
        if sub.resume is None or not sub.resume.recovered:
            if upgrade.replay and (conn.v1 or replay):
                payload, included = self.bus.replay_frame_json(replay, self.limits.max_replay_bytes)
                replay_frame = framing.text_frame(payload)
        if conn.v1:
            conn.post_json(
                {
                    "type": "hello",
                    "protocol": PROTOCOL_VERSION,
                    "server": SERVER_NAME,
                    "client_id": conn.id,
                    "epoch": sub.epoch,
                    "seq": sub.start_seq,
                    "replay": included,
                }
            )
            if sub.resume is not None:
                conn.post_json(sub.resume.frame_dict())
        if replay_frame is not None:
            conn.post(replay_frame)

    def _unregister(self, conn: Connection) -> None:
        """The session is over: count it, forget the client, run the disconnect handlers."""
        reason = conn.disconnect_reason or "connection_lost"
        code = CLOSE_ABNORMAL if conn.close_code is None else conn.close_code
        with self._lock:
            if self._clients.pop(conn.id, None) is not None:
                self._release_address_locked(conn.peer)
            self._totals["events_sent"] += conn.frames_sent
            self._totals["errors"] += conn.errors
            self._disconnects[reason] = self._disconnects.get(reason, 0) + 1
            self._disconnect_codes[str(code)] = self._disconnect_codes.get(str(code), 0) + 1
            self._changed.notify_all()
        log.info(
            "client %s disconnected from %s (%s, close code %s)",
            conn.id,
            conn.address,
            reason,
            code,
            extra={"client_id": conn.id, "address": conn.address, "close_code": code, "reason": reason},
        )
        self._run_handlers("disconnect", conn.id)


def _tune_socket(sock: socket.socket) -> None:
    """Socket options for an accepted WebSocket connection.

    ``TCP_NODELAY``: a frame goes out when it is written. With Nagle's
    algorithm a small write that follows another one not yet acknowledged
    waits for the ACK, which the client's delayed-ACK timer can hold back
    40 ms: the p99 latency of every steady-rate benchmark was that timer.
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
