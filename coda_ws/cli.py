"""The ``coda-ws`` command (also ``python -m coda_ws``).

Subcommands:

* ``coda-ws demo``: serve on localhost:8765 and stream the scripted demo
  conversation in a loop, with system metrics every few seconds, until Ctrl-C.
* ``coda-ws serve``: serve a bare event stream until Ctrl-C (``--journal
  FILE`` keeps it across restarts; ``--backplane URL`` shares it through Redis).
* ``coda-ws export FILE``: print a journal's events as JSON lines.
* the stream tools (``tail``, ``record``, ``play``) from :mod:`coda_ws.tools`.

Every subcommand's ``func(args)`` returns the exit code (None means 0).
Ctrl-C (SIGINT) and SIGTERM stop a running server cleanly: clients get the
last events and a 1001 close, every thread is joined, and the exit code is 0.
"""

import argparse
import logging
import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import quote

from . import argtypes, config
from ._version import __version__
from .interrupts import ignoring_interrupts, interruptible
from .logging_json import LOG_FORMATS, configure_logging

if TYPE_CHECKING:
    from .server import CodaWebSocketServer

__all__ = ["build_parser", "main"]

log = logging.getLogger("coda_ws.cli")

_LOG_LEVELS = ("debug", "info", "warning", "error")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    # Long: the whole command line in one place, in the order `coda-ws --help` shows it
    parser = argparse.ArgumentParser(
        prog="coda-ws",
        description="Coda's real-time event stream over WebSocket.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")

    server_options = _server_options_parser()

    demo = subparsers.add_parser(
        "demo",
        parents=[server_options],
        help="serve and stream a scripted Coda conversation in a loop",
        description="Start a server and feed it the demo conversation in a loop with realistic timing "
        "(token streaming, TTS progress, system metrics) until Ctrl-C.",
    )
    demo.add_argument(
        "--pace",
        type=argtypes.number(positive=False),
        default=1.0,
        help="scale of the pauses: 1 realistic, 0.5 twice as fast (default: 1)",
    )
    demo.add_argument(
        "--metrics-interval",
        type=argtypes.number(positive=True),
        default=3.0,
        help="seconds between system_metrics events (default: 3)",
    )
    demo.add_argument(
        "--iterations",
        type=argtypes.integer(1),
        default=None,
        help="stop after this many conversations (default: run until Ctrl-C)",
    )
    demo.set_defaults(func=run_demo_command)

    serve = subparsers.add_parser(
        "serve",
        parents=[server_options],
        help="serve a bare event stream until Ctrl-C",
        description="Start a server with no event source of its own and run until Ctrl-C.",
    )
    serve.set_defaults(func=run_serve_command)

    export = subparsers.add_parser(
        "export",
        help="print a journal's events as JSON lines",
        description="Print the events stored in a journal (coda-ws serve --journal FILE), one JSON object per "
        "line, oldest first. Safe while a server writes the file.",
    )
    export.add_argument("file", metavar="FILE", help="the journal file")
    export.add_argument(
        "--since",
        type=argtypes.integer(0),
        default=0,
        metavar="SEQ",
        help="only events after this position (default: from the oldest kept)",
    )
    export.add_argument(
        "--types",
        default=None,
        metavar="TYPES",
        help="comma-separated event types or globs, e.g. 'llm_*,stt_result'",
    )
    export.add_argument("--session-id", default=None, help="only this session (and events of no session)")
    export.add_argument(
        "--limit", type=argtypes.integer(1), default=None, metavar="N", help="at most N events"
    )
    export.set_defaults(func=run_export_command)

    token = subparsers.add_parser(
        "token", help="manage access tokens", description="Make tokens for --token-file or CODA_WS_TOKENS."
    )
    token_commands = token.add_subparsers(title="token commands", metavar="ACTION")
    token_new = token_commands.add_parser(
        "new",
        help="print a new random token with its scopes",
        description="Print TOKEN=scopes, ready to append to a token file.",
    )
    token_new.add_argument(
        "--scopes",
        default="read",
        type=argtypes.scopes,
        help="comma-separated: read, read:content, publish, admin (default: read)",
    )
    token_new.set_defaults(func=run_token_new_command)
    token.set_defaults(func=_usage(token))  # `coda-ws token` alone: its own help, not the top level's

    config_parser = subparsers.add_parser(
        "config",
        parents=[server_options],
        help="print the effective server settings and where each came from",
        description="Print every server option's effective value and its source (flag, environment, file or "
        "default), as 'coda-ws serve' with the same flags, environment and --config file would use "
        "them. Tokens are masked.",
    )
    config_parser.add_argument(
        "--json", action="store_true", help="one JSON array of {option, value, source}"
    )
    config_parser.set_defaults(func=run_config_command)

    from .tools import add_tool_commands

    add_tool_commands(subparsers)
    return parser


