"""Smoke tests of the benchmark harness's pieces (``make bench`` itself is not a test).

The adapter-reload baseline runs for real on the tiny random model; the statistics, the
knee rule and the report are checked on small hand-made inputs whose answers are known.
No timings are asserted.
"""

from __future__ import annotations

import json

import pytest

from loadtests.bench_adapters import arrival_order, original_way
from loadtests.bench_load import LoadSummary, RequestRecord
from loadtests.bench_report import check_targets, headline, markdown, plot, write_json
from loadtests.bench_saturation import find_knee
from ouro.engine import GenerationEngine
from ouro.names import version_label
from ouro.settings import OuroSettings


def level(clients: int, tokens_per_s: float, p99: float) -> dict:
    return {"clients": clients, "tokens_per_s": tokens_per_s, "latency": {"p99": p99}}


@pytest.mark.parametrize(
    ("levels", "knee"),
    [
        # throughput flattens after 16 clients
        ([level(1, 100, 0.1), level(4, 300, 0.15), level(16, 600, 0.3), level(64, 620, 1.0)], 16),
        # throughput still grows at 64, but p99 explodes going from 4 to 16
        ([level(1, 100, 0.1), level(4, 300, 0.15), level(16, 500, 0.9), level(64, 700, 1.0)], 4),
        # keeps paying all the way: the last level
        ([level(1, 100, 0.1), level(4, 300, 0.2), level(16, 600, 0.4), level(64, 900, 0.8)], 64),
    ],
)
def test_knee_is_where_more_clients_stop_paying(levels: list[dict], knee: int) -> None:
    assert find_knee(levels) == knee


def test_load_summary_counts_429s_apart_from_successes() -> None:
    records = [
        RequestRecord(0, 0.0, 1.0, 200, "ouro@v1", 10),
        RequestRecord(1, 0.0, 2.0, 200, "ouro@v2", 30),
        RequestRecord(2, 0.5, 0.6, 429, None, 0, "queue full"),
        RequestRecord(3, 1.0, 1.5, 0, None, 0, "ConnectError"),
    ]
    summary = LoadSummary.of(records)
    assert (summary.requests, summary.succeeded, summary.failed) == (4, 2, 2)
    assert summary.rejected_429 == 1
    assert summary.status_counts == {"200": 2, "429": 1, "0": 1}
    assert summary.duration_s == 2.0
    assert summary.tokens_per_s == 20.0  # failures carry no tokens
    assert summary.models == {"ouro@v1": 1, "ouro@v2": 1}
    assert summary.latency.count == 2 and summary.latency.p50 == 1.5


def test_arrival_order_round_robins_versions_like_a_fifo_server() -> None:
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(5)]
    jobs = arrival_order(prompts, [1, 2, 3, 4], clients=8, requests_per_client=2)
    assert [version for version, _ in jobs] == [1, 2, 3, 4] * 4
    assert jobs[0][1] == prompts[0] and jobs[8][1] == prompts[8 % 5]


@pytest.mark.slow
def test_original_way_reloads_the_adapter_at_every_switch(
    tiny_random_model_dir, make_lora_adapter, tmp_path
) -> None:
    engine = GenerationEngine.from_settings(
        OuroSettings(data_dir=tmp_path, base_model=str(tiny_random_model_dir), device="cpu")
    )
    adapters = {v: make_lora_adapter(tiny_random_model_dir, seed=v) for v in (1, 2)}
    prompts = [[{"role": "user", "content": "Hello there"}], [{"role": "user", "content": "Bye"}]]
    jobs = arrival_order(prompts, [1, 2], clients=2, requests_per_client=2) + [(2, prompts[0])]

    result = original_way(engine, adapters, jobs, max_tokens=4)

    assert result["requests"] == 5
    assert result["adapter_loads"] == 4  # 1, 2, 1, 2, then 2 again: no reload
    assert 5 <= result["tokens"] <= 20
    assert engine.adapter_names() == []  # the last adapter is unloaded again
    assert version_label(1) not in engine.adapter_names()


def test_report_files_from_a_small_result(tmp_path) -> None:
    scenarios = {
        "saturation": {
            "level_s": 1.0,
            "knee_clients": 4,
            "levels": [
                {
                    "clients": c,
                    "requests_per_s": r,
                    "tokens_per_s": r * 10,
                    "latency": {"p50": 0.1 * c, "p99": 0.2 * c},
                    "rejected_429": 0,
                    "other_failures": 0,
                    "llm_replica_peak_mib": 500.0 + c,
                }
                for c, r in ((1, 5.0), (4, 9.0))
            ],
        },
        "locust": {"users": 4, "duration_s": 10, "failures": 2},
    }
    figures = headline(scenarios)
    assert figures == {"knee_clients": 4, "llm_replica_peak_mib": 504.0, "locust_failures": 2}
    targets = check_targets(figures)
    assert targets == {"locust_failures": {"target": "<= 0", "value": 2, "met": False}}
    result = {
        "machine": {
            "date_utc": "2026-01-01T00:00:00+00:00",
            "cpu_cores": 2,
            "cpu_model": "test CPU",
            "memory_gib": 1.0,
            "load_average_at_start": [0.5, 0.5, 0.5],
        },
        "headline": figures,
        "targets": targets,
        "scenarios": scenarios,
    }
    table = markdown(result)
    assert "| `locust_failures` | 2 | <= 0 | **no** |" in table
    assert "| 4 | 9.00 | 90.0 | 0.400 | 0.800 | 0 | 0 | 504 |" in table

    write_json(result, tmp_path / "latest.json")
    plot(result, tmp_path / "bench.png")
    assert json.loads((tmp_path / "latest.json").read_text()) == result
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_default_model_scenario_gives_its_efficiency_headline_and_table() -> None:
    level = {
        "clients": 16,
        "http_tokens_per_s": 90.0,
        "engine_tokens_per_s": 100.0,
        "http_over_engine": 0.9,
        "http_p50_s": 0.5,
        "http_p99_s": 0.9,
        "engine_p50_s": 0.4,
        "engine_p99_s": 0.45,
    }
    scenarios = {
        "default_model": {
            "base_model": "smollm2-135m-abc",
            "max_tokens": 32,
            "levels": [{**level, "clients": 1}, level],
            "efficiency_clients": 16,
            "http_efficiency": 0.9,
        }
    }
    figures = headline(scenarios)
    assert figures == {"http_efficiency_smollm2": 0.9}
    assert check_targets(figures)["http_efficiency_smollm2"]["met"] is True
    table = markdown(
        {"headline": figures, "targets": check_targets(figures), "scenarios": scenarios}
    )
    assert "| 16 | 90.0 | 100.0 | 0.90 | 0.500 | 0.900 | 0.400 | 0.450 |" in table
