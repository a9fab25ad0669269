"""RequestRouter (no Ray): the first version of a fallback chain whose index takes the
request answers, decided with the real embedder on the router's own thread."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from ouro.embedding import SentenceEmbedder
from ouro.routing import (
    FORCED,
    MATCH,
    NO_INDEX,
    NO_MATCH,
    CorrectionIndex,
    CorrectionIndexError,
    RouteKey,
    Router,
    RoutingBoundary,
)
from serve.request_router import RequestRouter

BOUNDARY = RoutingBoundary(base=0.6, slope=0.3)
LIBRARY = "What time does the library open on Sundays?"
PASSWORD = "How do I reset my password?"
COLOUR = "Which colour is the best?"


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def embedder(sentence_embedder: SentenceEmbedder) -> SentenceEmbedder:
    return sentence_embedder


@pytest.fixture(scope="module")
def router(embedder: SentenceEmbedder) -> RequestRouter:
    return RequestRouter(Router(embedder))


@pytest.fixture(scope="module")
def shared(embedder: SentenceEmbedder) -> CorrectionIndex:
    items = [("c-library", RouteKey(LIBRARY)), ("c-password", RouteKey(PASSWORD))]
    return CorrectionIndex.build(embedder, items, BOUNDARY)


@pytest.fixture(scope="module")
def personal(embedder: SentenceEmbedder) -> CorrectionIndex:
    return CorrectionIndex.build(embedder, [("c-colour", RouteKey(COLOUR))], BOUNDARY)


@pytest.mark.parametrize(
    ("question", "correction"),
    [(LIBRARY, "c-library"), ("When does the library open on Sunday?", "c-library")],
)
def test_a_corrected_question_and_its_rewording_reach_the_adapter(
    router: RequestRouter, shared: CorrectionIndex, question: str, correction: str
) -> None:
    choice = router.choose_blocking([shared], ask(question))
    assert choice.position == 0
    assert choice.decision.reason == MATCH
    assert choice.decision.correction_id == correction
    assert choice.decision.similarity >= choice.decision.threshold
    assert choice.cpu_s > 0


def test_an_unrelated_question_falls_through_to_the_base_model(router, shared) -> None:
    choice = router.choose_blocking([shared], ask("What is the capital of France?"))
    assert choice.position == 1  # past the chain: the base model
    assert choice.decision.reason == NO_MATCH
    assert choice.decision.similarity < BOUNDARY.base


def test_a_personal_chain_tries_the_scope_then_shared_production(router, shared, personal) -> None:
    chain = [personal, shared]
    assert router.choose_blocking(chain, ask(COLOUR)).position == 0
    fallback = router.choose_blocking(chain, ask(PASSWORD))
    assert (fallback.position, fallback.decision.reason) == (1, MATCH)
    assert router.choose_blocking(chain, ask("Tell me a joke.")).position == 2


def test_an_index_of_none_answers_everything_and_forced_keeps_the_first(router, shared) -> None:
    unindexed = router.choose_blocking([None], ask("Tell me a joke."))
    assert (unindexed.position, unindexed.decision.reason) == (0, NO_INDEX)
    forced = router.choose_blocking([shared], ask("Tell me a joke."), forced=True)
    assert (forced.position, forced.decision.reason) == (0, FORCED)
    assert forced.decision.similarity is not None  # still measured, for debugging


def test_the_embedding_runs_on_the_routers_own_thread(router, shared) -> None:
    async def main():
        seen = []
        original = router.router.vectors

        def vectors(key):
            seen.append(threading.current_thread().name)
            return original(key)

        router.router.vectors = vectors
        try:
            choice = await router.choose([shared], ask(LIBRARY))
        finally:
            del router.router.vectors
        return seen, choice

    seen, choice = asyncio.run(main())
    assert seen and seen[0].startswith("ouro-router") and seen[0] != "MainThread"
    assert choice.decision.reason == MATCH


def test_a_chain_that_needs_no_embedding_is_decided_on_the_event_loop(router, shared) -> None:
    """A version without an index (or an empty one, then one without) takes the request
    before any index is searched: no embedding, so no hop to the router's thread."""
    empty = CorrectionIndex.build(router.router.embedder, [], BOUNDARY)

    def needs_vectors(indexes, forced=False) -> bool:
        return router.router.choose(indexes, ask(LIBRARY), forced=forced, embed=False) is None

    assert not needs_vectors([None, shared])
    assert not needs_vectors([empty, None])
    assert not needs_vectors([empty, shared], forced=True)
    assert needs_vectors([empty, shared])
    assert needs_vectors([shared, None], forced=True)

    async def main():
        deciding = []
        original = router.router.choose

        def choose(*args, **kwargs):
            deciding.append(threading.current_thread().name)
            return original(*args, **kwargs)

        router.router.choose = choose
        try:
            choice = await router.choose([None, shared], ask(LIBRARY))
        finally:
            del router.router.choose
        return deciding, choice, threading.current_thread().name

    deciding, choice, loop_thread = asyncio.run(main())
    assert deciding == [loop_thread]
    assert (choice.position, choice.decision.reason) == (0, NO_INDEX)


def test_an_index_from_another_embedder_is_refused(router, shared) -> None:
    router.check(shared)
    other = CorrectionIndex(
        shared.entries, np.ones((2, 8), np.float32), np.zeros((2, 8), np.float32), BOUNDARY
    )
    with pytest.raises(CorrectionIndexError, match="dimensions"):
        router.check(other)