_METAVARS = {
    "host": "HOST",
    "url_prefix": "PREFIX",
    "allowed_hosts": "HOST",
    "allowed_origins": "ORIGIN",
    "journal": "FILE",
    "backplane": "URL",
    "backplane_prefix": "PREFIX",
}


def _server_options_parser() -> argparse.ArgumentParser:
    """The flags every serving command shares: one per option of
    :data:`coda_ws.config.OPTIONS` that has a flag (so the CLI cannot lack
    one), plus ``--config``, ``--token-file`` and logging.

    A flag's default is None, meaning "not given": the option then comes
    from the environment, the ``--config`` file or its built-in default.
    """
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("server options (also CODA_WS_* variables and --config keys)")
    for option in config.OPTIONS:
        if option.flag is None:
            continue
        default = config.describe({option.name: config.Setting(option, option.default, "default")})[0][1]
        help_text = f"{option.help} (default: {default}; {option.env})"
        if option.kind == "bool":
            group.add_argument(
                option.flag, dest=option.name, action="store_true", default=None, help=help_text
            )
            continue
        metavar = _METAVARS.get(option.name) or {
            "int": "N",
            "float": "SECONDS" if "econds" in option.help else "NUMBER",
        }.get(option.kind, "VALUE")
        if option.kind == "list":
            help_text = help_text.replace(" (default", "; repeatable or comma-separated (default", 1)
        group.add_argument(
            option.flag,
            dest=option.name,
            default=None,
            metavar=metavar,
            type=_flag_parser(option),
            action="append" if option.kind == "list" else "store",
            help=help_text,
        )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="a TOML file of options, keys named as in the configuration reference "
        "(flags and CODA_WS_* variables take precedence)",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="require tokens: lines of TOKEN=scope,scope (also CODA_WS_TOKENS)",
    )
    parser.add_argument(
        "--log-level", choices=_LOG_LEVELS, default="warning", help="logging threshold (default: warning)"
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log lines as text or as one JSON object per line (default: text)",
    )
    return parser


def _flag_parser(option: "config.Option") -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return option.parse(text, option.flag or option.name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).partition(": ")[2] or str(exc)) from None

    return parse


def _flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The server options given as flags (repeated list flags joined)."""
    values: dict[str, Any] = {}
    for option in config.OPTIONS:
        value = getattr(args, option.name, None) if option.flag else None
        if value is None:
            continue
        if option.kind == "list":
            value = [item for items in value if items for item in items] or None
        values[option.name] = value
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``coda-ws`` command line; returns the exit code.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    level = getattr(args, "log_level", None)
    if level is not None:
        configure_logging(level, getattr(args, "log_format", "text"))
    try:
        result = func(args)
    except BrokenPipeError:  # `coda-ws ... | head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    return 0 if result is None else int(result)


def _message(exc: BaseException) -> str:
    """An error for the terminal: an OSError's own text without its ``[Errno N]``."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror if exc.filename is None else f"{exc.filename}: {exc.strerror}"
    return str(exc)


# -- subcommands -------------------------------------------------------------------


