"""Install torch for ``make install``: the CPU build where pip can get one, else the default.

PyTorch publishes its CPU-only Linux wheels (``2.13.0+cpu``) on its own index, not on PyPI;
PyPI's Linux wheel is the CUDA build (0.5 GB, plus several GB of ``nvidia-*`` packages).
The CPU build is asked for first, from whatever sources pip is configured with (pip.conf,
``PIP_INDEX_URL``/``PIP_EXTRA_INDEX_URL``, ``--find-links``); where none has it, PyPI's
build is installed instead, with a note: it computes on CPU just as fast, only bigger.
Standard library only: it runs before anything else is installed.

    python -m tools.install_torch install   # first, so no dependency picks torch for us
    python -m tools.install_torch check     # last: which build ended up installed
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

TORCH_VERSION = "2.13.0"
"""The torch every CPU install pins (requirements.txt)."""

CPU_INDEX_HINT = (
    "rm -r .venv && PIP_EXTRA_INDEX_URL=<PyTorch's CPU wheel index, as PyTorch's install page "
    "names it> make install"
)
"""How to get the CPU build from PyTorch's own index, for a user who can reach it."""

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]


@dataclass(frozen=True)
class TorchBuild:
    """What ``import torch`` reports about the installed build."""

    version: str
    """``torch.__version__``, e.g. ``2.13.0+cpu``."""
    cuda: str | None = None
    """``torch.version.cuda``: None in a CPU build."""
    hip: str | None = None
    """``torch.version.hip``: None unless a ROCm build."""


def describe(build: TorchBuild, expected: str = TORCH_VERSION) -> tuple[bool, str]:
    """(fine, a note for the user): only another torch version than the pin is not fine."""
    public = build.version.split("+", 1)[0]
    if public != expected:
        return False, (
            f"torch {build.version} is installed, but the project pins {expected}: "
            "a later install replaced it (check requirements*.txt for what asks for torch)."
        )
    if build.cuda is None and build.hip is None:
        return True, f"torch {build.version}: the CPU build, the smallest, all a CPU needs."
    accelerator = f"CUDA {build.cuda}" if build.cuda else f"ROCm {build.hip}"
    return True, (
        f"torch {build.version} ({accelerator} build): no CPU build on the configured package "
        "indexes, so pip installed the default one. Ouro runs on CPU with it just as fast, and "
        "uses the GPU if there is one; it costs several GB more disk and a slower first "
        f"install. For the CPU build from PyTorch's own index: {CPU_INDEX_HINT}"
    )


def install(version: str = TORCH_VERSION, run: Runner | None = None) -> int:
    """Install torch ``version``, its CPU build when pip finds one; pip's exit status."""
    run = run or _run_pip
    cpu = run(["install", "-q", f"torch=={version}+cpu"])
    if cpu.returncode == 0:
        return 0
    reason = (cpu.stderr or "").strip().splitlines()[-1:] or ["pip failed"]
    print(
        f"NOTE: no torch {version}+cpu on the configured package indexes ({reason[0]}).\n"
        f"      Installing the default torch {version} instead; on Linux that is the CUDA "
        "build, several GB to download.",
        flush=True,
    )
    default = run(["install", "-q", f"torch=={version}"])
    if default.returncode != 0:
        print(default.stderr or "", file=sys.stderr, end="")
    return default.returncode


def _run_pip(arguments: Sequence[str]) -> subprocess.CompletedProcess:
    # stderr is kept to say why the CPU build was not found; stdout (progress) goes through.
    command = [sys.executable, "-m", "pip", *arguments]
    return subprocess.run(command, stderr=subprocess.PIPE, text=True, check=False)


def installed_build() -> TorchBuild:
    import torch  # only for `check`, after the install

    return TorchBuild(torch.__version__, torch.version.cuda, getattr(torch.version, "hip", None))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["install", "check"])
    parser.add_argument("--version", default=TORCH_VERSION, help="torch version to pin")
    args = parser.parse_args(argv)
    if args.action == "install":
        return install(args.version)
    fine, note = describe(installed_build(), args.version)
    print(note if fine else f"ERROR: {note}")
    return 0 if fine else 1


if __name__ == "__main__":
    sys.exit(main())
