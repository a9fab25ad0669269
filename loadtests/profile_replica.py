"""Where an LLM server replica's CPU goes per request: py-spy inside the replica under load.

``make bench`` says how much CPU each process of the stack spends per request; this says
what the LLM server replica (HTTP front and engine in one process) spends it on. It starts
``python -m serve`` on a fresh data dir (``loadtests.bench_stack``), runs closed-loop
non-streamed clients against ``ouro-base`` while ``py-spy record`` samples every thread of
the replica, and sorts each sample by the innermost frame of a known kind:

    python -m loadtests.profile_replica               # ouro-tiny, 16 clients, 30 s
    python -m loadtests.profile_replica --base-model smollm2-135m

Writes ``loadtests/results/replica_profile.json``: samples and CPU milliseconds per request
by part (the model's forward pass, the rest of the engine, the HTTP front, Ray Serve's
request handling, asyncio, ...), and the heaviest functions. Idle threads are not sampled
(py-spy's default), so the parts add up to the replica's CPU time.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

from loadtests.bench_load import run_prompt_rotation
from loadtests.bench_overhead import corpus_questions
from loadtests.bench_report import write_json
from loadtests.bench_stack import REPO_ROOT, prepare_base_model, serve_process
from loadtests.private_network import add_ingress_flag, current_ingress, rerun_for_ingress
from ouro.embedded import TINY_MODEL
from ouro.names import BASE_MODEL_NAME
from ouro.settings import OuroSettings

logger = logging.getLogger("loadtests.profile_replica")

REPLICA_NAME = "ray::ServeReplica:ouro:LLMServer"
SAMPLE_RATE_HZ = 250
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # The first part whose marker appears in a frame, innermost frame first, takes the sample.
    (
        "model forward (torch)",
        ("torch/nn/", "transformers/models/", "torch/_", "ouro/engine/lora_bank"),
    ),
    ("engine scheduling and sampling", ("ouro/engine/",)),
    ("correction router", ("ouro/routing", "serve/request_router", "onnxruntime/")),
    (
        "HTTP front: Ouro's code",
        (
            "serve/serving_",
            "serve/ingress",
            "serve/routes",
            "serve/auth",
            "serve/protocol",
            "serve/middleware",
            "serve/metrics",
            "serve/llm_server",
            "serve/tool_calls",
            "serve/errors",
        ),
    ),
    (
        "HTTP front: FastAPI, Starlette, pydantic",
        ("fastapi/", "starlette/", "pydantic", "uvicorn/", "h11/", "httptools"),
    ),
    ("Ray Serve request handling", ("ray/serve/",)),
    (
        "Ray core (actor calls, gRPC, object store)",
        ("ray/_private", "ray/_raylet", "ray/util", "grpc"),
    ),
    ("logging", ("logging/",)),
    ("asyncio event loop", ("asyncio/", "uvloop")),
)
OTHER = "other: threading and thread-pool frames running C code"


def part_of(stack: list[str]) -> str:
    """The part a sample belongs to: the innermost frame that names one."""
    for frame in reversed(stack):
        for name, markers in PARTS:
            if any(marker in frame for marker in markers):
                return name
    return OTHER


def read_collapsed(path: Path) -> Counter[tuple[str, ...]]:
    """py-spy's ``--format raw`` output: ``frame;frame;... count`` per line, outermost first."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks[tuple(frames.split(";"))] += int(count)
    return stacks


