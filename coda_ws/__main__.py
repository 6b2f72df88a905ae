"""``python -m coda_ws``: the ``coda-ws`` command (see :mod:`coda_ws.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
