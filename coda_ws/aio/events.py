"""The event types and classes, under the name the original's module had.

Code written for the original interface imports ``...websocket.events``;
``coda_ws.aio.events`` is the same module as :mod:`coda_ws.events` (every name
of its ``__all__``), so such an import line ports by changing the package only.
"""

from ..events import *  # noqa: F403
from ..events import __all__  # noqa: F401
