"""The one precision policy: which dtypes serving and training use on a device.

- CPU: float32 everywhere, no mixed precision.
- CUDA with native bfloat16 (compute capability >= 8.0: A100, L4, H100): bf16.
- CUDA without it (a T4 is 7.5): fp16. ``torch.cuda.is_bf16_supported()`` answers True on
  a T4 because bf16 can be emulated there, which is slow, and Unsloth's fp16 model fails
  under it; hence ``including_emulation=False``.

Training adds one rule: the trainable LoRA weights are kept in float32 whenever the
mixed precision is not bf16. fp16 training needs fp32 master weights (GradScaler refuses to
unscale fp16 gradients and has no bf16 kernel), and TRL's SFTTrainer casts the trainable
parameters of a k-bit model to bf16 in its constructor (trl 1.15 and 1.16,
``SFTTrainer.__init__``: "When using QLoRA, the PEFT adapter weights are converted to
bf16"), so :func:`keep_trainable_dtype` undoes that after the trainer is built.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    """The dtypes for one device."""

    compute_dtype: torch.dtype
    """Weights of a full-precision load, and the compute dtype of an NF4 load."""
    mixed_precision: str | None
    """The Trainer's mixed precision: 'bf16', 'fp16', or None (plain float32)."""

    @property
    def bf16(self) -> bool:
        return self.mixed_precision == "bf16"

    @property
    def fp16(self) -> bool:
        return self.mixed_precision == "fp16"

    @property
    def trainable_dtype(self) -> torch.dtype | None:
        """The dtype trainable (LoRA) weights must have: float32 unless the mixed precision
        is bf16; None under bf16, where the trainer's choice (bf16 for QLoRA, per TRL) stands."""
        return None if self.bf16 else torch.float32


FLOAT32 = Precision(compute_dtype=torch.float32, mixed_precision=None)
BFLOAT16 = Precision(compute_dtype=torch.bfloat16, mixed_precision="bf16")
FLOAT16 = Precision(compute_dtype=torch.float16, mixed_precision="fp16")


def native_bf16() -> bool:
    """True when the current CUDA device computes bf16 in hardware (not emulated)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def precision_for(device: torch.device) -> Precision:
    """The policy for ``device``: float32 on CPU, bf16 on CUDA where native, else fp16."""
    if device.type != "cuda":
        return FLOAT32
    return BFLOAT16 if native_bf16() else FLOAT16


def keep_trainable_dtype(model: torch.nn.Module, precision: Precision) -> int:
    """Cast every trainable parameter to ``precision.trainable_dtype`` (when it names one);
    returns how many changed. Call after the trainer is built (it may have cast them) and
    before training starts (the optimizer takes the parameters as they are then)."""
    dtype = precision.trainable_dtype
    changed = 0
    if dtype is None:
        return changed
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)
            changed += 1
    if changed:
        logger.info("kept %s trainable parameters in %s", changed, dtype)
    return changed
