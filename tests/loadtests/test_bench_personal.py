"""Smoke run of the "personal" benchmark scenario at its ``--quick`` size, so it cannot rot.

The real thing end to end: random LoRA adapters registered per scope in a local MLflow
store, ``python -m serve`` with personal adapters on and a named key per scope, HTTP
clients. What is checked is that each load was answered by what it names and that the
counters and costs were read; no timing is asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.bench_personal import PersonalSizes, run_personal, scope_name
from loadtests.bench_report import check_targets, headline, markdown
from ouro.names import version_label

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1200)]


def test_personal_scenario_at_quick_size(tiny_random_model_dir: Path, tmp_path: Path) -> None:
    sizes = PersonalSizes.quick()
    result = run_personal(tiny_random_model_dir, tmp_path / "work", tmp_path / "out", sizes)

    phases = {phase["kind"]: phase for phase in result["phases"]}
    assert [phase["kind"] for phase in result["phases"]] == ["shared", "personal"]
    for phase in result["phases"]:
        assert phase["failed"] == 0, phase["status_counts"]
        assert phase["requests"] > 0
    # Shared production answered the shared load; each client's own adapter the other.
    assert set(phases["shared"]["models"]) == {version_label(1)}
    assert set(phases["personal"]["models"]) == {
        version_label(1, scope_name(index)) for index in range(sizes.clients)
    }
    # Adapters load lazily, on each scope's first request, and then stay in the LRU.
    cold = result["cold_start"]
    assert cold["failed"] == 0
    assert set(cold["models"]) == set(phases["personal"]["models"])
    assert cold["adapter_loads"] == sizes.clients
    assert phases["personal"]["adapter_loads"] == phases["shared"]["adapter_loads"] == 0
    assert result["cold_probes"][0]["model"] == version_label(1, scope_name(sizes.clients))
    # One registered model, one version and one run per scope.
    rows = result["registry"]["rows_per_scope"]
    assert rows["registered_models"] == rows["model_versions"] == rows["runs"] == 1
    assert result["adapter_bytes_on_disk"] > 0

    figures = headline({"personal": result})
    assert figures["personal_adapter_slowdown"] > 0
    assert "personal_adapter_slowdown" in check_targets(figures)
    assert "each its own adapter (`ouro`)" in markdown(
        {"headline": figures, "targets": check_targets(figures), "scenarios": {"personal": result}}
    )
