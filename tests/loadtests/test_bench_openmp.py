"""``loadtests.bench_openmp``: each setting's processes run with exactly its OpenMP wait
settings, whatever the benchmark's own environment says."""

from __future__ import annotations

from loadtests import bench_openmp
from loadtests.bench_openmp import PROMPTS, SETTINGS


def test_a_process_runs_with_the_settings_wait_variables_only(monkeypatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # would otherwise reach the process
    times = bench_openmp.run_processes(SETTINGS["GOMP_SPINCOUNT=10000"], 1, rounds=1)
    assert len(times) == PROMPTS
    assert all(0 < seconds < 60 for seconds in times)
