"""A start a newcomer can read: no harmless warning they cannot act on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_importing_ouro_first_silences_the_kernels_hub_notice() -> None:
    """bitsandbytes logs it on CPUs with AVX512-BF16 (as here) when ``kernels`` is absent."""
    done = subprocess.run(
        [sys.executable, "-c", "import ouro, bitsandbytes"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "kernels-community" not in done.stderr + done.stdout


def test_the_coordinator_and_the_http_front_import_no_model_library() -> None:
    """The coordinator's process never loads a model and stays light: no transformers, PEFT,
    bitsandbytes, xgrammar, ONNX Runtime or sentence-transformers (measured for the imports:
    0.7 GB -> 0.42 GB resident). The HTTP front's module imports none either; it runs inside
    the LLM server's process, which loads them for the engine and the router."""
    heavy = (
        "transformers",
        "peft",
        "bitsandbytes",
        "xgrammar",
        "onnxruntime",
        "sentence_transformers",
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, serve.ingress, serve.coordinator; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
