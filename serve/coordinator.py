"""RegistryCoordinator: how one admin request reaches every replica of the app.

A Serve handle sends each call to ONE replica; Serve has no broadcast. So the app has
this small single-replica deployment (no CPU reserved) that every registry watcher
long-polls: ``request_refresh`` bumps a generation number and wakes all waiters at
once, so each LLM server replica and each ingress replica re-reads the registry within
moments instead of at its next poll. LLM server replicas also post a ``ReplicaReport``
here after every poll and adapter change, which the ingress reads for ``/readyz``,
``/metrics`` and for waiting until a refresh has been acted on.

Limits: the state is soft. If this replica restarts, the generation starts again at 0
(watchers then see a generation lower than theirs and resynchronise) and reports
reappear within one poll interval. Replicas that died leave reports that go stale and
are dropped after ``max_age_s``. Watchers fall back to plain polling while it is down.
"""

from __future__ import annotations

import asyncio
import time

from ray import serve

from serve.replica_report import ReplicaReport

COORDINATOR_NAME = "RegistryCoordinator"


@serve.deployment(
    name=COORDINATOR_NAME,
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    # Every watcher keeps one long-poll open here.
    max_ongoing_requests=10_000,
    # Its calls are long-polls and reports: not worth an access log line each, nor
    # worth waiting for at shutdown.
    logging_config={"enable_access_log": False},
    graceful_shutdown_timeout_s=1,
)
class RegistryCoordinator:
    """Refresh generations and replica reports; state in memory only."""

    def __init__(self) -> None:
        self._generation = 0
        self._changed = asyncio.Condition()
        self._reports: dict[str, ReplicaReport] = {}

    async def request_refresh(self) -> int:
        """Ask every watcher to re-read the registry now; returns the new generation."""
        async with self._changed:
            self._generation += 1
            self._changed.notify_all()
            return self._generation

    async def wait_for_refresh(self, seen: int, timeout_s: float) -> int:
        """Return the generation once it differs from ``seen``, or after ``timeout_s``."""
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._generation != seen), timeout_s
                )
            except TimeoutError:
                pass
            return self._generation

    async def generation(self) -> int:
        return self._generation

    async def report(self, report: ReplicaReport) -> None:
        self._reports[report.replica_id] = report

    async def reports(self, max_age_s: float) -> list[ReplicaReport]:
        """Reports newer than ``max_age_s``; older ones (dead replicas) are dropped."""
        cutoff = time.time() - max_age_s
        self._reports = {k: r for k, r in self._reports.items() if r.reported_at >= cutoff}
        return sorted(self._reports.values(), key=lambda report: report.replica_id)
