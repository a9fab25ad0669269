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
from prometheus_client.parser import text_string_to_metric_families

from ouro.ledger import LedgerUnavailableError
from ouro.registry import CycleOutcome, TrainingCycles
from ouro.settings import OuroSettings
from serve.auth import Caller
from serve.coordinator import RegistryCoordinator
from serve.metrics import InstallState, ServeMetrics, answered_by
from serve.protocol import FeedbackRequest
from serve.replica_report import ReplicaReport, ReplicaScrape, ScrapeAnswerer, ScrapedReports
from serve.serving_feedback import Feedback

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

    def make_scrape(self) -> ReplicaScrape:
        return ReplicaScrape(report(self.replica_id, self.loads))


class SlowCoordinator:
    """A coordinator that holds every report a replica sends while it is not answering."""

    def __init__(self, coordinator, replicas: dict[str, Replica]) -> None:
        self._coordinator = coordinator
        self._replicas = replicas

    def __getattr__(self, name: str):
        return getattr(self._coordinator, name)

    async def answer_scrape(self, fresh: ReplicaScrape, generation: int) -> None:
        while not self._replicas[fresh.report.replica_id].answering:
            await asyncio.sleep(0.05)
        await self._coordinator.answer_scrape(fresh, generation)


async def new_coordinator(*args):
    """A RegistryCoordinator outside Serve (its constructor is async, as Serve allows)."""
    cls = RegistryCoordinator.func_or_class
    coordinator = cls.__new__(cls)
    await coordinator.__init__(*args)
    return coordinator


async def _with_replicas(test, count: int = 2) -> None:
    coordinator = await new_coordinator()
    replicas = {f"r{i}": Replica(f"r{i}") for i in range(count)}
    handle = FakeHandle(SlowCoordinator(coordinator, replicas))
    answerers = [ScrapeAnswerer(handle, replica.make_scrape) for replica in replicas.values()]
    for replica in replicas.values():  # their periodic reports (at start and each poll)
        await coordinator.report(replica.make_scrape().report)
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
        reports = await coordinator.fresh_scrapes(600.0, 5.0)
        assert time.monotonic() - started < 1.0  # answered, not timed out
        assert [(s.report.replica_id, s.report.adapter_loads, s.report.stale) for s in reports] == [
            ("r0", 3, False),
            ("r1", 3, False),
        ]
        replicas["r1"].loads = 5  # and a second scrape sees the next change
        reports = await coordinator.fresh_scrapes(600.0, 5.0)
        assert [s.report.adapter_loads for s in reports] == [3, 5]

    run(test)


def test_a_replica_that_does_not_answer_in_time_keeps_its_last_report_marked_stale() -> None:
    async def test(coordinator, handle, replicas) -> None:
        replicas["r1"].answering = False
        for replica in replicas.values():
            replica.loads = 2
        started = time.monotonic()
        reports = await coordinator.fresh_scrapes(600.0, WAIT_S)
        elapsed = time.monotonic() - started
        assert WAIT_S <= elapsed < WAIT_S + 0.5  # the slow replica did not hold it up longer
        assert [(s.report.replica_id, s.report.adapter_loads, s.report.stale) for s in reports] == [
            ("r0", 2, False),
            ("r1", 0, True),
        ]
        replicas["r1"].answering = True
        reports = await coordinator.fresh_scrapes(600.0, 5.0)
        assert [(s.report.adapter_loads, s.report.stale) for s in reports] == [
            (2, False),
            (2, False),
        ]

    run(test)


def test_dead_replicas_reports_are_dropped_not_waited_for() -> None:
    async def test(coordinator, handle, replicas) -> None:
        await coordinator.report(replace(report("gone"), reported_at=time.time() - 100))
        started = time.monotonic()
        reports = await coordinator.fresh_scrapes(50.0, 5.0)
        assert time.monotonic() - started < 1.0
        assert [s.report.replica_id for s in reports] == ["r0", "r1"]

    run(test)


