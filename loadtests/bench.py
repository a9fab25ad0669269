"""``make bench``: Ouro's benchmark report, measured side by side in one run.

    python -m loadtests.bench [--quick] [--scenarios a,b,...] [--base-model PATH] [--out DIR]
                              [--ingress haproxy|proxy]

Starts the local stack itself (``python -m serve`` on 127.0.0.1 with a fresh data dir in
a temporary folder; by default behind Ray Serve's HAProxy ingress as the chart deploys it,
run with its clients in a private network namespace, see ``loadtests.private_network``;
the base model comes from the default data dir's model cache, built once), registers 4
LoRA adapter versions in its MLflow store, runs the scenarios, stops everything (also on
Ctrl-C, SIGTERM or an error), and writes ``latest.json`` and ``bench.png`` into
``loadtests/results/``. Scenarios, in the order they run:

  serving_overhead  a greedy 32-token completion: HTTP + Serve vs. the engine in-process
  swap              production moves v1 -> v2 under load: failed requests, time to switch
  ttft              time to first token of a new request: idle vs. while 15 others decode
  multi_adapter     16 clients over 4 versions: Ouro vs. one-at-a-time with adapter reloads
  saturation        1, 4, 16, 64 clients: throughput, p50/p99, 429s, the knee
  locust            the project's locustfile at the knee for 2 minutes
  personal          100 personal adapters, 64 clients each with its own key, vs. shared
                    production alone, on a stack of its own; shared first, not
                    interleaved (``loadtests.bench_personal`` says why)

Compared systems run interleaved in the same run (A, B, B, A, ...) and are reported as
ratios of medians, because a shared machine's speed drifts. ``--quick`` runs every
scenario at a tiny size to check the harness (results go to ``loadtests/results/quick/``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import torch

from loadtests.bench_adapters import run_multi_adapter
from loadtests.bench_default_model import DefaultModelSizes, run_default_model
from loadtests.bench_locust import LocustRunError, run_locust
from loadtests.bench_overhead import concurrent_clients, corpus_questions, longest_answer_prompts
from loadtests.bench_overhead import single_client as overhead_single_client
from loadtests.bench_personal import PersonalSizes, run_personal
from loadtests.bench_report import (
    check_targets,
    headline,
    machine_facts,
    markdown,
    plot,
    write_json,
)
from loadtests.bench_saturation import run_saturation
from loadtests.bench_stack import (
    REPO_ROOT,
    StackError,
    match_replica_niceness,
    prepare_base_model,
    register_adapters,
    replica_threads,
    serve_process,
)
from loadtests.bench_swap import SwapTimeoutError, run_swap
from loadtests.bench_ttft import run_ttft
from loadtests.private_network import add_ingress_flag, current_ingress, rerun_for_ingress
from ouro.embedded import TINY_MODEL
from ouro.engine import GenerationEngine
from ouro.errors import OuroError
from ouro.names import ALIAS_PRODUCTION
from ouro.registry import AdapterRegistry
from ouro.settings import OuroSettings

logger = logging.getLogger("loadtests.bench")

SCENARIOS = (
    "serving_overhead",
    "swap",
    "ttft",
    "multi_adapter",
    "saturation",
    "locust",
    "personal",
    "default_model",
)
OWN_STACK_SCENARIOS = ("personal", "default_model")
"""Scenarios that start a stack of their own (the others share one)."""
RESULTS_DIR = REPO_ROOT / "loadtests" / "results"
JSON_NAME = "latest.json"
PLOT_NAME = "bench.png"
OVERHEAD_PROMPTS = 8
RESULT_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "OURO_LLM_NUM_CPUS")
"""Environment that changes the figures; written into the recorded command when set."""
DEFAULT_MODEL = OuroSettings.model_fields["base_model"].default
"""What ``make run`` serves (smollm2-135m): the "default_model" scenario's base model, whatever
``--base-model`` the other scenarios use."""
FALLBACK_KNEE = 16
"""Locust's user count when the saturation scenario did not run."""


