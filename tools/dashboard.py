"""The Grafana dashboard "Ouro", built as code into the chart (charts/ouro/dashboards/ouro.json).

Built with Grafana's Foundation SDK (``grafana-foundation-sdk``, a developer tool pinned in
requirements-test.txt) and written as sorted, indented JSON with no timestamps, so the same
code always gives the same file and a review sees what changed. The chart ships the file;
``--check`` fails when the committed file is not what this module builds.

    python -m tools.dashboard           # rewrite charts/ouro/dashboards/ouro.json
    python -m tools.dashboard --check   # exit 1 when the committed JSON is stale

Every query reads only the metrics of issue #34's contract: per-replica series are filtered
with ``replica=~"$replica"``; rates use ``$__rate_interval``, except the router's false-accept
ratio, which uses its alert's 6h window.
``panel_queries`` and ``concrete_query`` give the queries to a test that runs them against
a real Prometheus.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# The classic dashboard schema, not dashboardv2: file provisioning and the Grafana sidecar
# that loads the chart's ConfigMap read classic JSON (v2 needs Grafana 12 feature flags).
from grafana_foundation_sdk.builders.common import (
    GraphThresholdsStyleConfig,
    ReduceDataOptions,
    VizLegendOptions,
    VizTooltipOptions,
)
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.heatmap import Panel as HeatmapPanel
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as StatPanel
from grafana_foundation_sdk.builders.timeseries import Panel as TimeseriesPanel
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueGraphMode,
    BigValueTextMode,
    DataSourceRef,
    GraphThresholdsStyleMode,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    TooltipDisplayMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from tools.generated import generate_or_check
from tools.paths import CHART_DIR

DASHBOARD_FILE = CHART_DIR / "dashboards" / "ouro.json"
"""Where the chart keeps the generated dashboard (read by its ConfigMap)."""

DASHBOARD_UID = "ouro"
REPLICA = 'replica=~"$replica"'
"""The matcher every per-replica series carries."""

_DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
_NAME_OURO = 'name="ouro"'
_ERROR_RATIO = 0.05  # alerts.errorRatio's default
_ROUTED_CORRECTION_RATIO = 0.05  # alerts.routedCorrectionRatio's default
_FAILED_CYCLES = 3  # alerts.failedCycles's default
_PENDING_CORRECTIONS = 50  # alerts.pendingCorrections's default

_DESCRIPTION = (
    "Ouro: the serving stack of a chatbot that learns from its corrections. One scrape "
    "target per install (every replica's series carry a `replica` label). Versions are "
    "the `model` label (ouro@vN, ouro-base); the Canary rollout row compares the canary "
    "with production by the `version` each answer was assigned to."
)


# PromQL pieces.


def _series(metric: str, *matchers: str) -> str:
    """A per-replica series, filtered by the dashboard's replica variable."""
    return f"{metric}{{{', '.join((*matchers, REPLICA))}}}"


def _rate(metric: str, *matchers: str, by: str = "", fn: str = "rate") -> str:
    summed = f"sum by ({by}) " if by else "sum"
    return f"{summed}({fn}({_series(metric, *matchers)}[$__rate_interval]))"


def _quantile(q: float, histogram: str, by: str = "") -> str:
    labels = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, {_rate(histogram + '_bucket', by=labels)})"


def _per_replica(fn: str, metric: str) -> str:
    return f"{fn} by (replica) ({_series(metric)})"


_ERRORS_5XX = _rate("ouro_errors_total", 'status=~"5.."')
_STREAM_ERRORS = _rate("ouro_stream_errors_total")
_REQUESTS = _rate("ouro_requests_total")
# `or vector(0)`: no 5xx series yet must read as 0 errors, not as no data.
ERROR_RATIO = (
    f"(({_ERRORS_5XX} or vector(0)) + ({_STREAM_ERRORS} or vector(0))) / ({_REQUESTS} > 0)"
)
"""5xx responses and failed streams over requests (the OuroHighErrorRatio alert's ratio)."""

