"""Command-line tools over the stream: ``tail``, ``record`` and ``play``.

* :func:`tail` prints the live stream, one line per event (coloured on a
  terminal) or one JSON object per line (``json_output=True``, for piping).
* :func:`record` writes the stream to a JSON Lines file: one event per line,
  in its wire form, with its original ``seq`` and ``timestamp``.
* :func:`play` serves a recording again through a
  :class:`~coda_ws.server.CodaWebSocketServer`, re-emitting every event (type,
  session and fields; the server stamps new ``seq`` values) with its original
  timing scaled by ``speed``, so dashboards can be built without a running
  assistant.

``tail`` and ``record`` use :class:`~coda_ws.client.CodaEventClient`, so they
reconnect and resume after a lost connection; a failure of the first
connection is reported at once instead. Each function returns the number of
events it handled and raises :class:`ToolError` with a message for the user
when it cannot do its job; :func:`add_tool_commands` wires them into the
``coda-ws`` command, where a ``ToolError`` becomes a message on stderr and a
non-zero exit code (2 for bad arguments, 1 for the rest).

Stopping: a ``count``, a ``duration``, the server closing the stream (1000),
Ctrl-C (``KeyboardInterrupt``) or a ``stop_event``. Python cannot wait on a
queue and an Event at once, so ``tail`` and ``record`` look at ``stop_event``
whenever an event arrives and at least every :data:`STOP_CHECK_INTERVAL`
seconds; ``play`` waits on ``stop_event`` itself and stops at once.
"""

import argparse
import datetime
import json
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

from . import argtypes
from .client import CodaEventClient
from .errors import ClientConnectionError, InvalidEventError, ToolError
from .events import BaseEvent, encode_json, import_event_modules, registered_event_types, validate_event
from .filters import TypePatterns
from .interrupts import interruptible

if TYPE_CHECKING:
    from .server import CodaWebSocketServer

__all__ = [
    "STOP_CHECK_INTERVAL",
    "ToolError",
    "add_tool_commands",
    "format_event",
    "play",
    "read_recording",
    "record",
    "tail",
]

#: Longest time, in seconds, ``tail`` and ``record`` take to notice a set ``stop_event``.
STOP_CHECK_INTERVAL = 0.1

_ENVELOPE = ("version", "seq", "timestamp", "type", "session_id")
_VALUE_WIDTH = 60  # longest rendering of one field in a tail line, in characters
_PLAIN_WIDTH = 240  # longest tail line when the output is not a terminal

#: An event as the client delivers it: its dataclass, or a dict (see CodaEventClient).
_Event = BaseEvent | dict[str, Any]
#: A file to read or write.
_Path = str | os.PathLike[str]


# -- shared helpers --------------------------------------------------------------


def _wire(event: _Event) -> dict[str, Any]:
    """The wire form (a dict) of an event object or event dict."""
    if isinstance(event, BaseEvent):
        wire: dict[str, Any] = event.to_dict()
        return wire
    return event


def _open_client(
    url: str,
    types: TypePatterns | None,
    session_id: str | None,
    since: int | None,
    token: str | None,
    connect_timeout: float,
    replay: bool,
    on_gap: Callable[[dict[str, Any]], object],
) -> CodaEventClient:
    """A connected client, or ToolError saying why there is none."""
    try:
        client = CodaEventClient(
            url,
            types=types,
            session_id=session_id,
            token=token,
            since=since,
            replay=replay,
            on_gap=on_gap,
            connect_timeout=connect_timeout,
            retry_first_connect=False,
            name="coda-ws-tool",
        )
    except (TypeError, ValueError) as exc:
        raise ToolError(str(exc), exit_code=2) from None
    if client.wait_connected(connect_timeout) or client.stats()["sessions"]:
        return client  # connected (or connected, streamed and already closed: its events are queued)
    error = client.error or client.last_error
    client.close()
    if error is None:
        raise ToolError(f"no answer from {url} within {connect_timeout} s")
    if isinstance(error, ClientConnectionError):
        raise ToolError(str(error)) from None
    raise ToolError(f"cannot connect to {url}: {error}") from None