def test_the_exposition_says_which_replicas_are_stale() -> None:
    async def test(coordinator, handle, replicas) -> None:
        replicas["r0"].answering = False
        scraped = ScrapedReports(handle, fallback=_no_fallback, max_age_s=600.0, wait_s=WAIT_S)
        metrics = ServeMetrics("r1", scrapes=lambda: scraped.latest, refresh=scraped.refresh)
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
        fresh_scrapes = Down()

    old = replace(report("r0"), reported_at=time.time() - 30)

    async def fallback() -> list[ReplicaReport]:
        return [old, report("r1")]  # r1: asked directly, just now

    async def scrape() -> list[ReplicaReport]:
        await asyncio.sleep(0.01)  # r1's report is made after the scrape began
        return await ScrapedReports(DownCoordinator(), fallback, 600.0).refresh()

    scrapes = asyncio.run(scrape())
    assert [(s.report.replica_id, s.report.stale, s.metrics) for s in scrapes] == [
        ("r0", True, ()),
        ("r1", False, ()),
    ]


def test_any_replica_exports_every_replicas_own_series_labelled_by_replica() -> None:
    """Each replica's front counts its own clients; whichever replica a scrape reaches
    exports them all, each sample labelled with the replica it came from."""
    r0, r1 = ServeMetrics("r0"), ServeMetrics("r1")
    r0.requests.labels(route="/v1/models", method="GET", status="200").inc(3)
    r1.requests.labels(route="/v1/models", method="GET", status="200").inc(2)
    r1.feedback.labels(answered_by="adapter").inc()
    answers = [
        ReplicaScrape(report("r0"), ()),  # r0 answers with the live registry it owns
        ReplicaScrape(report("r1"), r1.own_families()),
    ]
    exporter = ServeMetrics("r0", scrapes=lambda: answers)
    exporter.requests.labels(route="/v1/models", method="GET", status="200").inc(3)
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exporter.render().decode())
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[name, frozenset(labels.items())]

    route = {"route": "/v1/models", "method": "GET", "status": "200"}
    assert value("ouro_requests_total", **route, replica="r0") == 3
    assert value("ouro_requests_total", **route, replica="r1") == 2
    assert value("ouro_feedback_records_total", answered_by="adapter", replica="r1") == 1
    assert value("ouro_replica_ready", replica="r1") == 1
    # Nothing exported without a replica label but the install's own gauges.
    assert all(
        dict(labels).get("replica") for (name, labels) in samples if name.startswith("ouro_")
    )


def test_the_install_state_is_exported_once_without_a_replica_label() -> None:
    state = InstallState(
        corrections_pending=7,
        latest_version_at=1_700_000_000.0,
        cycles=TrainingCycles().after(CycleOutcome.GATES_FAILED, 1_700_000_100.0),
    )
    text = ServeMetrics("r0", install_state=lambda: state).render().decode()
    assert "ouro_corrections_pending 7.0" in text
    assert "ouro_latest_version_timestamp_seconds 1.7e+09" in text
    assert "ouro_training_consecutive_failed_cycles 1.0" in text
    assert 'ouro_training_last_cycle_timestamp_seconds{outcome="gates_failed"}' in text


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("ouro@v3", "adapter"),
        ("ouro@alice/v2", "adapter"),
        ("ouro-base", "base"),
        ("ouro", "unknown"),  # an alias does not say which version answered
        (None, "unknown"),
        ("gpt-4", "unknown"),
    ],
)
def test_a_correction_is_counted_by_who_gave_the_corrected_answer(
    model: str | None, expected: str
) -> None:
    assert answered_by(model) == expected


def test_feedback_counts_a_ledger_that_cannot_write_but_not_a_bad_request(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OuroLedgerWriteFailures reads this counter: the volume failing, never bad input."""
    metrics = ServeMetrics("r0")
    settings = OuroSettings(data_dir=tmp_path, allow_unauthenticated=True)
    feedback = Feedback(settings, "r0", metrics, lambda: None)
    body = FeedbackRequest(
        messages=[{"role": "user", "content": "Who wrote Hamlet?"}],
        completion="Marlowe.",
        correction="Shakespeare wrote Hamlet.",
        model="ouro@v1",
    )
    caller = Caller(key_hash=None, admin=True)

    def create(request: FeedbackRequest = body) -> int:
        return asyncio.run(feedback.create(request, caller)).status_code

    assert create() == 201
    assert create(body.model_copy(update={"correction": "Marlowe."})) == 400  # no change

    def disk_full(**_: object) -> None:
        raise LedgerUnavailableError("No space left on device")

    monkeypatch.setattr(feedback._ledger, "append", disk_full)
    assert create() == 503
    text = metrics.render().decode()
    assert 'ouro_feedback_records_total{answered_by="adapter",replica="r0"} 1.0' in text
    assert 'ouro_ledger_write_failures_total{replica="r0"} 1.0' in text
