"""Scenario "personal": many personal adapters over HTTP vs. shared production alone.

    python -m loadtests.bench_personal [--quick] [--scopes 100] [--clients 64]
        [--max-adapters 64] [--phase-s 30] [--base-model PATH] [--out DIR]

(also ``python -m loadtests.bench --scenarios personal``). It registers one shared
production adapter and ``scopes`` personal ones (random LoRA weights, one registered model
per scope, logged and registered by the registry code the training job uses), starts
``python -m serve`` on 127.0.0.1 with ``OURO_PERSONAL_ADAPTERS=true`` and one named API
key per scope, and runs ``clients`` closed-loop clients, client i always with scope i's
key, in phases of ``phase_s`` seconds:

- *shared*: every client asks ``ouro-shared`` (shared production, the same adapter for all);
- *personal*: every client asks ``ouro``, answered by its own scope's adapter.

The shared phases run first, while no personal adapter is loaded (the engine's LoRA bank
applies every loaded adapter's weights to each batch, so loaded adapters cost every
request); then each client sends one request to ``ouro`` with its adapter cold (the cold
start: 64 adapters loaded at once, measured apart); then the personal phases. Each phase's
request count is bounded as well as its time. The phases are not interleaved, so a shared
machine's drift between them counts in the ratio: read it with the load average.
Reported: throughput and p50/p99 of both, ``personal_adapter_slowdown`` (p50 ratio),
adapter loads and evictions per minute of the personal phases (the LLM replica's
``ouro_adapter_loads_total`` / ``ouro_adapter_evictions_total`` from ``/metrics``), the
LLM replica's peak memory, the added latency of a cold adapter (a request for an idle
scope's adapter, then the same request warm), and what each scope costs in the MLflow
store (rows and bytes, counted in its sqlite database) and on disk (adapter size).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoConfig

from loadtests.bench_engine import make_adapters
from loadtests.bench_load import (
    LoadSummary,
    RequestRecord,
    async_client,
    chat_body,
    closed_loop,
    send_chat,
)
from loadtests.bench_overhead import corpus_questions
from loadtests.bench_report import (
    check_targets,
    headline,
    machine_facts,
    personal_headline,
    personal_table,
    write_json,
)
from loadtests.bench_stack import (
    REPO_ROOT,
    PeakMemory,
    ServeProcess,
    StackError,
    prepare_base_model,
    register_adapter_dir,
    serve_process,
)
from ouro.embedded import TINY_MODEL
from ouro.names import ALIAS_PRODUCTION, SERVED_MODEL_NAME, SHARED_MODEL_NAME
from ouro.registry import AdapterRegistry, PersonalRegistries, sqlite_path
from ouro.settings import OuroSettings

logger = logging.getLogger(__name__)

LORA_RANK = 16
"""``loadtests.bench_engine.random_lora``: rank 16 on all seven projections."""
LORA_PROJECTIONS = 7
METRIC_LOADS = "ouro_adapter_loads_total"
METRIC_EVICTIONS = "ouro_adapter_evictions_total"
REGISTRY_TABLES = (
    "registered_models",
    "registered_model_tags",
    "registered_model_aliases",
    "model_versions",
    "model_version_tags",
    "runs",
    "tags",
    "params",
    "metrics",
    "latest_metrics",
)
"""MLflow's sqlite tables a registered adapter version adds rows to."""

# Shapes for the on-paper storage figures: (hidden, intermediate, layers, heads, kv heads).
PAPER_SHAPES = {
    "smollm2-135m": (576, 1536, 30, 9, 3),
    "Llama-3.2-3B": (3072, 8192, 28, 24, 8),
}


