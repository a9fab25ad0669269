"""The local loop: run a training cycle on a schedule, then make Serve look at the registry.

On one machine this stands in for the cluster's CronJob: ``python -m serve
--train-every 10m`` runs ``python -m train_job run --data-dir DIR --auto-promote`` as a
subprocess every 10 minutes against the same data dir and registry, and after each
cycle asks the app to re-read the registry (``POST /admin/registry/refresh``) so a
new production version is served within seconds.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from ouro.notify import notify_serve

logger = logging.getLogger(__name__)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
REFRESH_WAIT_S = 120.0
"""How long the refresh call waits for every LLM replica to load the new version."""


def parse_duration(text: str) -> float:
    """Seconds in '90', '90s', '10m' or '1.5h'."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"not a positive duration: {text!r} (examples: 90s, 10m, 1h)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


class TrainLoop:
    """Runs training cycles in a background thread until ``stop``."""

    def __init__(
        self,
        interval_s: float,
        data_dir: Path,
        base_url: str,
        *,
        env: dict[str, str],
        admin_key: str | None,
        log_dir: Path,
    ) -> None:
        self.interval_s = interval_s
        self.data_dir = data_dir
        self.base_url = base_url.rstrip("/")
        self.env = env
        self.admin_key = admin_key
        self.log_dir = log_dir
        self._stopping = threading.Event()
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="train-loop", daemon=True)

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "train_job",
            "run",
            "--data-dir",
            str(self.data_dir),
            "--auto-promote",
        ]

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the schedule; a cycle in progress is terminated (it registers nothing)."""
        self._stopping.set()
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                self._process.terminate()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            code = self.run_cycle()
            if code == 0 and not self._stopping.is_set():
                self.refresh()

    def run_cycle(self) -> int | None:
        """One ``train_job run``; returns its exit code (None when stopped first)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / "train-loop.log"
        logger.info("training cycle starting (log: %s)", log_path)
        with log_path.open("ab") as log, self._lock:
            if self._stopping.is_set():
                return None
            self._process = subprocess.Popen(
                self.command(), env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        code = self._process.wait()
        # train_job run: 0 registered or nothing to do, 3 gates failed, other: errors.
        if code == 0:
            logger.info("training cycle done")
        elif code == 3:
            logger.warning("training cycle: the new adapter failed its gates; nothing promoted")
        else:
            logger.error("training cycle failed with exit code %s; see %s", code, log_path)
        return code

    def refresh(self) -> None:
        """Ask the app to re-read the registry now and wait for its LLM replicas."""
        notify_serve(self.base_url, self.admin_key, REFRESH_WAIT_S)


def train_env(overrides: dict[str, str]) -> dict[str, str]:
    """The training subprocess's environment: ours plus the settings Serve runs with."""
    return {**os.environ, **overrides}