# The OuroRouterFalseAcceptsRising alert's window: corrections arrive minutes after the
# answer, so a ratio over $__rate_interval would be noise.
_MATCH = 'route="match"'
_BY_ADAPTER = 'answered_by="adapter"'
ROUTED_CORRECTION_RATIO = (
    f"sum(increase({_series('ouro_feedback_records_total', _BY_ADAPTER)}[6h])) / "
    f"(sum(increase({_series('ouro_router_requests_total', _MATCH)}[6h])) > 0)"
)
"""Corrections of answers a correction's adapter gave over those answers, in 6h."""


# Panels.


def _target(expr: str, legend: str, ref_id: str = "A", instant: bool = False) -> Dataquery:
    query = Dataquery().expr(expr).legend_format(legend).ref_id(ref_id)
    return query.instant() if instant else query


def _targets(queries: tuple[tuple[str, str], ...], instant: bool = False) -> list[Dataquery]:
    """One target per (expression, legend), with ref ids A, B, C..."""
    return [
        _target(expr, legend, chr(ord("A") + index), instant)
        for index, (expr, legend) in enumerate(queries)
    ]


def _thresholds(*steps: tuple[float | None, str]) -> ThresholdsConfig:
    return (
        ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


def _timeseries(
    title: str,
    unit: str,
    description: str,
    *queries: tuple[str, str],
    width: int = 8,
    thresholds: ThresholdsConfig | None = None,
) -> TimeseriesPanel:
    panel = (
        TimeseriesPanel()
        .title(title)
        .description(description)
        .datasource(_DATASOURCE)
        .unit(unit)
        .min(0)
        .span(width)
        .height(8)
        .legend(
            VizLegendOptions()
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING))
        .targets(_targets(queries))
    )
    if thresholds is not None:
        panel = panel.thresholds(thresholds).thresholds_style(
            GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.DASHED)
        )
    return panel


def _stat(
    title: str,
    unit: str,
    description: str,
    *queries: tuple[str, str],
    width: int = 4,
    names: bool = False,
    thresholds: ThresholdsConfig | None = None,
) -> StatPanel:
    return (
        StatPanel()
        .title(title)
        .description(description)
        .datasource(_DATASOURCE)
        .unit(unit)
        .span(width)
        .height(4)
        .graph_mode(BigValueGraphMode.NONE)
        .text_mode(BigValueTextMode.VALUE_AND_NAME if names else BigValueTextMode.VALUE)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(thresholds or _thresholds((None, "green")))
        .targets(_targets(queries, instant=True))
    )


def _overview() -> list[Any]:
    return [
        _stat(
            "Production version",
            "none",
            "Registry version the name 'ouro' resolves to (0: the base model).",
            (f"max({_series('ouro_model_version', _NAME_OURO)})", "ouro"),
        ),
        _stat(
            "Ready replicas",
            "short",
            "LLM server replicas that loaded production and reported in time.",
            (f"sum({_series('ouro_replica_ready')})", "ready"),
            thresholds=_thresholds((None, "red"), (1, "green")),
        ),
        _stat("Requests/s", "reqps", "HTTP requests answered.", (_REQUESTS, "requests")),
        _stat(
            "Error ratio",
            "percentunit",
            "5xx responses and streams that failed after their 200, over requests.",
            (ERROR_RATIO, "errors"),
            thresholds=_thresholds((None, "green"), (_ERROR_RATIO, "red")),
        ),
        _stat(
            "Corrections pending",
            "short",
            "Shared corrections in the ledger since the newest version's watermark.",
            ("max(ouro_corrections_pending)", "pending"),
            thresholds=_thresholds((None, "green"), (_PENDING_CORRECTIONS, "orange")),
        ),
        _stat(
            "Registry reachable",
            "short",
            "1 when every replica's last registry poll worked.",
            (f"min({_series('ouro_registry_reachable')})", "reachable"),
            thresholds=_thresholds((None, "red"), (1, "green")),
        ),
    ]


