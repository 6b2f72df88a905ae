"""Compact JSON as the wire uses it, for the cost of one C call.

The one place coda_ws touches a private detail of CPython's ``json`` module:
``json.encoder.c_make_encoder``. ``JSONEncoder.encode()`` builds a new C
encoder object on every call, which is most of the cost of encoding a small
event (2.5x measured here); the C encoder built once is reentrant and gives
the same bytes. Built without circular-reference markers, a cycle ends in
``RecursionError``, which callers treat as "not encodable".

If the private function is missing or no longer behaves as the public encoder
does (a future Python), :data:`encode_json` falls back to the public
``JSONEncoder.encode`` with the same settings: slower, never different.
``tests/unit/test_boundaries.py`` fails with a message naming this module when
the fast path is lost, so an upgrade that costs speed is noticed.
"""

import json
import json.encoder
from collections.abc import Callable
from typing import Any

__all__ = ["USING_C_ENCODER", "encode_json"]

#: The public encoder with the wire's settings: compact, UTF-8 kept, no NaN.
_PORTABLE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)

#: Values whose encodings the C encoder must reproduce exactly to be used.
_PROBE: Any = {
    "s": 'é\u2028"\\\n',
    "i": -12,
    "f": [0.1, 1e16, -2.5e-7, 3.0],
    "n": None,
    "b": [True, False],
    "d": {"k": {"": []}},
}


def _c_encoder() -> Callable[[Any], str] | None:
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # a Python without the C accelerator: nothing to save
        return None
    try:
        encoder = make(
            None, _PORTABLE.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
        )

        def encode(value: Any) -> str:
            return "".join(encoder(value, 0))

        if encode(_PROBE) != _PORTABLE.encode(_PROBE):
            return None
    except Exception:  # a changed signature: use the public encoder
        return None
    return encode


_fast = _c_encoder()

#: True when :data:`encode_json` uses the C encoder built once.
USING_C_ENCODER = _fast is not None

#: Compact JSON text of a value as sent on the wire (UTF-8 kept, NaN and
#: infinities refused with ValueError, non-JSON values with TypeError).
encode_json: Callable[[Any], str] = _fast if _fast is not None else _PORTABLE.encode
