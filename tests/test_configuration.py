"""One configuration story: every option as a keyword, a flag, a CODA_WS_* variable, a Flask
config key and a TOML key, with one precedence rule; ``coda-ws config``; and the messages a
newcomer meets first (a misspelt host, a wrong path, a server that is not there)."""

import json
import logging
import socket
import time
import urllib.request

import pytest
from flask import Flask
from websockets.exceptions import InvalidStatus

from coda_ws import CodaEventClient, CodaWebSocketServer, cli, config, docgen
from coda_ws.errors import ClientConnectionError, InvalidEventError
from coda_ws.events import event_class

from ._http import get
from ._proc import CHILD_TIMEOUT, Child
from .conftest import connect

FLAGGED = [option for option in config.OPTIONS if option.flag]


def _flags(command):
    parser = dict(docgen.command_parsers())[f"coda-ws {command}"]
    return {flag: action for action in parser._actions for flag in action.option_strings}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    """No CODA_WS_* variable of the machine's leaks into these tests (the docs' conftest sets some)."""
    import os

    for name in list(os.environ):
        if name.startswith("CODA_WS_"):
            monkeypatch.delenv(name)


# -- one source for options, flags and their documentation -------------------------------


@pytest.mark.parametrize("command", ["serve", "demo", "config"])
def test_every_option_with_a_flag_is_a_flag_of_each_serving_command(command):
    flags = _flags(command)
    missing = [option.flag for option in FLAGGED if option.flag not in flags]
    assert not missing, f"coda-ws {command} lacks {missing}"
    for option in FLAGGED:
        assert flags[option.flag].dest == option.name
        assert flags[option.flag].default is None  # "not given": the environment or the file decides
    assert {"--config", "--token-file"} <= set(flags)


def test_every_option_flag_and_variable_is_documented():
    reference = docgen.configuration_reference()
    cli_reference = docgen.cli_reference()
    for option in config.OPTIONS:
        assert f"`{option.name}`" in reference
        if option.name != "auth":
            assert f"`{option.env}`" in reference
        if option.flag:
            assert f"`{option.flag}`" in reference
            assert option.flag in cli_reference
    assert "coda-ws config" in cli_reference


def test_every_server_keyword_is_an_option():
    """The server accepts exactly the documented options (a new keyword must be added to OPTIONS)."""
    with pytest.raises(TypeError, match=r"unknown option 'histroy_size' \(did you mean 'history_size'\?\)"):
        CodaWebSocketServer(histroy_size=5)
    server = CodaWebSocketServer(port=0)
    assert set(server.settings) == config.OPTION_NAMES


# -- the precedence rule -----------------------------------------------------------------


def test_precedence_keyword_then_environment_then_flask_config_then_file_then_default(tmp_path, monkeypatch):
    toml = tmp_path / "coda-ws.toml"
    toml.write_text(
        "history_size = 11\nmax_clients = 11\nrate_limit = 11\nmax_replay_events = 11\n"
        "max_body_size = 11111\n"
    )
    app = Flask("host_app")
    app.config.update(
        CODA_WS_MAX_CLIENTS=22,
        CODA_WS_RATE_LIMIT=22,
        CODA_WS_MAX_REPLAY_EVENTS=22,
        CODA_WS_MAX_BODY_SIZE=22222,
    )
    monkeypatch.setenv("CODA_WS_RATE_LIMIT", "33")
    monkeypatch.setenv("CODA_WS_MAX_REPLAY_EVENTS", "33")
    monkeypatch.setenv("CODA_WS_MAX_BODY_SIZE", "33333")
    server = CodaWebSocketServer(app=app, config_file=toml, max_body_size=44444)

    assert server.setting_sources["history_size"] == "file" and server.bus.history_size == 11
    assert server.setting_sources["max_clients"] == "flask config" and server.max_clients == 22
    assert server.setting_sources["rate_limit"] == "environment" and server.rate_limit == 33
    assert server.setting_sources["max_replay_events"] == "environment"
    assert server.max_replay_events == 33
    assert server.setting_sources["max_body_size"] == "keyword" and server.max_body_size == 44444
    assert server.setting_sources["port"] == "default" and server.port == 8765


def test_a_positional_argument_is_a_keyword(monkeypatch):
    """The original's positional arguments win over the environment; left out, the environment applies."""
    monkeypatch.setenv("CODA_WS_PORT", "9123")
    assert CodaWebSocketServer("127.0.0.1", 0).port == 0
    assert CodaWebSocketServer("127.0.0.1").port == 9123


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"CODA_WS_PORT": "eighty"}, r"CODA_WS_PORT: port must be an integer, got 'eighty'"),
        ({"CODA_WS_INSECURE": "maybe"}, r"CODA_WS_INSECURE: insecure must be true or false, got 'maybe'"),
    ],
)
def test_a_bad_environment_variable_is_named(setting, message, monkeypatch):
    for name, value in setting.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        CodaWebSocketServer()


