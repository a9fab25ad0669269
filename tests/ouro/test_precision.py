"""The precision policy, on CPU with the CUDA capability stubbed (a T4, an A100, an H100).

The stubs stand in for hardware this machine lacks (see tests/fixtures/gpu.py); what they
pin is the policy's decision, which is plain code.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from ouro.models import load_kwargs
from ouro.precision import FLOAT32, Precision, keep_trainable_dtype, precision_for

CUDA = torch.device("cuda", 0)


@pytest.mark.parametrize(
    ("capability", "dtype", "mixed"),
    [
        ((7, 5), torch.float16, "fp16"),  # T4: bf16 only emulated
        ((8, 0), torch.bfloat16, "bf16"),  # A100
        ((9, 0), torch.bfloat16, "bf16"),  # H100
    ],
)
def test_bf16_only_where_native(cuda_capability, capability, dtype, mixed):
    cuda_capability(capability)
    assert torch.cuda.is_bf16_supported()  # what the T4 answers too: emulation counts
    precision = precision_for(CUDA)
    assert (precision.compute_dtype, precision.mixed_precision) == (dtype, mixed)
    assert precision.trainable_dtype == (None if mixed == "bf16" else torch.float32)
    assert precision_for(torch.device("cpu")) == FLOAT32


@pytest.mark.parametrize(
    ("capability", "dtype"), [((7, 5), torch.float16), ((8, 0), torch.bfloat16)]
)
def test_nf4_computes_in_the_policy_dtype_on_cuda(cuda_capability, capability, dtype):
    cuda_capability(capability)
    kwargs = load_kwargs(CUDA, quantized=True)
    assert kwargs["dtype"] == dtype
    assert kwargs["quantization_config"].bnb_4bit_compute_dtype == dtype
    assert kwargs["quantization_config"].bnb_4bit_quant_type == "nf4"
    assert kwargs["device_map"] == {"": 0}
    assert kwargs["trust_remote_code"] is False


def test_cpu_loads_float32():
    assert load_kwargs(torch.device("cpu"), quantized=False)["dtype"] == torch.float32
    nf4 = load_kwargs(torch.device("cpu"), quantized=True)
    assert nf4["quantization_config"].bnb_4bit_compute_dtype == torch.float32


def _lora_model(tiny_random_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_random_model_dir, dtype=torch.float16)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    for param in model.parameters():  # what TRL does to a k-bit model's LoRA
        if param.requires_grad:
            param.data = param.data.to(torch.bfloat16)
    return model


def test_fp16_keeps_trainable_weights_in_fp32_and_leaves_the_base(tiny_random_model_dir):
    model = _lora_model(tiny_random_model_dir)
    fp16 = Precision(compute_dtype=torch.float16, mixed_precision="fp16")
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert keep_trainable_dtype(model, fp16) == len(trainable) > 0
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.float16}
    assert keep_trainable_dtype(model, fp16) == 0


def test_bf16_leaves_the_trainers_choice(tiny_random_model_dir):
    model = _lora_model(tiny_random_model_dir)
    bf16 = Precision(compute_dtype=torch.bfloat16, mixed_precision="bf16")
    assert keep_trainable_dtype(model, bf16) == 0
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.bfloat16}
