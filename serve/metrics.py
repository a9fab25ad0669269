"""Prometheus metrics, scraped at the app's own ``GET /metrics`` (a metrics or admin key).

Each replica counts what its clients see (status, tokens, time to first token, which
version answered, the router's decisions) on a prometheus_client registry of its own (no
process-global state). A scrape reaches one replica through the load balancer, and that
replica exports EVERY replica's series, each labelled ``replica``: ``ServeMetrics.refresh``
first asks every replica for a fresh report and its own samples (a replica that does not
answer within a second keeps its last ones, exported with ``ouro_replica_report_stale``
1), then ``ReplicaReportCollector`` exports them, with the reports' adapter counters and
engine state. So Prometheus scrapes exactly one target per
install, and sums over ``replica`` are right whichever replica answered. What no replica
owns (the ledger's backlog, the training cycles, the newest version) is exported once,
without a replica label, from the answering replica's view (``InstallState``).

Ray's own ``ray.serve.metrics`` go to Ray's metrics agent on another port, which a
cluster's Prometheus may scrape as well.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ouro.engine import EngineStats
from ouro.engine.types import BATCH_SIZE_BUCKETS, STEP_SECONDS_BUCKETS
from ouro.ledger import FeedbackRecord
from ouro.names import BASE_MODEL_NAME, UnknownModelError, parse_model_name, version_label
from ouro.registry import TrainingCycles
from ouro.rollout import TTFT_BUCKETS, ArmCounts, CanaryState, CounterKey, assigned_version
from ouro.routing import FORCED, MATCH, NO_INDEX, NO_MATCH
from serve.llm_calls import ROUTE_BASE, ServedModel
from serve.replica_report import ReplicaReport, ReplicaScrape

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_SIMILARITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
_ROUTER_CPU_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1)


class ReplicaReportCollector(Collector):
    """Exports every replica's own samples and its latest report, labelled ``replica``."""

    def __init__(
        self,
        scrapes: Callable[[], list[ReplicaScrape]],
        own: Callable[[], tuple[str, tuple[Metric, ...]]],
    ) -> None:
        """``own`` gives the answering replica's id and samples: its own are exported live,
        whatever its last scrape answer held."""
        self._scrapes = scrapes
        self._own = own

    def collect(self) -> Iterator:
        own_id, own_samples = self._own()
        scrapes = self._scrapes()
        samples = {scrape.report.replica_id: scrape.metrics for scrape in scrapes}
        samples[own_id] = own_samples
        yield from _labelled_by_replica(samples)
        yield from report_families(scrapes)


def _labelled_by_replica(samples: dict[str, Iterable[Metric]]) -> Iterator[Metric]:
    """Each replica's families merged into one per name, every sample labelled ``replica``."""
    merged: dict[str, Metric] = {}
    for replica, families in sorted(samples.items()):
        for family in families:
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                target.add_sample(
                    sample.name,
                    {**sample.labels, "replica": replica},
                    sample.value,
                    sample.timestamp,
                    sample.exemplar,
                )
    yield from merged.values()


_REPORT_SERIES: tuple[tuple[type, str, str, Callable[[ReplicaReport, float], float]], ...] = (
    (
        CounterMetricFamily,
        "ouro_adapter_loads",
        "Adapter versions loaded into an engine.",
        lambda report, now: report.adapter_loads,
    ),
    (
        CounterMetricFamily,
        "ouro_adapter_evictions",
        "Adapter versions removed from an engine.",
        lambda report, now: report.adapter_evictions,
    ),
    (
        CounterMetricFamily,
        "ouro_adapter_load_failures",
        "Adapter versions that could not be loaded.",
        lambda report, now: report.adapter_load_failures,
    ),
    (
        GaugeMetricFamily,
        "ouro_adapters_loaded",
        "Adapter versions in an engine now.",
        lambda report, now: len(report.adapters_loaded),
    ),
    (
        GaugeMetricFamily,
        "ouro_replica_production_version",
        "Version an LLM server replica answers 'ouro' with (0: the base model).",
        lambda report, now: report.production_version or 0,
    ),
    (
        GaugeMetricFamily,
        "ouro_replica_ready",
        "1 when a replica has loaded the production version and answered this scrape.",
        lambda report, now: 1 if report.production_known and not report.stale else 0,
    ),
    (
        GaugeMetricFamily,
        "ouro_replica_report_stale",
        "1 when an LLM server replica did not answer this scrape in time: its samples "
        "are from its last report.",
        lambda report, now: 1 if report.stale else 0,
    ),
    (
        GaugeMetricFamily,
        "ouro_replica_report_age_seconds",
        "Age of the report an LLM server replica's samples come from.",
        lambda report, now: max(0.0, now - report.reported_at),
    ),
)
"""The series each replica's report gives: (family kind, name, help, value)."""


