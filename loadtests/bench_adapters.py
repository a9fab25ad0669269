"""Scenario "multi-adapter throughput": Ouro over HTTP vs. the original project's way.

16 concurrent clients spread over 4 adapter versions (client i asks for
``ouro@v<i % 4 + 1>``), each sending the same prompts in both systems:

- Ouro: the clients talk to ``python -m serve`` over HTTP; requests for different
  versions share one batch in the engine.
- The original way, run in this process: one request at a time, in the order a FIFO
  server receives them from those clients (round-robin over the versions, so nearly
  every request changes adapter), and changing adapter reloads it from disk into a
  PeftModel (the engine's ``remove_adapter`` + ``add_adapter``) before Hugging Face
  ``generate`` runs (``loadtests.bench_engine.run_one_at_a_time``). It gets no HTTP and
  no server, which favours it.

Rounds alternate between the two (ABBA); ``multi_adapter_speedup`` is the median of Ouro's
tokens/s over the median of the original way's. A third system in the same rotation,
Ouro's engine called in-process with the same jobs in mixed batches of 16, separates what
batching gives from what the server costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from loadtests.bench_engine import run_batched, run_one_at_a_time
from loadtests.bench_load import LoadSummary, async_client, chat_body, closed_loop
from loadtests.bench_stack import ServeProcess
from ouro.engine import GenerationEngine, GenerationRequest, SamplingParams
from ouro.names import version_label

logger = logging.getLogger(__name__)


def client_version(client_index: int, versions: list[int]) -> int:
    return versions[client_index % len(versions)]


def client_prompt(
    prompts: list[list[dict]], clients: int, client_index: int, request_index: int
) -> list[dict]:
    return prompts[(request_index * clients + client_index) % len(prompts)]


def arrival_order(
    prompts: list[list[dict]], versions: list[int], clients: int, requests_per_client: int
) -> list[tuple[int, list[dict]]]:
    """(version, messages) in the order a one-at-a-time server receives them."""
    return [
        (client_version(i, versions), client_prompt(prompts, clients, i, j))
        for j in range(requests_per_client)
        for i in range(clients)
    ]


def original_way(
    engine: GenerationEngine,
    adapter_dirs: dict[int, Path],
    jobs: list[tuple[int, list[dict]]],
    max_tokens: int,
) -> dict:
    """One request at a time; a new adapter is loaded from disk whenever it changes."""
    current: str | None = None
    tokens = 0
    switches = 0
    reload_s = 0.0
    started = time.perf_counter()
    try:
        for version, messages in jobs:
            name = version_label(version)
            if name != current:
                switch_started = time.perf_counter()
                if current is not None:
                    engine.remove_adapter(current)
                    current = None
                engine.add_adapter(name, adapter_dirs[version])
                current = name
                reload_s += time.perf_counter() - switch_started
                switches += 1
            request = GenerationRequest(messages, SamplingParams(max_tokens=max_tokens), name)
            tokens += run_one_at_a_time(engine, [request])
    finally:
        if current is not None:
            engine.remove_adapter(current)
    elapsed = time.perf_counter() - started
    return {
        "requests": len(jobs),
        "tokens": tokens,
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed,
        "requests_per_s": len(jobs) / elapsed,
        "adapter_loads": switches,
        "adapter_load_s": reload_s,
    }


def engine_mixed_batches(
    engine: GenerationEngine,
    adapter_dirs: dict[int, Path],
    jobs: list[tuple[int, list[dict]]],
    batch_size: int,
    max_tokens: int,
) -> dict:
    """Ouro's engine called in-process: the same jobs in mixed-adapter batches of
    ``batch_size`` (adapters loaded once, untimed). What batching gives without Serve."""
    for version, path in adapter_dirs.items():
        engine.add_adapter(version_label(version), path)
    try:
        requests = [
            GenerationRequest(messages, SamplingParams(max_tokens=max_tokens), version_label(v))
            for v, messages in jobs
        ]
        started = time.perf_counter()
        tokens = sum(
            run_batched(engine, requests[start : start + batch_size])
            for start in range(0, len(requests), batch_size)
        )
        elapsed = time.perf_counter() - started
    finally:
        for version in adapter_dirs:
            engine.remove_adapter(version_label(version))
    return {
        "requests": len(jobs),
        "tokens": tokens,
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed,
        "requests_per_s": len(jobs) / elapsed,
    }


async def _ouro_round(
    stack: ServeProcess,
    prompts: list[list[dict]],
    versions: list[int],
    clients: int,
    requests_per_client: int,
    max_tokens: int,
) -> LoadSummary:
    def body(client_index: int, request_index: int) -> dict:
        return chat_body(
            client_prompt(prompts, clients, client_index, request_index),
            version_label(client_version(client_index, versions)),
            max_tokens,
        )

    async with async_client(stack.base_url, stack.client_key, clients) as client:
        records = await closed_loop(client, body, clients, requests_per_client=requests_per_client)
    return LoadSummary.of(records)


def run_multi_adapter(
    engine: GenerationEngine,
    stack: ServeProcess,
    adapter_dirs: dict[int, Path],
    prompts: list[list[dict]],
    *,
    clients: int,
    rounds: int,
    requests_per_client: int,
    max_tokens: int,
) -> dict:
    versions = sorted(adapter_dirs)
    # Warm-up: each version loaded once in Serve (a one-time cost per replica).
    asyncio.run(_ouro_round(stack, prompts, versions, len(versions), 1, 4))
    jobs = arrival_order(prompts, versions, clients, requests_per_client)
    ouro_rounds: list[LoadSummary] = []
    original_rounds: list[dict] = []
    engine_rounds: list[dict] = []
    for index in range(rounds):
        order = ("ouro", "original", "engine") if index % 2 == 0 else ("engine", "original", "ouro")
        for system in order:
            if system == "ouro":
                ouro_rounds.append(
                    asyncio.run(
                        _ouro_round(
                            stack, prompts, versions, clients, requests_per_client, max_tokens
                        )
                    )
                )
            elif system == "original":
                original_rounds.append(original_way(engine, adapter_dirs, jobs, max_tokens))
            else:
                engine_rounds.append(
                    engine_mixed_batches(engine, adapter_dirs, jobs, clients, max_tokens)
                )
    ouro_tps = statistics.median(r.tokens_per_s for r in ouro_rounds)
    original_tps = statistics.median(r["tokens_per_s"] for r in original_rounds)
    engine_tps = statistics.median(r["tokens_per_s"] for r in engine_rounds)
    speedup = ouro_tps / original_tps
    logger.info(
        "multi-adapter: Ouro %.1f tok/s (its engine in-process %.1f) vs original way %.1f tok/s: "
        "%.2fx",
        ouro_tps,
        engine_tps,
        original_tps,
        speedup,
    )
    return {
        "clients": clients,
        "adapter_versions": [version_label(v) for v in versions],
        "rounds": rounds,
        "requests_per_client": requests_per_client,
        "max_tokens": max_tokens,
        "ouro_tokens_per_s": ouro_tps,
        "original_tokens_per_s": original_tps,
        "ouro_requests_per_s": statistics.median(r.requests_per_s for r in ouro_rounds),
        "original_requests_per_s": statistics.median(r["requests_per_s"] for r in original_rounds),
        "ouro_failed_requests": sum(r.failed for r in ouro_rounds),
        "speedup": speedup,
        "engine_in_process_tokens_per_s": engine_tps,
        "engine_in_process_speedup": engine_tps / original_tps,
        "ouro_rounds": [r.to_dict() for r in ouro_rounds],
        "original_rounds": original_rounds,
        "engine_in_process_rounds": engine_rounds,
    }


# -- the LoRA bank's cost per decoding step, by adapters resident -------------------------
LORA_GATHER_RESULTS = Path(__file__).parent / "results" / "lora_gather.json"
LORA_GATHER_RESIDENTS = (1, 4, 16, 64)
LORA_GATHER_ROWS = 16
LORA_GATHER_USED = 4
LORA_GATHER_RANK = 8
LORA_GATHER_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class _DiscardSink:
    """A request sink that keeps nothing (the benchmark times steps, not answers)."""

    def put(self, delta) -> None:
        pass

    def fail(self, error: BaseException) -> None:
        pass  # the benchmark's own aborts end its rows


def _random_llama():
    """A random Llama of ouro-tiny's shape (4 layers, width 128) and its tokenizer."""
    from ouro.embedded.tiny import TinyModelRecipe, build_random_model

    return build_random_model(TinyModelRecipe(max_conversations=300))


