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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import quote

from . import argtypes
from ._version import __version__
from .interrupts import ignoring_interrupts, interruptible
from .logging_json import LOG_FORMATS, configure_logging

if TYPE_CHECKING:
    from .server import CodaWebSocketServer

__all__ = ["main", "build_parser"]

log = logging.getLogger("coda_ws.cli")

_LOG_LEVELS = ("debug", "info", "warning", "error")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="coda-ws",
        description="Coda's real-time event stream over WebSocket.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")

    server_options = argparse.ArgumentParser(add_help=False)
    server_options.add_argument("--host", default="localhost", help="interface to bind (default: localhost)")
    server_options.add_argument("--port", type=argtypes.port, default=8765, help="TCP port, 0 for any free one (default: 8765)")
    server_options.add_argument("--token-file", metavar="FILE",
                                help="require tokens: lines of TOKEN=scope,scope (also CODA_WS_TOKENS)")
    server_options.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                                help="allow browser pages from ORIGIN (scheme://host[:port]; '*' for any); repeatable")
    server_options.add_argument("--allow-host", action="append", default=[], metavar="HOST",
                                help="answer requests addressed to HOST too (a name or IP; '.example.com' for its "
                                     "subdomains; '*' for any: turns off the DNS-rebinding check); repeatable "
                                     "(also CODA_WS_ALLOWED_HOSTS)")
    server_options.add_argument("--insecure", action="store_true",
                                help="allow a non-loopback --host without tokens (everyone can read everything)")
    server_options.add_argument("--log-level", choices=_LOG_LEVELS, default="warning",
                                help="logging threshold (default: warning)")
    server_options.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                                help="log lines as text or as one JSON object per line (default: text)")

    demo = subparsers.add_parser(
        "demo", parents=[server_options],
        help="serve and stream a scripted Coda conversation in a loop",
        description="Start a server and feed it the demo conversation in a loop with realistic timing "
                    "(token streaming, TTS progress, system metrics) until Ctrl-C.",
    )
    demo.add_argument("--pace", type=argtypes.number(positive=False), default=1.0,
                      help="scale of the pauses: 1 realistic, 0.5 twice as fast (default: 1)")
    demo.add_argument("--metrics-interval", type=argtypes.number(positive=True), default=3.0,
                      help="seconds between system_metrics events (default: 3)")
    demo.add_argument("--iterations", type=argtypes.integer(1), default=None,
                      help="stop after this many conversations (default: run until Ctrl-C)")
    demo.set_defaults(func=run_demo_command)

    serve = subparsers.add_parser(
        "serve", parents=[server_options],
        help="serve a bare event stream until Ctrl-C",
        description="Start a server with no event source of its own and run until Ctrl-C.",
    )
    serve.add_argument("--journal", metavar="FILE", default=None,
                       help="keep the stream in this SQLite file: same epoch, seq and history after a restart")
    serve.add_argument("--journal-max-events", type=argtypes.integer(1), default=None, metavar="N",
                       help="journal retention: the newest N events (default: no limit)")
    serve.add_argument("--journal-max-age", type=argtypes.number(positive=True), default=None, metavar="SECONDS",
                       help="journal retention: events younger than this (default: no limit)")
    serve.add_argument("--backplane", metavar="URL", default=None,
                       help="share one stream with other processes and hosts through Redis (redis://HOST:PORT/DB)")
    serve.add_argument("--backplane-prefix", metavar="PREFIX", default="coda_ws",
                       help="Redis key prefix, so several assistants can share one Redis (default: coda_ws)")
    serve.set_defaults(func=run_serve_command)

    export = subparsers.add_parser(
        "export", help="print a journal's events as JSON lines",
        description="Print the events stored in a journal (coda-ws serve --journal FILE), one JSON object per "
                    "line, oldest first. Safe while a server writes the file.",
    )
    export.add_argument("file", metavar="FILE", help="the journal file")
    export.add_argument("--since", type=argtypes.integer(0), default=0, metavar="SEQ",
                        help="only events after this position (default: from the oldest kept)")
    export.add_argument("--types", default=None, metavar="TYPES",
                        help="comma-separated event types or globs, e.g. 'llm_*,stt_result'")
    export.add_argument("--session-id", default=None, help="only this session (and events of no session)")
    export.add_argument("--limit", type=argtypes.integer(1), default=None, metavar="N", help="at most N events")
    export.set_defaults(func=run_export_command)

    token = subparsers.add_parser("token", help="manage access tokens",
                                  description="Make tokens for --token-file or CODA_WS_TOKENS.")
    token_commands = token.add_subparsers(title="token commands", metavar="ACTION")
    token_new = token_commands.add_parser("new", help="print a new random token with its scopes",
                                          description="Print TOKEN=scopes, ready to append to a token file.")
    token_new.add_argument("--scopes", default="read", type=argtypes.scopes,
                           help="comma-separated: read, read:content, publish, admin (default: read)")
    token_new.set_defaults(func=run_token_new_command)

    from .tools import add_tool_commands

    add_tool_commands(subparsers)
    return parser


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
    result = func(args)
    return 0 if result is None else int(result)


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
            run_demo_loop(integration, perf, pace=args.pace, stop_event=stop_event, iterations=args.iterations)
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


def run_token_new_command(args: argparse.Namespace) -> int:
    """``coda-ws token new``: print ``TOKEN=scopes`` for a token file."""
    from .auth import new_token

    print(f"{new_token()}={','.join(args.scopes)}")
    return 0


def _start_server(args: argparse.Namespace) -> "CodaWebSocketServer | None":
    from .auth import load_token_file
    from .errors import CodaWSError
    from .server import CodaWebSocketServer

    try:
        auth = load_token_file(args.token_file) if args.token_file else None
        server = CodaWebSocketServer(host=args.host, port=args.port, auth=auth,
                                     allowed_origins=args.allow_origin or None, insecure=args.insecure,
                                     allowed_hosts=args.allow_host or None,
                                     **_persistence_options(args))
        server.start()
    except (OSError, ValueError, TypeError, CodaWSError, ImportError, sqlite3.Error) as exc:
        print(f"coda-ws: {exc}", file=sys.stderr)
        return None
    return server


def _persistence_options(args: argparse.Namespace) -> dict[str, Any]:
    """The journal and backplane options of ``coda-ws serve`` (none for ``demo``)."""
    options: dict[str, Any] = {}
    if getattr(args, "journal", None):
        options.update(journal=args.journal, journal_max_events=args.journal_max_events,
                       journal_max_age=args.journal_max_age)
    if getattr(args, "backplane", None):
        options.update(backplane=args.backplane, backplane_prefix=args.backplane_prefix)
    return options


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
    _say(f"  watch it:   wscat -c {server.url.rstrip('/')}")
    _say(f"  dashboard:  {_dashboard_url(server, args)}")


def _dashboard_url(server: "CodaWebSocketServer", args: argparse.Namespace | None = None,
                   stdout: TextIO | None = None) -> str:
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
        return f"{url}  (add #token=<a token with the read scope>; not printed here: output is not a terminal)"
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
