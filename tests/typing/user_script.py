"""A small program written against coda_ws's public API, as a user writes one.

It is type-checked with ``mypy --strict`` and run for real by
``tests/typing/test_typing.py``: a voice pipeline that serves its event
stream on a free port, emits through the server, the integration helpers
and the performance helpers, and reads its own stream back with a client.
It exits by itself within a few seconds.
"""

import sys
from typing import Any

from coda_ws import (
    BaseEvent,
    CodaEventClient,
    CodaWebSocketIntegration,
    CodaWebSocketServer,
    EventBus,
    RedisEmitter,
    STTResultEvent,
    WebSocketPerfIntegration,
    custom_event,
    register_event,
)

TIMEOUT = 10.0


@custom_event("rag_retrieval", content=("query",))
class RagRetrievalEvent(BaseEvent):
    """An event type of the pipeline's own (type checkers see a frozen dataclass)."""

    query: str
    hits: int
    top_score: float | None = None


AudioLevelEvent = register_event("audio_level", {"rms": float}, conflatable=True)


def describe(event: BaseEvent | dict[str, Any]) -> str:
    """One line for an event as the client delivers it (an unknown or
    redacted event comes as a dict)."""
    if isinstance(event, BaseEvent):
        return f"#{event.seq} {event.type}"
    return f"#{event.get('seq')} {event.get('type')} (as a dict)"


def emit_from_a_worker(url: str) -> None:
    """A worker process that does not serve emits through Redis (never
    called here: it needs a Redis server)."""
    emitter = RedisEmitter(url, prefix="coda_ws")
    integration = CodaWebSocketIntegration(emitter)
    integration.stt_start(mode="continuous")
    emitter.close(timeout=2.0)


def bus_alone() -> int:
    """An EventBus without any server: emit, then read the history."""
    bus = EventBus(max_replay_events=10, history_size=100)
    try:
        event = bus.emit("tts_status", status="idle", session_id="s1")
        assert event.seq == 1 and event.session_id == "s1"
        bus.flush(TIMEOUT)
        return len(bus.history())
    finally:
        bus.close()


def main() -> int:
    server = CodaWebSocketServer(
        host="127.0.0.1", port=0, max_replay_events=20, ping_interval=None, history_size=1000, max_clients=8
    )
    with server:
        client = CodaEventClient(server.url, types=["stt_*", "llm_result", "system_info"], name="user-script")
        try:
            if not client.wait_connected(TIMEOUT):
                print(f"no connection to {server.url}: {client.last_error}", file=sys.stderr)
                return 1
            stats = server.get_stats()
            connected: int = stats["current_connections"]

            info = server.broadcast_system_info({"version": "1.2.3"})
            assert info.high_priority
            event = server.emit(
                "stt_result", session_id="s1", text="hello", confidence=0.9, duration_ms=120.0
            )
            assert isinstance(event, STTResultEvent) and event.text == "hello"
            seq: int = event.seq
            timestamp: float = event.timestamp

            rag = server.emit("rag_retrieval", session_id="s1", query="opening hours", hits=2)
            assert isinstance(rag, RagRetrievalEvent) and rag.hits == 2 and rag.top_score is None
            typed = RagRetrievalEvent(query="q", hits=1)  # a dataclass: keyword fields, checked by mypy
            hits: int = typed.hits
            assert AudioLevelEvent.conflatable and hits == 1

            integration = CodaWebSocketIntegration(server)
            integration.stt_start()
            integration.barge_in("tts", played_ms=120.0)
            integration.llm_result("hi there", duration_ms=250.0, token_count=3, tokens_per_second=12.0)

            perf = WebSocketPerfIntegration(server, metrics_interval=60.0)
            with perf.time_operation("stt", "transcribe"):
                pass

            received: list[str] = []
            for item in client:  # blocks until an event arrives
                received.append(describe(item))
                if isinstance(item, BaseEvent) and item.type == "llm_result":
                    break
            client_stats = client.stats()
        finally:
            client.close()

    print(
        f"{connected} client(s); emitted #{seq} at {timestamp:.0f}; received {len(received)} events "
        f"({client_stats['events']} counted); {bus_alone()} event(s) on a bus alone"
    )
    for line in received:
        print(" ", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