@dataclass(frozen=True)
class PersonalSizes:
    """How much the scenario does (the defaults are the issue's: 100 scopes, 64 clients)."""

    scopes: int = 100
    clients: int = 64
    max_adapters: int = 64
    """The LLM replica's multiplexed LRU size (``OURO_MAX_ADAPTERS_PER_REPLICA``)."""
    phase_s: float = 30.0
    phases: int = 4
    """Shared and personal phases in all, half of each (shared first)."""
    requests_per_client: int = 40
    """At most this many requests per client and phase (whichever of it and phase_s first)."""
    max_tokens: int = 32
    cold_probes: int = 8
    """Idle scopes asked once cold, then once warm, for the adapter load time."""

    @classmethod
    def quick(cls) -> PersonalSizes:
        return cls(
            scopes=3,
            clients=2,
            max_adapters=2,
            phase_s=3.0,
            phases=2,
            requests_per_client=3,
            max_tokens=4,
            cold_probes=1,
        )


def scope_name(index: int) -> str:
    return f"bench-{index:03d}"


def lora_parameters(shape: tuple[int, int, int, int, int], rank: int = LORA_RANK) -> int:
    """LoRA parameters of rank ``rank`` on q, k, v, o, gate, up and down: r·(in + out) each."""
    hidden, intermediate, layers, heads, kv_heads = shape
    kv = hidden // heads * kv_heads
    per_layer = rank * (
        2 * (hidden + hidden)  # q, o
        + 2 * (hidden + kv)  # k, v
        + 3 * (hidden + intermediate)  # gate, up, down
    )
    return layers * per_layer


def model_shape(model_dir: Path | str) -> tuple[int, int, int, int, int]:
    config = AutoConfig.from_pretrained(model_dir)
    return (
        config.hidden_size,
        config.intermediate_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.num_key_value_heads,
    )


def registry_rows(tracking_uri: str) -> dict[str, int]:
    """Rows per MLflow table of a sqlite store (the registry's cost, counted not guessed)."""
    path = sqlite_path(tracking_uri)
    if path is None:
        raise StackError(f"the registry's size is counted in a sqlite store, not {tracking_uri}")
    with sqlite3.connect(path) as db:
        return {
            table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608
            for table in REGISTRY_TABLES
        }


def _sqlite_bytes(tracking_uri: str) -> int:
    path = sqlite_path(tracking_uri)
    return path.stat().st_size if path is not None else 0


def register_scopes(
    settings: OuroSettings, model_dir: Path | str, adapters_dir: Path, scopes: int
) -> dict[str, Path]:
    """One shared production adapter and one personal production adapter per scope;
    returns scope -> adapter dir (the shared one under ``SHARED_MODEL_NAME``)."""
    made = list(make_adapters(str(model_dir), adapters_dir, scopes + 1).values())
    shared = AdapterRegistry.from_settings(settings)
    version = register_adapter_dir(shared, settings, model_dir, made[0], "bench-shared")
    shared.set_alias(ALIAS_PRODUCTION, version)
    personal = PersonalRegistries.from_settings(settings)
    dirs = {SHARED_MODEL_NAME: made[0]}
    for index, path in enumerate(made[1:]):
        registry = personal.for_scope(scope_name(index))
        version = register_adapter_dir(
            registry, settings, model_dir, path, f"bench-{scope_name(index)}"
        )
        registry.set_alias(ALIAS_PRODUCTION, version)
        dirs[scope_name(index)] = path
    logger.info("registered shared production and %d personal adapters", scopes)
    return dirs


def adapter_counters(stack: ServeProcess) -> dict[str, float]:
    """The LLM replicas' adapter loads and evictions so far, summed, from ``/metrics``."""
    response = httpx.get(
        f"{stack.base_url}/metrics",
        headers={"Authorization": f"Bearer {stack.admin_key}"},
        timeout=60,
    )
    response.raise_for_status()
    totals = {METRIC_LOADS: 0.0, METRIC_EVICTIONS: 0.0}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


