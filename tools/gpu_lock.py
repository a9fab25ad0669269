"""The GPU images' dependency set, resolved by uv: ``requirements-gpu.lock``.

Its inputs are requirements.txt (the CPU stack the test suite runs) with every line of
requirements-gpu.txt in place of requirements.txt's line for the same package: that is
where the images pin their own versions (a CUDA 12 torch, the transformers/TRL/datasets
that Unsloth accepts). No overrides: the resolver enforces every package's declared
requirements, Unsloth's included, so a lock that resolves is a consistent set.

    python -m tools.gpu_lock           # write requirements-gpu.lock
    python -m tools.gpu_lock --check   # exit 1 when the lock is not what its inputs give
"""

from __future__ import annotations

import argparse
import difflib
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from uv import find_uv_bin

from tools.paths import REPO_ROOT

logger = logging.getLogger(__name__)

CPU_REQUIREMENTS = REPO_ROOT / "requirements.txt"
GPU_REQUIREMENTS = REPO_ROOT / "requirements-gpu.txt"
GPU_LOCK = REPO_ROOT / "requirements-gpu.lock"
INDEX_URL = "https://pypi.org/simple"
PYTHON_VERSION = "3.11"
"""The images' Python: rayproject/ray:*-py311 and python:3.11-slim."""
PLATFORM = "x86_64-manylinux_2_28"
"""glibc 2.28 or newer on x86_64: both images' bases (Ubuntu 22.04, Debian 12)."""
MERGED_NAME = "requirements-gpu.in"
"""The merged inputs' file name, as the lock's "via" annotations cite it."""
RESOLVE_TIMEOUT_S = 300


class LockError(Exception):
    """The lock cannot be produced or checked."""


def _requirement_lines(text: str) -> list[str]:
    lines = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def merged_inputs(cpu_text: str, gpu_text: str) -> str:
    """requirements.txt's lines with requirements-gpu.txt's replacing the same packages."""
    gpu = _requirement_lines(gpu_text)
    replaced = {canonicalize_name(Requirement(line).name) for line in gpu}
    kept = [
        line
        for line in _requirement_lines(cpu_text)
        if canonicalize_name(Requirement(line).name) not in replaced
    ]
    return (
        "\n".join(
            [
                "# requirements.txt, with requirements-gpu.txt's pins in place of its own",
                *kept,
                *gpu,
            ]
        )
        + "\n"
    )


def resolve(output: Path) -> None:
    """Resolve the inputs into ``output``; an existing ``output`` is uv's preferred pins."""
    merged = merged_inputs(CPU_REQUIREMENTS.read_text(), GPU_REQUIREMENTS.read_text())
    with tempfile.TemporaryDirectory(prefix="ouro-gpu-lock-") as tmp:
        work = Path(tmp)
        (work / MERGED_NAME).write_text(merged)
        if output.exists():
            shutil.copyfile(output, work / "lock.txt")
        command = [
            find_uv_bin(),
            "pip",
            "compile",
            MERGED_NAME,
            "--output-file=lock.txt",
            f"--python-version={PYTHON_VERSION}",
            f"--python-platform={PLATFORM}",
            f"--index-url={INDEX_URL}",
            "--generate-hashes",
            "--custom-compile-command=python -m tools.gpu_lock",
            "--quiet",
        ]
        try:
            done = subprocess.run(
                command, cwd=work, capture_output=True, text=True, timeout=RESOLVE_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as exc:
            raise LockError(f"uv did not resolve within {RESOLVE_TIMEOUT_S} s") from exc
        if done.returncode != 0:
            raise LockError(f"the GPU set does not resolve:\n{done.stderr.strip()}")
        shutil.copyfile(work / "lock.txt", output)


def check() -> list[str]:
    """The diff between the committed lock and what its inputs resolve to (empty: same)."""
    if not GPU_LOCK.exists():
        raise LockError(f"{GPU_LOCK.name} is missing: run python -m tools.gpu_lock")
    with tempfile.TemporaryDirectory(prefix="ouro-gpu-lock-check-") as tmp:
        fresh = Path(tmp) / GPU_LOCK.name
        shutil.copyfile(GPU_LOCK, fresh)  # keeps every pin that still satisfies the inputs
        resolve(fresh)
        return list(
            difflib.unified_diff(
                GPU_LOCK.read_text().splitlines(),
                fresh.read_text().splitlines(),
                "committed",
                "resolved now",
                lineterm="",
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_lock", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when the lock is stale")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if not args.check:
            resolve(GPU_LOCK)
            logger.info("wrote %s", GPU_LOCK.name)
            return 0
        diff = check()
    except LockError as exc:
        logger.error("%s", exc)
        return 1
    if diff:
        logger.error(
            "%s is not what its inputs resolve to (run python -m tools.gpu_lock):\n%s",
            GPU_LOCK.name,
            "\n".join(diff),
        )
        return 1
    logger.info("%s is what its inputs resolve to", GPU_LOCK.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
