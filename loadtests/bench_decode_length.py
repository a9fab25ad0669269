"""Benchmark: does a decoding step cost more as the answer grows? (ouro-tiny)

    python -m loadtests.bench_decode_length [--rows 8] [--rounds 5] [--threads 1]
        [--no-http] [--ingress haproxy|proxy] [--out loadtests/results/decode_length.json]

``rows`` requests start together and decode ``TOKENS`` tokens each, end-of-turn tokens
forbidden (``logit_bias`` -100) so every answer runs the whole length. A step's cost is
the median over the steps within ``WINDOW`` tokens of a position, over rows and rounds:

* ``decode_step_ratio_1000_vs_50``: the engine in this process, stepped by hand
  (``GenerationEngine.step``, the loop Serve's ``AsyncEngine`` runs), each step timed in
  this thread's CPU time with torch on ``--threads`` threads (1: the thread's clock then
  sees all the work, whatever else the machine runs); the wall-clock ratio beside it, and
  ``engine_outside_forward_cpu``: the step less the model's forward, the engine's own
  work (scheduling, sampling, detokenization, stop strings);
* ``stream_step_ratio_1000_vs_50``: the same requests streamed over HTTP from
  ``python -m serve`` (text sent every step: ``OURO_STREAM_INTERVAL_S=0``; logprobs
  asked for, to count the tokens a chunk carries): the LLM replica's CPU time per token,
  and beside it the time per token as the clients see it (wall clock).

Each round's own ratios are kept, so the spread shows beside the median. Some work must
grow with the answer (attention reads a longer KV cache); work that need not (decoding
the whole text again, re-scanning it for stop strings, a cache that copies itself to
grow) shows as a ratio above 1 too. ouro-tiny was trained on 1,024 positions and its
prompt takes some of them, so the benchmark runs a copy whose config allows
``POSITIONS`` (same weights: rotary position embeddings have no table to outgrow); what
it writes past the 1,024th position is nonsense, what it costs is not.

Writes ``loadtests/results/decode_length.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import torch

from loadtests.bench import RESULT_ENV
from loadtests.bench_load import CHAT_PATH, async_client
from loadtests.bench_report import machine_facts
from loadtests.bench_stack import (
    REPO_ROOT,
    StackError,
    prepare_base_model,
    replica_processes,
    serve_process,
)
from loadtests.private_network import add_ingress_flag, current_ingress, rerun_for_ingress
from ouro.embedded import TINY_MODEL
from ouro.engine import GenerationEngine, GenerationRequest, SamplingParams, StreamDelta
from ouro.names import BASE_MODEL_NAME
from ouro.settings import OuroSettings

logger = logging.getLogger(__name__)

RESULTS_PATH = REPO_ROOT / "loadtests" / "results" / "decode_length.json"
EARLY, LATE = 50, 1000
"""The generated-token positions compared."""
WINDOW = 25
"""Steps within this many tokens of a position count for it."""
TOKENS = LATE + WINDOW + 1
POSITIONS = 2048
"""Positions the benchmark's copy of ouro-tiny allows (its own config: 1,024)."""
TARGET = 1.1
"""The ratios' target: a step at the 1,000th token within 10% of one at the 50th."""
PROMPTS = (
    "Tell me a story.",
    "What do you know about computers?",
    "Let's talk about music.",
    "What is your favourite book?",
)


@dataclass(frozen=True)
class RoundTimes:
    """Seconds per generated-token position (1-based) of one round, for each clock."""

    wall: dict[int, list[float]]
    cpu: dict[int, list[float]] = field(default_factory=dict)
    outside_forward_cpu: dict[int, list[float]] = field(default_factory=dict)
    """The step's CPU time less the model's forward: the engine's own work."""


class _ForwardClock:
    """Wraps a ``ModelRunner``'s forward and adds up the thread CPU time spent in it."""

    def __init__(self, runner) -> None:
        self.cpu = 0.0
        self._forward = runner.forward
        runner.forward = self

    def __call__(self, *args, **kwargs):
        started = time.thread_time()
        try:
            return self._forward(*args, **kwargs)
        finally:
            self.cpu += time.thread_time() - started


