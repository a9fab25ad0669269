"""Scenario "saturation": throughput and latency as closed-loop clients grow.

Each level runs its clients for a fixed time against ``ouro`` (the production version).
429 answers (the server's queue is full) are counted as shed load, not as crashes; any
other failure is counted apart. The knee is the level after which adding clients stops
paying: the next level adds less than 10% throughput, or its p99 latency is more than
``P99_EXPLOSION`` times this level's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import pairwise

from loadtests.bench_load import run_prompt_rotation
from loadtests.bench_stack import PeakMemory, ServeProcess
from ouro.names import SERVED_MODEL_NAME

logger = logging.getLogger(__name__)

MIN_GAIN = 1.10
P99_EXPLOSION = 3.0
KNEE_RULE = (
    f"the first level whose next level adds < {MIN_GAIN - 1:.0%} tokens/s "
    f"or has a p99 latency > {P99_EXPLOSION:g}x its own; the last level if none"
)


def find_knee(levels: Sequence[dict]) -> int:
    """Client count at the knee (see KNEE_RULE)."""
    for current, following in pairwise(levels):
        gain = following["tokens_per_s"] / max(current["tokens_per_s"], 1e-9)
        p99_now = current["latency"]["p99"]
        p99_next = following["latency"]["p99"]
        exploded = (
            p99_now is not None and p99_next is not None and p99_next > P99_EXPLOSION * p99_now
        )
        if gain < MIN_GAIN or exploded:
            return current["clients"]
    return levels[-1]["clients"]


def run_saturation(
    stack: ServeProcess,
    prompts: list[list[dict]],
    *,
    levels: Sequence[int],
    level_s: float,
    max_tokens: int,
) -> dict:
    results = []
    for clients in levels:
        with PeakMemory(stack) as memory:
            summary = run_prompt_rotation(
                stack, SERVED_MODEL_NAME, prompts, clients, max_tokens, duration_s=level_s
            )
        row = {"clients": clients, **summary.to_dict(), "llm_replica_peak_mib": memory.peak_mib}
        row["other_failures"] = summary.failed - summary.rejected_429
        results.append(row)
        logger.info(
            "%d clients: %.1f req/s, %.1f tok/s, p50 %s s, p99 %s s, %d x 429, %d other failures",
            clients,
            summary.requests_per_s,
            summary.tokens_per_s,
            _seconds(summary.latency.p50),
            _seconds(summary.latency.p99),
            summary.rejected_429,
            row["other_failures"],
        )
    return {
        "level_s": level_s,
        "max_tokens": max_tokens,
        "model": SERVED_MODEL_NAME,
        "levels": results,
        "knee_clients": find_knee(results),
        "knee_rule": KNEE_RULE,
        "rejected_429": sum(r["rejected_429"] for r in results),
        "other_failures": sum(r["other_failures"] for r in results),
    }


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
