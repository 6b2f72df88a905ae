"""Every server option in one place: its default, its checks, and the names it goes by.

One :class:`Option` per keyword argument of ``CodaWebSocketServer`` that a
deployment may want to set without code. Each option is settable as

* a keyword argument (``CodaWebSocketServer(history_size=20_000)``),
* a ``coda-ws serve`` flag (``--history-size 20000``),
* an environment variable (``CODA_WS_HISTORY_SIZE=20000``),
* a Flask config key read by ``init_app`` / ``from_flask_config``
  (``app.config["CODA_WS_HISTORY_SIZE"] = 20000``),
* a key of a TOML file (``coda-ws serve --config coda-ws.toml``:
  ``history_size = 20000``).

One precedence rule: keyword or flag, then environment, then file, then the
default (:func:`resolve`). The configuration and CLI references in the docs
are generated from :data:`OPTIONS`, and a test fails when an option of the
server is missing here: an option cannot exist without documentation.

The checks here are the server's own: ``CodaWebSocketServer`` validates its
arguments with :func:`check`, so a bad value is refused with the same
message whichever way it came in.
"""

import dataclasses
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from . import checks

__all__ = [
    "CONFIGURED",
    "OPTIONS",
    "OPTION_NAMES",
    "Configured",
    "Option",
    "Setting",
    "check",
    "describe",
    "from_env",
    "from_mapping",
    "from_toml",
    "resolve",
    "suggestion",
]


