"""Micro-benchmark: the correction router's CPU per request (``python -m loadtests.bench_router``).

What an LLM server replica spends on ``Router.decide`` for one short chat question, split
into the embedding of the request's key (all-MiniLM-L6-v2 through ONNX Runtime, as the
router runs it: real embeddings of real questions) and the exact search of a correction
index (one matrix product, then the nearest few checked against the boundary), at index
sizes 10 to 100,000. The search part uses random unit keys: its cost depends on the size,
not on what the keys mean.

The same model through sentence-transformers (PyTorch) is measured in the same run, in
turns with ONNX Runtime (one pass over the questions each), so a change in the host's speed
moves both: ``embed_cpu_ratio_onnx_vs_sentence_transformers`` is the ratio of their p50s,
and ``targets`` says whether the router meets its aims (p50 per decision at 1,000
corrections, and that ratio). sentence-transformers comes with requirements-test.txt.

Everything runs on one thread (ONNX Runtime, torch and BLAS limited to one), so
``time.thread_time`` sees all of the work: the figures are CPU time, not wall time, and hold
on a loaded machine. ``exact_search_equals_embedding_at`` is the index size where exact
search costs as much as the embedding: past it, an approximate index (faiss, hnswlib) would
be worth its upkeep. The ONNX export is made in (or read from) the model cache,
``<data dir>/models`` (``--data-dir``, else ``OURO_DATA_DIR`` or ``.ouro``).

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
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from ouro.embedded.minilm import load_embedder
from ouro.embedding import model_dir
from ouro.routing import CorrectionIndex, IndexEntry, RouteKey, Router, RoutingBoundary
from ouro.settings import OuroSettings

logger = logging.getLogger(__name__)

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "router.json"
SIZES = (10, 100, 1_000, 10_000, 100_000)
HEADLINE_SIZE = 1_000
TARGET_ROUTER_CPU_MS_P50 = 5.0
"""Aim: CPU per decision at ``HEADLINE_SIZE`` corrections, p50."""
TARGET_EMBED_CPU_RATIO = 0.5
"""Aim: the router's embedding at most this share of sentence-transformers' CPU."""
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


def alternating_cpu_times(
    works: Sequence[Callable[[int], object]], count: int, block: int
) -> list[list[float]]:
    """``cpu_times`` of several works taken in turns of ``block`` calls each, every turn
    after one untimed call: a change in the host's speed reaches all of them, and each turn
    runs with its own model in the CPU caches. (Alternating call by call, each model evicts
    the other's weights: both then cost 1.2-1.9x as much.)"""
    samples: list[list[float]] = [[] for _ in works]
    for start in range(0, count, block):
        for work, times in zip(works, samples, strict=True):
            work(start)
            for i in range(start, min(start + block, count)):
                began = time.thread_time()
                work(i)
                times.append(time.thread_time() - began)
    return samples


class SentenceTransformersEmbedder:
    """The same weights through sentence-transformers (PyTorch): the comparison."""

    name = "all-MiniLM-L6-v2 (sentence-transformers)"

    def __init__(self) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise SystemExit(
                "the comparison needs sentence-transformers: pip install -r requirements-test.txt"
            ) from exc
        self._model = SentenceTransformer(str(model_dir()), device="cpu")
        self.dimension = int(self._model.get_embedding_dimension())

    def embed(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        vectors = self._model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


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


def run(repeats: int, model_cache_dir: Path) -> dict:
    import torch

    torch.set_num_threads(1)
    started = time.monotonic()
    embedder = load_embedder(model_cache_dir)  # one intra-op thread, as in Serve
    router = Router(embedder, cache_size=0)  # every decision embeds, as for a new question
    reference = Router(SentenceTransformersEmbedder(), cache_size=0)
    keys = [RouteKey(q) for q in QUESTIONS]
    count = len(QUESTIONS) * repeats

    embedding, reference_embedding = alternating_cpu_times(
        [
            lambda i: router.vectors(keys[i % len(keys)]),
            lambda i: reference.vectors(keys[i % len(keys)]),
        ],
        count,
        block=len(keys),
    )
    vectors = [router.vectors(key)[0] for key in keys]
    difference = max(
        float(np.max(np.abs(vector - reference.vectors(key)[0])))
        for key, vector in zip(keys, vectors, strict=True)
    )
    ratio = percentile(embedding, 0.5) / percentile(reference_embedding, 0.5)
    logger.info(
        "embedding: p50 %.2f ms (sentence-transformers %.2f ms, ratio %.2f)",
        percentile(embedding, 0.5) * 1000,
        percentile(reference_embedding, 0.5) * 1000,
        ratio,
    )

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
        "sentence_transformers_embedding_ms": summary_ms(reference_embedding),
        "embed_cpu_ratio_onnx_vs_sentence_transformers": round(ratio, 3),
        "max_vector_difference_onnx_vs_sentence_transformers": float(f"{difference:.3g}"),
        "targets": {
            "router_cpu_ms_p50": {
                "max": TARGET_ROUTER_CPU_MS_P50,
                "met": decide_ms["p50"] <= TARGET_ROUTER_CPU_MS_P50,
            },
            "embed_cpu_ratio_onnx_vs_sentence_transformers": {
                "max": TARGET_EMBED_CPU_RATIO,
                "met": ratio <= TARGET_EMBED_CPU_RATIO,
            },
        },
        "search_ms_by_size": {str(size): search[size] for size in SIZES},
        "matmul_ms_by_size": {str(size): matmul[size] for size in SIZES},
        "exact_search_equals_embedding_at": crossover(
            list(SIZES), [search[size]["p50"] for size in SIZES], embedding_ms["p50"]
        ),
        "method": (
            "thread CPU time (time.thread_time) per call, ONNX Runtime, torch and BLAS on one "
            f"thread; {len(QUESTIONS)} short chat questions x {repeats}; real embeddings for "
            "the queries (ONNX Runtime and sentence-transformers in turns of one pass over "
            "the questions), random unit keys for the indexes; search = "
            "CorrectionIndex.best_match (matrix product, nearest 8 checked), matmul = the "
            "matrix product alone"
        ),
        "embedder": embedder.name,
        "runtimes": {
            "router": f"onnxruntime {version('onnxruntime')}",
            "comparison": f"sentence-transformers {version('sentence-transformers')}",
        },
        "python": platform.python_version(),
        "machine": platform.machine(),
        "duration_s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="passes over the questions")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH)
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="its models/ hold the ONNX export"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = OuroSettings(**({"data_dir": args.data_dir} if args.data_dir else {}))
    with threadpool_limits(limits=1):
        result = run(args.repeats, settings.model_cache_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    print(f"Written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
