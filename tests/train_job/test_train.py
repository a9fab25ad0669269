"""Training a LoRA adapter: which layers of the base model get LoRA weights."""

from __future__ import annotations

import re

import pytest
from safetensors.torch import load_file

from ouro.settings import OuroSettings
from train_job.config import TrainJobConfig
from train_job.train import lora_arguments, train_adapter


def test_lora_layers_selects_the_top_layers_and_unset_means_every_layer() -> None:
    assert lora_arguments(TrainJobConfig(lora_layers=2), num_layers=4)["layers_to_transform"] == [
        2,
        3,
    ]
    assert lora_arguments(TrainJobConfig(), num_layers=4)["layers_to_transform"] is None
    assert (
        lora_arguments(TrainJobConfig(lora_layers=4), num_layers=4)["layers_to_transform"] is None
    )
    assert (
        lora_arguments(TrainJobConfig(lora_layers=9), num_layers=4)["layers_to_transform"] is None
    )


@pytest.mark.slow
def test_an_adapter_trained_on_the_top_layer_has_weights_there_only(
    tiny_random_model_dir, tmp_path
) -> None:
    settings = OuroSettings(base_model=str(tiny_random_model_dir), data_dir=tmp_path, device="cpu")
    config = TrainJobConfig(
        lora_layers=1, max_steps=2, per_device_train_batch_size=2, max_length=64
    )
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Question {i}?"}],
            "completion": [{"role": "assistant", "content": f"Answer {i}."}],
        }
        for i in range(4)
    ]

    result = train_adapter(config, settings, rows, tmp_path / "work")

    weights = load_file(result.adapter_dir / "adapter_model.safetensors")
    layers = {int(re.search(r"\.layers\.(\d+)\.", key).group(1)) for key in weights}
    assert layers == {1}  # the tiny model has layers 0 and 1
    assert len(weights) == 2 * len(config.lora_target_modules)  # lora_A and lora_B each