def _events(
    client: CodaEventClient, stop_event: threading.Event | None, deadline: float | None
) -> Iterator[_Event]:
    """Events from ``client`` until the stream ends, ``stop_event`` is set or
    the monotonic ``deadline`` passes."""
    while True:
        if stop_event is not None and stop_event.is_set():
            return
        wait = STOP_CHECK_INTERVAL if stop_event is not None else None
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            wait = remaining if wait is None else min(wait, remaining)
        try:
            event = client.get(wait)
        except ClientConnectionError as exc:
            raise ToolError(f"the stream ended: {exc}") from None
        if event is not None:
            yield event
        elif client.closed:
            # The stream ended (1000 from the server): take what is still queued.
            while (event := client.get(0)) is not None:
                yield event
            return


def _check_count(count: int | None) -> None:
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise ToolError(f"count must be a positive integer, got {count!r}", exit_code=2)


# -- tail -----------------------------------------------------------------------------

_COLORS = (
    ("error", "31"),  # red: *_error and the like, checked first
    ("stt_", "32"),  # green
    ("llm_", "35"),  # magenta
    ("tts_", "36"),  # cyan
    ("memory_", "33"),  # yellow
    ("tool_", "34"),  # blue
    ("conversation_", "1"),  # bold
)
_DIM = "2"