@dataclass(frozen=True)
class BenchSizes:
    """How much each scenario does (``full`` fits in 15 minutes on 2 cores)."""

    max_tokens: int = 32
    """Tokens per answer in every scenario but the swap's background stream."""
    adapters: int = 4
    """Adapter versions registered (v1..vN)."""
    prompt_scan: int = 256
    """Corpus questions scanned for long greedy answers (serving overhead)."""
    overhead_warmup: int = 3
    overhead_pairs: int = 30
    """Engine/HTTP pairs at one client."""
    concurrent_clients: int = 16
    overhead_rounds: int = 4
    overhead_requests_per_client: int = 2
    swap_clients: int = 4
    swap_steady_s: float = 20.0
    swap_tail_s: float = 10.0
    swap_timeout_s: float = 180.0
    swap_max_tokens: int = 16
    ttft_background: int = 15
    ttft_probes: int = 20
    ttft_background_max_tokens: int = 64
    multi_clients: int = 16
    multi_rounds: int = 6
    multi_requests_per_client: int = 4
    saturation_levels: tuple[int, ...] = (1, 4, 16, 64)
    saturation_level_s: float = 30.0
    locust_s: int = 120

    @classmethod
    def quick(cls) -> BenchSizes:
        """Every scenario at a tiny size: checks the harness, measures nothing."""
        return cls(
            prompt_scan=32,
            overhead_warmup=1,
            overhead_pairs=2,
            overhead_rounds=1,
            overhead_requests_per_client=1,
            swap_steady_s=3.0,
            swap_tail_s=2.0,
            ttft_background=3,
            ttft_probes=2,
            multi_rounds=1,
            multi_requests_per_client=1,
            saturation_levels=(1, 4),
            saturation_level_s=3.0,
            locust_s=10,
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the harness")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--base-model",
        default=TINY_MODEL,
        help="default: the embedded ouro-tiny (built once), the model every recorded run "
        "used, so figures compare across runs; smollm2-135m or a path also work",
    )
    parser.add_argument("--out", type=Path, help="results folder (default: loadtests/results)")
    add_ingress_flag(parser)
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    args.scenarios = [name for name in SCENARIOS if name in chosen]
    if args.out is None:
        args.out = RESULTS_DIR / "quick" if args.quick else RESULTS_DIR
    return args


