"""coda_ws.acceptor's parts without a server: where a request head ends, what length it
declares, and the request thread's rfile (bytes already read, then the socket, bounded)."""

import socket
import time

import pytest

from coda_ws.acceptor import PendingRequest, _declared_length, _find_head_end


@pytest.mark.parametrize(
    "data, end",
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 27),
        (b"GET / HTTP/1.1\nHost: a\n\n", 24),  # bare LF, as http.server accepts
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next", 27),  # the first blank line
        (b"GET / HTTP/1.1\nHost: a\n\nX\r\n\r\n", 24),
        (b"GET / HTTP/1.1\r\nHost: a\r\n", -1),
        (b"", -1),
    ],
)
def test_head_end(data, end):
    """The head ends just after its first blank line, CRLF or bare LF; -1 while there is none."""
    assert _find_head_end(bytearray(data), 0) == end


def test_head_end_found_across_reads():
    """Scanning resumes two bytes before the previous end, so a blank line split between
    two reads is found."""
    buffer = bytearray(b"GET / HTTP/1.1\r\nHost: a\r\n\r")
    assert _find_head_end(buffer, 0) == -1
    scanned = len(buffer) - 2
    buffer += b"\nbody"
    assert _find_head_end(buffer, scanned) == 27


@pytest.mark.parametrize(
    "headers, expected",
    [
        (b"", (0, False)),  # no body
        (b"Content-Length: 12\r\n", (12, True)),
        (b"content-length:12\r\nContent-Length: 12\r\n", (12, True)),  # repeated, equal
        (b"Content-Length: 12\r\nContent-Length: 13\r\n", (None, False)),  # ambiguous: Werkzeug decides
        (b"Content-Length: \xd9\xa1\r\n", (None, False)),  # not ASCII digits
        (b"Content-Length: -1\r\n", (None, False)),
        (b"Transfer-Encoding: chunked\r\nContent-Length: 12\r\n", (None, False)),  # chunked wins
        (b"Content-Length: 12\r\nExpect: 100-continue\r\n", (12, False)),  # the handler answers 100 first
        (b"X-A: 1\r\n folded\r\nContent-Length: 12\r\n", (None, False)),  # obsolete line folding
    ],
)
def test_declared_length(headers, expected):
    """(limit, wait): the request's length from the head's start and whether the loop may
    wait for the body, from the head alone."""
    head = b"POST /events HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n"
    limit, wait = _declared_length(head)
    assert (None if limit is None else limit - len(head), wait) == expected


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_rfile_gives_what_was_read_then_the_socket_up_to_the_limit(pair):
    """The rfile gives the bytes already read, then reads the rest of the declared request
    from the socket, and nothing past it (end of file at once, no wait)."""
    server_side, client = pair
    head = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n"
    request = PendingRequest(
        server_side, ("127.0.0.1", 1), head + b"01234", time.monotonic() + 5, len(head) + 10
    )
    rfile = request.make_rfile()
    assert rfile.readline() == b"POST / HTTP/1.1\r\n"
    client.sendall(b"56789NEXT REQUEST")
    assert rfile.read(len(b"Content-Length: 10\r\n\r\n") + 10).endswith(b"0123456789")
    started = time.monotonic()
    assert rfile.read(100) == b""
    assert time.monotonic() - started < 1
    rfile.close()
    assert server_side.fileno() != -1  # closing the rfile leaves the socket to its handler


def test_rfile_ends_at_the_deadline(pair):
    """Without a declared length, the rfile reads the socket until the request's deadline,
    however the client trickles, then gives end of file."""
    server_side, client = pair
    request = PendingRequest(server_side, ("127.0.0.1", 1), b"", time.monotonic() + 0.5, None)
    rfile = request.make_rfile()
    client.sendall(b"abc")
    assert rfile.read1(100) == b"abc"
    assert rfile.read(100) == b""  # nothing more came before the deadline
    assert time.monotonic() < request.deadline + 1