def run_serve_command(args: argparse.Namespace) -> int:
    """``coda-ws serve``: a bare server until Ctrl-C or SIGTERM."""
    server = _start_server(args)
    if server is None:
        return 1
    try:
        with interruptible():
            _say(f"coda-ws {__version__} serving on {server.url}")
            _print_watch_hints(server, args)
            _say("Press Ctrl-C to stop.")
            threading.Event().wait()  # until Ctrl-C or SIGTERM raises KeyboardInterrupt
    except KeyboardInterrupt:
        _say("Stopping...")
    finally:
        with ignoring_interrupts():
            server.stop()
    _say("Stopped.")
    return 0


def run_demo_command(args: argparse.Namespace) -> int:
    """``coda-ws demo``: the demo conversation in a loop until Ctrl-C or SIGTERM."""
    from .demo import DEMO_CONFIG, DEMO_VERSION, run_demo_loop
    from .integration import CodaWebSocketIntegration
    from .perf import WebSocketPerfIntegration

    server = _start_server(args)
    if server is None:
        return 1
    integration = CodaWebSocketIntegration(server)
    perf = WebSocketPerfIntegration(server, metrics_interval=args.metrics_interval)
    stop_event = threading.Event()
    failure: list[Exception] = []

    def feed() -> None:
        try:
            run_demo_loop(
                integration, perf, pace=args.pace, stop_event=stop_event, iterations=args.iterations
            )
        except Exception as exc:  # report it in the main thread and exit 1
            log.exception("the demo loop failed")
            failure.append(exc)

    # daemon: a second Ctrl-C must still end the process; the finally block joins it.
    worker = threading.Thread(target=feed, name="coda-ws-demo", daemon=True)
    try:
        with interruptible():
            # Startup first: every client, however early, finds it in the replay frame.
            integration.system_startup(DEMO_VERSION, DEMO_CONFIG)
            perf.start()
            worker.start()
            _say(f"coda-ws {__version__} demo: streaming a scripted Coda conversation on {server.url}")
            _print_watch_hints(server, args)
            _say("Press Ctrl-C to stop.")
            worker.join()  # interruptible: Ctrl-C raises KeyboardInterrupt here
    except KeyboardInterrupt:
        _say("Stopping...")
    finally:
        with ignoring_interrupts():
            stop_event.set()
            if worker.ident is not None:
                worker.join(5.0)
            perf.stop()
            integration.system_shutdown()
            server.stop()  # clients get every event emitted before it, then 1001
    _say("Stopped.")
    return 1 if failure else 0


# -- helpers -----------------------------------------------------------------------


def _usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def run_config_command(args: argparse.Namespace) -> int:
    """``coda-ws config``: the effective settings, where each came from, tokens masked."""
    import json

    from .auth import load_token_file, parse_tokens

    try:
        file = config.from_toml(args.config) if args.config else None
        settings = config.resolve(_flag_values(args), file=file, keyword_source="flag")
        tokens: dict[str, frozenset[str]] = {}
        sources = []
        if args.token_file:
            tokens.update(load_token_file(args.token_file))
            sources.append("flag")
        if os.environ.get("CODA_WS_TOKENS", "").strip():
            tokens.update(parse_tokens(os.environ["CODA_WS_TOKENS"]))
            sources.append("environment")
    except (OSError, ValueError, ImportError) as exc:
        print(f"coda-ws config: {_message(exc)}", file=sys.stderr)
        return 1
    if sources:
        settings["auth"] = config.Setting(settings["auth"].option, tokens, " + ".join(sources))
    rows = config.describe(settings)
    if args.json:
        print(
            json.dumps(
                [{"option": name, "value": value, "source": source} for name, value, source in rows], indent=2
            )
        )
        return 0
    if args.config:
        print(f"# config file: {args.config}")
    width = max(len(name) for name, _, _ in rows)
    value_width = min(40, max(len(value) for _, value, _ in rows))
    for name, value, source in rows:
        print(f"{name:<{width}}  {value:<{value_width}}  {source}")
    return 0


def run_token_new_command(args: argparse.Namespace) -> int:
    """``coda-ws token new``: print ``TOKEN=scopes`` for a token file."""
    from .auth import new_token

    print(f"{new_token()}={','.join(args.scopes)}")
    return 0


