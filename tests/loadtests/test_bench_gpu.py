"""The GPU benchmark on CPU: the parts that decide (the T4 precision, the Unsloth gate and
its waiver, the checks) with stubbed hardware, and the whole device command rehearsed on
a tiny shape, so the day a GPU is lent it runs as one command (its figures on CPU mean
nothing and are not checked)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from loadtests import bench_gpu
from ouro import precision
from ouro.settings import OuroSettings
from tools.paths import REPO_ROOT
from train_job import train
from train_job.config import TrainJobConfig

CUDA = torch.device("cuda", 0)
DEVICE_RUN = REPO_ROOT / "loadtests" / "gpu_device_run.sh"


def test_the_t4_precision_is_fp16_on_a_gpu_with_native_bf16_and_is_undone(cuda_capability):
    cuda_capability((9, 0))  # an H100 or H200
    assert bench_gpu.describe_precision(CUDA) == {
        "compute_dtype": "bfloat16",
        "mixed_precision": "bf16",
    }
    with bench_gpu.precision_as("t4"):
        assert bench_gpu.describe_precision(CUDA) == {
            "compute_dtype": "float16",
            "mixed_precision": "fp16",
        }
        assert precision.precision_for(torch.device("cpu")) == precision.FLOAT32
    with pytest.raises(RuntimeError), bench_gpu.precision_as("t4"):
        raise RuntimeError("a failed load")
    assert precision.precision_for(CUDA) == precision.BFLOAT16
    with bench_gpu.precision_as("policy"):
        assert precision.precision_for(CUDA) == precision.BFLOAT16
    with pytest.raises(ValueError), bench_gpu.precision_as("a100"):
        pass


def test_the_unsloth_gate_waives_only_optional_packages_that_are_missing():
    reasons = [
        'unsloth needs xformers>=0.0.27.post2; platform_machine == "x86_64", which is not '
        "installed",
        "unsloth-zoo needs torchao>=0.13.0, which is not installed",
        "unsloth needs trl<=1.15.0,>=0.18.2, installed 1.16.0",
        "unsloth needs tokenizers>=0.1, which is not installed",
        "unsloth is not installed",
    ]
    problems, waived = bench_gpu.unsloth_gate(lambda: reasons)
    assert waived == reasons[:2]
    assert problems == reasons[2:]


def test_the_waiver_lets_the_training_job_pick_unsloth_and_is_undone(
    cuda_capability, stand_in_unsloth, monkeypatch, tmp_path
):
    site = stand_in_unsloth(requires=("xformers>=0.0.27", "diffusers"))
    monkeypatch.syspath_prepend(str(site))
    cuda_capability((9, 0))
    config = TrainJobConfig(use_unsloth=True)
    settings = OuroSettings(data_dir=tmp_path, device="cuda")
    assert not train.unsloth_usable(config, settings)  # the job's gate: xformers is missing
    with bench_gpu.waived_unsloth_gate() as waived:
        assert train.unsloth_usable(config, settings)
        assert [reason.split(" needs ")[1].split(",")[0] for reason in waived] == [
            "xformers>=0.0.27",
            "diffusers",
        ]
    assert not train.unsloth_usable(config, settings)
    assert bench_gpu.unsloth_unavailable(CUDA) is None
    assert not (site / "imported").exists()  # decided without importing Unsloth


def test_a_version_unsloth_does_not_accept_is_never_waived(
    cuda_capability, stand_in_unsloth, monkeypatch
):
    monkeypatch.syspath_prepend(str(stand_in_unsloth(requires=("torch<2.0",))))
    cuda_capability((9, 0))
    reason = bench_gpu.unsloth_unavailable(CUDA)
    assert reason is not None and reason.startswith("unsloth needs torch<2.0, installed ")


def test_no_unsloth_step_on_cpu_and_it_is_said_why():
    assert "CUDA only" in bench_gpu.unsloth_unavailable(torch.device("cpu"))


def test_the_roofline_targets_are_checked_on_a_gpu_only():
    result = {
        "mixed_adapter_equal": True,
        "no_nan": True,
        "serving": {"policy": {"correctness": {"first_step_within_tolerance": True}}},
        "trl_step_ok": True,
        "unsloth_step_ok": None,
        "roofline_fraction_batch1": 0.2,
        "best_batch_speedup": 12.0,
    }
    on_cpu = bench_gpu.checks(result, torch.device("cpu"))
    assert on_cpu["roofline_fraction_batch1>=0.35"] is None
    assert False not in on_cpu.values()
    on_gpu = bench_gpu.checks(result, CUDA)
    assert on_gpu["roofline_fraction_batch1>=0.35"] is False
    assert on_gpu["best_batch_speedup>=10"] is True


def test_the_training_tokenizer_has_no_token_past_the_models_vocabulary():
    serving = bench_gpu.build_tokenizer(64)
    assert serving.eos_token_id == 64  # no generated row stops early
    training = bench_gpu.build_tokenizer(64, training=True)
    assert max(training.added_tokens_decoder) < 64 and len(training) == 64
    for row in bench_gpu.training_rows(64):
        for message in (*row["prompt"], *row["completion"]):
            ids = training(message["content"], add_special_tokens=False)["input_ids"]
            assert ids == [int(word[1:]) for word in message["content"].split()]
            assert training.eos_token_id not in ids and training.pad_token_id not in ids


def _probe_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel: what the rehearsal installs where the real set is absent."""
    folder.mkdir()
    path = folder / "ouro_rehearsal_probe-0.0.0-py3-none-any.whl"
    info = "ouro_rehearsal_probe-0.0.0.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ouro_rehearsal_probe/__init__.py", "")
        archive.writestr(
            f"{info}/METADATA",
            "Metadata-Version: 2.1\nName: ouro-rehearsal-probe\nVersion: 0.0.0\n",
        )
        archive.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{info}/RECORD", "")
    return path


