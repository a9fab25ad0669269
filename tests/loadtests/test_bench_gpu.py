"""The GPU benchmark's code on CPU with a tiny shape: it must keep running for the day a
GPU is lent (its figures on CPU mean nothing and are not checked)."""

from __future__ import annotations

import json

import pytest

from loadtests import bench_gpu


@pytest.mark.slow
def test_the_gpu_benchmark_runs_end_to_end_on_a_tiny_shape(tmp_path) -> None:
    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--shape", "tiny", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["mixed_adapter_equal"] is True
    assert result["correctness"]["first_step_within_tolerance"] is True
    assert result["correctness"]["finite"] is True
    for mode in ("no_adapters", "mixed_4_adapters"):
        assert [row["batch"] for row in result["decode"][mode]] == list(bench_gpu.BATCHES)
        for row in result["decode"][mode]:
            assert row["tokens_per_s"] > 0 and 0 < row["roofline_fraction"]
            assert row["bytes_per_step"]["weights"] > 0
    assert result["decode"]["mixed_4_adapters"][0]["bytes_per_step"]["lora_bank"] > 0
    assert 0 < result["roofline_fraction_batch1"] and result["best_batch_speedup"] > 0
