"""RegistryCoordinator: how one admin request reaches every replica of the app.

A Serve handle sends each call to ONE replica; Serve has no broadcast. So the app has
this small single-replica deployment (no CPU reserved) that every registry watcher
long-polls: ``request_refresh`` bumps a generation number and wakes all waiters at
once, so each LLM server replica re-reads the registry within moments instead of at
its next poll. LLM server replicas also post a ``ReplicaReport``
here after every poll and adapter change, which the HTTP front reads for ``/readyz`` and
for waiting until a refresh has been acted on. ``/metrics`` wants the engines' state at
scrape time, not at the last poll: ``fresh_scrapes`` bumps a scrape generation that every
LLM replica long-polls (``wait_for_scrape``), and waits a moment for their answers
(``answer_scrape``: a report and the replica's own metric samples); see
:mod:`serve.replica_report`.

The coordinator also runs the canary controller (``ouro.rollout.CanaryController``),
because it is the one component that lives as long as serving, once per install, the same
on one machine and in a cluster, and it already gathers every replica's series: every
``canary_interval_s`` it takes a fresh scrape, hands the replicas' rollout counts to the
controller (which reads and writes the registry), and asks every watcher to re-read the
registry so a new share or a decision reaches all replicas at once. The controller's
progress is saved in the registry at each evaluation, so a restart loses at most one
interval's counts.

Limits: the state is soft. If this replica restarts, the generation starts again at 0
(watchers then see a generation lower than theirs and resynchronise) and reports
reappear within one poll interval. Replicas that died leave reports that go stale and
are dropped after ``max_age_s``. Watchers fall back to plain polling while it is down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from ray import serve

from ouro.rollout import CanaryController, CanaryPolicy, Rollout
from ouro.settings import OuroSettings
from serve.metrics import rollout_counts
from serve.registry_watcher import RegistryFactory, build_registry
from serve.replica_report import ReplicaReport, ReplicaScrape, report_max_age_s

logger = logging.getLogger(__name__)

COORDINATOR_NAME = "RegistryCoordinator"
CANARY_SCRAPE_WAIT_S = 2.0
"""How long an evaluation waits for the replicas' fresh counts (slow ones give their last)."""


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

    async def __init__(
        self,
        settings: OuroSettings | None = None,
        registry_factory: RegistryFactory | None = None,
    ) -> None:
        """With ``settings``, the canary controller runs (see the module docstring)."""
        self._generation = 0
        self._changed = asyncio.Condition()
        self._reports: dict[str, ReplicaReport] = {}
        self._scrape = 0
        self._scrape_asked = asyncio.Condition()
        self._metrics: dict[str, tuple] = {}
        """Per replica, the metric samples of its newest scrape answer."""
        self._answered: dict[str, int] = {}
        """Per replica, the newest scrape generation it has answered."""
        self._answers = asyncio.Condition()
        self._canary_task: asyncio.Task | None = None
        if settings is not None:
            registry = (registry_factory or build_registry)(settings)
            controller = CanaryController(Rollout(registry, CanaryPolicy.from_settings(settings)))
            self._canary_task = asyncio.create_task(
                self._run_canary(
                    controller,
                    settings.canary_interval_s,
                    report_max_age_s(settings.registry_poll_interval_s),
                )
            )

    async def _run_canary(
        self, controller: CanaryController, interval_s: float, report_max_age: float
    ) -> None:
        """Evaluate the running canary every ``interval_s`` (nothing while none runs)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                scrapes = await self.fresh_scrapes(report_max_age, CANARY_SCRAPE_WAIT_S)
                verdict = await asyncio.to_thread(controller.evaluate, rollout_counts(scrapes))
            except Exception as exc:  # noqa: BLE001 - a registry outage waits for the next interval
                logger.warning("canary evaluation failed, trying again in %ss: %s", interval_s, exc)
                continue
            if verdict is not None:
                await self.request_refresh()

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
        self._answered = {k: g for k, g in self._answered.items() if k in self._reports}
        self._metrics = {k: m for k, m in self._metrics.items() if k in self._reports}
        return sorted(self._reports.values(), key=lambda report: report.replica_id)

    # -- scrapes -----------------------------------------------------------------------------
    async def wait_for_scrape(self, seen: int, timeout_s: float) -> int:
        """Return the scrape generation once it differs from ``seen``, or after ``timeout_s``."""
        async with self._scrape_asked:
            try:
                await asyncio.wait_for(
                    self._scrape_asked.wait_for(lambda: self._scrape != seen), timeout_s
                )
            except TimeoutError:
                pass
            return self._scrape

    async def answer_scrape(self, scrape: ReplicaScrape, generation: int) -> None:
        """A replica's fresh report and samples for scrape ``generation``."""
        report = scrape.report
        async with self._answers:
            self._reports[report.replica_id] = report
            self._metrics[report.replica_id] = scrape.metrics
            previous = self._answered.get(report.replica_id, -1)
            self._answered[report.replica_id] = max(previous, generation)
            self._answers.notify_all()

    async def fresh_scrapes(self, max_age_s: float, wait_s: float) -> list[ReplicaScrape]:
        """Ask every live replica for a fresh report; wait up to ``wait_s`` for them.

        A replica that has not answered by then is returned with its last report and
        samples, marked ``stale``, so one slow replica cannot hold up a scrape.
        """
        expected = {report.replica_id for report in await self.reports(max_age_s)}
        async with self._scrape_asked:
            self._scrape += 1
            generation = self._scrape
            self._scrape_asked.notify_all()

        def all_answered() -> bool:
            return all(self._answered.get(replica, -1) >= generation for replica in expected)

        async with self._answers:
            try:
                await asyncio.wait_for(self._answers.wait_for(all_answered), wait_s)
            except TimeoutError:
                pass
        return [
            ReplicaScrape(
                report
                if self._answered.get(report.replica_id, -1) >= generation
                else replace(report, stale=True),
                self._metrics.get(report.replica_id, ()),
            )
            for report in sorted(self._reports.values(), key=lambda report: report.replica_id)
        ]
