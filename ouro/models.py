"""Base model loading: an embedded model (ouro.embedded), a local path, or a Hub id.

On CUDA the model is loaded in 4-bit NF4 through transformers + bitsandbytes, computing in
the dtype of the precision policy (``ouro.precision``: bf16 where the GPU has it natively,
fp16 on a T4). On CPU it is loaded in float32, or in NF4 when ``quantization="nf4"``
(bitsandbytes runs NF4 on CPU too). Remote code is never trusted.

This loader never imports Unsloth, even where it is installed: Unsloth patches the model
classes for the whole process, keeps its own KV cache instead of the engine's and decodes
with a single active adapter, so the engine's per-row adapters and cache would silently
stop working. Serving and the quality gates load through here; only training uses Unsloth
(``train_job.train``), in its own process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from ouro.embedded import build_embedded_model
from ouro.errors import OuroError
from ouro.precision import precision_for
from ouro.settings import OuroSettings

logger = logging.getLogger(__name__)


class ModelLoadError(OuroError):
    """The configured base model cannot be loaded as asked."""


@dataclass
class LoadedModel:
    """A base model ready for generation or training."""

    model: torch.nn.Module
    """The causal LM, in eval mode."""
    tokenizer: object
    """Its tokenizer (with a pad token)."""
    name: str
    """What was loaded: a local path or a Hub id."""
    device: torch.device
    """Where the weights live."""
    quantized: bool
    """True when loaded in 4-bit NF4."""


def resolve_base_model(settings: OuroSettings) -> str:
    """A loadable local path or Hub id; an embedded model is built into the cache first."""
    embedded = build_embedded_model(settings.base_model, settings.model_cache_dir)
    return settings.base_model if embedded is None else str(embedded)


def select_device(settings: OuroSettings) -> torch.device:
    """The device the settings ask for ('auto': CUDA when there is one)."""
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for but CUDA is not available")
    if settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def wants_nf4(settings: OuroSettings, device: torch.device) -> bool:
    """NF4 when asked for, and by default on CUDA."""
    if settings.quantization == "auto":
        return device.type == "cuda"
    return settings.quantization == "nf4"


def load_base_model(settings: OuroSettings) -> LoadedModel:
    """Load the configured base model and its tokenizer."""
    name = resolve_base_model(settings)
    device = select_device(settings)
    quantized = wants_nf4(settings, device)
    model = AutoModelForCausalLM.from_pretrained(name, **load_kwargs(device, quantized))
    if not quantized:
        model = model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    logger.info("loaded base model %s on %s (nf4=%s)", name, device, quantized)
    return LoadedModel(
        model=model, tokenizer=tokenizer, name=name, device=device, quantized=quantized
    )


def load_kwargs(device: torch.device, quantized: bool) -> dict:
    """``from_pretrained`` arguments: the policy's dtype, and NF4 computing in it."""
    dtype = precision_for(device).compute_dtype
    kwargs: dict = {"dtype": dtype, "trust_remote_code": False}
    if quantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else "cpu"
    return kwargs
