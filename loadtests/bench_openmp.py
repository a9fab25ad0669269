"""Benchmark: ouro-tiny's engine under OpenMP wait settings, alone and beside a second one.

    python -m loadtests.bench_openmp [--rounds 3]

For each setting (``OMP_WAIT_POLICY=PASSIVE``, what ``ouro.cpu_threads`` sets, and brief
spinning with ``GOMP_SPINCOUNT``), it times 32-token greedy answers to the prompts of the
``serving_overhead`` scenario, one at a time, in a fresh process with the replica's torch
threads: first one process alone, then two at once (a co-tenant, as a training job beside
the server). OpenMP reads these settings once, when torch starts, hence one process per
setting. Prints a Markdown table of milliseconds per answer (min-max over every answer).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "GOMP_SPINCOUNT=100000": {"GOMP_SPINCOUNT": "100000"},
}
"""Each is the whole of the OpenMP wait settings of its processes: without OMP_WAIT_POLICY,
libgomp's default policy spins GOMP_SPINCOUNT times before it sleeps."""
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

MAX_TOKENS = 32
PROMPTS = 8
PROMPT_SCAN = 256


def answer_times(rounds: int) -> list[float]:
    """In this process: seconds per answer, ``rounds`` times over the prompts."""
    import torch

    from loadtests.bench_overhead import longest_answer_prompts
    from loadtests.bench_stack import prepare_base_model, replica_threads
    from ouro.embedded import TINY_MODEL
    from ouro.engine import GenerationEngine, GenerationRequest, SamplingParams
    from ouro.settings import OuroSettings

    model_dir = prepare_base_model(TINY_MODEL)
    with tempfile.TemporaryDirectory(prefix="ouro-openmp-") as scratch:
        settings = OuroSettings(data_dir=Path(scratch) / "data", base_model=str(model_dir))
        engine = GenerationEngine.from_settings(settings)
        torch.set_num_threads(replica_threads())
        prompts = [m for m, _ in longest_answer_prompts(engine, MAX_TOKENS, PROMPTS, PROMPT_SCAN)]
        times = []
        for _ in range(rounds):
            for messages in prompts:
                started = time.perf_counter()
                engine.generate(
                    [GenerationRequest(messages, SamplingParams(max_tokens=MAX_TOKENS))]
                )
                times.append(time.perf_counter() - started)
        return times


def run_processes(env: dict[str, str], count: int, rounds: int) -> list[float]:
    """``count`` processes at once, each timing its answers; every answer's seconds."""
    command = [sys.executable, "-m", "loadtests.bench_openmp", "--child", "--rounds", str(rounds)]
    base = {name: value for name, value in os.environ.items() if name not in WAIT_VARIABLES}
    children = [
        subprocess.Popen(command, env={**base, **env}, stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    times: list[float] = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode:
            raise RuntimeError(f"a benchmark process failed (exit {child.returncode})")
        report = json.loads(out.strip().splitlines()[-1])
        if report["wait_settings"] != env:
            raise RuntimeError(f"a process ran with {report['wait_settings']}, not {env}")
        times += report["times"]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        wait_settings = {name: os.environ[name] for name in WAIT_VARIABLES if name in os.environ}
        print(json.dumps({"wait_settings": wait_settings, "times": answer_times(args.rounds)}))
        return
    print(
        "| OpenMP setting | one engine alone (ms per answer) | two at once, each (ms per answer) |"
    )
    print("|---|---:|---:|")
    for name, env in SETTINGS.items():
        alone = run_processes(env, 1, args.rounds)
        paired = run_processes(env, 2, args.rounds)
        spans = [f"{min(t) * 1000:,.0f}-{max(t) * 1000:,.0f}" for t in (alone, paired)]
        print(f"| `{name}` | {spans[0]} | {spans[1]} |", flush=True)


if __name__ == "__main__":
    main()
