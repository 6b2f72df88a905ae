"""Machine-readable logs: one JSON object per line (``coda-ws serve --log-format json``).

coda_ws logs on named loggers, one per module (``coda_ws.server``,
``coda_ws.bus``, ``coda_ws.http_api``, ...), and never configures logging
itself; the ``coda-ws`` command and applications do, for example with
:func:`configure_logging`.

Each line that :class:`JsonFormatter` writes holds ``time`` (UTC, ISO 8601
with milliseconds), ``level``, ``logger``, ``thread``, ``message``, every field
the call passed with ``extra=`` (the server's connect and disconnect lines
carry ``client_id``, ``address``, ``close_code`` and ``reason``), and
``exc_info`` (the formatted traceback) when there is one::

    {"time": "2025-11-28T01:02:03.456Z", "level": "INFO", "logger": "coda_ws.server",
     "thread": "coda-ws-client:1b2c3d4e", "message": "client 1b2c... disconnected ...",
     "client_id": "1b2c...", "address": "127.0.0.1:50412", "close_code": 1000, "reason": "client_closed"}
"""

import datetime
import json
import logging
import sys
from typing import TextIO

__all__ = ["LOG_FORMATS", "JsonFormatter", "configure_logging"]

#: The values of ``--log-format``.
LOG_FORMATS = ("text", "json")

_TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

# Attributes every LogRecord has; anything else on a record came from extra=.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _fallback(value: object) -> str:
    """JSON for values json cannot encode (a set, an exception, an object): their repr."""
    return repr(value)


class JsonFormatter(logging.Formatter):
    """Formats each record as one line of compact JSON (see the module docstring).

    Never raises on odd ``extra`` values: whatever JSON cannot encode is
    written as its ``repr``. Thread-safe (it keeps no state).
    """

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.timezone.utc)
        out = {
            "time": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=_fallback)


def configure_logging(
    level: str | int = "warning", log_format: str = "text", stream: TextIO | None = None
) -> None:
    """Send log records of ``level`` and above to ``stream`` (default: stderr).

    For the ``coda-ws`` command and applications; the library never calls it.
    Like ``logging.basicConfig``, it does nothing when the root logger already
    has handlers (an application's own configuration wins).

    Args:
        level: a level name (``"debug"``, ``"info"``, ...) or number.
        log_format: ``"text"`` (human-readable lines) or ``"json"`` (one
            JSON object per line, :class:`JsonFormatter`).
        stream: a text stream; default ``sys.stderr``.

    Raises:
        ValueError: an unknown ``log_format`` or level name.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if not isinstance(number, int):
            raise ValueError(f"unknown log level {level!r}")
        level = number
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
