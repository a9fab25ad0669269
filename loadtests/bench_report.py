"""The benchmark's outputs: machine facts, headline figures, ``latest.json``, the Markdown
table and the PNG plot."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import psutil

from loadtests.bench_stack import REPO_ROOT

PACKAGES = ("torch", "transformers", "peft", "ray", "mlflow", "locust", "httpx")

TARGETS = {
    "serving_overhead_ratio": ("<=", 1.15),
    "multi_adapter_speedup": (">=", 5.0),
    "http_efficiency": (">=", 0.8),
    "ttft_under_load_ratio": ("<=", 2.0),
    "swap_failed_requests": ("<=", 0),
    "locust_failures": ("<=", 0),
    "personal_adapter_slowdown": ("<=", 1.25),
    "http_efficiency_smollm2": (">=", 0.9),
}
"""Issue targets, checked against the headline figures of the same run."""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def machine_facts() -> dict:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "load_average_at_start": list(os.getloadavg()),
        # OpenMP's spin-waiting makes torch far slower on cores shared with other work.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        **git_commit(),
    }


def headline(scenarios: dict) -> dict:
    """The issue's headline figures, from whichever scenarios ran."""
    figures: dict = {}
    if "serving_overhead" in scenarios:
        overhead = scenarios["serving_overhead"]
        figures["serving_overhead_ratio"] = overhead["single_client"]["ratio"]
        breakdown = overhead["single_client"]["breakdown_s"]
        figures["serving_fixed_cost_ms"] = 1000 * breakdown["fixed_overhead_per_request"]
        figures["http_efficiency"] = overhead["concurrent"]["http_over_engine_throughput"]
    if "ttft" in scenarios:
        figures["ttft_under_load_ratio"] = scenarios["ttft"]["ttft_under_load_ratio"]
        figures["engine_ttft_under_load_ratio"] = scenarios["ttft"]["engine_ttft_under_load_ratio"]
    if "multi_adapter" in scenarios:
        figures["multi_adapter_speedup"] = scenarios["multi_adapter"]["speedup"]
    if "swap" in scenarios:
        figures["swap_failed_requests"] = scenarios["swap"]["swap_failed_requests"]
        figures["swap_seconds"] = scenarios["swap"]["swap_seconds"]
    if "saturation" in scenarios:
        figures["knee_clients"] = scenarios["saturation"]["knee_clients"]
        figures["llm_replica_peak_mib"] = max(
            level["llm_replica_peak_mib"] for level in scenarios["saturation"]["levels"]
        )
    if "locust" in scenarios:
        figures["locust_failures"] = scenarios["locust"]["failures"]
    if "personal" in scenarios:
        figures.update(personal_headline(scenarios["personal"]))
    if "default_model" in scenarios:
        figures["http_efficiency_smollm2"] = scenarios["default_model"]["http_efficiency"]
    return figures


def personal_headline(personal: dict) -> dict:
    """The headline figures of the "personal" scenario (``loadtests.bench_personal``)."""
    return {
        "personal_adapter_slowdown": personal["personal_adapter_slowdown"],
        "personal_p50_s": personal["personal"].get("p50_s"),
        "personal_p99_s": personal["personal"].get("p99_s"),
        "personal_tokens_per_s": personal["personal"].get("tokens_per_s"),
        "shared_p50_s": personal["shared"].get("p50_s"),
        "shared_p99_s": personal["shared"].get("p99_s"),
        "shared_tokens_per_s": personal["shared"].get("tokens_per_s"),
        "adapter_loads_per_min": personal["personal"].get("adapter_loads_per_min"),
        "adapter_evictions_per_min": personal["personal"].get("adapter_evictions_per_min"),
        "personal_llm_replica_peak_mib": personal["llm_replica_peak_mib"],
        "adapter_load_s": personal["adapter_load_s_median"],
        "personal_cold_start_p50_s": personal["cold_start"]["latency"]["p50"],
    }


