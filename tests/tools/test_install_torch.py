"""`make install`'s torch: the CPU build where pip finds one, else the default with a note."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest

from tools.install_torch import CPU_INDEX_HINT, TorchBuild, describe, install


class FakePip:
    """Records pip's arguments; fails the requirements listed in ``missing``."""

    def __init__(self, *missing: str) -> None:
        self.missing = set(missing)
        self.calls: list[list[str]] = []

    def __call__(self, arguments: Sequence[str]) -> subprocess.CompletedProcess:
        self.calls.append(list(arguments))
        if arguments[-1] in self.missing:
            error = f"ERROR: No matching distribution found for {arguments[-1]}\n"
            return subprocess.CompletedProcess(arguments, 1, stderr=error)
        return subprocess.CompletedProcess(arguments, 0, stderr="")


def test_the_cpu_build_is_installed_where_pip_finds_one() -> None:
    pip = FakePip()

    assert install("2.13.0", run=pip) == 0
    assert pip.calls == [["install", "-q", "torch==2.13.0+cpu"]]


def test_without_a_cpu_build_the_default_one_is_installed_with_a_note(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pip = FakePip("torch==2.13.0+cpu")

    assert install("2.13.0", run=pip) == 0

    assert pip.calls[-1] == ["install", "-q", "torch==2.13.0"]
    note = capsys.readouterr().out
    assert "NOTE: no torch 2.13.0+cpu" in note and "No matching distribution" in note


def test_a_failing_default_install_fails_and_shows_pip_s_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pip = FakePip("torch==2.13.0+cpu", "torch==2.13.0")

    assert install("2.13.0", run=pip) == 1
    assert "No matching distribution found for torch==2.13.0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("build", "fine", "says"),
    [
        (TorchBuild("2.13.0+cpu"), True, "the CPU build"),
        (TorchBuild("2.13.0"), True, "the CPU build"),  # macOS and aarch64 wheels on PyPI
        (TorchBuild("2.13.0", cuda="13.0"), True, "(CUDA 13.0 build)"),
        (TorchBuild("2.13.0+rocm7.1", hip="7.1"), True, "(ROCm 7.1 build)"),
        (TorchBuild("2.14.1+cpu"), False, "pins 2.13.0"),
    ],
)
def test_the_note_says_which_build_and_only_another_version_fails(
    build: TorchBuild, fine: bool, says: str
) -> None:
    ok, note = describe(build, "2.13.0")

    assert ok is fine
    assert says in note


def test_the_default_build_s_note_says_what_it_costs_and_how_to_get_the_cpu_one() -> None:
    _, note = describe(TorchBuild("2.13.0", cuda="13.0"), "2.13.0")

    assert "just as fast" in note and "several GB" in note and CPU_INDEX_HINT in note
