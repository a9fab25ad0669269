"""Training's use of Unsloth, proven on CPU with a stand-in ``unsloth`` package.

The real Unsloth needs CUDA. The stand-in (tests/fixtures/gpu.py) does what matters here
the way the real one does: importing it replaces ``trl.SFTTrainer``/``trl.SFTConfig``, and
its dist-info declares requirements. What these tests pin is our side: the import order,
the environment it is imported with, and when it is used at all.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ouro.settings import OuroSettings
from train_job.config import TrainJobConfig
from train_job.train import (
    UNSLOTH_CACHE_DIR,
    train_adapter,
    unsloth_incompatibilities,
    unsloth_usable,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

IMPORT_ORDER = """
import json, sys
from pathlib import Path
from train_job.train import import_unsloth, sft_config, trl_trainer
from train_job.config import TrainJobConfig
from ouro.precision import FLOAT32
import torch

trl_before = "trl" in sys.modules
unsloth = import_unsloth(Path(sys.argv[1]))
trainer, config = trl_trainer()
args = sft_config(TrainJobConfig(), Path(sys.argv[1]) / "out", torch.device("cpu"), FLOAT32)
print(json.dumps({
    "trl_before": trl_before,
    "trainer": trainer.__name__,
    "config": type(args).__name__,
    "statistics": unsloth.ENVIRONMENT.get("UNSLOTH_DISABLE_STATISTICS"),
    "cache": unsloth.ENVIRONMENT.get("UNSLOTH_COMPILE_LOCATION"),
}))
"""


def test_unsloth_comes_before_trl_with_statistics_off_and_its_cache_in_the_data_dir(
    stand_in_unsloth, tmp_path
):
    site = stand_in_unsloth()
    data_dir = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ORDER, str(data_dir)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO_ROOT)])},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["trl_before"] is False  # nothing bound TRL's trainer before Unsloth patched it
    assert seen["trainer"] == "UnslothSFTTrainer"
    assert seen["config"] == "UnslothSFTConfig"
    assert seen["statistics"] == "1"
    assert seen["cache"] == str((data_dir / UNSLOTH_CACHE_DIR).resolve())
    assert (data_dir / UNSLOTH_CACHE_DIR).is_dir()


def test_unsloth_is_used_only_on_cuda_and_only_when_compatible(
    stand_in_unsloth, cuda_capability, monkeypatch, tmp_path
):
    settings = OuroSettings(data_dir=tmp_path)
    config = TrainJobConfig()
    assert not unsloth_usable(config, settings)  # not installed
    assert unsloth_incompatibilities() == ["unsloth is not installed"]

    # Like unsloth 2026.10.7 beside the CPU set: a transformers older than the installed one.
    older = f"transformers<{importlib.metadata.version('transformers')}"
    monkeypatch.syspath_prepend(str(stand_in_unsloth((older, "trl>=0.18.2"))))
    assert not unsloth_usable(config, settings)  # installed, but this machine has no CUDA

    cuda_capability((7, 5))
    problems = unsloth_incompatibilities()
    assert len(problems) == 1 and older in problems[0]
    assert not unsloth_usable(config, settings)
    assert "unsloth" not in sys.modules  # deciding never imports it


def test_a_compatible_unsloth_on_cuda_is_used_unless_switched_off(
    stand_in_unsloth, cuda_capability, monkeypatch, tmp_path
):
    monkeypatch.syspath_prepend(
        str(stand_in_unsloth(("transformers>=4.52.4", 'mlx==0.32.4; sys_platform == "darwin"')))
    )
    cuda_capability((7, 5))
    settings = OuroSettings(data_dir=tmp_path)
    assert unsloth_incompatibilities() == []
    assert unsloth_usable(TrainJobConfig(), settings)
    assert not unsloth_usable(TrainJobConfig(use_unsloth=False), settings)


def test_lora_weights_on_a_kbit_base_stay_float32_despite_trl(tiny_random_model_dir, tmp_path):
    """TRL casts a k-bit model's trainable weights to bf16; without the policy's fp32 the
    saved adapter (and, on a T4, fp16's GradScaler) would see bf16."""
    pytest.importorskip("bitsandbytes")
    settings = OuroSettings(
        base_model=str(tiny_random_model_dir), data_dir=tmp_path, device="cpu", quantization="nf4"
    )
    config = TrainJobConfig(max_steps=2, per_device_train_batch_size=2, max_length=64)
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Question {i}?"}],
            "completion": [{"role": "assistant", "content": f"Answer {i}."}],
        }
        for i in range(4)
    ]
    result = train_adapter(config, settings, rows, tmp_path / "work")
    assert result.backend == "peft"
    weights = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert weights and {tensor.dtype for tensor in weights.values()} == {torch.float32}
