"""The local training schedule: durations, and the command it runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from serve.train_loop import TrainLoop, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1.5h", 5400.0), (" 2m ", 120.0)],
)
def test_durations_are_read_in_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-5m", "10 minutes", "m", "1d"])
def test_other_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_a_cycle_runs_the_training_job_with_auto_promote(tmp_path: Path) -> None:
    loop = TrainLoop(60, tmp_path, "http://127.0.0.1:1/", env={}, admin_key=None, log_dir=tmp_path)
    assert loop.command() == [
        sys.executable,
        "-m",
        "train_job",
        "run",
        "--data-dir",
        str(tmp_path),
        "--auto-promote",
    ]
    assert loop.base_url == "http://127.0.0.1:1"
