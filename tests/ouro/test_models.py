"""Base model loading on CPU: full precision by default, 4-bit NF4 when asked for; never
through Unsloth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ouro.engine import GenerationEngine, GenerationRequest, SamplingParams
from ouro.models import ModelLoadError, load_base_model, resolve_base_model, select_device
from ouro.settings import OuroSettings

REPO_ROOT = Path(__file__).resolve().parents[2]


def settings_for(model_dir: Path, tmp_path: Path, **overrides) -> OuroSettings:
    return OuroSettings(base_model=str(model_dir), data_dir=tmp_path, device="cpu", **overrides)


def test_local_path_resolves_to_itself(tiny_random_model_dir, tmp_path):
    assert resolve_base_model(settings_for(tiny_random_model_dir, tmp_path)) == str(
        tiny_random_model_dir
    )
    hub_id = OuroSettings(base_model="meta-llama/Llama-3.2-3B-Instruct", data_dir=tmp_path)
    assert resolve_base_model(hub_id) == "meta-llama/Llama-3.2-3B-Instruct"


def test_cpu_loads_full_precision_by_default(tiny_random_model_dir, tmp_path):
    loaded = load_base_model(settings_for(tiny_random_model_dir, tmp_path))
    assert loaded.device == torch.device("cpu")
    assert loaded.quantized is False
    assert loaded.name == str(tiny_random_model_dir)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    assert not loaded.model.training
    assert loaded.tokenizer.pad_token is not None


def test_cpu_nf4_loads_4bit_weights_that_generate_with_adapters(
    tiny_random_model_dir, make_lora_adapter, tmp_path
):
    import bitsandbytes  # pinned in requirements.txt: a broken install fails here
    loaded = load_base_model(settings_for(tiny_random_model_dir, tmp_path, quantization="nf4"))
    assert loaded.quantized is True
    linear4bit = [m for m in loaded.model.modules() if isinstance(m, bitsandbytes.nn.Linear4bit)]
    assert len(linear4bit) == 7 * loaded.model.config.num_hidden_layers
    assert all(m.weight.quant_type == "nf4" for m in linear4bit)

    engine = GenerationEngine(
        loaded.model, loaded.tokenizer, system_prompt="You are Ouro.", max_context_tokens=128
    )
    base_answer = GenerationRequest(
        [{"role": "user", "content": "Hello"}], SamplingParams(max_tokens=8)
    )
    engine.add_adapter("a", make_lora_adapter(tiny_random_model_dir, 1))
    adapted = GenerationRequest(base_answer.messages, base_answer.params, adapter="a")
    mixed = engine.generate([base_answer, adapted])
    assert [engine.generate([base_answer])[0], engine.generate([adapted])[0]] == mixed
    assert mixed[0].text != mixed[1].text
    assert all(output.completion_tokens == 8 for output in mixed)


def test_cuda_without_a_gpu_is_a_typed_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError):
        select_device(OuroSettings(data_dir=tmp_path, device="cuda"))
    assert select_device(OuroSettings(data_dir=tmp_path)) == torch.device("cpu")


SERVE_BUILD = """
import importlib.util, json, sys
from ouro.engine import GenerationEngine
from ouro.settings import OuroSettings
import serve.app  # everything the Serve application imports

assert importlib.util.find_spec("unsloth") is not None, "the stand-in is not importable"
settings = OuroSettings(base_model=sys.argv[1], data_dir=sys.argv[2], device="cpu",
                        quantization=sys.argv[3])
engine = GenerationEngine.from_settings(settings)
print(json.dumps({"unsloth_imported": "unsloth" in sys.modules}))
"""


def test_serving_never_imports_unsloth(tiny_random_model_dir, stand_in_unsloth, tmp_path):
    """With an ``unsloth`` importable (as in the GPU images), building the serve engine
    leaves it unimported: it would patch the model for the whole process."""
    site = stand_in_unsloth()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO_ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", SERVE_BUILD, str(tiny_random_model_dir), str(tmp_path), "nf4"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"unsloth_imported": False}
    assert not (site / "imported").exists()
