"""RequestRouter: which version of a request's fallback chain answers it (routed corrections).

A version's adapter answers only the requests its corrections are about (``ouro.routing``).
For one request the LLM server hands over the correction indexes of the versions that may
answer, in order (``ModelNames.fallbacks``: a personal version, then shared production; the
base model, which needs no index, ends every chain). The first version whose index takes
the request answers; an index of None (an adapter trained without one) takes everything
(its adapter answers all it is asked); when none takes it, the base model answers.

- The request's key is embedded once, however long the chain, and only when some index
  needs it; the decisions are ``Router``'s own (the gates decide through the same code).
- A decision that embeds runs on one worker thread of its own per replica: never on the
  event loop, never on the engine's step loop, and one embedding at a time (a fast
  tokenizer must not be used from two threads at once; one thread also keeps routing to
  one core beside the engine). A decision that needs no embedding (the chain reaches a
  version without an index first) is made on the event loop: a thread hop would cost
  more than the decision.
- The thread CPU time of each decision (``time.thread_time``: embedding and search) comes
  back with it. ONNX Runtime embeds on that same thread (one intra-op thread,
  ``SentenceEmbedder``), so the figure is all of the decision's work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ouro.embedded.minilm import load_embedder
from ouro.routing import (
    CorrectionIndex,
    CorrectionIndexError,
    RouteDecision,
    Router,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouteChoice:
    """The outcome for one request."""

    position: int
    """Which version of the chain answers; ``len(indexes)``: the base model."""
    decision: RouteDecision
    """The decision that chose it (the last one made when the base model answers)."""
    cpu_s: float
    """Thread CPU seconds of the decision."""


class RequestRouter:
    """One per LLM server replica: a ``Router`` and the thread it runs on."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ouro-router")

    @classmethod
    def build(cls, model_cache_dir: Path) -> RequestRouter:
        """The real one: all-MiniLM-L6-v2 through ONNX Runtime on the CPU, exported into
        the model cache on first use (blocking: a few seconds)."""
        return cls(Router(load_embedder(model_cache_dir)))

    def check(self, index: CorrectionIndex) -> None:
        """Refuse an index this router cannot search (another embedder's keys)."""
        embedder = self.router.embedder
        dimension = index.keys.shape[1] if index.keys.ndim == 2 else None
        if index.embedder != embedder.name or (len(index) and dimension != embedder.dimension):
            raise CorrectionIndexError(
                f"the index was built with {index.embedder} ({dimension} dimensions); "
                f"this server routes with {embedder.name} ({embedder.dimension})"
            )

    async def choose(
        self,
        indexes: Sequence[CorrectionIndex | None],
        messages: Sequence[dict],
        *,
        forced: bool = False,
    ) -> RouteChoice:
        """The first of ``indexes`` that takes the conversation; ``forced``: the first,
        whatever it says (the decision is still made, so its similarity is known)."""
        choice = self.choose_blocking(indexes, messages, forced, embed=False)
        if choice is None:  # an index needs the embedding: on the router's thread
            loop = asyncio.get_running_loop()
            choice = await loop.run_in_executor(
                self._executor, self.choose_blocking, list(indexes), list(messages), forced
            )
        return choice

    def choose_blocking(
        self,
        indexes: Sequence[CorrectionIndex | None],
        messages: Sequence[dict],
        forced: bool = False,
        *,
        embed: bool = True,
    ) -> RouteChoice | None:
        """``choose`` on the calling thread, with its thread CPU time; with ``embed=False``,
        None when the decision needs the embedding."""
        started = time.thread_time()
        decided = self.router.choose(indexes, messages, forced=forced, embed=embed)
        if decided is None:
            return None
        return RouteChoice(*decided, time.thread_time() - started)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
