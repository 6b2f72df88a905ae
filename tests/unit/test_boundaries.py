"""The boundaries around foreign internals: each speed trick or private attribute coda_ws
relies on lives in one module, with a fallback; these tests fail with a message naming
that module when an upgrade (Python, simple-websocket) takes the fast path away or
changes what it relies on."""

import json
import socket
import ssl
import sys
import threading

import pytest

from coda_ws import _fastjson, _sendfast, _transport

CORPUS = [
    {"a": 1, "b": [1.5, -0.0, 1e16, 2.5e-7, None, True, False], "c": {"d": 'é \u2028 " \\ \n'}},
    [],
    "plain",
    {"nested": [[[{"x": "y"}]]], "big": 10**30, "unicode": "\U0001f600"},
]


def test_the_c_json_encoder_is_used_on_cpython():
    """coda_ws._fastjson builds CPython's C encoder once (2.5x cheaper per event); if this
    fails, json.encoder.c_make_encoder changed and coda_ws fell back to JSONEncoder.encode."""
    if sys.implementation.name != "cpython":
        pytest.skip("the C encoder is CPython's")
    assert _fastjson.USING_C_ENCODER, (
        "coda_ws._fastjson: json.encoder.c_make_encoder is missing or changed; encoding falls back to the "
        "slower public JSONEncoder.encode"
    )


@pytest.mark.parametrize("value", CORPUS)
def test_fast_json_equals_the_public_encoder(value):
    """Whichever encoder is used, the bytes are those of json.dumps with the wire's settings."""
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    assert _fastjson.encode_json(value) == expected


def test_fast_json_refuses_what_the_wire_refuses():
    """NaN and infinities raise ValueError, non-JSON values TypeError, cycles an error."""
    with pytest.raises(ValueError):
        _fastjson.encode_json({"x": float("nan")})
    with pytest.raises(ValueError):
        _fastjson.encode_json([float("inf")])
    with pytest.raises(TypeError):
        _fastjson.encode_json({"x": object()})
    cycle = []
    cycle.append(cycle)
    with pytest.raises((RecursionError, ValueError)):
        _fastjson.encode_json(cycle)


def test_libc_send_holding_the_gil_is_reachable_on_linux():
    """coda_ws._sendfast calls libc's send through ctypes.PyDLL (no GIL release: no convoy
    behind a busy Python thread); if this fails, ctypes cannot reach libc any more and the
    dispatcher's writes fall back to socket.send."""
    if not sys.platform.startswith("linux"):
        pytest.skip("checked on Linux")
    assert _sendfast.DIRECT_WRITES and _sendfast.USING_LIBC_SEND, (
        "coda_ws._sendfast: libc's send is not reachable through ctypes; direct writes fall back to socket.send"
    )


def test_send_now_writes_without_blocking():
    """send_now writes what fits and returns 0 (never blocks) when the peer's buffer is full."""
    left, right = socket.socketpair()
    with left, right:
        left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        assert _sendfast.send_now(left, b"hello") == 5
        assert right.recv(16) == b"hello"
        written = 0
        while True:
            sent = _sendfast.send_now(left, b"x" * 65536)
            if sent == 0:
                break
            written += sent
        assert written > 0
        right.close()
        with pytest.raises(OSError):
            for _ in range(100):  # the peer is gone: an error, not a hang
                _sendfast.send_now(left, b"y" * 65536)


def test_send_now_sends_every_length_exactly_with_a_bounded_cache(monkeypatch):
    """The length arguments send_now keeps are reused and bounded: every
    message arrives whole whatever its length, past the cache's bound too."""
    monkeypatch.setattr(_sendfast, "_sizes", {})
    monkeypatch.setattr(_sendfast, "_MAX_SIZES", 3)
    left, right = socket.socketpair()
    with left, right:
        expected = b""
        for length in (5, 1, 5, 300, 7, 300, 9, 1):
            data = bytes([length % 251]) * length
            assert _sendfast.send_now(left, data) == length
            expected += data
        left.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := right.recv(65536):
            received += chunk
    assert received == expected
    assert len(_sendfast._sizes) <= 3


def test_tls_sockets_are_never_written_directly():
    """Writing a TLS socket's file descriptor would bypass the encryption: refused."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    raw = socket.socket()
    tls = context.wrap_socket(raw, do_handshake_on_connect=False, server_hostname="localhost")
    with tls:
        assert not _sendfast.can_send_directly(tls)
    plain = socket.socket()
    with plain:
        assert _sendfast.can_send_directly(plain) == _sendfast.DIRECT_WRITES


def test_simple_websocket_keeps_the_attributes_the_transport_reads():
    """coda_ws._transport reads simple-websocket internals (input_buffer, pong_received,
    incoming_message_len, connected, close_reason, thread); a real handshake over a socket
    pair shows each is still there with the expected type."""
    import base64
    import os

    left, right = socket.socketpair()
    key = base64.b64encode(os.urandom(16)).decode()
    environ = {
        "werkzeug.socket": left,
        "HTTP_HOST": "localhost",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": key,
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
    }
    wake = threading.Event()
    transport = _transport.ServerTransport(
        environ, subprotocols=[], max_message_size=1024, reader_name="test-reader", wake=wake
    )
    try:
        ws = transport._ws
        missing = [name for name in _transport.REQUIRED_ATTRIBUTES if not hasattr(ws, name)]
        assert not missing, f"coda_ws._transport: simple-websocket no longer has {missing}"
        assert isinstance(ws.input_buffer, list) and isinstance(ws.incoming_message_len, int)
        assert transport.connected and not transport.message_too_big and transport.peer_close_code is None
        assert b"101" in right.recv(4096)
    finally:
        transport.mark_closed()
        left.shutdown(socket.SHUT_RDWR)
        assert transport.join_reader(5.0)
        left.close()
        right.close()