async def _phase(
    stack: ServeProcess,
    keys: list[str],
    model: str,
    prompts: list[list[dict]],
    sizes: PersonalSizes,
) -> list[RequestRecord]:
    """One closed-loop client per key (client i sends with ``keys[i]``) for one phase."""

    async def one(index: int) -> list[RequestRecord]:
        def body(_client: int, request: int) -> dict:
            messages = prompts[(request * len(keys) + index) % len(prompts)]
            return chat_body(messages, model, sizes.max_tokens)

        async with async_client(stack.base_url, keys[index], 1) as client:
            found = await closed_loop(
                client,
                body,
                1,
                requests_per_client=sizes.requests_per_client,
                duration_s=sizes.phase_s,
            )
        return [replace(record, client=index) for record in found]

    per_client = await asyncio.gather(*(one(index) for index in range(len(keys))))
    return [record for records in per_client for record in records]


def settled_counters(stack: ServeProcess, settle_s: float) -> dict[str, float]:
    """``adapter_counters`` once the LLM replica has reported what it did so far.

    Replicas report to the coordinator at each registry poll, so ``/metrics`` lags by up
    to a poll interval: wait that long before reading.
    """
    time.sleep(settle_s)
    return adapter_counters(stack)


def _run_phase(
    stack: ServeProcess,
    kind: str,
    keys: list[str],
    prompts: list[list[dict]],
    sizes: PersonalSizes,
    before: dict[str, float],
    settle_s: float,
) -> tuple[dict, dict[str, float]]:
    """One phase ("shared": ``ouro-shared``; else ``ouro``), with the adapter counters'
    increase over it; also the counters after it (the next phase's ``before``)."""
    model = SHARED_MODEL_NAME if kind == "shared" else SERVED_MODEL_NAME
    phase_started = time.perf_counter()
    records = asyncio.run(_phase(stack, keys, model, prompts, sizes))
    elapsed = time.perf_counter() - phase_started
    after = settled_counters(stack, settle_s)
    summary = LoadSummary.of(records, elapsed)
    phase = {
        "kind": kind,
        "model": model,
        **summary.to_dict(),
        "adapter_loads": after[METRIC_LOADS] - before[METRIC_LOADS],
        "adapter_evictions": after[METRIC_EVICTIONS] - before[METRIC_EVICTIONS],
    }
    logger.info(
        "%s phase: %.1f req/s, p50 %.3f s, p99 %.3f s, %d failed, %d loads",
        kind,
        summary.requests_per_s,
        summary.latency.p50 or 0.0,
        summary.latency.p99 or 0.0,
        summary.failed,
        phase["adapter_loads"],
    )
    return phase, after


async def _cold_probes(
    stack: ServeProcess, keys: dict[str, str], prompt: list[dict], max_tokens: int
) -> list[dict]:
    """Each idle scope asks once (its adapter cold) and again (warm): the load's cost."""
    probes = []
    for scope, key in keys.items():
        async with async_client(stack.base_url, key, 1) as client:
            body = chat_body(prompt, SERVED_MODEL_NAME, max_tokens)
            cold = await send_chat(client, body, 0)
            warm = await send_chat(client, body, 0)
        if not (cold.ok and warm.ok):
            raise StackError(f"cold probe of {scope} failed: {cold.error or warm.error}")
        probes.append(
            {
                "scope": scope,
                "model": cold.model,
                "cold_s": cold.latency,
                "warm_s": warm.latency,
                "load_s": cold.latency - warm.latency,
            }
        )
    return probes