def test_a_bad_file_is_named(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("prot = 8765\n")
    with pytest.raises(ValueError, match=r"bad\.toml: unknown option 'prot' \(did you mean 'port'\?\)"):
        CodaWebSocketServer(config_file=toml)
    toml.write_text("port = [")
    with pytest.raises(ValueError, match=r"bad\.toml: not valid TOML"):
        CodaWebSocketServer(config_file=toml)


# -- coda-ws config -----------------------------------------------------------------------


def _config_rows(capsys, *argv):
    assert cli.main(["config", "--json", *argv]) == 0
    return {row["option"]: (row["value"], row["source"]) for row in json.loads(capsys.readouterr().out)}


def test_config_prints_each_setting_and_its_source(tmp_path, monkeypatch, capsys):
    toml = tmp_path / "coda-ws.toml"
    toml.write_text("[coda_ws]\nhistory_size = 7\nmax_clients = 7\nrate_limit = 7\n")
    monkeypatch.setenv("CODA_WS_MAX_CLIENTS", "8")
    monkeypatch.setenv("CODA_WS_RATE_LIMIT", "8")
    rows = _config_rows(
        capsys,
        "--config",
        str(toml),
        "--rate-limit",
        "9",
        "--allow-host",
        "a.example,b.example",
        "--allow-host",
        "c.example",
        "--insecure",
    )
    assert rows["history_size"] == ("7", "file")
    assert rows["max_clients"] == ("8", "environment")
    assert rows["rate_limit"] == ("9", "flag")
    assert rows["allowed_hosts"] == ("a.example,b.example,c.example", "flag")
    assert rows["insecure"] == ("True", "flag")
    assert rows["port"] == ("8765", "default")
    assert list(rows) == [option.name for option in config.OPTIONS]

    assert cli.main(["config"]) == 0  # the table form: one line per option
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(config.OPTIONS) and lines[0].split() == ["host", "localhost", "default"]


def test_config_masks_tokens(tmp_path, monkeypatch, capsys):
    token_file = tmp_path / "tokens"
    secret = "Zq8vX2mN4pL7rT1sK9wE3yU6"
    token_file.write_text(f"{secret}=read,read:content\n")
    env_secret = "Hb5nJ8cV2xM6zQ4wR7tY1uI3"
    monkeypatch.setenv("CODA_WS_TOKENS", f"{env_secret}=admin")
    assert cli.main(["config", "--token-file", str(token_file)]) == 0
    out = capsys.readouterr().out
    assert secret not in out and env_secret not in out
    auth = next(line for line in out.splitlines() if line.startswith("auth "))
    assert auth.split(None, 1)[1].split() == ["<2", "tokens,", "masked>", "flag", "+", "environment"]


def test_config_reports_a_bad_file_in_one_line(tmp_path, capsys):
    assert cli.main(["config", "--config", str(tmp_path / "missing.toml")]) == 1
    err = capsys.readouterr().err
    assert err == f"coda-ws config: {tmp_path / 'missing.toml'}: No such file or directory\n"


def test_serve_reads_the_config_file_and_the_environment_overrides_it(tmp_path):
    toml = tmp_path / "coda-ws.toml"
    toml.write_text('host = "127.0.0.1"\nport = 0\nurl_prefix = "/from-file"\nmax_clients = 1\n')
    child = Child("-m", "coda_ws", "serve", "--config", toml, "--url-prefix", "/from-flag")
    try:
        url = child.ws_url()
        assert url.endswith("/from-flag/ws") and url.startswith("ws://127.0.0.1:")
        with connect(url):  # max_clients = 1 from the file: a second client is refused
            with pytest.raises(InvalidStatus) as refused:
                connect(url)
            assert refused.value.response.status_code == 503
        child.interrupt()
        assert child.wait() == 0, child.describe()
    finally:
        child.kill()


def test_demo_takes_the_journal_and_every_server_flag():
    args = cli.build_parser().parse_args(
        ["demo", "--journal", "events.db", "--history-size", "500", "--port", "0"]
    )
    assert (args.journal, args.history_size, args.port) == ("events.db", 500, 0)


# -- messages ----------------------------------------------------------------------------


def test_an_unresolvable_host_is_a_name_resolution_error(capsys):
    assert cli.main(["serve", "--host", "no-such-host.invalid", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "cannot resolve the host to bind, 'no-such-host.invalid'" in err
    assert "authentication" not in err
    with pytest.raises(OSError, match="cannot resolve the host to bind"):
        CodaWebSocketServer("no-such-host.invalid", 0).start()


def test_the_exposure_refusal_names_the_flags(capsys):
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "--insecure" in err and "--token-file" in err and "refusing to serve 0.0.0.0" in err


def test_token_alone_shows_its_own_help(capsys):
    assert cli.main(["token"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: coda-ws token") and "new" in err and "demo" not in err


def test_unknown_paths_and_a_plain_get_of_ws_name_the_routes(server):
    missing = get(server, "/wss")
    assert missing.status == 404 and missing.headers["Content-Type"] == "application/json"
    message = missing.json()["message"]
    assert "/wss" in message and "dashboard is at /," in message and "WebSocket endpoint at /ws" in message

    page = get(server, "/ws")
    assert page.status == 426 and page.headers["Upgrade"] == "websocket"
    assert page.json()["error"] == "upgrade_required" and "coda-ws tail ws://" in page.json()["message"]

    with pytest.raises(InvalidStatus) as refused:  # an upgrade to a page
        connect(server.url + "metrics")
    assert refused.value.response.status_code == 404
    assert b"WebSocket endpoint at /ws" in refused.value.response.body


def test_a_mounted_server_leaves_the_applications_404_alone():
    app = Flask("host_app")
    server = CodaWebSocketServer(app=app)
    client = app.test_client()
    assert client.get("/nope").status_code == 404
    assert b"WebSocket endpoint" not in client.get("/nope").data
    assert client.get(server.url_prefix + "/ws").status_code == 426


def test_tail_on_a_wrong_path_prints_one_line_naming_the_right_ones(server, capsys):
    assert cli.main(["tail", server.url + "wss", "--connect-timeout", "5"]) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("coda-ws tail: error: server refused the WebSocket connection with HTTP 404")
    assert "WebSocket endpoint at /ws" in lines[0] and "<" not in lines[0]


def test_a_foreign_html_refusal_is_reduced_to_its_words():
    """A proxy's HTML error page reaches the user as one line of text, not markup."""
    listener = socket.create_server(("127.0.0.1", 0))
    page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"

    def answer():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: "
                + str(len(page)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + page
            )

    import threading

    thread = threading.Thread(target=answer)
    thread.start()
    client = CodaEventClient(f"ws://127.0.0.1:{listener.getsockname()[1]}/")
    try:
        with pytest.raises(ClientConnectionError) as ended:
            next(iter(client))
        assert "502 Bad Gateway Bad Gateway" in str(ended.value) and "<" not in str(ended.value)
    finally:
        client.close()
        thread.join()
        listener.close()


def test_the_client_warns_after_repeated_failed_connects(caplog):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    client = CodaEventClient(
        f"ws://127.0.0.1:{port}/",
        backoff_initial=0.001,
        backoff_max=0.001,
        backoff_jitter=0,
        max_retries=12,
        connect_timeout=1,
    )
    with caplog.at_level(logging.WARNING, logger="coda_ws.client"):
        with pytest.raises(ClientConnectionError, match="gave up after 13 attempts"):
            for _ in client:
                pass
        client.close()
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert [message.split(" connection attempts")[0].rsplit(" ", 1)[1] for message in warnings] == ["5", "10"]
    assert all(f"Is the server running at ws://127.0.0.1:{port}/?" in message for message in warnings)


def test_an_unknown_event_type_gets_a_suggestion(server):
    with pytest.raises(
        InvalidEventError, match=r"unknown event type 'stt_resutl' \(did you mean 'stt_result'\?\)"
    ):
        event_class("stt_resutl")
    with pytest.raises(InvalidEventError, match=r"did you mean 'llm_token'"):
        server.emit("llm_tokens", token="x")


def test_a_gunicorn_sync_worker_refuses_websocket_clients_and_serves_http(monkeypatch):
    """The default gunicorn worker serves one request at a time: a WebSocket client would block the
    node, so upgrades get 501 naming the fix, while the dashboard and probes still answer."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    monkeypatch.setenv("CODA_WS_ALLOWED_HOSTS", "127.0.0.1")
    child = Child("-m", "gunicorn", "-k", "sync", "-b", f"127.0.0.1:{port}", "coda_ws.wsgi:app")
    try:
        deadline = time.monotonic() + CHILD_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
                    assert reply.status == 200
                    break
            except OSError:
                if time.monotonic() > deadline or child.proc.poll() is not None:
                    raise AssertionError(f"the node did not answer; {child.describe()}") from None
                time.sleep(0.05)
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{port}/ws")
        assert refused.value.response.status_code == 501
        body = json.loads(refused.value.response.body)
        assert body["error"] == "single_threaded_worker" and "coda_ws.gunicorn_conf" in body["message"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
            assert reply.status == 200  # still serving
    finally:
        child.kill()
    assert "refusing WebSocket clients: gunicorn's sync worker" in "".join(child.stderr_lines)