def _stop_on_sigterm() -> None:
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def run(args: argparse.Namespace) -> dict:
    sizes = BenchSizes.quick() if args.quick else BenchSizes()
    machine = machine_facts()
    started = time.monotonic()
    timings: dict[str, float] = {}
    scenarios: dict[str, dict] = {}
    errors: dict[str, str] = {}
    niceness = None

    def timed(name: str, step: Callable[[], dict | None]) -> dict | None:
        step_started = time.monotonic()
        logger.info("== %s", name)
        try:
            return step()
        finally:
            timings[name] = round(time.monotonic() - step_started, 1)

    model_dir = timed("base_model", lambda: prepare_base_model(args.base_model))
    with tempfile.TemporaryDirectory(prefix="ouro-bench-") as scratch:
        work = Path(scratch)
        settings = OuroSettings(data_dir=work / "data", base_model=str(model_dir))
        registry = AdapterRegistry.from_settings(settings)
        shared_stack = [name for name in args.scenarios if name not in OWN_STACK_SCENARIOS]
        if shared_stack:
            adapter_dirs = timed(
                "register_adapters",
                lambda: register_adapters(settings, model_dir, work / "adapters", sizes.adapters),
            )
            versions = sorted(adapter_dirs)
            registry.set_alias(ALIAS_PRODUCTION, versions[0])  # ouro -> v1 from the start
            serve_started = time.monotonic()
            with serve_process(settings, model_dir, args.out / "serve.log") as stack:
                timings["serve_ready"] = round(time.monotonic() - serve_started, 1)
                niceness = match_replica_niceness(stack)
                engine = GenerationEngine.from_settings(settings)
                torch.set_num_threads(replica_threads())
                questions = corpus_questions()
                long_prompts = timed(
                    "pick_prompts",
                    lambda: longest_answer_prompts(
                        engine, sizes.max_tokens, OVERHEAD_PROMPTS, sizes.prompt_scan
                    ),
                )
                steps: dict[str, Callable[[], dict]] = {
                    "serving_overhead": lambda: {
                        "prompt_completion_tokens": [tokens for _, tokens in long_prompts],
                        "single_client": overhead_single_client(
                            engine,
                            stack,
                            [messages for messages, _ in long_prompts],
                            pairs=sizes.overhead_pairs,
                            warmup=sizes.overhead_warmup,
                            max_tokens=sizes.max_tokens,
                        ),
                        "concurrent": concurrent_clients(
                            engine,
                            stack,
                            [messages for messages, _ in long_prompts],
                            clients=sizes.concurrent_clients,
                            rounds=sizes.overhead_rounds,
                            requests_per_client=sizes.overhead_requests_per_client,
                            max_tokens=sizes.max_tokens,
                        ),
                    },
                    "swap": lambda: run_swap(
                        stack,
                        registry,
                        questions,
                        to_version=versions[1],
                        clients=sizes.swap_clients,
                        steady_s=sizes.swap_steady_s,
                        tail_s=sizes.swap_tail_s,
                        timeout_s=sizes.swap_timeout_s,
                        max_tokens=sizes.swap_max_tokens,
                    ),
                    "ttft": lambda: run_ttft(
                        stack,
                        engine,
                        questions,
                        background=sizes.ttft_background,
                        probes=sizes.ttft_probes,
                        probe_max_tokens=sizes.max_tokens,
                        background_max_tokens=sizes.ttft_background_max_tokens,
                    ),
                    "multi_adapter": lambda: run_multi_adapter(
                        engine,
                        stack,
                        adapter_dirs,
                        questions,
                        clients=sizes.multi_clients,
                        rounds=sizes.multi_rounds,
                        requests_per_client=sizes.multi_requests_per_client,
                        max_tokens=sizes.max_tokens,
                    ),
                    "saturation": lambda: run_saturation(
                        stack,
                        questions,
                        levels=sizes.saturation_levels,
                        level_s=sizes.saturation_level_s,
                        max_tokens=sizes.max_tokens,
                    ),
                    "locust": lambda: run_locust(
                        stack,
                        scenarios.get("saturation", {}).get("knee_clients", FALLBACK_KNEE),
                        sizes.locust_s,
                        args.out,
                        sizes.max_tokens,
                    ),
                }
                for name in shared_stack:
                    try:
                        scenarios[name] = timed(name, steps[name])
                    except (httpx.HTTPError, OuroError, SwapTimeoutError, LocustRunError) as exc:
                        logger.error("scenario %s failed: %s", name, exc)
                        errors[name] = repr(exc)
        if "personal" in args.scenarios:
            personal_sizes = PersonalSizes.quick() if args.quick else PersonalSizes()
            try:
                scenarios["personal"] = timed(
                    "personal",
                    lambda: run_personal(model_dir, work / "personal", args.out, personal_sizes),
                )
            except (httpx.HTTPError, OuroError) as exc:
                logger.error("scenario personal failed: %s", exc)
                errors["personal"] = repr(exc)
        if "default_model" in args.scenarios:
            default_sizes = DefaultModelSizes.quick() if args.quick else DefaultModelSizes()
            try:
                default_model = timed(
                    "default_model_base", lambda: prepare_base_model(DEFAULT_MODEL)
                )
                scenarios["default_model"] = timed(
                    "default_model",
                    lambda: run_default_model(
                        default_model, work / "default-model", args.out, default_sizes
                    ),
                )
            except (httpx.HTTPError, OuroError) as exc:
                logger.error("scenario default_model failed: %s", exc)
                errors["default_model"] = repr(exc)
    figures = headline(scenarios)
    machine["load_average_at_end"] = list(os.getloadavg())
    return {
        "command": " ".join(
            [
                *(f"{name}={os.environ[name]}" for name in RESULT_ENV if name in os.environ),
                "python -m loadtests.bench",
                *sys.argv[1:],
            ]
        ),
        "make_target": "make bench",
        "quick": args.quick,
        "ingress": current_ingress(),
        "machine": machine,
        "base_model": Path(str(model_dir)).name,
        "torch_threads": replica_threads(),
        "niceness": niceness,
        "sizes": asdict(sizes),
        "personal_sizes": asdict(PersonalSizes.quick() if args.quick else PersonalSizes()),
        "default_model_sizes": asdict(
            DefaultModelSizes.quick() if args.quick else DefaultModelSizes()
        ),
        "headline": figures,
        "targets": check_targets(figures),
        "errors": errors,
        "timings_s": timings,
        "duration_s": round(time.monotonic() - started, 1),
        "scenarios": scenarios,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rerun_status = rerun_for_ingress(args.ingress, "loadtests.bench", argv)
    if rerun_status is not None:
        return rerun_status
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    _stop_on_sigterm()
    try:
        result = run(args)
    except KeyboardInterrupt:
        print("interrupted: the stack was stopped, no results written", file=sys.stderr)
        return 130
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    json_path = args.out / JSON_NAME
    plot_path = args.out / PLOT_NAME
    write_json(result, json_path)
    plot(result, plot_path)
    print()
    print(markdown(result))
    print()
    print(f"Written: {json_path} and {plot_path} ({result['duration_s']:.0f} s in all).")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
