"""The generation engine: continuous batching over a base model and its LoRA adapters.

- :mod:`ouro.engine.core`: :class:`GenerationEngine`, the scheduler and step loop (and a
  synchronous ``generate`` for the training job, the gates and the benchmarks);
- :mod:`ouro.engine.async_engine`: :class:`AsyncEngine`, the interface servers use;
- :mod:`ouro.engine.kv_batch`, :mod:`ouro.engine.lora_bank`, :mod:`ouro.engine.model_runner`,
  :mod:`ouro.engine.sampling`, :mod:`ouro.engine.detokenizer`: the parts a step is made of
  (:mod:`ouro.engine.intra_op`: their small CPU ops on the engine's thread alone);
- :mod:`ouro.engine.types`: requests, sampling settings, deltas, limits, stats, errors.

The engine's classes are imported on first use: a process that only speaks the engine's
types (the Serve ingress) never imports transformers, PEFT or bitsandbytes.
"""

import importlib

from ouro.engine.types import (
    FINISH_LENGTH,
    FINISH_STOP,
    LOGIT_BIAS_RANGE,
    MAX_CHOICES,
    MAX_TOP_LOGPROBS,
    MIN_TEMPERATURE,
    PENALTY_RANGE,
    AdapterError,
    AdapterIncompatibleError,
    AdapterNotFoundError,
    EngineLimits,
    EngineOverloadedError,
    EngineStats,
    EngineStoppedError,
    GenerationOutput,
    GenerationRequest,
    InvalidRequestError,
    PositionLogprobs,
    RequestAbortedError,
    SamplingParams,
    StreamDelta,
    TokenConstraint,
    TokenLogprob,
)

__all__ = [
    "BASE_ADAPTER",
    "FINISH_LENGTH",
    "FINISH_STOP",
    "LOGIT_BIAS_RANGE",
    "MAX_CHOICES",
    "MAX_TOP_LOGPROBS",
    "MIN_TEMPERATURE",
    "PENALTY_RANGE",
    "AdapterError",
    "AdapterIncompatibleError",
    "AdapterNotFoundError",
    "AsyncEngine",
    "EngineLimits",
    "EngineOverloadedError",
    "EngineStats",
    "EngineStoppedError",
    "GenerationEngine",
    "GenerationOutput",
    "GenerationRequest",
    "IncrementalDetokenizer",
    "InvalidRequestError",
    "PositionLogprobs",
    "RequestAbortedError",
    "RequestSink",
    "SamplingParams",
    "StreamDelta",
    "TokenConstraint",
    "TokenDecoder",
    "TokenLogprob",
    "merge_deltas",
]

_LAZY = {
    "AsyncEngine": "ouro.engine.async_engine",
    "merge_deltas": "ouro.engine.async_engine",
    "GenerationEngine": "ouro.engine.core",
    "RequestSink": "ouro.engine.core",
    "IncrementalDetokenizer": "ouro.engine.detokenizer",
    "TokenDecoder": "ouro.engine.detokenizer",
    "BASE_ADAPTER": "ouro.engine.lora_bank",
}


def __getattr__(name: str):
    """The model-side names, imported when first asked for (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