def _traffic() -> list[Any]:
    return [
        _timeseries(
            "Requests/s by route and status",
            "reqps",
            "HTTP requests answered.",
            (_rate("ouro_requests_total", by="route, status"), "{{route}} {{status}}"),
        ),
        _timeseries(
            "Completions/s by version",
            "reqps",
            "Chat completions by the version that answered.",
            (_rate("ouro_completions_total", by="model"), "{{model}}"),
        ),
        _timeseries(
            "Request duration",
            "s",
            "Time from request to the last byte of the response.",
            *[
                (_quantile(q, "ouro_request_duration_seconds"), f"p{round(q * 100)}")
                for q in (0.5, 0.95, 0.99)
            ],
        ),
        _timeseries(
            "Time to first token by version",
            "s",
            "From a chat request reaching the server to its first generated token.",
            *[
                (
                    _quantile(q, "ouro_time_to_first_token_seconds", by="model"),
                    f"p{round(q * 100)} {{{{model}}}}",
                )
                for q in (0.5, 0.99)
            ],
            width=12,
        ),
        _timeseries(
            "Tokens/s by version",
            "short",
            "Tokens generated, and prompt tokens processed, by the version that answered.",
            (_rate("ouro_generated_tokens_total", by="model"), "generated {{model}}"),
            (_rate("ouro_prompt_tokens_total", by="model"), "prompt {{model}}"),
            width=12,
        ),
    ]


def _engine() -> list[Any]:
    return [
        _timeseries(
            "Running and waiting requests",
            "short",
            "The engine's scheduler per replica: requests decoding or prefilling, and "
            "requests waiting for a place.",
            (_per_replica("max", "ouro_engine_running_requests"), "running {{replica}}"),
            (_per_replica("max", "ouro_engine_waiting_requests"), "waiting {{replica}}"),
        ),
        _timeseries(
            "KV-cache usage",
            "percentunit",
            "Share of the KV-cache token budget reserved by running requests.",
            (_per_replica("max", "ouro_engine_kv_cache_usage"), "{{replica}}"),
        ),
        _timeseries(
            "Batch size",
            "short",
            "Requests in one scheduling step (prefill and decode): mean per replica.",
            (
                f"{_rate('ouro_engine_batch_size_sum', by='replica')} / "
                f"({_rate('ouro_engine_batch_size_count', by='replica')} > 0)",
                "{{replica}}",
            ),
        ),
        _timeseries(
            "Engine step time p99",
            "s",
            "Time of one scheduling step.",
            (_quantile(0.99, "ouro_engine_step_seconds", by="replica"), "{{replica}}"),
            width=12,
        ),
        _timeseries(
            "Aborted and failed requests/s",
            "reqps",
            "Aborted: the client went or the adapter was removed. Failed: an error inside "
            "the engine (its neighbours went on).",
            (_rate("ouro_engine_aborted_requests_total", by="replica"), "aborted {{replica}}"),
            (_rate("ouro_engine_failed_requests_total", by="replica"), "failed {{replica}}"),
            width=12,
        ),
    ]


def _router() -> list[Any]:
    return [
        _timeseries(
            "Router decisions/s by route",
            "reqps",
            "match: a correction's adapter answered; no_match: passed on to the parent; "
            "no_index: an adapter without an index answered; forced: an admin's "
            "x-ouro-unrouted.",
            (_rate("ouro_router_requests_total", by="route"), "{{route}}"),
            width=12,
        ),
        HeatmapPanel()
        .title("Router similarity")
        .description("Cosine between a request and the nearest correction.")
        .datasource(_DATASOURCE)
        .span(12)
        .height(8)
        .calculate(False)
        .targets(
            [
                _target(_rate("ouro_router_similarity_bucket", by="le"), "{{le}}").format(
                    PromQueryFormat.HEATMAP
                )
            ]
        ),
        _timeseries(
            "Router CPU per decision",
            "s",
            "Thread CPU time of one routing decision (embedding and search).",
            *[(_quantile(q, "ouro_router_cpu_seconds"), f"p{round(q * 100)}") for q in (0.5, 0.99)],
            width=12,
        ),
        _timeseries(
            "Corrections of routed answers / routed answers (6h)",
            "percentunit",
            "The router's false accepts: of the answers a correction's adapter gave "
            "(route match), the share users corrected, over the alert's 6h window. The "
            "dashed line is the alert's default threshold.",
            (ROUTED_CORRECTION_RATIO, "corrected share"),
            width=12,
            thresholds=_thresholds((None, "green"), (_ROUTED_CORRECTION_RATIO, "red")),
        ),
    ]