def check_targets(figures: dict) -> dict:
    checked = {}
    for name, (op, bound) in TARGETS.items():
        if name in figures:
            value = figures[name]
            met = value <= bound if op == "<=" else value >= bound
            checked[name] = {"target": f"{op} {bound:g}", "value": value, "met": met}
    return checked


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(result: dict) -> str:
    """Headline table, then one small table per scenario that ran."""
    figures = result["headline"]
    targets = result["targets"]
    scenarios = result["scenarios"]
    lines = ["| figure | value | target | met |", "|---|---:|---:|:---:|"]
    for name, value in figures.items():
        target = targets.get(name)
        met = "-" if target is None else ("yes" if target["met"] else "**no**")
        lines.append(
            f"| `{name}` | {_fmt(value)} | {target['target'] if target else '-'} | {met} |"
        )

    if "serving_overhead" in scenarios:
        one = scenarios["serving_overhead"]["single_client"]
        many = scenarios["serving_overhead"]["concurrent"]
        lines += [
            "",
            f"Serving overhead, `ouro-base`, greedy, max_tokens={one['max_tokens']} "
            f"(median answer {_fmt(one['completion_tokens_median'], 0)} tokens), "
            f"ingress: {result['ingress']}:",
            "",
            "| | engine in-process | HTTP + Serve | ratio |",
            "|---|---:|---:|---:|",
            f"| 1 client, median latency (s) | {_fmt(one['engine_latency_s']['p50'], 3)} "
            f"| {_fmt(one['http_latency_s']['p50'], 3)} | {_fmt(one['ratio'])} |",
            f"| 1 client, median s/token | {_fmt(one['engine_s_per_token_median'], 4)} "
            f"| {_fmt(one['http_s_per_token_median'], 4)} | {_fmt(one['per_token_ratio'])} |",
            f"| {many['clients']} clients, tokens/s (engine: one batch) "
            f"| {_fmt(many['engine_tokens_per_s'], 1)} | {_fmt(many['http_tokens_per_s'], 1)} "
            f"| {_fmt(many['http_over_engine_throughput'])} |",
        ]
        split = one.get("breakdown_s")
        if split:
            lines += [
                "",
                f"Where it goes: {split['fixed_overhead_per_request'] * 1000:.1f} ms fixed per "
                f"request (a 1-token answer over HTTP minus in-process; `GET /healthz` through "
                f"the ingress alone: {split['healthz_round_trip'] * 1000:.1f} ms), and "
                f"{split['http_per_extra_token'] * 1000:.2f} vs "
                f"{split['engine_per_extra_token'] * 1000:.2f} ms per further token.",
            ]
        cpu = many.get("cpu_ms_per_request")
        if cpu:
            parts = ", ".join(
                f"{name} {ms:.1f}" for name, ms in list(cpu["serve_by_process"].items())[:5]
            )
            lines += [
                "",
                f"CPU per request at {many['clients']} clients: {cpu['engine_in_process']:.1f} ms "
                f"in the engine in-process; {cpu['serve_total']:.1f} ms in the Serve stack's "
                f"processes ({parts}) plus {cpu['http_client']:.1f} ms in the HTTP client.",
            ]
    if "default_model" in scenarios:
        default = scenarios["default_model"]
        lines += [
            "",
            f"The default model ({default['base_model']}), `ouro-base`, greedy, "
            f"max_tokens={default['max_tokens']}: HTTP vs the engine in-process (one batch):",
            "",
            "| clients | HTTP tokens/s | engine tokens/s | HTTP ÷ engine "
            "| HTTP p50 (s) | HTTP p99 (s) | engine p50 (s) | engine p99 (s) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for level in default["levels"]:
            lines.append(
                f"| {level['clients']} | {_fmt(level['http_tokens_per_s'], 1)} "
                f"| {_fmt(level['engine_tokens_per_s'], 1)} | {_fmt(level['http_over_engine'])} "
                f"| {_fmt(level['http_p50_s'], 3)} | {_fmt(level['http_p99_s'], 3)} "
                f"| {_fmt(level['engine_p50_s'], 3)} | {_fmt(level['engine_p99_s'], 3)} |"
            )
    if "multi_adapter" in scenarios:
        multi = scenarios["multi_adapter"]
        lines += [
            "",
            f"Multi-adapter, {multi['clients']} clients over {len(multi['adapter_versions'])} "
            f"versions, max_tokens={multi['max_tokens']}:",
            "",
            "| | original way (in-process) | Ouro over HTTP | speed-up |",
            "|---|---:|---:|---:|",
            f"| tokens/s | {_fmt(multi['original_tokens_per_s'], 1)} "
            f"| {_fmt(multi['ouro_tokens_per_s'], 1)} | {_fmt(multi['speedup'])}x |",
            f"| requests/s | {_fmt(multi['original_requests_per_s'])} "
            f"| {_fmt(multi['ouro_requests_per_s'])} | |",
            f"| tokens/s, Ouro's engine in-process (mixed batches, no server) "
            f"| {_fmt(multi['original_tokens_per_s'], 1)} "
            f"| {_fmt(multi['engine_in_process_tokens_per_s'], 1)} "
            f"| {_fmt(multi['engine_in_process_speedup'])}x |",
        ]
    if "saturation" in scenarios:
        saturation = scenarios["saturation"]
        lines += [
            "",
            f"Saturation, `ouro`, {saturation['level_s']:g} s per level, "
            f"knee at {saturation['knee_clients']} clients:",
            "",
            "| clients | requests/s | tokens/s | p50 (s) | p99 (s) | 429 | other failures "
            "| LLM replica peak RSS (MiB) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for level in saturation["levels"]:
            lines.append(
                f"| {level['clients']} | {_fmt(level['requests_per_s'])} "
                f"| {_fmt(level['tokens_per_s'], 1)} | {_fmt(level['latency']['p50'], 3)} "
                f"| {_fmt(level['latency']['p99'], 3)} | {level['rejected_429']} "
                f"| {level['other_failures']} | {_fmt(level.get('llm_replica_peak_mib'), 0)} |"
            )
    if "ttft" in scenarios:
        ttft = scenarios["ttft"]
        lines += [
            "",
            f"Time to first token (streamed, `ouro`): p50 {_fmt(ttft['idle_ttft_p50_s'], 3)} s "
            f"on an idle server, {_fmt(ttft['loaded_ttft_p50_s'], 3)} s while "
            f"{ttft['background_clients']} other clients decode "
            f"(ratio {_fmt(ttft['ttft_under_load_ratio'])}, {ttft['probes']} probes each); "
            f"the engine in-process: {_fmt(ttft['engine']['idle_ttft_p50_s'], 3)} s and "
            f"{_fmt(ttft['engine']['loaded_ttft_p50_s'], 3)} s "
            f"(ratio {_fmt(ttft['engine_ttft_under_load_ratio'])}).",
        ]
    if "swap" in scenarios:
        swap = scenarios["swap"]
        lines += [
            "",
            f"Swap under load ({swap['clients']} clients, production -> {swap['to_version']}): "
            f"first answer by the new version {_fmt(swap['swap_seconds'])} s after the move, "
            f"{swap['swap_failed_requests']} failed requests.",
            "",
            "| | requests | p50 (s) | p99 (s) |",
            "|---|---:|---:|---:|",
        ]
        for label, key in (("steady", "steady"), ("during the swap", "during_swap")):
            window = swap[key]
            lines.append(
                f"| {label} | {window['requests']} | {_fmt(window['latency']['p50'], 3)} "
                f"| {_fmt(window['latency']['p99'], 3)} |"
            )
    if "locust" in scenarios:
        locust = scenarios["locust"]
        lines += [
            "",
            f"Locust: {locust['users']} users for {locust['duration_s']} s, "
            f"{locust['failures']} failures.",
        ]
    if "personal" in scenarios:
        lines += ["", *personal_table(scenarios["personal"])]
    return "\n".join(lines)


def personal_table(personal: dict) -> list[str]:
    """The "personal" scenario as Markdown lines."""
    sizes = personal["sizes"]
    lines = [
        f"Personal adapters: {sizes['scopes']} scopes with an adapter, {sizes['clients']} "
        f"clients each with its own key, LRU of {sizes['max_adapters']} per replica, "
        f"max_tokens={sizes['max_tokens']}, {sizes['phases']} phases of "
        f"{sizes['phase_s']:g} s (medians of the phases):",
        "",
        "| load | requests | failed | requests/s | tokens/s | p50 (s) | p99 (s) "
        "| adapter loads/min | evictions/min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, key in (
        ("shared production only (`ouro-shared`)", "shared"),
        ("each its own adapter (`ouro`)", "personal"),
    ):
        row = personal[key]
        if not row:
            continue
        lines.append(
            f"| {label} | {row['requests']} | {row['failed']} | {_fmt(row['requests_per_s'])} "
            f"| {_fmt(row['tokens_per_s'], 1)} | {_fmt(row['p50_s'], 3)} "
            f"| {_fmt(row['p99_s'], 3)} | {_fmt(row['adapter_loads_per_min'], 1)} "
            f"| {_fmt(row['adapter_evictions_per_min'], 1)} |"
        )
    cold = personal["cold_start"]
    lines.append(
        f"| cold start: each client's first request, all adapters cold | {cold['requests']} "
        f"| {cold['failed']} | {_fmt(cold['requests_per_s'])} | {_fmt(cold['tokens_per_s'], 1)} "
        f"| {_fmt(cold['latency']['p50'], 3)} | {_fmt(cold['latency']['p99'], 3)} "
        f"| {cold['adapter_loads']:g} in {_fmt(cold['duration_s'], 1)} s "
        f"| {cold['adapter_evictions']:g} |"
    )
    registry = personal["registry"]
    lines += [
        "",
        f"`personal_adapter_slowdown` (p50 ratio): {_fmt(personal['personal_adapter_slowdown'])}; "
        f"LLM replica peak RSS {_fmt(personal['llm_replica_peak_mib'], 0)} MiB; a cold "
        f"adapter adds {_fmt(personal['adapter_load_s_median'], 3)} s (median of "
        f"{len(personal['cold_probes'])}); per scope {_fmt(registry['rows_per_scope_total'], 1)} "
        f"MLflow rows, {_fmt(registry['sqlite_bytes_per_scope'] / 1024, 1)} KiB of sqlite and "
        f"{_fmt(personal['adapter_bytes_on_disk'] / 1024, 1)} KiB of adapter.",
    ]
    return lines


def plot(result: dict, path: Path) -> None:
    """One figure, one panel per scenario that ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = result["scenarios"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    (overhead_ax, adapters_ax), (saturation_ax, swap_ax) = axes

    if "serving_overhead" in scenarios:
        one = scenarios["serving_overhead"]["single_client"]
        overhead_ax.boxplot(
            [one["engine_latencies_s"], one["http_latencies_s"]],
            tick_labels=["engine in-process", "HTTP + Serve"],
        )
        overhead_ax.set_ylabel("latency (s)")
        overhead_ax.set_title(
            f"Serving overhead, 1 client, max_tokens={one['max_tokens']}: {one['ratio']:.2f}x"
        )
    if "multi_adapter" in scenarios:
        multi = scenarios["multi_adapter"]
        adapters_ax.bar(
            [
                "original way\n(one at a time,\nreload adapter)",
                "Ouro over HTTP\n(mixed batches)",
                "Ouro's engine\nin-process",
            ],
            [
                multi["original_tokens_per_s"],
                multi["ouro_tokens_per_s"],
                multi["engine_in_process_tokens_per_s"],
            ],
            color=["#999999", "#2a7ab9", "#9cc3e0"],
        )
        for index, key in enumerate(("original_rounds", "ouro_rounds", "engine_in_process_rounds")):
            rates = [r["tokens_per_s"] for r in multi[key]]
            adapters_ax.scatter([index] * len(rates), rates, color="black", s=12, zorder=3)
        adapters_ax.set_ylabel("tokens/s (median of rounds)")
        adapters_ax.set_title(
            f"{multi['clients']} clients over {len(multi['adapter_versions'])} adapters: "
            f"{multi['speedup']:.1f}x"
        )
    if "saturation" in scenarios:
        saturation = scenarios["saturation"]
        clients = [level["clients"] for level in saturation["levels"]]
        saturation_ax.plot(
            clients,
            [level["tokens_per_s"] for level in saturation["levels"]],
            "o-",
            label="tokens/s",
        )
        saturation_ax.set_xscale("log", base=2)
        saturation_ax.set_xticks(clients, [str(c) for c in clients])
        saturation_ax.set_xlabel("concurrent clients")
        saturation_ax.set_ylabel("tokens/s")
        saturation_ax.axvline(saturation["knee_clients"], color="grey", linestyle=":", label="knee")
        latency_ax = saturation_ax.twinx()
        for key, style in (("p50", "s--"), ("p99", "^--")):
            latency_ax.plot(
                clients,
                [level["latency"][key] for level in saturation["levels"]],
                style,
                color="#d0671f",
                label=f"{key} latency",
            )
        latency_ax.set_ylabel("latency (s)")
        handles = saturation_ax.get_legend_handles_labels()
        more = latency_ax.get_legend_handles_labels()
        saturation_ax.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left")
        saturation_ax.set_title("Saturation")
    if "swap" in scenarios:
        swap = scenarios["swap"]
        by_model: dict[str, list[dict]] = {}
        for point in swap["timeline"]:
            label = point["model"] if point["status"] == 200 else f"failed ({point['status']})"
            by_model.setdefault(label, []).append(point)
        for label, points in sorted(by_model.items()):
            swap_ax.scatter(
                [p["started"] for p in points],
                [p["latency"] for p in points],
                s=10,
                label=label,
                marker="x" if label.startswith("failed") else "o",
            )
        swap_ax.axvline(0, color="grey", linestyle=":", label="alias moved")
        swap_ax.axvline(
            swap["swap_seconds"], color="green", linestyle="--", label="first new answer"
        )
        swap_ax.set_xlabel("request start, seconds from the alias move")
        swap_ax.set_ylabel("latency (s)")
        swap_ax.legend(loc="upper left", fontsize="small")
        swap_ax.set_title(
            f"Swap under load: {swap['swap_failed_requests']} failed, "
            f"{swap['swap_seconds']:.2f} s to the new version"
        )
    for ax in axes.flat:
        if not ax.has_data():
            ax.set_axis_off()
    machine = result["machine"]
    fig.suptitle(
        f"Ouro make bench, {machine['date_utc'][:10]}: {machine['cpu_cores']} cores "
        f"({machine['cpu_model']}), {machine['memory_gib']} GiB, no GPU, "
        f"load average {machine['load_average_at_start'][0]:.1f} at start"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
