"""Scenario "default_model": the model ``make run`` serves (smollm2-135m), over HTTP vs in-process.

The other serving scenarios run ouro-tiny, so their figures compare with every earlier run;
beside a toy model that needs a few milliseconds a token, the stack's fixed CPU per request
weighs far more than it does beside a real model. This scenario starts a stack of its own on
the default model and, at each client count, alternates rounds of closed-loop HTTP clients
(``ouro-base``, greedy, fixed answer length) with the same requests as one batch of the engine
in-process (``loadtests.bench_overhead.concurrent_clients``: the same harness, the same CPU
accounting by process). ``http_efficiency_smollm2`` is HTTP tokens/s over the engine's at
``EFFICIENCY_CLIENTS``.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from loadtests.bench_overhead import concurrent_clients, longest_answer_prompts
from loadtests.bench_stack import replica_threads, serve_process
from ouro.engine import GenerationEngine
from ouro.settings import OuroSettings

logger = logging.getLogger(__name__)

EFFICIENCY_CLIENTS = 16
"""The client count whose HTTP/engine ratio is the headline ``http_efficiency_smollm2``."""
PROMPTS = 8


@dataclass(frozen=True)
class DefaultModelSizes:
    """How much the scenario does."""

    levels: tuple[int, ...] = (1, 4, 16, 64)
    rounds: int = 2
    """Rounds per system per level (alternating HTTP and engine)."""
    requests_per_client: int = 2
    max_tokens: int = 32
    prompt_scan: int = 64
    """Corpus questions scanned for prompts whose greedy answers run to ``max_tokens``."""

    @classmethod
    def quick(cls) -> DefaultModelSizes:
        """Checks the harness, measures nothing."""
        return cls(levels=(1, 4), rounds=1, requests_per_client=1, max_tokens=8, prompt_scan=8)


def run_default_model(
    model_dir: Path | str,
    work_dir: Path,
    out_dir: Path,
    sizes: DefaultModelSizes,
) -> dict:
    """Tokens/s, p50 and p99 per client count, over HTTP and in-process, on ``model_dir``."""
    settings = OuroSettings(data_dir=work_dir, base_model=str(model_dir))
    with serve_process(settings, model_dir, out_dir / "serve-default-model.log") as stack:
        engine = GenerationEngine.from_settings(settings)
        torch.set_num_threads(replica_threads())
        prompts = [
            messages
            for messages, _ in longest_answer_prompts(
                engine, sizes.max_tokens, PROMPTS, sizes.prompt_scan
            )
        ]
        levels = []
        for clients in sizes.levels:
            result = concurrent_clients(
                engine,
                stack,
                prompts,
                clients=clients,
                rounds=sizes.rounds,
                requests_per_client=sizes.requests_per_client,
                max_tokens=sizes.max_tokens,
            )
            levels.append(_level(result))
    by_clients = {level["clients"]: level for level in levels}
    efficiency_level = by_clients.get(EFFICIENCY_CLIENTS, levels[-1])
    return {
        "base_model": Path(str(model_dir)).name,
        "max_tokens": sizes.max_tokens,
        "levels": levels,
        "efficiency_clients": efficiency_level["clients"],
        "http_efficiency": efficiency_level["http_over_engine"],
    }


def _level(result: dict) -> dict:
    """One client count: the figures of ``concurrent_clients`` that the report shows."""
    http = result["http_rounds"]
    return {
        "clients": result["clients"],
        "http_tokens_per_s": result["http_tokens_per_s"],
        "engine_tokens_per_s": result["engine_tokens_per_s"],
        "http_over_engine": result["http_over_engine_throughput"],
        "http_p50_s": _median(round_["latency"]["p50"] for round_ in http),
        "http_p99_s": _worst(round_["latency"]["p99"] for round_ in http),
        "engine_p50_s": _median(round_["latency"]["p50"] for round_ in result["engine_rounds"]),
        "engine_p99_s": _worst(round_["latency"]["p99"] for round_ in result["engine_rounds"]),
        "http_failed_requests": result["http_failed_requests"],
        "cpu_ms_per_request": result["cpu_ms_per_request"],
    }


def _median(values) -> float | None:
    """The median of the rounds' figures (None when no round had one)."""
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def _worst(values) -> float | None:
    """The largest of the rounds' figures."""
    return max((value for value in values if value is not None), default=None)