def _training() -> list[Any]:
    return [
        _timeseries(
            "Corrections/s by who answered",
            "reqps",
            "Corrections written durably, by who gave the corrected answer: adapter (the "
            "router chose a version's adapter), base or unknown.",
            (_rate("ouro_feedback_records_total", by="answered_by"), "{{answered_by}}"),
        ),
        _timeseries(
            "Ledger write failures",
            "short",
            "Corrections the ledger could not write (disk or volume errors): users' "
            "corrections refused.",
            (_rate("ouro_ledger_write_failures_total", fn="increase"), "failures"),
            thresholds=_thresholds((None, "green"), (1, "red")),
        ),
        _timeseries(
            "Corrections pending over time",
            "short",
            "Shared corrections in the ledger since the newest version's watermark.",
            ("max(ouro_corrections_pending)", "pending"),
        ),
        _stat(
            "Consecutive failed cycles",
            "short",
            "Newest training cycles, back to the last that registered a version, that "
            "failed or were refused by the gates.",
            ("max(ouro_training_consecutive_failed_cycles)", "failed cycles"),
            thresholds=_thresholds((None, "green"), (1, "orange"), (_FAILED_CYCLES, "red")),
        ),
        _stat(
            "Time since the newest version",
            "s",
            "Since the newest registered version was created (no data: none yet).",
            ("time() - max(ouro_latest_version_timestamp_seconds > 0)", "newest version"),
        ),
        _stat(
            "Time since the last cycle, per outcome",
            "s",
            "Since the newest training cycle of each outcome ended.",
            (
                "time() - max by (outcome) (ouro_training_last_cycle_timestamp_seconds > 0)",
                "{{outcome}}",
            ),
            width=16,
            names=True,
        ),
    ]


def _adapters() -> list[Any]:
    return [
        _timeseries(
            "Adapter loads, evictions and load failures/s",
            "short",
            "Adapter versions loaded into, removed from, or refused by an engine.",
            (_rate("ouro_adapter_loads_total", by="replica"), "loads {{replica}}"),
            (_rate("ouro_adapter_evictions_total", by="replica"), "evictions {{replica}}"),
            (_rate("ouro_adapter_load_failures_total", by="replica"), "failures {{replica}}"),
        ),
        _timeseries(
            "Adapters loaded",
            "short",
            "Adapter versions in each replica's engine now.",
            (_per_replica("max", "ouro_adapters_loaded"), "{{replica}}"),
        ),
        _timeseries(
            "Production version per replica",
            "none",
            "The version each replica answers 'ouro' with (0: the base model); they differ "
            "while a new version rolls out.",
            (_per_replica("max", "ouro_replica_production_version"), "{{replica}}"),
        ),
        _timeseries(
            "Replica report age",
            "s",
            "Age of the report each replica's samples come from.",
            (_per_replica("max", "ouro_replica_report_age_seconds"), "{{replica}}"),
            width=16,
        ),
        _stat(
            "Stale replica reports",
            "short",
            "Replicas that did not answer the last scrape in time (their samples are from "
            "their last report).",
            (f"sum({_series('ouro_replica_report_stale')})", "stale"),
            width=8,
            thresholds=_thresholds((None, "green"), (1, "orange")),
        ),
    ]


_BAD_SIGNALS = 'signal=~"correction|thumbs_down"'
_ROLLOUT_ANSWERS = _rate("ouro_rollout_requests_total", by="version")
_ROLLOUT_FAILURES = _rate("ouro_rollout_requests_total", 'outcome="error"', by="version")