def report_families(scrapes: list[ReplicaScrape]) -> Iterator[Metric]:
    """The replicas' reports as metric families, each sample labelled ``replica``."""
    families = [
        (kind(name, documentation, labels=["replica"]), value)
        for kind, name, documentation, value in _REPORT_SERIES
    ]
    engine = _EngineFamilies()
    now = time.time()
    for scrape in scrapes:
        report = scrape.report
        for family, value in families:
            family.add_metric([report.replica_id], value(report, now))
        if report.engine is not None:
            engine.add(report.replica_id, report.engine)
    yield from (family for family, _ in families)
    yield from engine.families()


@dataclass(frozen=True)
class InstallState:
    """What no single replica owns, as the answering replica sees it at a scrape."""

    corrections_pending: int | None = None
    """Feedback records after the newest version's ledger watermark (None: unreadable)."""
    latest_version_at: float | None = None
    """When the newest version was registered (Unix seconds; None: no version)."""
    cycles: TrainingCycles = field(default_factory=TrainingCycles)
    canary: CanaryState | None = None
    """The running canary (``ouro.rollout``), as the registry holds it."""


class InstallCollector(Collector):
    """Exports ``InstallState`` once per install (no replica label)."""

    def __init__(self, state: Callable[[], InstallState]) -> None:
        self._state = state

    def collect(self) -> Iterator:
        state = self._state()
        if state.corrections_pending is not None:
            yield GaugeMetricFamily(
                "ouro_corrections_pending",
                "Feedback records in the ledger after the newest version's watermark.",
                value=state.corrections_pending,
            )
        yield GaugeMetricFamily(
            "ouro_latest_version_timestamp_seconds",
            "When the newest adapter version was registered (0: none yet).",
            value=state.latest_version_at or 0,
        )
        yield GaugeMetricFamily(
            "ouro_training_consecutive_failed_cycles",
            "Shared training cycles in a row, since the last that registered a version, "
            "that failed or whose candidate the gates refused.",
            value=state.cycles.consecutive_failed,
        )
        last = GaugeMetricFamily(
            "ouro_training_last_cycle_timestamp_seconds",
            "When the newest shared training cycle of each outcome ended.",
            labels=["outcome"],
        )
        for outcome, at in sorted(state.cycles.last_at.items()):
            last.add_metric([outcome], at)
        yield last
        share = GaugeMetricFamily(
            "ouro_canary_share_percent",
            "Share of 'ouro' traffic the running canary answers (no sample: no canary).",
            labels=["version"],
        )
        statistic = GaugeMetricFamily(
            "ouro_canary_log_likelihood_ratio",
            "The canary's sequential test statistic at its last evaluation (rollback at the "
            "upper bound, promotion at the lower).",
            labels=["version"],
        )
        if state.canary is not None:
            label = version_label(state.canary.version)
            share.add_metric([label], state.canary.share)
            statistic.add_metric([label], state.canary.statistic)
        yield share
        yield statistic


