"""The Grafana dashboard built as code (tools/dashboard.py, charts/ouro/dashboards/ouro.json)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from ouro.engine import EngineStats
from serve.metrics import InstallCollector, InstallState, ServeMetrics, report_families
from serve.replica_report import ReplicaReport, ReplicaScrape
from tools.dashboard import (
    DASHBOARD_FILE,
    build_dashboard,
    concrete_query,
    main,
    panel_queries,
    render,
)


def exported_families() -> tuple[dict[str, str], dict[str, str]]:
    """What /metrics exports, from Ouro's own exporter (serve.metrics): per-replica and
    install-wide families, each name (a counter's with ``_total``) -> its kind."""
    report = ReplicaReport(
        replica_id="r0",
        reported_at=0.0,
        production_version=1,
        production_known=True,
        refresh_generation=0,
        adapters_loaded=(),
        adapter_loads=0,
        adapter_evictions=0,
        adapter_load_failures=0,
        registry_reachable=True,
        registry_error=None,
        engine=EngineStats(0, 0, 0.0, 0, 0, 0, 0, 0.0, (0,), 0, (0,)),
    )
    install = InstallCollector(lambda: InstallState(corrections_pending=0))
    per_replica = [*ServeMetrics("r0").own_families(), *report_families([ReplicaScrape(report)])]

    def names(families) -> dict[str, str]:
        return {
            f"{family.name}_total" if family.type == "counter" else family.name: family.type
            for family in families
        }

    return names(per_replica), names(install.collect())


PER_REPLICA, INSTALL_WIDE = exported_families()
REPLICA = 'replica=~"$replica"'
METRIC = re.compile(r"\bouro_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(?P<name>ouro_[a-z0-9_]+)(?:\{(?P<matchers>[^}]*)\})?")
RANGE = re.compile(r"\[([^\]]+)\]")


def series_names(families: dict[str, str]) -> dict[str, str]:
    """The series names a scrape holds, each mapped to its family."""
    names = {}
    for family, kind in families.items():
        if kind == "histogram":  # a histogram is only its _bucket, _sum and _count series
            names.update({f"{family}{suffix}": family for suffix in ("_bucket", "_sum", "_count")})
        else:  # counters are named with their _total already
            names[family] = family
    return names


PER_REPLICA_SERIES = series_names(PER_REPLICA)
INSTALL_WIDE_SERIES = series_names(INSTALL_WIDE)
CONTRACT_SERIES = {**PER_REPLICA_SERIES, **INSTALL_WIDE_SERIES}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return build_dashboard()


@pytest.fixture(scope="module")
def queries(dashboard) -> list[tuple[str, str]]:
    return panel_queries(dashboard)


def test_the_committed_json_is_what_the_generator_builds(dashboard):
    assert DASHBOARD_FILE.read_text(encoding="utf-8") == render(dashboard), (
        "charts/ouro/dashboards/ouro.json is stale: run `make dashboards`"
    )
    assert main(["--check"]) == 0


def test_the_check_fails_on_a_changed_file(tmp_path, capsys):
    stale = tmp_path / "ouro.json"
    stale.write_text(render(build_dashboard()).replace('"Ouro"', '"Edited"', 1))
    assert main(["--check", "--output", str(stale)]) == 1
    assert "make dashboards" in capsys.readouterr().err


def test_the_json_is_deterministic(dashboard):
    text = render(dashboard)
    assert render(build_dashboard()) == text
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def test_the_json_has_grafanas_dashboard_shape(dashboard):
    assert dashboard["uid"] == "ouro"
    assert dashboard["title"] == "Ouro"
    assert isinstance(dashboard["schemaVersion"], int)
    assert "canary" in dashboard["description"].lower()
    assert "id" not in dashboard and "version" not in dashboard  # Grafana assigns them
    panels = dashboard["panels"]
    assert panels
    ids = [panel["id"] for panel in panels]
    assert len(set(ids)) == len(ids)
    for panel in panels:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= grid.keys(), panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["type"] in {"row", "stat", "timeseries", "heatmap"}, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["fieldConfig"]["defaults"].get("unit") or panel["type"] == "heatmap"
    rows = [panel["title"] for panel in panels if panel["type"] == "row"]
    assert rows == [
        "Overview",
        "Traffic and latency",
        "Engine",
        "Router",
        "Feedback and training",
        "Adapters",
        "Canary rollout",
    ]


def test_grafanas_dashboard_model_reads_it_back_unchanged(dashboard):
    register_default_plugins()  # so panels and queries decode as their own types
    decoded = Dashboard.from_json(json.loads(DASHBOARD_FILE.read_text(encoding="utf-8")))
    assert json.loads(JSONEncoder(sort_keys=True).encode(decoded)) == dashboard


def test_the_variables_pick_a_prometheus_and_its_replicas(dashboard):
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    replica = variables["replica"]
    assert replica["type"] == "query"
    assert replica["query"] == "label_values(ouro_replica_ready, replica)"
    assert replica["datasource"]["uid"] == "${datasource}"
    assert replica["multi"] is True and replica["includeAll"] is True


def test_every_panel_has_a_query(dashboard, queries):
    titled = {title for title, _ in queries}
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["title"] in titled, panel["title"]
            assert all(target.get("expr") for target in panel["targets"]), panel["title"]


def test_every_metric_is_one_of_the_contract(queries):
    for title, expr in queries:
        for name in METRIC.findall(expr):
            assert name in CONTRACT_SERIES, (title, name)


def test_the_metric_check_knows_each_kinds_series():
    assert "ouro_request_duration_seconds_bucket" in CONTRACT_SERIES
    assert "ouro_request_duration_seconds" not in CONTRACT_SERIES  # no such series
    assert "ouro_requests_total" in CONTRACT_SERIES and "ouro_requests" not in CONTRACT_SERIES
    assert "ouro_adapters_loaded" in CONTRACT_SERIES
    assert "ouro_engine_batch_size_count" in CONTRACT_SERIES


def test_per_replica_series_follow_the_replica_variable_and_the_others_do_not(queries):
    for title, expr in queries:
        for selector in SELECTOR.finditer(expr):
            matchers = selector["matchers"] or ""
            if selector["name"] in PER_REPLICA_SERIES:
                assert REPLICA in matchers, (title, selector[0])
            else:  # no replica label: a chosen replica would hide them
                assert "replica" not in matchers, (title, selector[0])


def test_rates_use_the_rate_interval(queries):
    for title, expr in queries:
        for window in RANGE.findall(expr):
            # The false-accept ratio keeps its alert's window (OuroRouterFalseAcceptsRising).
            allowed = {"6h"} if "routed answers" in title else set()
            assert window in {"$__rate_interval", *allowed}, (title, window)


def test_counters_are_read_as_rates_and_histograms_as_quantiles_or_buckets(queries):
    for title, expr in queries:
        for name in METRIC.findall(expr):
            if name.endswith(("_total", "_bucket", "_sum", "_count")):
                assert re.search(rf"(rate|increase)\({name}[{{[]", expr), (title, name)


def test_the_overview_answers_an_operators_first_questions(queries):
    exprs: dict[str, str] = {}
    for title, expr in queries:
        exprs.setdefault(title, expr)
    assert 'ouro_model_version{name="ouro"' in exprs["Production version"]
    assert "ouro_replica_ready" in exprs["Ready replicas"]
    ratio = exprs["Error ratio"]
    assert 'status=~"5.."' in ratio and "ouro_stream_errors_total" in ratio
    assert "ouro_corrections_pending" in exprs["Corrections pending"]


def test_concrete_queries_have_no_grafana_variables_left(queries):
    assert concrete_query('rate(x{replica=~"$replica"}[$__rate_interval])', "5m") == (
        'rate(x{replica=~".*"}[5m])'
    )
    for _, expr in queries:
        assert "$" not in concrete_query(expr)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool: `make install-test`")
def test_every_query_parses_as_promql(queries, tmp_path):
    # Prometheus's own parser, through promtool: each query as a recording rule's expression.
    rules = [
        {"record": f"ouro_dashboard:query{index}", "expr": concrete_query(expr, "5m")}
        for index, (_, expr) in enumerate(queries)
    ]
    rules_file = tmp_path / "queries.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
