"""The cycle lock: one holder at a time, released when its holder dies (even by SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from train_job.lock import CycleBusyError, CycleLock

HOLD_LOCK = """
import sys, time
from pathlib import Path
from train_job.lock import CycleLock
with CycleLock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_holder_is_refused_until_the_first_releases(tmp_path: Path) -> None:
    with CycleLock(tmp_path):
        with pytest.raises(CycleBusyError, match=str(os.getpid())):
            with CycleLock(tmp_path):
                pass
    with CycleLock(tmp_path):  # released on exit
        pass


def test_the_lock_dies_with_a_killed_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CycleBusyError, match=str(holder.pid)):
            with CycleLock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with CycleLock(tmp_path):
        pass
