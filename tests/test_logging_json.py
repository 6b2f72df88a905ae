"""Structured logs: connect and disconnect lines carry client id, address and close code, and
`coda-ws serve --log-format json` writes one JSON object per line."""

import io
import json
import logging
import sys

import pytest

from coda_ws.cli import build_parser
from coda_ws.logging_json import JsonFormatter, configure_logging

from ._proc import Child
from .conftest import connect, recv_json, wait_for


def _record(message, *args, exc_info=None, **extra):
    record = logging.getLogger("coda_ws.test").makeRecord(
        "coda_ws.test", logging.WARNING, __file__, 1, message, args, exc_info, extra=extra
    )
    return record


def test_json_formatter_writes_one_object_per_record():
    """Time, level, logger, thread, message and every extra field are keys of one JSON line."""
    line = JsonFormatter().format(
        _record("client %s gone", "c1", client_id="c1", close_code=1000, odd={1, 2})
    )
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "WARNING" and data["logger"] == "coda_ws.test"
    assert data["message"] == "client c1 gone" and data["thread"]
    assert data["client_id"] == "c1" and data["close_code"] == 1000
    assert data["odd"] == repr({1, 2})  # not JSON: written as its repr, never an error
    assert data["time"].endswith("Z") and len(data["time"]) == len("2025-11-28T01:02:03.456Z")


def test_json_formatter_includes_the_traceback():
    """A record with exc_info carries the formatted traceback under exc_info."""
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("failed", exc_info=sys.exc_info())
    data = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in data["exc_info"] and "Traceback" in data["exc_info"]


def test_configure_logging_checks_its_arguments():
    """An unknown format or level is a ValueError naming it."""
    with pytest.raises(ValueError, match="log_format"):
        configure_logging("info", "xml", stream=io.StringIO())
    with pytest.raises(ValueError, match="loud"):
        configure_logging("loud", "json", stream=io.StringIO())


def test_log_format_option_is_parsed():
    """serve and demo take --log-format text|json; anything else is refused."""
    parser = build_parser()
    assert parser.parse_args(["serve", "--log-format", "json"]).log_format == "json"
    assert parser.parse_args(["demo"]).log_format == "text"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--log-format", "xml"])


def test_connect_and_disconnect_lines_name_client_address_and_code(server, caplog):
    """The server's connect and disconnect records carry client_id, address and close_code."""
    caplog.set_level(logging.INFO, logger="coda_ws.server")
    with connect(server.url + "?v=1") as client:
        client_id = recv_json(client)["client_id"]
        local = client.socket.getsockname()
    wait_for(lambda: not server.clients, message="disconnected")
    address = f"{local[0]}:{local[1]}"

    def lines(word):
        return [
            r
            for r in caplog.records
            if r.name == "coda_ws.server"
            and word in r.getMessage()
            and getattr(r, "client_id", None) == client_id
        ]

    wait_for(lambda: lines("disconnected"), message="disconnect line")
    (connected,) = lines(" connected")
    (disconnected,) = lines("disconnected")
    assert connected.address == address and address in connected.getMessage()
    assert disconnected.address == address and disconnected.close_code == 1000
    assert client_id in disconnected.getMessage() and "close code 1000" in disconnected.getMessage()


def test_serve_log_format_json_writes_json_lines():
    """`coda-ws serve --log-format json`: every stderr line is a JSON object; connects and disconnects are there."""
    with Child(
        "-m",
        "coda_ws",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--log-level",
        "info",
        "--log-format",
        "json",
    ) as child:
        url = child.ws_url()
        with connect(url + "?v=1") as client:
            client_id = recv_json(client)["client_id"]

        def records():
            return [json.loads(line) for line in list(child.stderr_lines) if line.strip()]

        wait_for(
            lambda: any(r.get("client_id") == client_id and "close_code" in r for r in records()),
            timeout=30,
            message=lambda: f"a disconnect line in {child.describe()}",
        )
        child.interrupt()
        assert child.wait() == 0
    parsed = records()
    assert all({"time", "level", "logger", "message"} <= set(r) for r in parsed)
    connected = [r for r in parsed if r.get("client_id") == client_id and "protocol" in r]
    disconnected = [r for r in parsed if r.get("client_id") == client_id and "close_code" in r]
    assert (
        connected
        and connected[0]["logger"] == "coda_ws.server"
        and connected[0]["address"].startswith("127.0.0.1:")
    )
    assert disconnected[0]["close_code"] == 1000 and disconnected[0]["reason"] == "client_closed"
    assert any(r["message"].startswith("coda_ws serving on") for r in parsed)