class Configured:
    """The default of a constructor argument left out: the option is looked up
    in the environment (``CODA_WS_*``), the Flask config, the ``config_file``,
    then the built-in default (see :mod:`coda_ws.config`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<configured>"


#: The one :class:`Configured` value.
CONFIGURED: Final = Configured()


def _type_name(value: Any) -> str:
    return type(value).__name__


def _integer(minimum: int, maximum: int | None = None, none_ok: bool = False) -> Callable[[str, Any], Any]:
    return lambda name, value: checks.integer(name, value, minimum, maximum, none_ok=none_ok)


def _seconds(positive: bool, none_ok: bool) -> Callable[[str, Any], Any]:
    return lambda name, value: checks.number(
        name, value, positive=positive, minimum=0, none_ok=none_ok, unit="seconds"
    )


def _number(name: str, value: Any) -> Any:
    return checks.number(name, value, positive=True)


def _text(none_ok: bool) -> Callable[[str, Any], Any]:
    return lambda name, value: checks.non_empty_text(name, value, none_ok=none_ok)


def _path_or_object(name: str, value: Any) -> Any:
    if isinstance(value, (str, os.PathLike)) and not os.fspath(value):
        raise ValueError(f"{name} must be a non-empty path or URL, got {value!r}")
    return value  # None, a path, a URL, or an object (a Journal, a backplane) its constructor checks


def _flag(name: str, value: Any) -> Any:
    if value is True or value is False:
        return value
    raise ValueError(f"{name} must be True or False, got {value!r}")


def _strings(name: str, value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    try:
        items = list(value)
    except TypeError:
        raise ValueError(f"{name} must be a string or a list of strings, got {_type_name(value)}") from None
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"{name} must be a list of strings, got {value!r}")
    return items


def _prefix(name: str, value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str) or (value and not value.startswith("/")):
        raise ValueError(f"{name} must be '' or a path starting with '/', got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Option:
    """One server option.

    Attributes:
        name: the keyword argument (and TOML key).
        default: the default value (``None`` often means "off").
        check: ``check(name, value) -> value``: raises ValueError naming
            the option and the bad value; may normalise the value.
        help: one sentence for the references and ``--help``.
        kind: how text (flags, environment, TOML strings) is parsed: ``int``,
            ``float``, ``bool``, ``str`` or ``list`` (comma-separated).
        flag: the ``coda-ws serve`` flag, or None when it has none.
        secret: the value is masked when printed (tokens).
    """

    name: str
    default: Any
    check: Callable[[str, Any], Any]
    help: str
    kind: str = "str"
    flag: str | None = None
    secret: bool = False

    @property
    def env(self) -> str:
        """The environment variable and Flask config key: ``CODA_WS_<NAME>``."""
        return "CODA_WS_" + self.name.upper()

    def parse(self, text: str, where: str) -> Any:
        """The value of ``text`` (from a flag, the environment, a file).

        Raises:
            ValueError: naming ``where`` and the option.
        """
        text = text.strip()
        try:
            if text.lower() in ("none", "off", "") and self.kind != "str":
                value: Any = None
            elif self.kind == "int":
                if not (text.isascii() and text.lstrip("-").isdigit()):
                    raise ValueError
                value = int(text)
            elif self.kind == "float":
                value = float(text)
                if value.is_integer() and "." not in text and "e" not in text.lower():
                    value = int(value)
            elif self.kind == "bool":
                lowered = text.lower()
                if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                value = lowered in ("1", "true", "yes", "on")
            elif self.kind == "list":
                value = [item.strip() for item in text.split(",") if item.strip()] or None
            else:
                value = text
        except ValueError:
            raise ValueError(f"{where}: {self.name} must be {_KIND_WORDS[self.kind]}, got {text!r}") from None
        try:
            return self.check(self.name, value)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


_KIND_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "text",
    "list": "a comma-separated list",
}

_MiB = 1024 * 1024

#: Every option, in the order the references list them.
OPTIONS: tuple[Option, ...] = (
    # -- where it listens
    Option(
        "host",
        "localhost",
        _text(False),
        "Interface to bind; a non-loopback address needs tokens (or insecure).",
        flag="--host",
    ),
    Option("port", 8765, _integer(0, 65535), "TCP port; 0 picks a free one.", kind="int", flag="--port"),
    Option(
        "url_prefix",
        None,
        _prefix,
        "Path prefix of every route (default: none standalone, '/coda-ws' when "
        "mounted on an application's app).",
        flag="--url-prefix",
    ),
    # -- who may connect
    Option(
        "auth",
        None,
        lambda name, value: value,
        "Tokens and their scopes: {token: scopes} or a callable "
        "(from the environment: TOKEN=scope,scope entries, separated by spaces).",
        secret=True,
    ),
    Option(
        "allowed_hosts",
        None,
        _strings,
        "Host names answered besides localhost, loopback IPs and the bound "
        "address (DNS rebinding defence); '.example.com' adds its subdomains, '*' turns the check off.",
        kind="list",
        flag="--allow-host",
    ),
    Option(
        "allowed_origins",
        None,
        _strings,
        "Browser origins allowed besides local pages ('*' for any; "
        "'null' for pages opened from a file, with a warning).",
        kind="list",
        flag="--allow-origin",
    ),
    Option(
        "insecure",
        False,
        _flag,
        "Serve a non-loopback address without tokens (everyone can read everything; logged as a warning).",
        kind="bool",
        flag="--insecure",
    ),
    # -- limits
    Option(
        "max_clients",
        256,
        _integer(1),
        "Concurrent WebSocket clients; beyond: HTTP 503.",
        kind="int",
        flag="--max-clients",
    ),
    Option(
        "max_clients_per_address",
        64,
        _integer(1),
        "Concurrent clients from one peer IP; beyond: HTTP 503.",
        kind="int",
        flag="--max-clients-per-address",
    ),
    Option(
        "max_message_size",
        64 * 1024,
        _integer(1),
        "Largest client frame, bytes; larger: close 1009.",
        kind="int",
        flag="--max-message-size",
    ),
    Option(
        "max_event_size",
        _MiB,
        _integer(1024, none_ok=True),
        "Largest encoded event, bytes; larger: emit() "
        "raises EventTooLargeError, POST /events answers 413 (none: no limit).",
        kind="int",
        flag="--max-event-size",
    ),
    Option(
        "max_replay_bytes",
        4 * _MiB,
        _integer(1),
        "Largest replay frame, bytes: the newest high-priority events that fit, and 'omitted': N.",
        kind="int",
        flag="--max-replay-bytes",
    ),
    Option(
        "max_body_size",
        _MiB,
        _integer(1),
        "Largest POST /events body, bytes; larger: HTTP 413.",
        kind="int",
        flag="--max-body-size",
    ),
    Option(
        "rate_limit",
        20,
        _number,
        "Client frames per second a client may send on average (bursts of twice "
        "that); beyond: an error frame, then close 1008.",
        kind="float",
        flag="--rate-limit",
    ),
    Option(
        "handshake_timeout",
        10.0,
        _seconds(True, False),
        "Seconds from accept by which a client must have "
        "sent its request head and declared body (a total deadline).",
        kind="float",
        flag="--handshake-timeout",
    ),
    # -- the stream
    Option("history_size", 10_000, _integer(1), "Events kept for resume.", kind="int", flag="--history-size"),
    Option(
        "client_queue_size",
        None,
        _integer(1, none_ok=True),
        "Lossless events a client may fall behind "
        "before it is closed with 4008 (default: 1024, or history_size when smaller).",
        kind="int",
        flag="--client-queue-size",
    ),
    Option(
        "max_replay_events",
        50,
        _integer(0),
        "High-priority events kept for the replay frame.",
        kind="int",
        flag="--max-replay-events",
    ),
    Option(
        "ping_interval",
        20,
        _seconds(False, True),
        "Seconds between keepalive pings (0 or none: off).",
        kind="float",
        flag="--ping-interval",
    ),
    Option(
        "ping_timeout",
        10,
        _seconds(False, True),
        "Seconds a client may take to answer a ping; also how "
        "long a write may wait for a client that reads nothing.",
        kind="float",
        flag="--ping-timeout",
    ),
    # -- persistence and scale-out
    Option(
        "journal",
        None,
        _path_or_object,
        "SQLite file that keeps the stream across restarts (same epoch, seq continues, clients resume).",
        flag="--journal",
    ),
    Option(
        "journal_max_events",
        None,
        _integer(1, none_ok=True),
        "Journal retention: the newest N events (none: no limit).",
        kind="int",
        flag="--journal-max-events",
    ),
    Option(
        "journal_max_age",
        None,
        _seconds(True, True),
        "Journal retention: events younger than this many seconds (none: no limit).",
        kind="float",
        flag="--journal-max-age",
    ),
    Option(
        "journal_flush_interval",
        0.2,
        _seconds(True, False),
        "Seconds an event may wait before it is committed: what a process crash can lose at most.",
        kind="float",
        flag="--journal-flush-interval",
    ),
    Option(
        "backplane",
        None,
        _path_or_object,
        "redis:// URL of a stream shared with other processes and hosts (exclusive with journal).",
        flag="--backplane",
    ),
    Option(
        "backplane_prefix",
        "coda_ws",
        _text(False),
        "Redis key prefix, so several assistants can share one Redis.",
        flag="--backplane-prefix",
    ),
    # -- event types of your own
    Option(
        "event_modules",
        None,
        _strings,
        "Python modules imported before the journal or backplane is read: the modules that register "
        "event types of your own (coda_ws.register_event).",
        kind="list",
        flag="--event-module",
    ),
)

#: The names of :data:`OPTIONS`.
OPTION_NAMES = frozenset(option.name for option in OPTIONS)
_BY_NAME = {option.name: option for option in OPTIONS}


def check(name: str, value: Any) -> Any:
    """Validate (and normalise) one option's value.

    Raises:
        ValueError: the value is not valid for ``name``; the message names both.
        KeyError: ``name`` is not an option.
    """
    return _BY_NAME[name].check(name, value)


@dataclasses.dataclass(frozen=True)
class Setting:
    """An option's effective value and where it came from: ``"keyword"``,
    ``"flag"``, ``"environment"``, ``"file"``, ``"flask config"`` or ``"default"``."""

    option: Option
    value: Any
    source: str


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The options set by ``CODA_WS_*`` environment variables.

    ``CODA_WS_TOKENS`` is not read here: the server reads it itself (it adds
    to ``auth``), so that every way of serving honours it.

    Raises:
        ValueError: a variable that does not parse, naming it.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in OPTIONS:
        if option.name == "auth":
            continue
        text = environ.get(option.env)
        if text is not None and text.strip():
            values[option.name] = option.parse(text, option.env)
    return values


def from_mapping(mapping: Mapping[str, Any], where: str, prefixed: bool = False) -> dict[str, Any]:
    """The options set in a mapping: a TOML table (``prefixed=False``: keys
    are option names) or a Flask config (``prefixed=True``: ``CODA_WS_*``
    keys). Strings are parsed like environment variables; other values are
    checked as they are.

    Raises:
        ValueError: an unknown key (with a suggestion) or a bad value, naming ``where``.
    """
    values: dict[str, Any] = {}
    for key, value in mapping.items():
        if prefixed:
            if not isinstance(key, str) or not key.startswith("CODA_WS_"):
                continue
            name = key[len("CODA_WS_") :].lower()
            if name == "tokens":
                continue  # read by the server, as the environment variable
        else:
            name = key
        option = _BY_NAME.get(name)
        if option is None:
            raise ValueError(f"{where}: unknown option {key!r}{suggestion(name)}")
        if isinstance(value, str) and option.kind != "str":
            values[name] = option.parse(value, where)
        else:
            try:
                values[name] = option.check(name, value)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
    return values


def from_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The options set in a TOML file (top-level keys, or a ``[coda_ws]`` table).

    Raises:
        OSError: the file cannot be read.
        ValueError: not TOML, an unknown key or a bad value, naming the file.
        ImportError: Python 3.10 without the ``tomli`` package (``tomllib``
            is in the standard library from Python 3.11 on).
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # the same parser before it joined the standard library
        try:
            import tomli as tomllib
        except ImportError:
            raise ImportError(
                "reading a TOML file on Python 3.10 needs the tomli package (pip install tomli)"
            ) from None

    with open(path, "rb") as handle:
        try:
            data = tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{os.fspath(path)}: not valid TOML: {exc}") from None
    table = data.get("coda_ws", data)
    if not isinstance(table, dict):
        raise ValueError(f"{os.fspath(path)}: [coda_ws] must be a table")
    return from_mapping(table, os.fspath(path))


def resolve(
    keywords: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    file: Mapping[str, Any] | None = None,
    flask: Mapping[str, Any] | None = None,
    keyword_source: str = "keyword",
) -> dict[str, Setting]:
    """Every option's effective value: keyword (or flag) > environment > Flask config > file > default.

    Args:
        keywords: the values given as keyword arguments or flags; every key
            present counts as given (None included: it means "off" or "the
            built-in default" for the options that accept it). Leave out
            what was not given.
        environ: the environment (default ``os.environ``).
        file: values read from a TOML file (:func:`from_toml`).
        flask: values read from a Flask app's config (:func:`from_mapping`
            with ``prefixed=True``).
        keyword_source: what to call the keywords' source (``"flag"`` for the CLI).

    Raises:
        ValueError: a bad value anywhere, naming where it came from.
    """
    env_values = from_env(environ)
    settings: dict[str, Setting] = {}
    given = dict(keywords or {})
    for option in OPTIONS:
        name = option.name
        if name in given:
            settings[name] = Setting(option, option.check(name, given[name]), keyword_source)
        elif name in env_values:
            settings[name] = Setting(option, env_values[name], "environment")
        elif flask and name in flask:
            settings[name] = Setting(option, flask[name], "flask config")
        elif file and name in file:
            settings[name] = Setting(option, file[name], "file")
        else:
            settings[name] = Setting(option, option.default, "default")
    return settings


def describe(settings: Mapping[str, Setting]) -> list[tuple[str, str, str]]:
    """``(name, value, source)`` rows for printing, secrets masked."""
    rows = []
    for name, setting in settings.items():
        value = setting.value
        if setting.option.secret and value is not None:
            shown = (
                f"<{len(value)} token{'s' if len(value) != 1 else ''}, masked>"
                if isinstance(value, Mapping)
                else "<set, masked>"
            )
        elif isinstance(value, (list, tuple)):
            shown = ",".join(str(item) for item in value)
        else:
            shown = "none" if value is None else str(value)
        rows.append((name, shown, setting.source))
    return rows


def suggestion(name: str) -> str:
    """' (did you mean ...?)' for a misspelt option name, or the list of options."""
    import difflib

    close = difflib.get_close_matches(name, sorted(OPTION_NAMES), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (options: {', '.join(sorted(OPTION_NAMES))})"


def names(options: Iterable[Option] = OPTIONS) -> list[str]:
    """Option names in reference order."""
    return [option.name for option in options]
