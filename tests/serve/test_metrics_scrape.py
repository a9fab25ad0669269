"""Scrape-time replica reports: the coordinator asks every LLM replica for a fresh report
and waits a moment; a replica that does not answer keeps its last report, marked stale.

The coordinator class runs in-process behind a small stand-in for a Serve handle (each
method's ``.remote(...)`` is awaitable), and the replicas are ``ScrapeAnswerer`` loops.
The end-to-end test through Ray Serve is in ``test_continuous_batching.py``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from serve.coordinator import RegistryCoordinator
from serve.metrics import ServeMetrics
from serve.replica_report import ReplicaReport, ScrapeAnswerer, ScrapedReports

WAIT_S = 0.3


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replicas long-poll briefly, so a stopped loop ends at once."""
    monkeypatch.setattr("serve.replica_report.SCRAPE_LONG_POLL_S", 1.0)


class _Method:
    def __init__(self, method) -> None:
        self._method = method

    def remote(self, *args):
        return self._method(*args)


class FakeHandle:
    """What the code under test uses of a Serve deployment handle."""

    def __init__(self, target) -> None:
        self._target = target

    def __getattr__(self, name: str) -> _Method:
        return _Method(getattr(self._target, name))


def report(replica_id: str, aborted: int = 0) -> ReplicaReport:
    return ReplicaReport(
        replica_id=replica_id,
        reported_at=time.time(),
        production_version=None,
        production_known=True,
        refresh_generation=0,
        adapters_loaded=(),
        adapter_loads=aborted,  # stands for "the replica's state now"
        adapter_evictions=0,
        adapter_load_failures=0,
        registry_reachable=True,
        registry_error=None,
    )


class Replica:
    """An LLM replica's state; ``answering`` False stands for a replica too busy to answer."""

    def __init__(self, replica_id: str) -> None:
        self.replica_id = replica_id
        self.loads = 0
        self.answering = True

    def make_report(self) -> ReplicaReport:
        return report(self.replica_id, self.loads)


class SlowCoordinator:
    """A coordinator that holds every report a replica sends while it is not answering."""

    def __init__(self, coordinator, replicas: dict[str, Replica]) -> None:
        self._coordinator = coordinator
        self._replicas = replicas

    def __getattr__(self, name: str):
        return getattr(self._coordinator, name)

    async def answer_scrape(self, fresh: ReplicaReport, generation: int) -> None:
        while not self._replicas[fresh.replica_id].answering:
            await asyncio.sleep(0.05)
        await self._coordinator.answer_scrape(fresh, generation)


def coordinator_class():
    return RegistryCoordinator.func_or_class


async def _with_replicas(test, count: int = 2) -> None:
    coordinator = coordinator_class()()
    replicas = {f"r{i}": Replica(f"r{i}") for i in range(count)}
    handle = FakeHandle(SlowCoordinator(coordinator, replicas))
    answerers = [ScrapeAnswerer(handle, replica.make_report) for replica in replicas.values()]
    for replica in replicas.values():  # their periodic reports (at start and each poll)
        await coordinator.report(replica.make_report())
    for answerer in answerers:
        answerer.start()
    await asyncio.sleep(0.1)  # each is waiting for a scrape now
    try:
        await test(coordinator, handle, replicas)
    finally:
        for answerer in answerers:
            await answerer.stop()


def run(test, count: int = 2) -> None:
    asyncio.run(_with_replicas(test, count))


def test_a_scrape_gets_every_replicas_state_now_not_its_last_report() -> None:
    async def test(coordinator, handle, replicas) -> None:
        for replica in replicas.values():
            replica.loads = 3  # changed since their last periodic report
        started = time.monotonic()
        reports = await coordinator.fresh_reports(600.0, 5.0)
        assert time.monotonic() - started < 1.0  # answered, not timed out
        assert [(r.replica_id, r.adapter_loads, r.stale) for r in reports] == [
            ("r0", 3, False),
            ("r1", 3, False),
        ]
        replicas["r1"].loads = 5  # and a second scrape sees the next change
        reports = await coordinator.fresh_reports(600.0, 5.0)
        assert [r.adapter_loads for r in reports] == [3, 5]

    run(test)


def test_a_replica_that_does_not_answer_in_time_keeps_its_last_report_marked_stale() -> None:
    async def test(coordinator, handle, replicas) -> None:
        replicas["r1"].answering = False
        for replica in replicas.values():
            replica.loads = 2
        started = time.monotonic()
        reports = await coordinator.fresh_reports(600.0, WAIT_S)
        elapsed = time.monotonic() - started
        assert WAIT_S <= elapsed < WAIT_S + 0.5  # the slow replica did not hold it up longer
        assert [(r.replica_id, r.adapter_loads, r.stale) for r in reports] == [
            ("r0", 2, False),
            ("r1", 0, True),
        ]
        replicas["r1"].answering = True
        reports = await coordinator.fresh_reports(600.0, 5.0)
        assert [(r.adapter_loads, r.stale) for r in reports] == [(2, False), (2, False)]

    run(test)


def test_dead_replicas_reports_are_dropped_not_waited_for() -> None:
    async def test(coordinator, handle, replicas) -> None:
        await coordinator.report(replace(report("gone"), reported_at=time.time() - 100))
        started = time.monotonic()
        reports = await coordinator.fresh_reports(50.0, 5.0)
        assert time.monotonic() - started < 1.0
        assert [r.replica_id for r in reports] == ["r0", "r1"]

    run(test)


def test_the_exposition_says_which_replicas_are_stale() -> None:
    async def test(coordinator, handle, replicas) -> None:
        replicas["r0"].answering = False
        scraped = ScrapedReports(handle, fallback=_no_fallback, max_age_s=600.0, wait_s=WAIT_S)
        metrics = ServeMetrics(
            replica_reports=lambda: scraped.latest, refresh_replica_reports=scraped.refresh
        )
        await metrics.refresh()
        text = metrics.render().decode()
        assert 'ouro_replica_report_stale{replica="r0"} 1.0' in text
        assert 'ouro_replica_report_stale{replica="r1"} 0.0' in text
        assert 'ouro_replica_report_age_seconds{replica="r1"}' in text

    run(test)


async def _no_fallback() -> list[ReplicaReport]:
    raise AssertionError("the coordinator answered; no fallback needed")


def test_without_the_coordinator_a_scrape_falls_back_to_the_last_reports_marked_stale() -> None:
    class Down:
        def remote(self, *args):
            raise TimeoutError("the coordinator is away")

    class DownCoordinator:
        fresh_reports = Down()

    old = replace(report("r0"), reported_at=time.time() - 30)

    async def fallback() -> list[ReplicaReport]:
        return [old, report("r1")]  # r1: asked directly, just now

    async def scrape() -> list[ReplicaReport]:
        await asyncio.sleep(0.01)  # r1's report is made after the scrape began
        return await ScrapedReports(DownCoordinator(), fallback, 600.0).refresh()

    reports = asyncio.run(scrape())
    assert [(r.replica_id, r.stale) for r in reports] == [("r0", True), ("r1", False)]
