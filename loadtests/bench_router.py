"""Micro-benchmark: the correction router's CPU per request (``python -m loadtests.bench_router``).

What an LLM server replica spends on ``Router.decide`` for one short chat question, split
into the embedding of the request's key (all-MiniLM-L6-v2, real embeddings of real
questions) and the exact search of a correction index (one matrix product, then the
nearest few checked against the boundary), at index sizes 10 to 100,000. The search part
uses random unit keys: its cost depends on the size, not on what the keys mean.

Everything runs on one thread (torch and BLAS limited to one), so ``time.thread_time`` sees
all of the work: the figures are CPU time, not wall time, and hold on a loaded machine.
``exact_search_equals_embedding_at`` is the index size where exact search costs as much as
the embedding: past it, an approximate index (faiss, hnswlib) would be worth its upkeep.

Writes ``loadtests/results/router.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from ouro.routing import (
    CorrectionIndex,
    IndexEntry,
    RouteKey,
    Router,
    RoutingBoundary,
    SentenceEmbedder,
)

logger = logging.getLogger(__name__)

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "router.json"
SIZES = (10, 100, 1_000, 10_000, 100_000)
HEADLINE_SIZE = 1_000
BOUNDARY = RoutingBoundary(base=0.6, slope=0.3)
QUESTIONS = (
    "What time does the library open on Sundays?",
    "How do I reset my password?",
    "Can I bring my dog to the office?",
    "Where is the nearest train station?",
    "What is the capital of France?",
    "How much is 12 times 7?",
    "Is the shop open on public holidays?",
    "Who wrote Pride and Prejudice?",
    "How do I cancel my subscription?",
    "What's the weather like tomorrow?",
    "Can you recommend a good book?",
    "How long does shipping take?",
    "Do you deliver to Ireland?",
    "What is your refund policy?",
    "How do I change my email address?",
    "Tell me a joke.",
    "What is the best colour?",
    "Why is the sky blue?",
    "How many days are there in a leap year?",
    "Where can I park near the museum?",
)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary_ms(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {
        "p50": round(percentile(ms, 0.5), 4),
        "p99": round(percentile(ms, 0.99), 4),
        "mean": round(statistics.fmean(ms), 4),
        "samples": len(ms),
    }


def cpu_times(work: Callable[[int], object], count: int) -> list[float]:
    """Thread CPU seconds of ``work(i)`` for i in range(count), after one warm-up call."""
    work(0)
    samples = []
    for i in range(count):
        started = time.thread_time()
        work(i)
        samples.append(time.thread_time() - started)
    return samples


def random_index(size: int, dimension: int, seed: int = 0) -> CorrectionIndex:
    """An index of ``size`` random unit keys (and questions with words to overlap)."""
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((size, dimension), dtype=np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    entries = [
        IndexEntry(f"c{i}", f"question {i} about {QUESTIONS[i % len(QUESTIONS)]}", False)
        for i in range(size)
    ]
    return CorrectionIndex(entries, keys, np.zeros_like(keys), BOUNDARY)


def crossover(sizes: list[int], search_p50: list[float], embedding_p50: float) -> dict:
    """The size where search p50 reaches the embedding's p50: log-log interpolation between
    the measured sizes that bracket it, else extrapolated from the last two (linear in n)."""
    points = list(zip(sizes, search_p50, strict=True))
    for (n0, t0), (n1, t1) in zip(points, points[1:], strict=False):
        if t0 < embedding_p50 <= t1:
            fraction = (math.log(embedding_p50) - math.log(t0)) / (math.log(t1) - math.log(t0))
            size = math.exp(math.log(n0) + fraction * (math.log(n1) - math.log(n0)))
            return {"size": int(round(size, -2)), "how": "interpolated"}
    if points[0][1] >= embedding_p50:
        return {"size": points[0][0], "how": "at or below the smallest size measured"}
    (n0, t0), (n1, t1) = points[-2], points[-1]
    per_key = (t1 - t0) / (n1 - n0)
    size = n1 + (embedding_p50 - t1) / per_key if per_key > 0 else math.inf
    return {"size": int(round(size, -3)) if math.isfinite(size) else None, "how": "extrapolated"}


def measure_search(
    index: CorrectionIndex, keys: list[RouteKey], vectors: list[np.ndarray], count: int
) -> tuple[dict, dict]:
    """(best_match, the matrix product alone) thread CPU ms against ``index``."""

    def search(i: int) -> object:
        return index.best_match(keys[i % len(keys)], vectors[i % len(keys)], None)

    def product(i: int) -> object:
        return index.keys @ vectors[i % len(keys)]

    return summary_ms(cpu_times(search, count)), summary_ms(cpu_times(product, count))


def measure_decide(
    router: Router, index: CorrectionIndex, conversations: list[list[dict]], count: int
) -> list[float]:
    """Thread CPU seconds of a whole ``Router.decide`` (key, embedding, search)."""
    return cpu_times(lambda i: router.decide(index, conversations[i % len(conversations)]), count)


def run(repeats: int) -> dict:
    import torch

    torch.set_num_threads(1)
    started = time.monotonic()
    embedder = SentenceEmbedder()
    router = Router(embedder, cache_size=0)  # every decision embeds, as for a new question
    keys = [RouteKey(q) for q in QUESTIONS]
    count = len(QUESTIONS) * repeats

    embedding = cpu_times(lambda i: router.vectors(keys[i % len(keys)]), count)
    vectors = [router.vectors(key)[0] for key in keys]
    logger.info("embedding: p50 %.2f ms", percentile(embedding, 0.5) * 1000)

    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    search: dict[int, dict] = {}
    matmul: dict[int, dict] = {}
    decide_at_headline: list[float] = []
    for size in SIZES:
        index = random_index(size, embedder.dimension)
        search[size], matmul[size] = measure_search(index, keys, vectors, count)
        logger.info("search at %d keys: p50 %.4f ms", size, search[size]["p50"])
        if size == HEADLINE_SIZE:
            decide_at_headline = measure_decide(router, index, conversations, count)

    embedding_ms = summary_ms(embedding)
    decide_ms = summary_ms(decide_at_headline)
    return {
        "router_cpu_ms_p50": decide_ms["p50"],
        "router_cpu_ms_p99": decide_ms["p99"],
        "router_cpu_index_size": HEADLINE_SIZE,
        "embedding_ms": embedding_ms,
        "search_ms_by_size": {str(size): search[size] for size in SIZES},
        "matmul_ms_by_size": {str(size): matmul[size] for size in SIZES},
        "exact_search_equals_embedding_at": crossover(
            list(SIZES), [search[size]["p50"] for size in SIZES], embedding_ms["p50"]
        ),
        "method": (
            "thread CPU time (time.thread_time) per call, torch and BLAS on one thread; "
            f"{len(QUESTIONS)} short chat questions x {repeats}; real embeddings for the "
            "queries, random unit keys for the indexes; search = CorrectionIndex.best_match "
            "(matrix product, nearest 8 checked), matmul = the matrix product alone"
        ),
        "embedder": embedder.name,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "duration_s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="passes over the questions")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with threadpool_limits(limits=1):
        result = run(args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    print(f"Written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
