"""The repository files the docs site links to are committed, so a clean checkout builds."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from docs.hooks.repo_files import REPO_FILES

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", REPO_FILES)
def test_every_linked_repository_file_is_committed(path):
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        assert (ROOT / path).is_file(), f"{path} is linked from the docs but missing"
        return
    ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
    assert ignored.returncode == 1, f"{path} is linked from the docs but .gitignore drops it"
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", path], cwd=ROOT, capture_output=True
    )
    assert tracked.returncode == 0, f"{path} is linked from the docs but not committed"
