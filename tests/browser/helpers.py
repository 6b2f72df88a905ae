"""Helpers for the browser tests: page waits and a TCP proxy that can black-hole connections."""

import selectors
import socket
import threading

from playwright.sync_api import expect

#: The dashboard's bound on event-log rows (coda_ws/static/dashboard/event-log.js MAX_ROWS).
MAX_LOG_ROWS = 200


def open_dashboard(page, url):
    """Open the dashboard at ``url`` and wait until it is connected."""
    page.goto(url)
    expect(page.locator("#status-pill")).to_have_attribute("data-state", "connected")


def wait_for_seq(page, seq, timeout_ms=5000):
    """Wait until the dashboard has processed every event up to ``seq``."""
    page.wait_for_function(
        "seq => Number(document.querySelector('#conn-seq').dataset.seq) >= seq", arg=seq, timeout=timeout_ms
    )


def log_seqs(page):
    """The seq of every row in the event log, top (newest) first."""
    return page.eval_on_selector_all("#log-rows > .log-row", "rows => rows.map(r => Number(r.dataset.seq))")


class TcpProxy:
    """A loopback TCP proxy to ``127.0.0.1:upstream_port`` that can freeze connections.

    ``freeze()`` turns every connection open at that moment into a black hole:
    it stays open, but nothing passes in either direction (what a dead NAT
    mapping or a pulled cable looks like to both ends). Connections made
    later pass normally. ``handshakes`` holds the first request head sent on
    each connection. One thread; ``close()`` ends it and every socket.
    """

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.handshakes = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._lock = threading.Lock()  # guards _links and the frozen flags
        self._links = {}  # socket -> link dict shared by both ends
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"test-proxy:{self.port}", daemon=True)
        self._thread.start()

    def freeze(self):
        """Black-hole every connection open now."""
        with self._lock:
            for link in self._links.values():
                link["frozen"] = True

    def close(self):
        self._stop = True
        self._wake_w.send(b"x")
        self._thread.join(5)
        for sock in list(self._links) + [self._listener, self._wake_r, self._wake_w]:
            sock.close()
        self._selector.close()

    def _run(self):
        while not self._stop:
            for key, _ in self._selector.select():
                if key.data == "wake":
                    self._wake_r.recv(64)
                elif key.fileobj is self._listener:
                    self._accept()
                else:
                    self._pump(key.fileobj, key.data)

    def _accept(self):
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        link = {"client": client, "upstream": upstream, "frozen": False, "head": b""}
        with self._lock:
            self._links[client] = link
            self._links[upstream] = link
        for sock in (client, upstream):
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, link)

    def _pump(self, sock, link):
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(link)
            return
        if sock is link["client"] and b"\r\n\r\n" not in link["head"] and len(link["head"]) < 16384:
            link["head"] += data
            if b"\r\n\r\n" in link["head"]:
                self.handshakes.append(link["head"].split(b"\r\n\r\n")[0].decode("latin-1"))
        with self._lock:
            frozen = link["frozen"]
        if frozen:
            return  # swallowed
        peer = link["upstream"] if sock is link["client"] else link["client"]
        peer.setblocking(True)
        peer.settimeout(5)
        try:
            peer.sendall(data)
        except OSError:
            self._drop(link)
        else:
            peer.setblocking(False)

    def _drop(self, link):
        with self._lock:
            for name in ("client", "upstream"):
                sock = link[name]
                if self._links.pop(sock, None) is not None:
                    self._selector.unregister(sock)
                    sock.close()