def _color_for(type_name: str) -> str:
    for marker, code in _COLORS:
        if marker in type_name:
            return code
    return _DIM


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _render_value(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(_short(value, _VALUE_WIDTH), ensure_ascii=False)
    if isinstance(value, float):
        return f"{value:.6g}"
    try:
        text = encode_json(value)
    except (TypeError, ValueError):
        text = repr(value)
    return _short(text, _VALUE_WIDTH)


def format_event(event: _Event, color: bool = False, width: int | None = None) -> str:
    """One readable line for an event (object or dict), without a newline.

    ``HH:MM:SS.mmm #seq type [session] field=value ...``: string values are
    quoted and shortened, null fields left out; ``color`` adds ANSI colours by
    event family; ``width`` (characters) cuts the line to fit a terminal.
    """
    data = _wire(event)
    timestamp = data.get("timestamp")
    if isinstance(timestamp, (int, float)) and not isinstance(timestamp, bool) and math.isfinite(timestamp):
        try:
            clock = datetime.datetime.fromtimestamp(timestamp).strftime("%H:%M:%S.%f")[:-3]
        except (OverflowError, OSError, ValueError):
            clock = "--:--:--.---"
    else:
        clock = "--:--:--.---"
    seq = data.get("seq")
    type_name = str(data.get("type", "?"))
    head = f"{clock} #{seq if seq is not None else '?'} "
    session = data.get("session_id")
    tail = f" [{_short(str(session), 16)}]" if session is not None else ""
    fields = " ".join(
        f"{key}={_render_value(value)}"
        for key, value in data.items()
        if key not in _ENVELOPE and value is not None
    )
    plain_type = f"{type_name:<20}"
    text = f"{tail} {fields}" if fields else tail
    if width is not None:
        text = _short(text, max(0, width - len(head) - len(plain_type)))
    if color:
        return f"\033[{_DIM}m{head}\033[0m\033[{_color_for(type_name)}m{plain_type}\033[0m{text}"
    return f"{head}{plain_type}{text}"


def tail(
    url: str,
    types: TypePatterns | None = None,
    session_id: str | None = None,
    since: int | None = None,
    *,
    json_output: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stop_event: threading.Event | None = None,
    count: int | None = None,
    color: bool | None = None,
    token: str | None = None,
    connect_timeout: float = 10.0,
) -> int:
    """Print the live stream of ``url`` until it ends or is stopped.

    Args:
        url: the server's WebSocket URL.
        types, session_id: filters (see :class:`~coda_ws.client.CodaEventClient`).
        since: start after this position (missed events first) instead of at
            the live head after the replay frame.
        json_output: print each event as one compact JSON line (wire form).
        out, err: text streams for events and for notices (default stdout, stderr).
        stop_event: a ``threading.Event``; setting it stops the tail.
        count: stop after this many events.
        color: ANSI colours; None: when ``out`` is a terminal and ``NO_COLOR``
            is not set. Lines are cut to the terminal's width when ``out`` is one.
        token: bearer token for servers that require one.
        connect_timeout: seconds to wait for the first connection.

    Returns:
        The number of events printed.

    Raises:
        ToolError: bad URL or filter, no connection, or the stream failed.
    """
    # Long: the docstring documents the output; the code is about 45 lines
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    _check_count(count)
    is_tty = _isatty(out)
    if color is None:
        color = is_tty and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
    width = shutil.get_terminal_size().columns if is_tty and not json_output else _PLAIN_WIDTH

    def on_gap(frame: dict[str, Any]) -> None:
        print(
            f"-- events were missed ({frame.get('reason')}); the stream continues from the server's"
            f" position, oldest held: {frame.get('earliest')} --",
            file=err,
            flush=True,
        )

    client = _open_client(url, types, session_id, since, token, connect_timeout, True, on_gap)
    shown = 0
    try:
        for event in _events(client, stop_event, None):
            if json_output:
                out.write(encode_json(_wire(event)) + "\n")
            else:
                out.write(format_event(event, color=color, width=width) + "\n")
            out.flush()
            shown += 1
            if count is not None and shown >= count:
                break
    finally:
        client.close()
    return shown


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # not a real file, or already closed
        return False


# -- record -----------------------------------------------------------------------------


def record(
    url: str,
    path: _Path,
    types: TypePatterns | None = None,
    session_id: str | None = None,
    *,
    count: int | None = None,
    duration: float | None = None,
    stop_event: threading.Event | None = None,
    err: TextIO | None = None,
    token: str | None = None,
    connect_timeout: float = 10.0,
) -> int:
    """Write the stream of ``url`` to the JSON Lines file ``path``.

    One event per line, in its wire form (original ``seq`` and
    ``timestamp``), flushed line by line so an interrupted recording is still
    a valid file. Starts at the live head (no replay frame: its events are
    older than the recording and would distort the timing on playback).
    Reconnects and resumes after a lost connection; a gap is reported on
    ``err``. Overwrites ``path``.

    Args:
        url: the server's WebSocket URL.
        path: the file to write.
        types, session_id: filters.
        count: stop after this many events.
        duration: stop after this many seconds.
        stop_event: a ``threading.Event``; setting it stops the recording.
        err: text stream for notices (default stderr).
        token, connect_timeout: as for :func:`tail`.

    Returns:
        The number of events written.

    Raises:
        ToolError: the file cannot be written, bad arguments, no connection.
    """
    # Long: the docstring documents the file format; the code is about 45 lines
    err = sys.stderr if err is None else err
    _check_count(count)
    if duration is not None and (
        not isinstance(duration, (int, float)) or isinstance(duration, bool) or not 0 < duration < math.inf
    ):
        raise ToolError(f"duration must be a positive number of seconds, got {duration!r}", exit_code=2)

    def on_gap(frame: dict[str, Any]) -> None:
        print(
            f"-- events were missed ({frame.get('reason')}); the recording has a gap --", file=err, flush=True
        )

    # Connect first: a wrong address must not truncate an existing recording.
    client = _open_client(url, types, session_id, None, token, connect_timeout, False, on_gap)
    written = 0
    try:
        try:
            stream = open(path, "w", encoding="utf-8")
        except OSError as exc:
            raise ToolError(f"cannot write {path}: {exc.strerror or exc}") from None
        with stream:
            deadline = None if duration is None else time.monotonic() + duration
            for event in _events(client, stop_event, deadline):
                stream.write(encode_json(_wire(event)) + "\n")
                stream.flush()
                written += 1
                if count is not None and written >= count:
                    break
    finally:
        client.close()
    return written


# -- play -------------------------------------------------------------------------------


def read_recording(path: _Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """The events of a JSON Lines recording: yields ``(line_number, dict)``.

    Blank lines are skipped. Raises :class:`ToolError` naming the file and the
    line for a missing file, text that is not UTF-8, a line that is not JSON,
    or a JSON value that is not an object with a ``type``.
    """
    try:
        stream = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise ToolError(f"{path}: no such file") from None
    except OSError as exc:
        raise ToolError(f"cannot read {path}: {exc.strerror or exc}") from None
    with stream:
        lineno = 0
        while True:
            try:
                line = stream.readline()
            except UnicodeDecodeError as exc:
                raise ToolError(f"{path}:{lineno + 1}: not UTF-8 text ({exc.reason})") from None
            except OSError as exc:
                raise ToolError(f"cannot read {path}: {exc.strerror or exc}") from None
            if not line:
                return
            lineno += 1
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError as exc:
                message = getattr(exc, "msg", str(exc))
                column = getattr(exc, "colno", None)
                where = f" at column {column}" if column else ""
                raise ToolError(f"{path}:{lineno}: malformed JSON ({message}{where})") from None
            if not isinstance(data, dict):
                raise ToolError(
                    f"{path}:{lineno}: expected a JSON object (one event), got {type(data).__name__}"
                )
            if not isinstance(data.get("type"), str):
                raise ToolError(f'{path}:{lineno}: the event has no "type"')
            yield lineno, data


def _playable(
    path: _Path, lineno: int, data: dict[str, Any]
) -> tuple[float | None, str, str | None, dict[str, Any]]:
    """``(timestamp or None, type, session_id, fields)`` for one recorded event."""
    if data.get("redacted") is True:
        raise ToolError(
            f"{path}:{lineno}: a redacted event (recorded without the read:content scope)"
            " cannot be played back"
        )
    timestamp = data.get("timestamp")
    if not isinstance(timestamp, (int, float)) or isinstance(timestamp, bool) or not math.isfinite(timestamp):
        timestamp = None
    try:
        event: BaseEvent = validate_event(data)
    except InvalidEventError as exc:
        hint = ""
        if data.get("type") not in registered_event_types():
            hint = (
                "; if it is a type of your own, register it first (coda-ws play --import MODULE, "
                "MODULE calling coda_ws.register_event)"
            )
        raise ToolError(f"{path}:{lineno}: cannot be played back: {exc}{hint}") from None
    wire: dict[str, Any] = event.to_dict()
    fields = {key: value for key, value in wire.items() if key not in _ENVELOPE}
    return timestamp, event.type, event.session_id, fields


def _check_recording(path: _Path) -> int:
    """Validate every line before serving anything; returns the event count."""
    count = 0
    for lineno, data in read_recording(path):
        _playable(path, lineno, data)
        count += 1
    if count == 0:
        raise ToolError(f"{path}: the recording holds no events")
    return count


def _play_once(path: _Path, server: "CodaWebSocketServer", speed: float, stop: threading.Event) -> int:
    """Emit the recording once with its timing; returns how many were emitted."""
    start = time.monotonic()
    first: float | None = None
    emitted = 0
    for lineno, data in read_recording(path):
        timestamp, type_name, session_id, fields = _playable(path, lineno, data)
        if timestamp is not None:
            if first is None:
                first = timestamp
            delay = start + (timestamp - first) / speed - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return emitted
        if stop.is_set():
            return emitted
        try:
            server.emit(type_name, session_id=session_id, **fields)
        except InvalidEventError as exc:  # the file changed since it was checked
            raise ToolError(f"{path}:{lineno}: cannot be played back: {exc}") from None
        emitted += 1
    return emitted


def play(
    path: _Path,
    speed: float = 1.0,
    host: str = "localhost",
    port: int = 8765,
    *,
    loop: bool = False,
    stop_event: threading.Event | None = None,
    server: "CodaWebSocketServer | None" = None,
    on_ready: "Callable[[CodaWebSocketServer], object] | None" = None,
    hold: bool = False,
    err: TextIO | None = None,
) -> int:
    """Serve the recording ``path`` again, with its original timing.

    Every line is checked before anything is served. Events are re-emitted
    (type, session and fields; the server stamps new ``seq`` and ``timestamp``
    values) at their recorded offsets from the first event, divided by
    ``speed``; the waits are on ``stop_event``, so setting it stops playback
    at once.

    Args:
        path: a JSON Lines recording (see :func:`record`).
        speed: 2.0 plays twice as fast, 0.5 half as fast.
        host, port: where to serve, when ``server`` is not given.
        loop: start again after the last event (after a pause of 1 s / speed)
            until stopped.
        stop_event: a ``threading.Event`` that stops playback.
        server: emit into this (started) server instead of starting one;
            it is left running.
        on_ready: ``callable(server)`` once the server is serving (for example
            to learn a port chosen with ``port=0``).
        hold: once playback ends, keep serving until ``stop_event`` is set
            (or Ctrl-C), so late clients still get the replay frame.
        err: text stream for notices (default stderr).

    Returns:
        The number of events emitted.

    Raises:
        ToolError: missing or malformed file (naming the line), bad speed,
            or the address cannot be bound.
    """
    # Long: the docstring documents the file format and pacing; the code is about 50 lines
    err = sys.stderr if err is None else err
    if not isinstance(speed, (int, float)) or isinstance(speed, bool) or not 0 < speed < math.inf:
        raise ToolError(f"speed must be a positive number, got {speed!r}", exit_code=2)
    total = _check_recording(path)
    stop = stop_event if stop_event is not None else threading.Event()
    own = server is None
    if server is None:  # own
        from .server import CodaWebSocketServer

        try:
            server = CodaWebSocketServer(host=host, port=port)
            server.start()
        except ValueError as exc:
            raise ToolError(str(exc), exit_code=2) from None
        except OSError as exc:
            raise ToolError(str(exc)) from None
    emitted = 0
    try:
        if on_ready is not None:
            on_ready(server)
        print(
            f"playing {total} events from {path} on {server.url} (speed {speed:g}"
            f"{', looping' if loop else ''})",
            file=err,
            flush=True,
        )
        while True:
            emitted += _play_once(path, server, speed, stop)
            if not loop or stop.is_set() or stop.wait(1.0 / speed):
                break
        if hold and own and not stop.is_set():
            print(f"playback finished; still serving on {server.url} (Ctrl-C to stop)", file=err, flush=True)
            stop.wait()
    finally:
        if own:
            server.stop()
    return emitted


# -- the coda-ws subcommands ------------------------------------------------------------------


def _types_argument(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [t.strip() for value in values for t in value.split(",") if t.strip()] or None


def _run(command: str, action: Callable[[], object]) -> int:
    """Run a tool for the command line: exit code 0, or 1/2 with a message on stderr."""
    try:
        with interruptible():  # SIGINT and SIGTERM raise KeyboardInterrupt, even in the background
            action()
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how tail, record and play are meant to end
    except BrokenPipeError:
        # The reader of our output went away (``coda-ws tail URL | head``): a
        # normal end. Point stdout at /dev/null so the final flush is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    except ToolError as exc:
        print(f"coda-ws {command}: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


def _tail_command(args: argparse.Namespace) -> int:
    return _run(
        "tail",
        lambda: tail(
            args.url,
            types=_types_argument(args.types),
            session_id=args.session,
            since=args.since,
            json_output=args.json,
            count=args.count,
            token=args.token,
            connect_timeout=args.connect_timeout,
            color=False if args.no_color else None,
        ),
    )


def _record_command(args: argparse.Namespace) -> int:
    def action() -> None:
        try:
            written = record(
                args.url,
                args.file,
                types=_types_argument(args.types),
                session_id=args.session,
                count=args.count,
                duration=args.duration,
                token=args.token,
                connect_timeout=args.connect_timeout,
            )
        except KeyboardInterrupt:
            print(
                f"recording stopped; {args.file} holds the events received so far",
                file=sys.stderr,
                flush=True,
            )
            raise
        print(f"recorded {written} events to {args.file}", file=sys.stderr, flush=True)

    return _run("record", action)


def _play_command(args: argparse.Namespace) -> int:
    def action() -> int:
        try:
            import_event_modules(args.imports)
        except ImportError as exc:
            raise ToolError(str(exc), exit_code=2) from None
        return play(
            args.file,
            speed=args.speed,
            host=args.host,
            port=args.port,
            loop=args.loop,
            hold=not args.exit,
        )

    return _run("play", action)


def add_tool_commands(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``tail``, ``record`` and ``play`` on an argparse subparsers object.

    Each subcommand sets ``func`` (``set_defaults``) to a handler that takes
    the parsed arguments and returns the exit code.
    """
    # Long: three subcommands' flags in one place, in the order `--help` shows them
    client_options = argparse.ArgumentParser(add_help=False)
    client_options.add_argument("url", help="the server's WebSocket URL, e.g. ws://localhost:8765")
    client_options.add_argument(
        "--types",
        action="append",
        metavar="TYPES",
        help="only these event types or globs, comma-separated (llm_*,stt_result); may be repeated",
    )
    client_options.add_argument(
        "--session", metavar="SESSION_ID", help="only events of this session (and those of no session)"
    )
    client_options.add_argument("--token", help="bearer token, for servers that require one")
    client_options.add_argument(
        "--connect-timeout",
        type=argtypes.number(positive=True),
        default=10.0,
        metavar="S",
        help="seconds to wait for the first connection (default: 10)",
    )
    client_options.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="logging threshold (default: warning)",
    )

    tail_parser = subparsers.add_parser(
        "tail",
        parents=[client_options],
        help="print the live stream, one line per event",
        description="Print the live stream: one readable (coloured on a terminal) line per event, or raw JSON"
        " lines with --json. Reconnects and resumes by itself; stop with Ctrl-C.",
    )
    tail_parser.add_argument(
        "--since",
        type=argtypes.integer(0),
        metavar="N",
        help="start after stream position N (the missed events first)",
    )
    tail_parser.add_argument("--json", action="store_true", help="print each event as one JSON line")
    tail_parser.add_argument("--count", type=argtypes.integer(1), metavar="N", help="stop after N events")
    tail_parser.add_argument("--no-color", action="store_true", help="no colours, even on a terminal")
    tail_parser.set_defaults(func=_tail_command)

    record_parser = subparsers.add_parser(
        "record",
        parents=[client_options],
        help="write the stream to a JSON Lines file",
        description="Write the live stream to FILE, one event (JSON, with its original timestamp) per line,"
        " until Ctrl-C, --count or --duration.",
    )
    record_parser.add_argument("file", metavar="FILE.jsonl", help="the file to write (overwritten)")
    record_parser.add_argument("--count", type=argtypes.integer(1), metavar="N", help="stop after N events")
    record_parser.add_argument(
        "--duration", type=argtypes.number(positive=True), metavar="S", help="stop after S seconds"
    )
    record_parser.set_defaults(func=_record_command)

    play_parser = subparsers.add_parser(
        "play",
        help="serve a recording again with its original timing",
        description="Serve the events of FILE (written by 'coda-ws record') through a coda_ws server, with"
        " their original timing scaled by --speed: a stream for building dashboards without a"
        " running assistant. Keeps serving after the last event until Ctrl-C (or --exit).",
    )
    play_parser.add_argument("file", metavar="FILE.jsonl", help="the recording to play")
    play_parser.add_argument(
        "--speed",
        type=argtypes.number(positive=True),
        default=1.0,
        help="time scale: 2 plays twice as fast (default: 1)",
    )
    play_parser.add_argument("--host", default="localhost", help="interface to bind (default: localhost)")
    play_parser.add_argument(
        "--port", type=argtypes.port, default=8765, help="TCP port, 0 for any free one (default: 8765)"
    )
    play_parser.add_argument(
        "--loop", action="store_true", help="start again after the last event, until Ctrl-C"
    )
    play_parser.add_argument("--exit", action="store_true", help="stop serving once the recording has played")
    play_parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="import MODULE first: one that registers event types of your own (coda_ws.register_event);"
        " may be repeated",
    )
    play_parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="logging threshold (default: warning)",
    )
    play_parser.set_defaults(func=_play_command)