@pytest.mark.slow
def test_the_device_command_rehearsed_on_a_tiny_shape(tmp_path) -> None:
    out = tmp_path / "out"
    environment = {
        **os.environ,
        "OUT": str(out),
        "PYTHON": sys.executable,
        "OURO_GPU_WHEELS": str(_probe_wheel(tmp_path / "wheels").parent),
    }
    done = subprocess.run(
        ["bash", str(DEVICE_RUN), "--rehearse"],
        cwd=tmp_path,  # the script finds the repository itself
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "installing 1 wheels" in done.stdout
    assert sorted(path.name for path in out.iterdir()) == [
        "bench.log",
        "gpu.json",
        "profile_trace.json.gz",
    ]
    assert json.loads(gzip.decompress((out / "profile_trace.json.gz").read_bytes()))
    assert "training step: trl under t4" in (out / "bench.log").read_text()

    result = json.loads((out / "gpu.json").read_text())
    assert result["complete"] is True and result["device"] == "cpu"
    assert result["environment"]["versions"]["torch"] == torch.__version__
    assert result["mixed_adapter_equal"] is True and result["no_nan"] is True
    for name in bench_gpu.PRECISIONS:
        correctness = result["serving"][name]["correctness"]
        assert correctness["first_step_within_tolerance"] and correctness["finite"]
    for mode in ("no_adapters", "mixed_4_adapters"):
        assert [row["batch"] for row in result["decode"][mode]] == list(bench_gpu.BATCHES)
        for row in result["decode"][mode]:
            assert row["tokens_per_s"] > 0 and 0 < row["roofline_fraction"]
            assert row["bytes_per_step"]["weights"] > 0
    assert result["decode"]["mixed_4_adapters"][0]["bytes_per_step"]["lora_bank"] > 0

    assert result["trl_step_ok"] is True
    for name in bench_gpu.PRECISIONS:
        step = result["training"][f"trl_{name}"]
        assert (step["backend"], step["steps"], step["precision"]) == ("peft", 1, name)
        assert step["loss_finite"] and step["lora_weights_changed"] and step["ok"]
        assert step["lora_b_tensors"] > 0
    assert result["unsloth_step_ok"] is None and "CUDA only" in result["unsloth_reason"]
    assert "unsloth_policy" not in result["training"]
    assert result["checks"]["roofline_fraction_batch1>=0.35"] is None
    assert False not in result["checks"].values()
