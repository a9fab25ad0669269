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
