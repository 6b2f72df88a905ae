"""Constants of the wire protocol, shared by the server and the clients.

The protocol itself is described in ``docs/protocol.md``; this module holds
the names and numbers both sides must agree on, so that neither spells them
on its own.
"""

from ._version import __version__

__all__ = [
    "BEARER_SUBPROTOCOL_PREFIX",
    "CLOSE_ABNORMAL",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL",
    "CLOSE_INVALID_DATA",
    "CLOSE_NORMAL",
    "CLOSE_NO_STATUS",
    "CLOSE_POLICY",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_SERVICE_RESTART",
    "CLOSE_TOO_BIG",
    "CLOSE_TOO_SLOW",
    "CLOSE_TRY_AGAIN_LATER",
    "PROTOCOL_VERSION",
    "SERVER_NAME",
    "V1_SUBPROTOCOL",
]

#: The v1 protocol's version number (the ``hello`` frame's ``protocol``).
PROTOCOL_VERSION = 1
#: The subprotocol a v1 client offers (or ``?v=1``).
V1_SUBPROTOCOL = "coda-ws.v1"
#: Browsers send their token as the subprotocol ``coda-ws.bearer.TOKEN``.
BEARER_SUBPROTOCOL_PREFIX = "coda-ws.bearer."
#: The ``server`` of the ``hello`` frame.
SERVER_NAME = f"coda-ws/{__version__}"

# Close codes (docs/protocol.md section 8).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # server shutting down: reconnect with since
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008  # rate limit exceeded
CLOSE_TOO_BIG = 1009  # a client frame over max_message_size
CLOSE_INTERNAL = 1011  # internal error, or a keepalive ping not answered
CLOSE_SERVICE_RESTART = 1012  # the stream moved to a new epoch under the client
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_TOO_SLOW = 4008  # the client fell client_queue_size lossless events behind
#: Not sent on the wire: what a peer that sent no close frame is recorded as.
CLOSE_NO_STATUS = 1005
#: Not sent on the wire: the connection ended without any close frame.
CLOSE_ABNORMAL = 1006