class _EngineFamilies:
    """The engines' scheduler metrics, one sample per LLM server replica."""

    def __init__(self) -> None:
        labels = ["replica"]
        self.running = GaugeMetricFamily(
            "ouro_engine_running_requests", "Requests decoding or prefilling.", labels=labels
        )
        self.waiting = GaugeMetricFamily(
            "ouro_engine_waiting_requests", "Requests waiting for a place.", labels=labels
        )
        self.kv_usage = GaugeMetricFamily(
            "ouro_engine_kv_cache_usage",
            "Share of the KV-cache token budget reserved by running requests (0..1).",
            labels=labels,
        )
        self.aborted = CounterMetricFamily(
            "ouro_engine_aborted_requests",
            "Requests aborted before they finished (client gone, adapter removed).",
            labels=labels,
        )
        self.failed = CounterMetricFamily(
            "ouro_engine_failed_requests",
            "Requests that failed inside the engine (their neighbours went on).",
            labels=labels,
        )
        self.step_seconds = HistogramMetricFamily(
            "ouro_engine_step_seconds", "Time of one scheduling step.", labels=labels
        )
        self.batch_size = HistogramMetricFamily(
            "ouro_engine_batch_size", "Requests in one step (prefill and decode).", labels=labels
        )

    def add(self, replica: str, stats: EngineStats) -> None:
        self.running.add_metric([replica], stats.running_requests)
        self.waiting.add_metric([replica], stats.waiting_requests)
        self.kv_usage.add_metric([replica], stats.kv_cache_usage)
        self.aborted.add_metric([replica], stats.aborted_requests)
        self.failed.add_metric([replica], stats.failed_requests)
        self.step_seconds.add_metric(
            [replica],
            _buckets(STEP_SECONDS_BUCKETS, stats.step_seconds_buckets),
            stats.step_seconds_sum,
        )
        self.batch_size.add_metric(
            [replica],
            _buckets(BATCH_SIZE_BUCKETS, stats.batch_size_buckets),
            stats.batch_size_sum,
        )

    def families(self) -> tuple:
        return (
            self.running,
            self.waiting,
            self.kv_usage,
            self.aborted,
            self.failed,
            self.step_seconds,
            self.batch_size,
        )


def _buckets(bounds: tuple[float, ...], cumulative: tuple[int, ...]) -> list[tuple[str, int]]:
    return [(str(bound), count) for bound, count in zip(bounds, cumulative, strict=False)] + [
        ("+Inf", cumulative[-1])
    ]


_FEEDBACK_SIGNALS = {
    ("correction", None): "correction",
    ("rating", "up"): "thumbs_up",
    ("rating", "down"): "thumbs_down",
}
"""(record kind, rating) -> the rollout signal it is."""


def rollout_counts(scrapes: Iterable[ReplicaScrape]) -> dict[CounterKey, ArmCounts]:
    """Each replica's cumulative rollout counts per assigned version, from its scrape answer."""
    fields: dict[CounterKey, dict] = {}

    def entry(replica: str, version: str) -> dict:
        return fields.setdefault((replica, version), {"ttft": [0] * (len(TTFT_BUCKETS) + 1)})

    for scrape in scrapes:
        replica = scrape.report.replica_id
        for family in scrape.metrics:
            for sample in family.samples:
                version = sample.labels.get("version")
                if version is None:
                    continue
                value = int(sample.value)
                if sample.name == "ouro_rollout_requests_total":
                    counts = entry(replica, version)
                    counts["requests"] = counts.get("requests", 0) + value
                    if sample.labels.get("outcome") == "error":
                        counts["errors"] = counts.get("errors", 0) + value
                elif sample.name == "ouro_rollout_feedback_total":
                    signal = sample.labels.get("signal")
                    if signal in ("correction", "thumbs_up", "thumbs_down"):
                        counts = entry(replica, version)
                        key = "corrections" if signal == "correction" else signal
                        counts[key] = counts.get(key, 0) + value
                elif sample.name == "ouro_rollout_time_to_first_token_seconds_bucket":
                    _add_bucket(entry(replica, version)["ttft"], sample.labels["le"], value)
    result = {}
    for key, counts in fields.items():
        cumulative = counts.pop("ttft")
        per_bucket = [cumulative[0]] + [b - a for a, b in itertools.pairwise(cumulative)]
        result[key] = ArmCounts(**counts, ttft=tuple(per_bucket))
    return result


