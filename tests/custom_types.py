"""Event types of the tests' own, registered when this module is imported: by
the test process, by child processes (``-c "import tests.custom_types"``) and
by ``coda-ws play --import tests.custom_types``."""

from dataclasses import field

from coda_ws import BaseEvent, custom_event, register_event

#: A retrieval step of a RAG pipeline; the query is what the user asked (content).
RagLookupEvent = register_event(
    "test_rag_lookup",
    {"query": str, "hits": int, "top_score": float | None, "sources": list[str]},
    defaults={"top_score": None, "sources": []},
    content=("query",),
)


@custom_event("test_guardrail", high_priority=True)
class GuardrailEvent(BaseEvent):
    """A guardrail's verdict on a response (no content: kept in the replay buffer)."""

    verdict: str
    score: float
    reasons: list[str] = field(default_factory=list)