def summarize(stacks: Counter[tuple[str, ...]], requests: int, duration_s: float) -> dict:
    """Samples and CPU ms per request by part, and the heaviest innermost functions."""
    by_part: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    for stack, count in stacks.items():
        by_part[part_of(list(stack))] += count
        by_function[stack[-1]] += count
    total = sum(by_part.values())
    ms_per_sample = 1000.0 / SAMPLE_RATE_HZ

    def per_request(samples: int) -> float:
        return samples * ms_per_sample / max(requests, 1)

    return {
        "samples": total,
        "cpu_ms_per_request": per_request(total),
        "parts": [
            {
                "part": part,
                "share": samples / max(total, 1),
                "cpu_ms_per_request": per_request(samples),
            }
            for part, samples in by_part.most_common()
        ],
        "top_functions": [
            {"function": function, "share": samples / max(total, 1)}
            for function, samples in by_function.most_common(25)
        ],
        "requests": requests,
        "duration_s": duration_s,
    }


def py_spy() -> str:
    """py-spy beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed (it is in requirements-test.txt)")
    return found


def replica_pid(root_pid: int) -> int:
    """The LLM server replica's process among ``python -m serve``'s descendants."""
    for process in psutil.Process(root_pid).children(recursive=True):
        try:
            if process.name().startswith(REPLICA_NAME):
                return process.pid
        except psutil.NoSuchProcess:
            continue
    raise RuntimeError(f"no {REPLICA_NAME} process under pid {root_pid}")


def profile(
    base_model: str,
    clients: int,
    duration_s: float,
    max_tokens: int,
    out: Path,
    raw_out: Path | None = None,
) -> dict:
    model_dir = prepare_base_model(base_model)
    with tempfile.TemporaryDirectory(prefix="ouro-profile-") as scratch:
        work = Path(scratch)
        settings = OuroSettings(data_dir=work / "data", base_model=str(model_dir))
        with serve_process(settings, model_dir, work / "serve.log") as stack:
            pid = replica_pid(stack.process.pid)
            prompts = corpus_questions()[:64]

            def load(**limit):
                return run_prompt_rotation(
                    stack, BASE_MODEL_NAME, prompts, clients, max_tokens, **limit
                )

            load(requests_per_client=2)  # warm-up: the first requests compile and allocate
            raw = work / "replica.txt"
            spy = subprocess.Popen(
                [
                    py_spy(),
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(SAMPLE_RATE_HZ),
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                    "--duration",
                    str(int(duration_s)),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(1.0)  # py-spy attaches
            summary = load(duration_s=duration_s - 2.0)
            _, errors = spy.communicate(timeout=duration_s + 60)
            if spy.returncode != 0 or not raw.exists():
                raise RuntimeError(f"py-spy failed ({spy.returncode}): {errors[-2000:]}")
            stacks = read_collapsed(raw)
            if raw_out is not None:
                shutil.copyfile(raw, raw_out)
    result = {
        "command": "python -m loadtests.profile_replica " + " ".join(sys.argv[1:]),
        "base_model": Path(str(model_dir)).name,
        "ingress": current_ingress(),
        "clients": clients,
        "max_tokens": max_tokens,
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "tokens_per_s": summary.tokens_per_s,
        "failed_requests": summary.failed,
        **summarize(stacks, summary.succeeded, duration_s),
    }
    write_json(result, out)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.profile_replica", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--base-model", default=TINY_MODEL)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "loadtests" / "results" / "replica_profile.json"
    )
    parser.add_argument(
        "--raw-out", type=Path, help="also keep py-spy's collapsed stacks here (flame graphs)"
    )
    add_ingress_flag(parser)
    args = parser.parse_args(argv)
    rerun_status = rerun_for_ingress(args.ingress, "loadtests.profile_replica", argv)
    if rerun_status is not None:
        return rerun_status
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    result = profile(
        args.base_model, args.clients, args.duration_s, args.max_tokens, args.out, args.raw_out
    )
    print(
        f"{result['cpu_ms_per_request']:.1f} ms of replica CPU per request "
        f"({result['requests']} requests, {result['tokens_per_s']:.0f} tokens/s):"
    )
    for part in result["parts"]:
        print(f"  {part['part']:<45} {part['cpu_ms_per_request']:6.2f} ms  {part['share']:6.1%}")
    print(f"Written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