def _canary() -> list[Any]:
    return [
        _stat(
            "Canary share",
            "percent",
            "Share of 'ouro' traffic the running canary answers (no data: no canary).",
            ("max by (version) (ouro_canary_share_percent)", "{{version}}"),
            names=True,
        ),
        _stat(
            "Canary test statistic",
            "none",
            "The sequential test's log likelihood ratio at its last evaluation: rollback "
            "at the upper bound (2.89 by default), promotion at the lower (-2.25).",
            ("max by (version) (ouro_canary_log_likelihood_ratio)", "{{version}}"),
            names=True,
        ),
        _timeseries(
            "Answers/s by assigned version",
            "reqps",
            "Chat completions for 'ouro', by the version the rollout assigned them to.",
            (_ROLLOUT_ANSWERS, "{{version}}"),
        ),
        _timeseries(
            "Bad outcomes per answer, by assigned version",
            "percentunit",
            "Corrections and thumbs-down over answers, canary against production: the "
            "rate the sequential test compares.",
            (
                f"{_rate('ouro_rollout_feedback_total', _BAD_SIGNALS, by='version')} / "
                f"({_ROLLOUT_ANSWERS} > 0)",
                "{{version}}",
            ),
        ),
        _timeseries(
            "p99 time to first token, by assigned version",
            "s",
            "The latency the canary's health check compares (at most canary.maxTtftRatio "
            "times production's).",
            (
                _quantile(0.99, "ouro_rollout_time_to_first_token_seconds", by="version"),
                "{{version}}",
            ),
        ),
        _timeseries(
            "Failed answers/s, by assigned version",
            "reqps",
            "Answers that failed on the server side, canary against production.",
            (
                # `or 0 * answers`: a version with no failure reads 0, not no data.
                f"{_ROLLOUT_FAILURES} or (0 * {_ROLLOUT_ANSWERS})",
                "{{version}}",
            ),
        ),
    ]


def _variables() -> list[Any]:
    return [
        DatasourceVariable("datasource").label("Data source").type("prometheus"),
        QueryVariable("replica")
        .label("Replica")
        .datasource(_DATASOURCE)
        .query("label_values(ouro_replica_ready, replica)")
        .definition("label_values(ouro_replica_ready, replica)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        # All as .*: a replica started after the variable last refreshed still shows.
        .all_value(".*")
        .current(VariableOption(selected=True, text="All", value="$__all")),
    ]


ROWS: tuple[tuple[str, Callable[[], list[Any]]], ...] = (
    ("Overview", _overview),
    ("Traffic and latency", _traffic),
    ("Engine", _engine),
    ("Router", _router),
    ("Feedback and training", _training),
    ("Adapters", _adapters),
    ("Canary rollout", _canary),
)


def build_dashboard() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    builder = (
        Dashboard("Ouro")
        .uid(DASHBOARD_UID)
        .description(_DESCRIPTION)
        .tags(["ouro"])
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .variables(_variables())
    )
    for title, panels in ROWS:
        builder = builder.with_row(Row(title))
        for panel in panels():
            builder = builder.with_panel(panel)
    dashboard = json.loads(JSONEncoder(sort_keys=True).encode(builder.build()))
    # Grafana wants ids unique within the dashboard; the builder leaves them unset or 0.
    for number, panel in enumerate(dashboard["panels"], start=1):
        panel["id"] = number
    return dashboard


def render(dashboard: dict[str, Any]) -> str:
    """The file's text: sorted keys, two-space indent, one trailing newline."""
    return json.dumps(dashboard, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels a collapsed row holds included, in order."""
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """Every panel's PromQL expressions, as (panel title, expression), in dashboard order."""
    return [
        (panel["title"], target["expr"])
        for panel in walk_panels(dashboard.get("panels", []))
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def concrete_query(expr: str, window: str = "1m") -> str:
    """``expr`` as Prometheus itself accepts it: Grafana's variables replaced."""
    expr = expr.replace("$__rate_interval", window)
    return re.sub(r"\$\{?replica\}?", ".*", expr)


def main(argv: list[str] | None = None) -> int:
    return generate_or_check(
        argv,
        description=__doc__,
        files=lambda args: {args.output: render(build_dashboard())},
        command="make dashboards",
        arguments=lambda parser: parser.add_argument(
            "--output", type=Path, default=DASHBOARD_FILE, help="the JSON file"
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
