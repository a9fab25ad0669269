"""Scenario "serving overhead": HTTP + Ray Serve vs. the engine called in this process.

Same base model (``ouro-base``: no adapter), same prompts, same ``max_tokens``, greedy.
The API cannot force an answer to run to max_tokens (no ignore_eos), so the prompts are
the corpus questions whose greedy answers run longest (ideally all the way); latency is
also reported per completion token.

- one client: pairs of requests, engine then HTTP and HTTP then engine in turn (ABBA), so
  drift in the machine's load hits both alike; ``serving_overhead_ratio`` is the median
  HTTP latency over the median engine latency;
- 16 concurrent clients: the direct equivalent is one engine batch of 16 requests; the
  HTTP side is 16 closed-loop clients. Rounds alternate; throughput ratio of medians.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import Counter
from dataclasses import asdict

import httpx

from loadtests.bench_load import (
    CHAT_PATH,
    LatencyStats,
    LoadSummary,
    chat_body,
    run_prompt_rotation,
)
from loadtests.bench_stack import ServeProcess, cpu_seconds_by_process
from ouro.corpus import load_chatterbot_conversations
from ouro.engine import GenerationEngine, GenerationRequest, SamplingParams
from ouro.names import BASE_MODEL_NAME

logger = logging.getLogger(__name__)

PROMPT_SCAN_BATCH = 32


def corpus_questions() -> list[list[dict]]:
    """The corpus's opening questions as one-message conversations, without repeats."""
    seen: dict[str, None] = {}
    for conversation in load_chatterbot_conversations():
        seen.setdefault(conversation[0]["content"], None)
    return [[{"role": "user", "content": question}] for question in seen]


def longest_answer_prompts(
    engine: GenerationEngine, max_tokens: int, count: int, scan: int
) -> list[tuple[list[dict], int]]:
    """The ``count`` prompts (of the first ``scan`` questions) whose greedy base-model
    answers are longest, with their completion token counts, longest first."""
    candidates = corpus_questions()[:scan]
    lengths: list[tuple[int, int]] = []
    for start in range(0, len(candidates), PROMPT_SCAN_BATCH):
        batch = candidates[start : start + PROMPT_SCAN_BATCH]
        outputs = engine.generate(
            [
                GenerationRequest(messages, SamplingParams(max_tokens=max_tokens))
                for messages in batch
            ]
        )
        lengths += [(out.completion_tokens, start + i) for i, out in enumerate(outputs)]
        if sum(tokens >= max_tokens for tokens, _ in lengths) >= count:
            break
    lengths.sort(key=lambda item: (-item[0], item[1]))
    return [(candidates[index], tokens) for tokens, index in lengths[:count]]


def _engine_once(engine: GenerationEngine, messages: list[dict], max_tokens: int):
    started = time.perf_counter()
    [output] = engine.generate([GenerationRequest(messages, SamplingParams(max_tokens=max_tokens))])
    return time.perf_counter() - started, output.completion_tokens, output.text


def _http_once(client: httpx.Client, messages: list[dict], max_tokens: int):
    started = time.perf_counter()
    response = client.post(CHAT_PATH, json=chat_body(messages, BASE_MODEL_NAME, max_tokens))
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    answer = response.json()
    return elapsed, answer["usage"]["completion_tokens"], answer["choices"][0]["message"]["content"]