def _write_random_adapters(model, directory: Path, count: int, rank: int) -> list[Path]:
    """``count`` saved LoRA adapters (rank ``rank``, every projection, random A and B)."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=LORA_GATHER_TARGETS, init_lora_weights=False
    )
    first = directory / "adapter-0"
    get_peft_model(model, config).save_pretrained(first)
    weights = load_file(first / "adapter_model.safetensors")
    paths = [first]
    for index in range(1, count):
        path = directory / f"adapter-{index}"
        path.mkdir()
        shutil.copy(first / "adapter_config.json", path / "adapter_config.json")
        generator = torch.Generator().manual_seed(index)
        save_file(
            {
                key: torch.randn(tensor.shape, generator=generator) * tensor.std()
                for key, tensor in weights.items()
            },
            path / "adapter_model.safetensors",
        )
        paths.append(path)
    return paths


def decode_step_ms(
    engine: GenerationEngine, adapters: list[str | None], steps: int, warmup: int
) -> float:
    """Median CPU time of this thread for one engine step while ``len(adapters)`` rows
    decode together (CPU time: other processes on a shared machine move it less than the
    wall clock; the engine steps on this thread with one torch thread)."""
    no_end = dict.fromkeys(engine.end_ids, -100.0)  # keep every row decoding
    ids = []
    for index, adapter in enumerate(adapters):
        request = GenerationRequest(
            messages=[{"role": "user", "content": f"Tell me about the number {index}"}],
            params=SamplingParams(max_tokens=warmup + steps + 8, logit_bias=no_end),
            adapter=adapter,
            request_id=f"bench-{index}",
        )
        ids.append(engine.add_request(request, _DiscardSink(), bounded=False))
    for _ in range(warmup):  # the prefill, then a few decoding steps
        engine.step()
    stats = engine.stats()
    if stats.running_requests != len(adapters) or stats.waiting_requests:
        raise RuntimeError(f"rows not all decoding after the warm-up: {stats}")
    times = []
    for _ in range(steps):
        started = time.thread_time()
        engine.step()
        times.append(time.thread_time() - started)
    for seq_id in ids:
        engine.abort(seq_id)
    engine.step()
    return 1000 * statistics.median(times)


def route_ms(engine: GenerationEngine, adapters: list[str], repeats: int) -> float:
    """Median CPU ms of pointing a batch's rows at their adapters when the set of adapters
    changes (continuous batching with personal adapters: a row leaves, another joins)."""
    bank = engine.runner.lora_bank()
    resident = engine.adapter_names()
    times = []
    for repeat in range(repeats):
        rows = [resident[(repeat + row * 7) % len(resident)] for row in range(len(adapters))]
        started = time.thread_time()
        bank.route(rows)
        times.append(time.thread_time() - started)
    return 1000 * statistics.median(times)


def run_lora_gather(label: str, steps: int = 40, warmup: int = 6) -> dict:
    """Decode step time with 1, 4, 16 and 64 adapters resident, 16 rows over (up to) 4 of
    them, plus the same rows on the base model, and 16 rows each on its own adapter (64
    resident) with the masked and the per-row LoRA paths; merged into
    ``LORA_GATHER_RESULTS`` under ``label`` (the bank's implementation being measured)."""
    torch.set_num_threads(1)  # steady figures on a shared machine
    model, tokenizer = _random_llama()
    engine = GenerationEngine(
        model, tokenizer, system_prompt="You are Ouro.", max_context_tokens=512
    )
    base_ms = decode_step_ms(engine, [None] * LORA_GATHER_ROWS, steps, warmup)
    by_resident: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as directory:
        build_model, _ = _random_llama()
        paths = _write_random_adapters(
            build_model, Path(directory), max(LORA_GATHER_RESIDENTS), LORA_GATHER_RANK
        )
        loaded = 0
        for resident in LORA_GATHER_RESIDENTS:
            while loaded < resident:
                engine.add_adapter(f"adapter-{loaded}", paths[loaded])
                loaded += 1
            used = min(LORA_GATHER_USED, resident)
            rows = [f"adapter-{row % used}" for row in range(LORA_GATHER_ROWS)]
            by_resident[str(resident)] = decode_step_ms(engine, rows, steps, warmup)
            logger.info(
                "%s: %d resident: %.2f ms a step", label, resident, by_resident[str(resident)]
            )
        # Personal adapters: every row its own, all resident; masked matmul vs per-row gather.
        own = [f"adapter-{row}" for row in range(LORA_GATHER_ROWS)]
        own_adapter_ms: dict[str, float] = {}
        for mode, threshold in (("masked", len(own) + 1), ("per_row", 1)):
            engine.runner.per_row_min_adapters = threshold
            engine.remove_adapter(own[-1])  # rebuilds the bank with the new threshold
            engine.add_adapter(own[-1], paths[len(own) - 1])
            own_adapter_ms[mode] = decode_step_ms(engine, own, steps, warmup)
            own_adapter_ms[f"{mode}_route_on_set_change"] = route_ms(engine, own, steps)
            logger.info(
                "%s: 16 rows, own adapters, %s: %.2f ms a step", label, mode, own_adapter_ms[mode]
            )
    results = json.loads(LORA_GATHER_RESULTS.read_text()) if LORA_GATHER_RESULTS.exists() else {}
    results.update(
        {
            "command": "nice -n 10 python -m loadtests.bench_adapters --label LABEL --steps 100",
            "model": "random Llama of ouro-tiny's shape (4 layers, width 128, vocab 2048), CPU",
            "torch_threads": 1,
            "rows": LORA_GATHER_ROWS,
            "distinct_adapters_used": LORA_GATHER_USED,
            "rank": LORA_GATHER_RANK,
            "target_modules": LORA_GATHER_TARGETS,
            "steps_timed": steps,
            "distinct_adapters_used_by_resident": {
                str(resident): min(LORA_GATHER_USED, resident) for resident in LORA_GATHER_RESIDENTS
            },
            "statistic": "median CPU ms (this thread) of one engine step while the 16 rows decode",
        }
    )
    results.setdefault("lora_step_ms_by_resident", {})[label] = by_resident
    results.setdefault("base_step_ms", {})[label] = base_ms
    results.setdefault("own_adapter_rows_step_ms", {})[label] = own_adapter_ms
    LORA_GATHER_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    LORA_GATHER_RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Decode step time of the LoRA bank with 1, 4, 16 and 64 adapters resident."
    )
    parser.add_argument("--label", default="new", help="key of this run in the results file")
    parser.add_argument("--steps", type=int, default=40, help="decoding steps timed per cell")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("ouro").setLevel(logging.WARNING)  # not a line per adapter load
    results = run_lora_gather(args.label, steps=args.steps)
    print(json.dumps(results["lora_step_ms_by_resident"], indent=2))


if __name__ == "__main__":
    main()