def run_personal(
    model_dir: Path | str, work_dir: Path, out_dir: Path, sizes: PersonalSizes
) -> dict:
    """The scenario on a stack of its own (see the module docstring); the result dict."""
    if sizes.scopes < sizes.clients + sizes.cold_probes:
        raise ValueError("scopes must cover the clients and the idle scopes the probes ask")
    work_dir.mkdir(parents=True, exist_ok=True)
    settings = OuroSettings(
        data_dir=work_dir / "personal-data", base_model=str(model_dir), personal_adapters=True
    )
    # A store with the shared adapter alone: its rows and bytes are what scopes do not add.
    shared_only = OuroSettings(data_dir=work_dir / "shared-only", base_model=str(model_dir))
    register_scopes(shared_only, model_dir, work_dir / "shared-only-adapters", 0)
    started = time.monotonic()
    adapter_dirs = register_scopes(settings, model_dir, work_dir / "adapters", sizes.scopes)
    register_s = time.monotonic() - started
    store = {
        name: (registry_rows(uri), _sqlite_bytes(uri))
        for name, uri in (("before", shared_only.tracking_uri), ("after", settings.tracking_uri))
    }
    adapter_bytes = sum(
        f.stat().st_size for f in adapter_dirs[scope_name(0)].rglob("*") if f.is_file()
    )

    keys = {scope_name(i): "sk-bench-" + secrets.token_urlsafe(12) for i in range(sizes.scopes)}
    client_keys = [keys[scope_name(i)] for i in range(sizes.clients)]
    idle = {scope_name(i): keys[scope_name(i)] for i in range(sizes.clients, sizes.scopes)}
    prompts = corpus_questions()
    extra_env = {
        "OURO_PERSONAL_ADAPTERS": "true",
        "OURO_MAX_ADAPTERS_PER_REPLICA": str(sizes.max_adapters),
    }
    phases: list[dict] = []
    with serve_process(
        settings, model_dir, out_dir / "serve-personal.log", named_keys=keys, extra_env=extra_env
    ) as stack:
        settle_s = settings.registry_poll_interval_s + 2.0
        with PeakMemory(stack) as memory:
            counters = settled_counters(stack, settle_s)
            # Shared production alone first: the engine applies every loaded adapter's
            # weights to the batch, so once personal adapters are in, the shared load
            # would no longer be "shared production only".
            for _ in range(sizes.phases // 2):
                phase, counters = _run_phase(
                    stack, "shared", client_keys, prompts, sizes, counters, settle_s
                )
                phases.append(phase)
            # Cold start: each client's first request loads its scope's adapter. Measured
            # apart, so the personal phases are a steady load like the shared ones.
            cold_start, counters = _run_phase(
                stack,
                "cold_start",
                client_keys,
                prompts,
                replace(sizes, requests_per_client=1),
                counters,
                settle_s,
            )
            for _ in range(sizes.phases - sizes.phases // 2):
                phase, counters = _run_phase(
                    stack, "personal", client_keys, prompts, sizes, counters, settle_s
                )
                phases.append(phase)
            probe_keys = dict(list(idle.items())[: sizes.cold_probes])
            probes = asyncio.run(_cold_probes(stack, probe_keys, prompts[0], sizes.max_tokens))
    return summarise(
        sizes,
        cold_start,
        phases,
        probes,
        memory.peak_mib,
        store,
        adapter_bytes,
        model_shape(model_dir),
        register_s,
    )


def _pooled(phases: list[dict], kind: str) -> dict:
    """Throughput and latency of all phases of one kind (medians of the phases' figures)."""
    chosen = [phase for phase in phases if phase["kind"] == kind]
    if not chosen:
        return {}

    def median(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    minutes = sum(phase["duration_s"] for phase in chosen) / 60
    return {
        "phases": len(chosen),
        "requests": sum(phase["requests"] for phase in chosen),
        "failed": sum(phase["failed"] for phase in chosen),
        "requests_per_s": median([phase["requests_per_s"] for phase in chosen]),
        "tokens_per_s": median([phase["tokens_per_s"] for phase in chosen]),
        "p50_s": median([phase["latency"]["p50"] for phase in chosen]),
        "p99_s": median([phase["latency"]["p99"] for phase in chosen]),
        "adapter_loads_per_min": sum(p["adapter_loads"] for p in chosen) / minutes,
        "adapter_evictions_per_min": sum(p["adapter_evictions"] for p in chosen) / minutes,
    }


def summarise(
    sizes: PersonalSizes,
    cold_start: dict,
    phases: list[dict],
    probes: list[dict],
    peak_mib: float,
    store: dict[str, tuple[dict[str, int], int]],
    adapter_bytes: int,
    shape: tuple[int, int, int, int, int],
    register_s: float,
) -> dict:
    """The scenario's result: both loads, their ratio, and the per-scope costs."""
    shared, personal = _pooled(phases, "shared"), _pooled(phases, "personal")
    slowdown = (
        personal["p50_s"] / shared["p50_s"]
        if personal.get("p50_s") and shared.get("p50_s")
        else None
    )
    (rows_before, bytes_before), (rows_after, bytes_after) = store["before"], store["after"]
    rows_per_scope = {
        table: (rows_after[table] - rows_before[table]) / sizes.scopes for table in rows_after
    }
    paper = {
        name: {
            "lora_parameters": lora_parameters(paper_shape),
            "fp32_mb": lora_parameters(paper_shape) * 4 / 1e6,
            "fp16_mb": lora_parameters(paper_shape) * 2 / 1e6,
        }
        for name, paper_shape in {"ouro-tiny (this run)": shape, **PAPER_SHAPES}.items()
    }
    load_times = [probe["load_s"] for probe in probes]
    return {
        "sizes": asdict(sizes),
        "personal_adapter_slowdown": slowdown,
        "shared": shared,
        "personal": personal,
        "cold_start": cold_start,
        "phases": phases,
        "llm_replica_peak_mib": peak_mib,
        "cold_probes": probes,
        "adapter_load_s_median": statistics.median(load_times) if load_times else None,
        "register_s": register_s,
        "registry": {
            "rows_per_scope": rows_per_scope,
            "rows_per_scope_total": sum(rows_per_scope.values()),
            "sqlite_bytes": bytes_after,
            "sqlite_bytes_per_scope": (bytes_after - bytes_before) / sizes.scopes,
        },
        "adapter_bytes_on_disk": adapter_bytes,
        "adapter_shapes": paper,
        "scopes_with_adapter": sizes.scopes,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_personal", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the harness")
    defaults = PersonalSizes()
    for name in ("scopes", "clients", "max_adapters", "phases", "requests_per_client"):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, help=f"default {getattr(defaults, name)}"
        )
    parser.add_argument("--phase-s", type=float, help=f"default {defaults.phase_s}")
    parser.add_argument("--base-model", default=TINY_MODEL, help="default: ouro-tiny")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "loadtests" / "results",
        help="folder of personal.json and the server log",
    )
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> PersonalSizes:
    base = PersonalSizes.quick() if args.quick else PersonalSizes()
    chosen = {
        name: getattr(args, name)
        for name in (
            "scopes",
            "clients",
            "max_adapters",
            "phases",
            "requests_per_client",
            "phase_s",
        )
        if getattr(args, name) is not None
    }
    return PersonalSizes(**{**asdict(base), **chosen})


def merge_into_latest(result: dict, latest: Path) -> None:
    """Put the scenario into ``make bench``'s results file (when there is one) as its
    "personal" scenario, with its own command and machine facts, and recompute the headline."""
    if not latest.exists():
        return
    report = json.loads(latest.read_text(encoding="utf-8"))
    report["scenarios"]["personal"] = result
    report["headline"] = headline(report["scenarios"])
    report["targets"] = check_targets(report["headline"])
    write_json(report, latest)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    sizes = sizes_from(args)
    machine = machine_facts()
    model_dir = prepare_base_model(args.base_model)
    try:
        with tempfile.TemporaryDirectory(prefix="ouro-bench-personal-") as scratch:
            result = run_personal(model_dir, Path(scratch), args.out, sizes)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result["headline"] = personal_headline(result)
    result["command"] = " ".join(["python -m loadtests.bench_personal", *(argv or sys.argv[1:])])
    machine["load_average_at_end"] = list(os.getloadavg())
    result["machine"] = machine
    path = args.out / "personal.json"
    write_json(result, path)
    if not args.quick:
        merge_into_latest(result, args.out / "latest.json")
    print("\n".join(personal_table(result)))
    print(f"Written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