def _start_server(args: argparse.Namespace) -> "CodaWebSocketServer | None":
    from .errors import CodaWSError
    from .server import CodaWebSocketServer

    try:
        server = CodaWebSocketServer(config_file=args.config, **_server_keywords(args))
        server.start()
    except (OSError, ValueError, TypeError, CodaWSError, ImportError, sqlite3.Error) as exc:
        print(f"coda-ws: {_message(exc)}", file=sys.stderr)
        return None
    return server


def _server_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """The server's keyword arguments from the flags given (the token file read)."""
    from .auth import load_token_file

    keywords = _flag_values(args)
    if args.token_file:
        keywords["auth"] = load_token_file(args.token_file)
    return keywords


def run_export_command(args: argparse.Namespace) -> int:
    """``coda-ws export FILE``: a journal's events as JSON lines on standard output."""
    from .filters import EventFilter
    from .journal import read_journal

    try:
        event_filter = EventFilter(args.types, args.session_id) if args.types or args.session_id else None
    except (TypeError, ValueError) as exc:
        print(f"coda-ws export: {exc}", file=sys.stderr)
        return 2
    out = sys.stdout
    try:
        for data in read_journal(args.file, since=args.since, event_filter=event_filter, limit=args.limit):
            out.write(data.decode("utf-8"))
            out.write("\n")
        out.flush()
    except (FileNotFoundError, sqlite3.Error) as exc:
        print(f"coda-ws export: {args.file}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `coda-ws export FILE | head`: the reader has all it wants
        return 0
    return 0


def _print_watch_hints(server: "CodaWebSocketServer", args: argparse.Namespace | None = None) -> None:
    _say(f"  watch it:   coda-ws tail {server.url.rstrip('/')}")
    _say(f"  dashboard:  {_dashboard_url(server, args)}")


def _dashboard_url(
    server: "CodaWebSocketServer", args: argparse.Namespace | None = None, stdout: TextIO | None = None
) -> str:
    """The dashboard's URL to print: with ``#token=`` when tokens are configured
    and one of them may read the stream, so the printed link opens a working page.

    The token goes in the fragment, which browsers never send to the server.
    It is printed only to a terminal (``stdout.isatty()``): output that goes
    to a file or a log collector gets the bare URL and a hint, because a
    token must never end up in logs.
    """
    url = server.http_url
    tokens = _configured_tokens(args)
    if not tokens:
        return url
    token = _readable_token(tokens)
    if token is None:
        return f"{url}  (every token lacks the read scope: the page will ask for one)"
    stdout = sys.stdout if stdout is None else stdout
    isatty = getattr(stdout, "isatty", None)
    if not (callable(isatty) and isatty()):
        return (
            f"{url}  (add #token=<a token with the read scope>; not printed here: output is not a terminal)"
        )
    return f"{url}#token={quote(token, safe='')}"


def _configured_tokens(args: argparse.Namespace | None) -> dict[str, frozenset[str]]:
    """``{token: scopes}`` from ``--token-file`` and ``CODA_WS_TOKENS``, as the server reads them."""
    from .auth import load_token_file, parse_tokens

    tokens: dict[str, frozenset[str]] = {}
    path = getattr(args, "token_file", None)
    try:
        if path:
            tokens.update(load_token_file(path))
        from_env = os.environ.get("CODA_WS_TOKENS", "").strip()
        if from_env:
            tokens.update(parse_tokens(from_env))
    except (OSError, ValueError):  # the server read them a moment ago; a file edited since is not fatal here
        return {}
    return tokens


def _readable_token(tokens: Mapping[str, frozenset[str]]) -> str | None:
    """The token a dashboard link should carry, or None when none may read.

    Among the tokens with ``read``, one that also has ``read:content`` (the
    dashboard then shows what was said), and of those the one with the fewest
    other scopes (least privilege: ``publish`` and ``admin`` are not needed
    to watch). Ties keep the order of the configuration.
    """
    readers = [(token, scopes) for token, scopes in tokens.items() if "read" in scopes]
    if not readers:
        return None
    return min(readers, key=lambda item: ("read:content" not in item[1], len(item[1])))[0]


def _say(text: str) -> None:
    print(text, flush=True)
