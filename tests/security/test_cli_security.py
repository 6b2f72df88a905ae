"""The security side of the command line: token files, origins, refusing exposure."""

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from argparse import Namespace

from coda_ws.auth import load_token_file
from coda_ws.cli import _dashboard_url, _readable_token, main

from .._proc import CHILD_TIMEOUT, ROOT, Child
from ..conftest import TIMEOUT, connect, recv_json
from ..rawws import RawClient


def test_token_new_prints_a_strong_token_with_scopes(capsys, tmp_path):
    """`coda-ws token new` prints TOKEN=scopes that a token file accepts."""
    assert main(["token", "new", "--scopes", "read,read:content"]) == 0
    line = capsys.readouterr().out.strip()
    token, scopes = line.split("=")
    assert len(token) >= 40 and scopes == "read,read:content"
    path = tmp_path / "tokens"
    path.write_text(f"# dashboards\n{line}\n")
    assert load_token_file(path) == {token: {"read", "read:content"}}


def test_token_new_refuses_unknown_scopes(capsys):
    """An unknown scope is a usage error naming the known ones."""
    try:
        main(["token", "new", "--scopes", "root"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "read, read:content, publish, admin" in capsys.readouterr().err


def test_serve_refuses_a_bad_token_file(tmp_path, capsys):
    """A token file with an unknown scope stops `serve` with exit 1 and a message naming the entry."""
    path = tmp_path / "tokens"
    path.write_text("abcdef=read\nsecret-value=superuser\n")
    assert main(["serve", "--port", "0", "--token-file", str(path)]) == 1
    err = capsys.readouterr().err
    assert "entry 2" in err and "superuser" in err and "secret-value" not in err


def test_serve_refuses_public_bind_without_tokens(capsys):
    """`serve --host 0.0.0.0` without tokens refuses and says how to add them."""
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 1
    assert "--token-file" in capsys.readouterr().err


def test_serve_with_token_file_and_allowed_origin(tmp_path):
    """A server started with --token-file and --allow-origin enforces both."""
    path = tmp_path / "tokens"
    path.write_text("reader-abcdefghijklmnop=read\n")
    child = Child(
        "-m",
        "coda_ws",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--token-file",
        path,
        "--allow-origin",
        "https://dash.example.com",
    )
    try:
        url = child.wait_for_output(r"serving on (ws://\S+)").group(1)
        port = int(url.rsplit(":", 1)[1].strip("/"))
        assert RawClient(port, "/").status == 401
        assert (
            RawClient(
                port,
                "/",
                headers=[
                    ("Authorization", "Bearer reader-abcdefghijklmnop"),
                    ("Origin", "https://evil.example"),
                ],
            ).status
            == 403
        )
        headers = {"Authorization": "Bearer reader-abcdefghijklmnop", "Origin": "https://dash.example.com"}
        with connect(url + "?v=1", additional_headers=headers) as ws:
            assert recv_json(ws, TIMEOUT * 3)["type"] == "hello"
        child.interrupt()
        assert child.wait() == 0
        assert "reader-abcdefghijklmnop" not in "".join(child.stdout_lines + child.stderr_lines)
    finally:
        child.kill()


class _Terminal:
    """A stand-in for sys.stdout: ``isatty()`` as told."""

    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty


class _Server:
    http_url = "http://127.0.0.1:8765/"


def test_dashboard_url_carries_a_readable_token_on_a_terminal(tmp_path, monkeypatch):
    """With tokens configured, the dashboard URL printed to a terminal has
    #token= with a token that may read (read:content preferred, then the
    fewest other scopes), percent-encoded; printed elsewhere (a log file) it
    has only a hint; without tokens, or without a readable one, no token."""
    monkeypatch.delenv("CODA_WS_TOKENS", raising=False)
    path = tmp_path / "tokens"
    path.write_text(
        "admin+all=read,read:content,publish,admin\nreader=read\nwatcher+1=read:content\npub=publish\n"
    )
    args = Namespace(token_file=str(path))
    assert (
        _dashboard_url(_Server(), args, stdout=_Terminal(True)) == "http://127.0.0.1:8765/#token=watcher%2B1"
    )
    logged = _dashboard_url(_Server(), args, stdout=_Terminal(False))
    assert "#token=<" in logged and "watcher" not in logged and "reader" not in logged
    assert _dashboard_url(_Server(), Namespace(token_file=None), stdout=_Terminal(True)) == _Server.http_url

    assert _readable_token({"a": {"read"}, "b": {"read", "admin"}}) == "a"
    assert _readable_token({"p": {"publish"}}) is None
    path.write_text("pub=publish\n")
    refused = _dashboard_url(_Server(), args, stdout=_Terminal(True))
    assert refused.startswith(_Server.http_url + "  (") and "#token=" not in refused

    monkeypatch.setenv("CODA_WS_TOKENS", "from-env=read")
    assert _dashboard_url(_Server(), Namespace(token_file=None), stdout=_Terminal(True)).endswith(
        "#token=from-env"
    )


def test_serve_prints_the_token_url_only_to_a_terminal(tmp_path):
    """`coda-ws serve --token-file` on a terminal (a pseudo-terminal here)
    prints the dashboard URL with #token=, and the page at that URL's address
    needs that token; the same command with its output in a pipe prints no token
    (see test_serve_with_token_file_and_allowed_origin)."""
    path = tmp_path / "tokens"
    path.write_text("reader-abcdefghijklmnop=read,read:content\n")
    leader, follower = pty.openpty()
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coda_ws",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--token-file",
            str(path),
        ],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        cwd=str(ROOT),
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    os.close(follower)
    output = b""
    try:
        deadline = time.monotonic() + CHILD_TIMEOUT
        while b"Press Ctrl-C" not in output:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no banner within {CHILD_TIMEOUT} s: {output!r}"
            ready, _, _ = select.select([leader], [], [], remaining)
            if ready:
                output += os.read(leader, 4096)
        text = output.decode()
        url = re.search(r"dashboard:\s+(http://\S+)", text).group(1)
        assert url.endswith("/#token=reader-abcdefghijklmnop"), text
        port = int(re.search(r":(\d+)/", url).group(1))
        assert RawClient(port, "/ws").status == 401
    finally:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(CHILD_TIMEOUT)
        finally:
            child.kill()
            os.close(leader)
