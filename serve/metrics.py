"""Prometheus metrics of the ingress, scraped at the app's own ``GET /metrics``.

prometheus_client with a registry per ingress replica (no process-global state), so the
app's route serves them directly. Ray's own ``ray.serve.metrics`` go to Ray's metrics
agent on another port, which a cluster's Prometheus may scrape as well; what a client
sees (status, tokens, time to first token, which version answered) is counted here.
Adapter loads and evictions happen in the LLM server replicas: they report their
counters to the coordinator, and ``ReplicaReportCollector`` exports the latest reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from serve.replica_report import ReplicaReport

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ReplicaReportCollector(Collector):
    """Exports the LLM server replicas' latest reports as metrics at scrape time."""

    def __init__(self, reports: Callable[[], list[ReplicaReport]]) -> None:
        self._reports = reports

    def collect(self) -> Iterator:
        loads = CounterMetricFamily(
            "ouro_adapter_loads", "Adapter versions loaded into an engine.", labels=["replica"]
        )
        evictions = CounterMetricFamily(
            "ouro_adapter_evictions",
            "Adapter versions removed from an engine.",
            labels=["replica"],
        )
        failures = CounterMetricFamily(
            "ouro_adapter_load_failures",
            "Adapter versions that could not be loaded.",
            labels=["replica"],
        )
        loaded = GaugeMetricFamily(
            "ouro_adapters_loaded", "Adapter versions in an engine now.", labels=["replica"]
        )
        production = GaugeMetricFamily(
            "ouro_replica_production_version",
            "Version an LLM server replica answers 'ouro' with (0: the base model).",
            labels=["replica"],
        )
        for report in self._reports():
            replica = report.replica_id
            loads.add_metric([replica], report.adapter_loads)
            evictions.add_metric([replica], report.adapter_evictions)
            failures.add_metric([replica], report.adapter_load_failures)
            loaded.add_metric([replica], len(report.adapters_loaded))
            production.add_metric([replica], report.production_version or 0)
        yield from (loads, evictions, failures, loaded, production)


class ServeMetrics:
    """The ingress's metrics, on a registry of its own."""

    def __init__(self, replica_reports: Callable[[], list[ReplicaReport]] | None = None) -> None:
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
        self.latency = Histogram(
            "ouro_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "ouro_time_to_first_token_seconds",
            "Time from a chat request reaching the ingress to its first generated token.",
            ["model"],
            buckets=_TTFT_BUCKETS,
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
            "Feedback records written durably.",
            registry=self.registry,
        )
        if replica_reports is not None:
            self.registry.register(ReplicaReportCollector(replica_reports))

    def set_versions(self, versions: dict[str, int | None]) -> None:
        """Replace the name → version gauge with what resolves now."""
        self.version_served.clear()
        for name, version in versions.items():
            self.version_served.labels(name=name).set(version or 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
