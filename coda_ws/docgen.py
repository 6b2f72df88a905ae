"""Reference tables generated from the code: the configuration, the command line, the events.

The documentation site inserts them (``docs/_hooks/generate.py``) and
``coda-ws config`` prints the same configuration rows, so that an option, a
flag or an event type can never exist without its documentation, nor the
documentation say something the code does not.
"""

import argparse
from collections.abc import Iterator

from . import config

__all__ = [
    "cli_reference",
    "command_parsers",
    "configuration_reference",
    "event_reference",
    "metrics_reference",
]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(option: config.Option) -> str:
    value = option.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value >= 1024 and value % 1024 == 0:
        kib = value // 1024
        return f"{kib // 1024} MiB" if kib % 1024 == 0 else f"{kib} KiB"
    return f"`{value}`"


def configuration_reference() -> str:
    """A Markdown table of every server option: default, flag, variable, meaning."""
    lines = [
        "| option | default | `coda-ws serve` flag | environment variable and Flask config key | meaning |",
        "|---|---|---|---|---|",
    ]
    for option in config.OPTIONS:
        flag = f"`{option.flag}`" if option.flag else "–"
        env = f"`{option.env}`" if option.name != "auth" else "`CODA_WS_TOKENS` (added to `auth`)"
        lines.append(f"| `{option.name}` | {_default(option)} | {flag} | {env} | {_cell(option.help)} |")
    return "\n".join(lines)


def command_parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``("coda-ws CMD [SUB]", parser)`` for every subcommand, depth first.

    argparse has no public way to list a parser's subcommands; the choices of
    its subparsers action (stable since Python 3.2) are read here, for the
    documentation only.
    """
    from .cli import build_parser

    def walk(prefix: str, parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
        for action in parser._actions:  # noqa: SLF001 - see the docstring
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                for name, sub in action.choices.items():
                    yield f"{prefix} {name}", sub
                    yield from walk(f"{prefix} {name}", sub)

    yield from walk("coda-ws", build_parser())


def cli_reference() -> str:
    """Every ``coda-ws`` subcommand's ``--help``, as Markdown sections."""
    parts = []
    for name, parser in command_parsers():
        parser.prog = name
        parts.append(f"### `{name}`\n\n```text\n{parser.format_help().rstrip()}\n```\n")
    return "\n".join(parts)


def event_reference() -> str:
    """A Markdown section per event type: priority, conflation, content fields,
    and a table of the fields ``emit()`` takes (type, default)."""
    import dataclasses

    from .events import EVENT_CLASSES
    from .schema import event_schema

    schema = event_schema()
    parts = []
    for event_type, cls in sorted(EVENT_CLASSES.items(), key=lambda item: item[0].value):
        name = event_type.value
        definition = schema["$defs"][name]
        traits = []
        if cls.high_priority:
            traits.append("high priority (kept in the replay buffer)")
        if cls.conflatable:
            traits.append("state: conflated for clients that are behind")
        if cls.content_fields:
            traits.append(
                "content redacted for `read`-only clients: " + ", ".join(f"`{c}`" for c in cls.content_fields)
            )
        rows = ["| field | type | default |", "|---|---|---|"]
        for field in dataclasses.fields(cls):
            if field.name in ("version", "seq", "timestamp", "type", "session_id"):
                continue
            if field.default is not dataclasses.MISSING:
                default = "`null`" if field.default is None else f"`{field.default!r}`"
            elif field.default_factory is not dataclasses.MISSING:
                default = f"`{field.default_factory()!r}`"
            else:
                default = "required"
            rows.append(
                f"| `{field.name}` | {_json_type(definition['properties'][field.name])} | {default} |"
            )
        traits_text = ("; ".join(traits) + ".") if traits else "lossless, not kept for replay."
        parts.append(
            f"### `{name}`\n\n{traits_text[0].upper()}{traits_text[1:]}\n\n" + "\n".join(rows) + "\n"
        )
    return "\n".join(parts)


def _json_type(spec: dict) -> str:  # type: ignore[type-arg]  # a JSON Schema fragment
    if "type" in spec:
        kind = spec["type"]
        text = " or ".join(kind) if isinstance(kind, list) else kind
        if "items" in spec and "type" in spec["items"]:
            text += f" of {spec['items']['type']}"
        return text
    if "anyOf" in spec:
        return " or ".join(_json_type(part) for part in spec["anyOf"])
    return "any JSON value"


def metrics_reference() -> str:
    """A Markdown table of every coda_ws metric ``/metrics`` exposes (with a
    journal configured, so its series are included), read from a scrape of a
    server made for the purpose: its name, type and help text."""
    import tempfile

    from .server import CodaWebSocketServer

    with tempfile.TemporaryDirectory() as folder:
        server = CodaWebSocketServer(port=0, journal=f"{folder}/events.db")
        try:
            text = server.metrics.exposition().decode()
        finally:
            server.close_stream(2.0)
    kinds: dict[str, str] = {}
    helps: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP coda_ws"):
            name, _, help_text = line[len("# HELP ") :].partition(" ")
            helps[name] = help_text.replace("\\n", " ")
        elif line.startswith("# TYPE coda_ws"):
            name, _, kind = line[len("# TYPE ") :].partition(" ")
            kinds[name] = kind
    lines = ["| metric | type | meaning |", "|---|---|---|"]
    for name in sorted(helps):
        lines.append(f"| `{name}` | {kinds.get(name, '?')} | {_cell(helps[name])} |")
    return "\n".join(lines)