def long_context_copy(model_dir: Path, folder: Path) -> Path:
    """``model_dir``'s files linked into ``folder``, its config allowing ``POSITIONS``."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in model_dir.iterdir():
        if source.name != "config.json":
            (folder / source.name).symlink_to(source.resolve())
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config["max_position_embeddings"] = POSITIONS
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def no_end_bias(engine: GenerationEngine) -> dict[int, float]:
    """A logit_bias that keeps every answer going to ``max_tokens``."""
    return {token: -100.0 for token in sorted(engine.end_ids)}


class _Progress:
    """A request sink that keeps how many tokens its row has generated."""

    def __init__(self) -> None:
        self.tokens = 0
        self.finished = False
        self.error: BaseException | None = None

    def put(self, delta: StreamDelta) -> None:
        self.tokens = delta.completion_tokens
        self.finished = delta.finish_reason is not None

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.finished = True


def engine_round(
    engine: GenerationEngine, forward: _ForwardClock, rows: int, tokens: int
) -> RoundTimes:
    """``rows`` requests decoded together by stepping ``engine``; each step's times."""
    bias = no_end_bias(engine)
    sinks = [_Progress() for _ in range(rows)]
    for index, sink in enumerate(sinks):
        request = GenerationRequest(
            messages=[{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
            params=SamplingParams(max_tokens=tokens, logit_bias=bias),
            request_id=f"decode-length-{index}",
        )
        engine.add_request(request, sink, bounded=False)
    times = RoundTimes(wall={})
    while not all(sink.finished for sink in sinks):
        before = [sink.tokens for sink in sinks]
        wall, cpu, in_forward = time.perf_counter(), time.thread_time(), forward.cpu
        engine.step()
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        in_forward = forward.cpu - in_forward
        if failed := [sink.error for sink in sinks if sink.error is not None]:
            raise RuntimeError(f"a benchmark request failed: {failed[0]}") from failed[0]
        # Timed: the steps that move every row on by one token (not those of the prefill).
        if all(sink.tokens == old + 1 for sink, old in zip(sinks, before, strict=True)):
            position = sinks[0].tokens
            times.cpu.setdefault(position, []).append(cpu)
            times.wall.setdefault(position, []).append(wall)
            times.outside_forward_cpu.setdefault(position, []).append(cpu - in_forward)
    return times


def _replica_cpu_s(replicas: list[psutil.Process]) -> float:
    """CPU seconds (user + system) the LLM server replicas have used so far."""
    return sum(sum(process.cpu_times()[:2]) for process in replicas)


async def _stream_round(stack, bias: dict[int, float], rows: int, tokens: int) -> RoundTimes:
    """``rows`` concurrent streams; the time and the replica's CPU per token around both
    positions (in ``wall`` and ``cpu``, one value per stream at each position).

    The server merges several steps' text into one chunk when its event loop is behind
    the engine, so a chunk is not a token: each stream asks for logprobs, which carry
    one entry per token. A position's figure is measured from the chunk that reaches
    ``position - WINDOW`` tokens to the one that reaches ``position + WINDOW``, divided by
    the tokens between. The replica's CPU time (its HTTP front and engine, every row's
    work) holds on a machine busy with other work, where the wall clock does not.
    """
    replicas = replica_processes(stack)
    wall: dict[int, list[float]] = {}
    cpu: dict[int, list[float]] = {}
    marks = sorted({edge for p in (EARLY, LATE) for edge in (p - WINDOW, p + WINDOW)})

    async def stream(client: httpx.AsyncClient, index: int) -> None:
        body = {
            "model": BASE_MODEL_NAME,
            "messages": [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
            "max_tokens": tokens,
            "temperature": 0.0,
            "logit_bias": {str(token): value for token, value in bias.items()},
            "logprobs": True,
            "stream": True,
        }
        received = 0
        at_mark: dict[int, tuple[int, float, float]] = {}
        """mark -> (tokens received, when, replica CPU) at the first chunk reaching it."""
        async with client.stream("POST", CHAT_PATH, json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                choices = json.loads(line.removeprefix("data: ")).get("choices") or []
                content = choices and ((choices[0].get("logprobs") or {}).get("content") or [])
                received += len(content or [])
                reached = [mark for mark in marks if mark <= received and mark not in at_mark]
                if reached:
                    sample = (received, time.perf_counter(), _replica_cpu_s(replicas))
                    at_mark.update(dict.fromkeys(reached, sample))
        if received != tokens:
            raise RuntimeError(f"a stream of {tokens} tokens carried logprobs for {received}")
        for position in (EARLY, LATE):
            first, last = at_mark.get(position - WINDOW), at_mark.get(position + WINDOW)
            if first is None or last is None or last[0] == first[0]:
                continue
            count = last[0] - first[0]
            wall.setdefault(position, []).append((last[1] - first[1]) / count)
            cpu.setdefault(position, []).append((last[2] - first[2]) / count)

    async with async_client(stack.base_url, stack.client_key, rows) as client:
        await asyncio.gather(*(stream(client, index) for index in range(rows)))
    return RoundTimes(wall=wall, cpu=cpu)


def at(rounds: list[dict[int, list[float]]], position: int) -> float:
    """Median seconds of the steps within ``WINDOW`` tokens of ``position``."""
    samples = [
        value
        for times in rounds
        for step in range(position - WINDOW, position + WINDOW + 1)
        for value in times.get(step, [])
    ]
    return statistics.median(samples)


def summary(rounds: list[dict[int, list[float]]]) -> dict:
    """Step time at both positions and their ratio, over all rounds and round by round."""
    early, late = at(rounds, EARLY), at(rounds, LATE)
    per_round = [round(at([times], LATE) / at([times], EARLY), 3) for times in rounds]
    return {
        f"step_ms_at_{EARLY}": round(early * 1000, 3),
        f"step_ms_at_{LATE}": round(late * 1000, 3),
        "ratio": round(late / early, 3),
        "ratio_by_round": per_round,
        "ratio_spread": [min(per_round), max(per_round)],
    }


def run(args: argparse.Namespace) -> dict:
    started = time.monotonic()
    machine = machine_facts()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="ouro-decode-length-") as scratch:
        work = Path(scratch)
        model_dir = long_context_copy(Path(prepare_base_model(TINY_MODEL)), work / "model")
        settings = OuroSettings(data_dir=work / "data", base_model=str(model_dir))
        engine = GenerationEngine.from_settings(settings)
        forward = _ForwardClock(engine.runner)
        engine_round(engine, forward, 2, 8)  # warm-up
        rounds = []
        for index in range(args.rounds):
            rounds.append(engine_round(engine, forward, args.rows, TOKENS))
            logger.info("engine round %d of %d done", index + 1, args.rounds)
        engine_cpu = summary([times.cpu for times in rounds])
        result = {
            "decode_step_ratio_1000_vs_50": engine_cpu["ratio"],
            "engine_cpu": engine_cpu,
            "engine_wall": summary([times.wall for times in rounds]),
            "engine_outside_forward_cpu": summary([t.outside_forward_cpu for t in rounds]),
        }
        if args.http:
            bias = no_end_bias(engine)
            log_path = args.out.parent / "serve-decode-length.log"
            # Every step's text sent; answers as long as the benchmark's (the default
            # limit is 1,024 tokens).
            extra_env = {"OURO_STREAM_INTERVAL_S": "0", "OURO_MAX_TOKENS_LIMIT": str(TOKENS)}
            with serve_process(settings, model_dir, log_path, extra_env=extra_env) as stack:
                asyncio.run(_stream_round(stack, bias, 2, 2 * WINDOW))  # warm-up
                streams = []
                for index in range(args.rounds):
                    streams.append(asyncio.run(_stream_round(stack, bias, args.rows, TOKENS)))
                    logger.info("stream round %d of %d done", index + 1, args.rounds)
            stream_cpu = summary([times.cpu for times in streams])
            result["stream_step_ratio_1000_vs_50"] = stream_cpu["ratio"]
            result["stream_replica_cpu"] = stream_cpu
            result["stream_wall"] = summary([times.wall for times in streams])
    ratios = {
        key: result[key]
        for key in ("decode_step_ratio_1000_vs_50", "stream_step_ratio_1000_vs_50")
        if key in result
    }
    machine["load_average_at_end"] = list(os.getloadavg())
    return {
        **ratios,
        "targets": {
            key: {"target": TARGET, "met": value <= TARGET} for key, value in ratios.items()
        },
        **{key: value for key, value in result.items() if key not in ratios},
        "command": " ".join(
            [
                *(f"{name}={os.environ[name]}" for name in RESULT_ENV if name in os.environ),
                "python -m loadtests.bench_decode_length",
                *sys.argv[1:],
            ]
        ),
        "ingress": current_ingress() if args.http else None,
        "base_model": f"{TINY_MODEL} (config allowing {POSITIONS} positions)",
        "rows": args.rows,
        "rounds": args.rounds,
        "tokens": TOKENS,
        "window": WINDOW,
        "torch_threads": args.threads,
        "machine": machine,
        "duration_s": round(time.monotonic() - started, 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_decode_length", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rows", type=int, default=8, help="requests decoded together")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per system (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the engine")
    parser.add_argument(
        "--no-http", dest="http", action="store_false", help="the engine only, no python -m serve"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_PATH)
    add_ingress_flag(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.http:
        rerun_status = rerun_for_ingress(args.ingress, "loadtests.bench_decode_length", argv)
        if rerun_status is not None:
            return rerun_status
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        result = run(args)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    print(f"Written: {args.out} ({result['duration_s']:.0f} s in all).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
