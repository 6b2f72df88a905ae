"""argparse ``type=`` converters shared by the ``coda-ws`` subcommands.

Each raises ``argparse.ArgumentTypeError`` with a message naming the bad value,
so argparse prints it as a usage error (exit code 2).
"""

import argparse
import math
from collections.abc import Callable

__all__ = ["integer", "number", "port", "scopes"]


def integer(minimum: int) -> Callable[[str], int]:
    """A converter to ``int`` that refuses values below ``minimum``."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return convert


def number(positive: bool) -> Callable[[str], float]:
    """A converter to a finite ``float``, ``> 0`` when ``positive`` else ``>= 0``."""

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {'> 0' if positive else '>= 0'}, got {text}"
            )
        return value

    return convert


def port(text: str) -> int:
    """A TCP port number, 0 (any free port) to 65535."""
    value = integer(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"port must be from 0 to 65535, got {value}")
    return value


def scopes(text: str) -> list[str]:
    """A comma-separated list of known scopes."""
    from .auth import SCOPES

    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCOPES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"scopes must be among {', '.join(SCOPES)}; got {text!r}")
    return names