_TTFT_BOUND_INDEX = {float(bound): i for i, bound in enumerate((*TTFT_BUCKETS, float("inf")))}
"""A TTFT histogram bound (its ``le`` label, parsed) -> the bucket's index."""


def _add_bucket(cumulative: list[int], le: str, value: int) -> None:
    """Place a histogram's cumulative ``le`` sample at its bound's index."""
    cumulative[_TTFT_BOUND_INDEX[float(le)]] = value


def answered_by(model: str | None) -> str:
    """Who gave a corrected answer, from the ``model`` its response named: ``adapter`` (a
    pinned version, which the router chose), ``base``, or ``unknown`` (no name, or an alias
    such as ``ouro`` that does not say which version answered)."""
    if model == BASE_MODEL_NAME:
        return "base"
    try:
        ref = parse_model_name(model or "")
    except UnknownModelError:
        return "unknown"
    return "adapter" if ref.version is not None else "unknown"


class ServeMetrics:
    """A replica's own series (``registry``), and the export of every replica's."""

    def __init__(
        self,
        replica_id: str,
        scrapes: Callable[[], list[ReplicaScrape]] = list,
        refresh: Callable[[], Awaitable[object]] | None = None,
        install_state: Callable[[], InstallState] | None = None,
    ) -> None:
        """``scrapes`` gives the replicas' answers to export; ``refresh``, when given, brings
        them (and ``install_state``) up to date and runs before each rendering."""
        self._refresh = refresh
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ouro_requests",
            "HTTP requests answered, by route and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "ouro_errors",
            "Requests answered with an error (status >= 400), by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.stream_errors = Counter(
            "ouro_stream_errors",
            "Streamed chat completions that failed after their 200 (an error event was sent).",
            registry=self.registry,
        )
        self.latency = Histogram(
            "ouro_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "ouro_time_to_first_token_seconds",
            "Time from a chat request reaching the server to its first generated token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "ouro_prompt_tokens",
            "Prompt tokens processed, by the version that answered.",
            ["model"],
            registry=self.registry,
        )
        self.generated_tokens = Counter(
            "ouro_generated_tokens",
            "Tokens generated, by the version that answered.",
            ["model"],
            registry=self.registry,
        )
        self.completions = Counter(
            "ouro_completions",
            "Chat completions answered, by requested name and the version that answered.",
            ["requested", "model"],
            registry=self.registry,
        )
        self.version_served = Gauge(
            "ouro_model_version",
            "Registry version each model name resolves to now (0: the base model).",
            ["name"],
            registry=self.registry,
        )
        self.registry_up = Gauge(
            "ouro_registry_reachable",
            "1 when the last registry poll succeeded.",
            registry=self.registry,
        )
        self.feedback = Counter(
            "ouro_feedback_records",
            "Corrections written durably, by who gave the corrected answer: adapter (a "
            "version's adapter, which the router chose), base (the base model) or unknown.",
            ["answered_by"],
            registry=self.registry,
        )
        self.ledger_write_failures = Counter(
            "ouro_ledger_write_failures",
            "Feedback the ledger could not write (the volume, not the request, failed).",
            registry=self.registry,
        )
        self.router_requests = Counter(
            "ouro_router_requests",
            "Chat completions for an adapter version, by the router's decision: match (a "
            "correction's adapter answered), no_match (passed on to the parent), no_index "
            "(an adapter without an index answered: it takes everything), forced (an admin's "
            "x-ouro-unrouted).",
            ["route"],
            registry=self.registry,
        )
        for route in (MATCH, NO_MATCH, NO_INDEX, FORCED):
            self.router_requests.labels(route=route)  # every route exported from the start
        self.router_similarity = Histogram(
            "ouro_router_similarity",
            "Cosine between a request and the nearest correction of the version that decided.",
            buckets=_SIMILARITY_BUCKETS,
            registry=self.registry,
        )
        self.router_cpu = Histogram(
            "ouro_router_cpu_seconds",
            "Thread CPU time of one routing decision (embedding and search), in the LLM server.",
            buckets=_ROUTER_CPU_BUCKETS,
            registry=self.registry,
        )
        # The canary's signals (ouro.rollout): traffic asking for 'ouro', labelled by the
        # version the split assigned it to (what answered may be that version's parent).
        self.rollout_requests = Counter(
            "ouro_rollout_requests",
            "Chat completions for 'ouro', by the version the rollout assigned them to and "
            "outcome (ok, or error: failed by the server).",
            ["version", "outcome"],
            registry=self.registry,
        )
        self.rollout_ttft = Histogram(
            "ouro_rollout_time_to_first_token_seconds",
            "Time to first token of chat completions for 'ouro', by assigned version.",
            ["version"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.rollout_routes = Counter(
            "ouro_rollout_route_decisions",
            "Router decisions for 'ouro', by assigned version and route.",
            ["version", "route"],
            registry=self.registry,
        )
        self.rollout_feedback = Counter(
            "ouro_rollout_feedback",
            "Feedback on answers to 'ouro', by the version they were assigned to (from the "
            "completion id) and signal: correction, thumbs_up or thumbs_down.",
            ["version", "signal"],
            registry=self.registry,
        )
        self._export = CollectorRegistry(auto_describe=False)
        self._export.register(
            ReplicaReportCollector(scrapes, own=lambda: (replica_id, self.own_families()))
        )
        if install_state is not None:
            self._export.register(InstallCollector(install_state))

    def own_families(self) -> tuple[Metric, ...]:
        """This replica's own series now (what it answers a scrape with)."""
        return tuple(self.registry.collect())

    def set_versions(self, versions: dict[str, int | None]) -> None:
        """Replace the name → version gauge with what resolves now."""
        self.version_served.clear()
        for name, version in versions.items():
            self.version_served.labels(name=name).set(version or 0)

    def count_feedback(self, record: FeedbackRecord) -> None:
        """Count one durable feedback record: a correction by who gave the corrected answer,
        and any feedback on an answer to 'ouro' by the version it was assigned to."""
        if record.kind == "correction":
            self.feedback.labels(answered_by=answered_by(record.model)).inc()
        version = assigned_version(record.completion_id)
        signal = _FEEDBACK_SIGNALS.get((record.kind, record.rating))
        if version is not None and signal is not None:
            self.rollout_feedback.labels(version=version, signal=signal).inc()

    def count_rollout(
        self, version: str, served: ServedModel | None, first_token_s: float | None, ok: bool
    ) -> None:
        """One chat completion for 'ouro' the rollout assigned to ``version``."""
        self.rollout_requests.labels(version=version, outcome="ok" if ok else "error").inc()
        if first_token_s is not None:
            self.rollout_ttft.labels(version=version).observe(first_token_s)
        if served is not None and served.route is not None:
            self.rollout_routes.labels(version=version, route=served.route).inc()

    def observe_route(self, served: ServedModel) -> None:
        """Count how the router chose the version that answers (nothing for 'ouro-base')."""
        if served.route is None or served.route == ROUTE_BASE:
            return
        self.router_requests.labels(route=served.route).inc()
        if served.similarity is not None:
            self.router_similarity.observe(served.similarity)
        self.router_cpu.observe(served.router_cpu_s)

    async def refresh(self) -> None:
        """Bring what the scrape exports up to date (every replica's fresh answers)."""
        if self._refresh is not None:
            await self._refresh()

    def render(self) -> bytes:
        """Every replica's series (as of the last ``refresh``) and the install's."""
        return generate_latest(self._export)
