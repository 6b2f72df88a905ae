"""The coda-ws command: argument handling in-process, demo and serve as real processes."""

import configparser
import pathlib
import re
import signal
import socket
import subprocess
import sys

import pytest

from coda_ws import __version__, cli
from tests._proc import CHILD_TIMEOUT, ROOT, Child
from tests.conftest import connect, recv_json, recv_until


def _start(*args):
    return Child("-m", "coda_ws", *args)


def _connect(url):
    return connect(url, open_timeout=CHILD_TIMEOUT)


def _label(frame):
    if frame.get("type") == "system_info":
        return f"system_info:{frame['data'].get('event')}"
    return frame.get("type")


def _until_closed(ws):
    """Frames (replay frames unpacked) until the server closes the connection."""
    frames = []
    while True:
        try:
            frame = recv_json(ws, CHILD_TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"no close within {CHILD_TIMEOUT} s; last frames {frames[-3:]}") from None
        except Exception as exc:  # websockets' ConnectionClosedOK / ConnectionClosedError
            if type(exc).__name__.startswith("ConnectionClosed"):
                return frames
            raise
        frames.extend(frame["events"] if frame.get("type") == "replay" else [frame])


def test_console_script_entry_point():
    """setup.cfg's console script points at cli.main, which takes argv."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["options.entry_points"]["console_scripts"].strip() == "coda-ws = coda_ws.cli:main"
    assert callable(cli.main)


def test_installed_console_script_runs():
    """When the package is installed (scripts/setup.sh does ``pip install -e``),
    the ``coda-ws`` console script runs main() with the command line."""
    script = pathlib.Path(sys.executable).parent / "coda-ws"
    if not script.exists():  # scripts/setup.sh installs it (under CI a skip fails: conftest.py)
        pytest.skip("coda-ws is not installed in this environment (pip install -e .)")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    assert result.returncode == 0
    assert result.stdout.strip() == f"coda-ws {__version__}"


def test_version(capsys):
    """--version prints the package version."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"coda-ws {__version__}"


def test_no_command_prints_usage_and_fails(capsys):
    """Without a subcommand, the usage goes to stderr and the exit code is 2."""
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "usage: coda-ws" in err and "demo" in err and "serve" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--port", "70000"],
        ["demo", "--port", "http"],
        ["demo", "--pace", "-1"],
        ["demo", "--metrics-interval", "0"],
        ["demo", "--iterations", "0"],
        ["serve", "--log-level", "loud"],
        ["nonsense"],
    ],
)
def test_bad_arguments_exit_2(argv, capsys):
    """Invalid options are refused by argparse with exit code 2 and a message."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["demo", "serve"])
def test_port_in_use_fails_cleanly(command, capsys):
    """A port that is taken gives a one-line error naming the address and exit 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert cli.main([command, "--host", "127.0.0.1", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "Traceback" not in err


def test_tool_commands_are_registered_and_dispatched(monkeypatch):
    """Subcommands added by coda_ws.tools.add_tool_commands run through main(),
    which returns their exit code."""
    calls = []

    def add_tool_commands(subparsers):
        tail = subparsers.add_parser("tail")
        tail.add_argument("--count", type=int, default=1)
        tail.set_defaults(func=lambda args: calls.append(args.count) or 7)

    monkeypatch.setattr("coda_ws.tools.add_tool_commands", add_tool_commands)
    assert cli.main(["tail", "--count", "3"]) == 7
    assert calls == [3]


def test_demo_streams_and_stops_on_sigint():
    """``python -m coda_ws demo``: prints the URL and how to watch it, streams
    the conversation (tokens, TTS progress, metrics) to a client, and on
    Ctrl-C sends the shutdown event, closes with 1001 and exits 0."""
    child = _start("demo", "--host", "127.0.0.1", "--port", "0", "--pace", "0.5", "--metrics-interval", "0.5")
    try:
        banner = child.wait_for_output(r"demo: .* on (ws://\S+)")
        url = banner.group(1)
        port = re.search(r":(\d+)/$", url).group(1)
        child.wait_for_output(rf"coda-ws tail ws://127\.0\.0\.1:{port}\s*$")
        child.wait_for_output(rf"dashboard:\s+http://127\.0\.0\.1:{port}/\s*$")
        with _connect(url) as ws:
            frames = recv_until(ws, lambda f: f.get("type") == "llm_token", CHILD_TIMEOUT)
            frames += recv_until(ws, lambda f: f.get("type") == "system_metrics", CHILD_TIMEOUT)
            frames += recv_until(ws, lambda f: f.get("type") == "tts_progress", CHILD_TIMEOUT)
            assert frames[0]["type"] == "replay"
            assert next(_label(e) for e in frames[0]["events"]) == "system_info:startup"
            child.interrupt()
            rest = _until_closed(ws)
            assert ws.close_code == 1001
        assert child.wait() == 0
    finally:
        child.kill()
    assert "system_info:shutdown" in [_label(f) for f in rest]
    assert "Stopped." in "".join(child.stdout_lines)
    assert "Traceback" not in "".join(child.stderr_lines)


def test_demo_stops_on_sigterm():
    """SIGTERM stops the demo as cleanly as Ctrl-C: exit code 0."""
    child = _start("demo", "--host", "127.0.0.1", "--port", "0")
    try:
        url = child.ws_url()
        with _connect(url) as ws:
            recv_until(
                ws,
                lambda f: (
                    f.get("type") == "conversation_start"
                    or any(e["type"] == "conversation_start" for e in f.get("events", []))
                ),
                CHILD_TIMEOUT,
            )
            child.proc.send_signal(signal.SIGTERM)
            _until_closed(ws)
            assert ws.close_code == 1001
        assert child.wait() == 0
    finally:
        child.kill()


def test_demo_iterations_ends_by_itself():
    """``--iterations N --pace 0`` plays N conversations and exits 0."""
    child = _start("demo", "--host", "127.0.0.1", "--port", "0", "--pace", "0", "--iterations", "3")
    try:
        assert child.wait() == 0
    finally:
        child.kill()
    assert "Stopped." in "".join(child.stdout_lines)


def test_serve_runs_until_sigint():
    """``python -m coda_ws serve`` serves a bare stream (no events of its own)
    and stops on Ctrl-C with a 1001 close and exit code 0."""
    child = _start("serve", "--host", "127.0.0.1", "--port", "0")
    try:
        url = child.wait_for_output(r"serving on (ws://\S+)").group(1)
        with _connect(url) as ws:
            with pytest.raises(TimeoutError):
                ws.recv(timeout=0.3)
            child.interrupt()
            assert _until_closed(ws) == []
            assert ws.close_code == 1001
        assert child.wait() == 0
    finally:
        child.kill()
