"""The generation engine: continuous batching over a base model and its LoRA adapters.

- :mod:`ouro.engine.core`: :class:`GenerationEngine`, the scheduler and step loop (and a
  synchronous ``generate`` for the training job, the gates and the benchmarks);
- :mod:`ouro.engine.async_engine`: :class:`AsyncEngine`, the interface servers use;
- :mod:`ouro.engine.kv_batch`, :mod:`ouro.engine.lora_bank`, :mod:`ouro.engine.model_runner`,
  :mod:`ouro.engine.detokenizer`: the parts a step is made of;
- :mod:`ouro.engine.types`: requests, sampling settings, deltas, limits, stats, errors.
"""

from ouro.engine.async_engine import AsyncEngine
from ouro.engine.core import GenerationEngine, RequestSink
from ouro.engine.detokenizer import IncrementalDetokenizer
from ouro.engine.lora_bank import BASE_ADAPTER
from ouro.engine.types import (
    FINISH_LENGTH,
    FINISH_STOP,
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
    RequestAbortedError,
    SamplingParams,
    StreamDelta,
    TokenConstraint,
)

__all__ = [
    "BASE_ADAPTER",
    "FINISH_LENGTH",
    "FINISH_STOP",
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
    "RequestAbortedError",
    "RequestSink",
    "SamplingParams",
    "StreamDelta",
    "TokenConstraint",
]