def single_client(
    engine: GenerationEngine,
    stack: ServeProcess,
    prompts: list[list[dict]],
    *,
    pairs: int,
    warmup: int,
    max_tokens: int,
) -> dict:
    """Latency of one request at a time, engine vs HTTP, interleaved ABBA.

    Each pair also times a 1-token answer both ways and ``GET /healthz`` (proxy and
    ingress only), which split the overhead into a fixed part per request and a part
    per generated token.
    """
    timings: dict[str, list[float]] = {
        key: [] for key in ("engine", "http", "engine_1", "http_1", "healthz")
    }
    engine_per_token: list[float] = []
    http_per_token: list[float] = []
    tokens: list[int] = []
    same_text = 0
    headers = {"Authorization": f"Bearer {stack.client_key}"}
    with httpx.Client(base_url=stack.base_url, headers=headers, timeout=300) as client:
        for index in range(warmup):
            messages = prompts[index % len(prompts)]
            _engine_once(engine, messages, max_tokens)
            _http_once(client, messages, max_tokens)
        for index in range(pairs):
            messages = prompts[index % len(prompts)]
            calls = [
                ("engine", lambda m=messages: _engine_once(engine, m, max_tokens)),
                ("http", lambda m=messages: _http_once(client, m, max_tokens)),
                ("engine_1", lambda m=messages: _engine_once(engine, m, 1)),
                ("http_1", lambda m=messages: _http_once(client, m, 1)),
                ("healthz", lambda: _healthz_once(client)),
            ]
            results = {}
            for name, call in calls if index % 2 == 0 else reversed(calls):
                results[name] = call()
                timings[name].append(results[name][0])
            e, h = results["engine"], results["http"]
            engine_per_token.append(e[0] / max(e[1], 1))
            http_per_token.append(h[0] / max(h[1], 1))
            tokens.append(h[1])
            same_text += e[2] == h[2]
    medians = {name: statistics.median(values) for name, values in timings.items()}
    ratio = medians["http"] / medians["engine"]
    per_token_ratio = statistics.median(http_per_token) / statistics.median(engine_per_token)
    # Pairs alternate their order (ABBA); on this VM a call's speed depends on what ran just
    # before it (docs/performance.md), so the ratio within each order says how much of
    # ``ratio`` is that carry-over rather than the serving path.
    by_order = {
        order: statistics.median(timings["http"][first::2])
        / statistics.median(timings["engine"][first::2])
        for order, first in (("engine_first", 0), ("http_first", 1))
    }
    decode_tokens = max(statistics.median(tokens) - 1, 1)
    logger.info("serving overhead at one client: %.3fx (per token %.3fx)", ratio, per_token_ratio)
    return {
        "pairs": pairs,
        "max_tokens": max_tokens,
        "completion_tokens_median": statistics.median(tokens),
        "completion_tokens_min": min(tokens),
        "same_text_as_engine": same_text,
        "engine_latency_s": asdict(LatencyStats.of(timings["engine"])),
        "http_latency_s": asdict(LatencyStats.of(timings["http"])),
        "engine_s_per_token_median": statistics.median(engine_per_token),
        "http_s_per_token_median": statistics.median(http_per_token),
        "engine_latencies_s": timings["engine"],
        "http_latencies_s": timings["http"],
        "ratio": ratio,
        "per_token_ratio": per_token_ratio,
        "ratio_by_order": by_order,
        "breakdown_s": {
            "healthz_round_trip": medians["healthz"],
            "engine_1_token": medians["engine_1"],
            "http_1_token": medians["http_1"],
            "fixed_overhead_per_request": medians["http_1"] - medians["engine_1"],
            "engine_per_extra_token": (medians["engine"] - medians["engine_1"]) / decode_tokens,
            "http_per_extra_token": (medians["http"] - medians["http_1"]) / decode_tokens,
        },
    }


def _healthz_once(client: httpx.Client):
    started = time.perf_counter()
    client.get("/healthz").raise_for_status()
    return (time.perf_counter() - started,)


def _engine_batch_round(
    engine: GenerationEngine, prompts: list[list[dict]], clients: int, repeats: int, max_tokens: int
) -> LoadSummary:
    """``repeats`` batches of ``clients`` requests: what 16 callers get with no server.
    Every request of a batch gets the batch's time as its latency."""
    started = time.perf_counter()
    done = 0
    tokens = 0
    latencies: list[float] = []
    for repeat in range(repeats):
        batch_started = time.perf_counter()
        batch = [
            GenerationRequest(
                prompts[(repeat * clients + i) % len(prompts)],
                SamplingParams(max_tokens=max_tokens),
            )
            for i in range(clients)
        ]
        tokens += sum(out.completion_tokens for out in engine.generate(batch))
        done += len(batch)
        latencies += [time.perf_counter() - batch_started] * len(batch)
    elapsed = time.perf_counter() - started
    return _rates(done, tokens, elapsed, latencies)


