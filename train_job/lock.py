"""One training cycle at a time per data dir: an exclusive ``fcntl`` lock on a file.

Why a file lock and not an MLflow-side lease: MLflow has no compare-and-set, so a lease
kept in tags can be taken by two cycles at once, and a crashed holder leaves it behind
until it expires. The kernel releases an ``flock`` the moment its holder dies (SIGKILL
included), so a killed cycle never blocks the next one. It covers every cycle sharing a
data dir: ``python -m serve --train-every`` plus an operator's ``python -m train_job run``
on one machine. In a cluster the CronJob's ``concurrencyPolicy: Forbid`` keeps scheduled
Jobs apart, and ``python -m train_job trigger`` refuses to start a Job while one of the
CronJob's Jobs is still active. As a last guard, registration checks that no version
appeared in the registry since the cycle began (see ``cycle.py``).
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from types import TracebackType

from ouro.errors import OuroError

logger = logging.getLogger(__name__)

LOCK_FILE = "train_job.lock"


class CycleBusyError(OuroError):
    """Another training cycle holds the lock on this data dir."""


class CycleLock:
    """Context manager holding ``<data_dir>/train_job.lock`` exclusively (never waits)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> CycleLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise CycleBusyError(
                f"another training cycle is running on this data dir (lock {self.path}"
                f"{', held by pid ' + holder if holder else ''})"
            ) from None
        # Who holds it, for the message above; the lock itself is the flock, not this text.
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        logger.debug("holding %s", self.path)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