def _rates(
    requests: int, tokens: int, seconds: float, latencies: list[float] | None = None
) -> LoadSummary:
    return LoadSummary(
        requests=requests,
        succeeded=requests,
        failed=0,
        rejected_429=0,
        status_counts={"200": requests},
        duration_s=seconds,
        requests_per_s=requests / seconds,
        tokens_per_s=tokens / seconds,
        latency=LatencyStats.of(latencies or []),
        models={},
    )


def concurrent_clients(
    engine: GenerationEngine,
    stack: ServeProcess,
    prompts: list[list[dict]],
    *,
    clients: int,
    rounds: int,
    requests_per_client: int,
    max_tokens: int,
) -> dict:
    """Throughput at ``clients`` concurrent clients: HTTP vs one engine batch, alternating."""
    engine_rounds: list[LoadSummary] = []
    http_rounds: list[LoadSummary] = []
    engine_cpu_s = 0.0
    client_cpu_s = 0.0
    serve_cpu_s: Counter[str] = Counter()
    for index in range(rounds):
        order = ("engine", "http") if index % 2 == 0 else ("http", "engine")
        for system in order:
            cpu_before = time.process_time()
            if system == "engine":
                engine_rounds.append(
                    _engine_batch_round(engine, prompts, clients, requests_per_client, max_tokens)
                )
                engine_cpu_s += time.process_time() - cpu_before
            else:
                serve_before = cpu_seconds_by_process(stack)
                http_rounds.append(
                    run_prompt_rotation(
                        stack,
                        BASE_MODEL_NAME,
                        prompts,
                        clients,
                        max_tokens,
                        requests_per_client=requests_per_client,
                    )
                )
                client_cpu_s += time.process_time() - cpu_before
                serve_cpu_s.update(
                    {
                        name: seconds - serve_before.get(name, 0.0)
                        for name, seconds in cpu_seconds_by_process(stack).items()
                    }
                )
    engine_tps = statistics.median(r.tokens_per_s for r in engine_rounds)
    http_tps = statistics.median(r.tokens_per_s for r in http_rounds)
    failures = sum(r.failed for r in http_rounds)
    logger.info(
        "%d clients: HTTP %.1f tok/s vs engine batch %.1f tok/s", clients, http_tps, engine_tps
    )
    return {
        "clients": clients,
        "rounds": rounds,
        "requests_per_client": requests_per_client,
        "max_tokens": max_tokens,
        "engine_tokens_per_s": engine_tps,
        "http_tokens_per_s": http_tps,
        "engine_requests_per_s": statistics.median(r.requests_per_s for r in engine_rounds),
        "http_requests_per_s": statistics.median(r.requests_per_s for r in http_rounds),
        "http_failed_requests": failures,
        "http_over_engine_throughput": http_tps / engine_tps,
        # CPU time per request, whatever else ran on the machine: where the work went.
        "cpu_ms_per_request": {
            "engine_in_process": 1000 * engine_cpu_s / sum(r.requests for r in engine_rounds),
            "http_client": 1000 * client_cpu_s / sum(r.requests for r in http_rounds),
            "serve_total": 1000 * sum(serve_cpu_s.values()) / sum(r.requests for r in http_rounds),
            "serve_by_process": {
                name: 1000 * seconds / sum(r.requests for r in http_rounds)
                for name, seconds in serve_cpu_s.most_common()
                if seconds > 0
            },
        },
        "http_rounds": [r.to_dict() for r in http_rounds],
        "engine_rounds": [r.to_dict() for r in engine_rounds],
    }
