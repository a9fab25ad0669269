"""The chart's monitoring objects: off by default, one scrape target on the Ray head, the
metrics key shared by the ServiceMonitor and the Ray containers, valid for the Prometheus
Operator's CRDs, and the same objects in the kustomize monitoring component."""

from __future__ import annotations

import copy
import json
import shutil
from typing import Any

import pytest

from tools.chart_check import FAIL, PASS, ManifestChecker
from tools.manifests import RenderError, find, kustomize_build
from tools.paths import CHART_DIR, KUSTOMIZE_OVERLAYS, MONITORING_VALUES, VALUES_FILES
from tools.validation import prometheus_operator_errors

MONITORING_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")


def monitoring_objects(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted(
        (obj["kind"], obj["metadata"]["name"])
        for obj in objects
        if obj["kind"] in MONITORING_KINDS
        or obj["metadata"]["name"] in {"ouro-metrics", "ouro-dashboard"}
    )


def ray_pod_templates(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    cluster = find(objects, "RayService")["spec"]["rayClusterConfig"]
    (workers,) = cluster["workerGroupSpecs"]
    return {"head": cluster["headGroupSpec"]["template"], "worker": workers["template"]}


@pytest.fixture(scope="module")
def monitored(render_chart) -> list[dict[str, Any]]:
    return render_chart(values_files=[MONITORING_VALUES])


@pytest.mark.parametrize("values", sorted(VALUES_FILES))
def test_shipped_values_render_no_monitoring_object(rendered, values):
    assert monitoring_objects(rendered[values]) == []


def test_monitoring_values_render_every_monitoring_object(monitored):
    assert monitoring_objects(monitored) == [
        ("ConfigMap", "ouro-dashboard"),
        ("PodMonitor", "ouro-ray"),
        ("PrometheusRule", "ouro"),
        ("Service", "ouro-metrics"),
        ("ServiceMonitor", "ouro"),
    ]
    for kind in MONITORING_KINDS:
        assert find(monitored, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"


@pytest.mark.parametrize(
    ("how", "key", "value", "where"),
    [
        (
            "string",
            "monitoring.serviceMonitor.interval",
            "30 seconds",
            "/monitoring/serviceMonitor/interval",
        ),
        (
            "set",
            "monitoring.prometheusRule.errorRatio",
            "2",
            "/monitoring/prometheusRule/errorRatio",
        ),
        (
            "set",
            "monitoring.prometheusRule.routedMinRequests",
            "0",
            "/monitoring/prometheusRule/routedMinRequests",
        ),
        ("string", "monitoring.dashboard.enabled", "yes", "/monitoring/dashboard/enabled"),
        ("set", "monitoring.serviceMonitor.enable", "true", "serviceMonitor"),  # a typo'd key
    ],
)
def test_schema_rejects_bad_monitoring_values(render_chart, how, key, value, where):
    overrides = {"set_values" if how == "set" else "set_strings": {key: value}}
    with pytest.raises(RenderError, match="schema") as refused:
        render_chart(**overrides)
    assert where in str(refused.value)


def test_each_object_has_its_own_switch(render_chart):
    objects = render_chart(set_values={"monitoring.podMonitor.enabled": "true"})
    assert monitoring_objects(objects) == [("PodMonitor", "ouro-ray")]
    objects = render_chart(set_values={"monitoring.serviceMonitor.enabled": "true"})
    assert monitoring_objects(objects) == [("Service", "ouro-metrics"), ("ServiceMonitor", "ouro")]


def test_the_metrics_service_selects_only_the_ray_head_on_the_serve_port(monitored):
    service = find(monitored, "Service", "ouro-metrics")
    selector = service["spec"]["selector"].items()
    templates = ray_pod_templates(monitored)
    assert selector <= templates["head"]["metadata"]["labels"].items()
    assert not selector <= templates["worker"]["metadata"]["labels"].items()
    assert service["spec"]["ports"] == [
        {"name": "http-metrics", "port": 8000, "targetPort": "serve", "protocol": "TCP"}
    ]
    head_ports = templates["head"]["spec"]["containers"][0]["ports"]
    assert {"name": "serve", "containerPort": 8000} in head_ports


def test_the_service_monitor_scrapes_that_service_with_the_metrics_key(monitored):
    monitor = find(monitored, "ServiceMonitor")
    service = find(monitored, "Service", "ouro-metrics")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == (
        "http-metrics",
        "/metrics",
        "30s",
    )
    credentials = endpoint["authorization"]["credentials"]
    assert endpoint["authorization"]["type"] == "Bearer"
    assert credentials == {"name": "ouro-api-keys", "key": "metrics-api-key"}
    for role, template in ray_pod_templates(monitored).items():
        env = {entry["name"]: entry for entry in template["spec"]["containers"][0]["env"]}
        reference = env["OURO_METRICS_API_KEYS"]["valueFrom"]["secretKeyRef"]
        assert reference == {**credentials, "optional": True}, role


def test_the_metrics_key_follows_the_secret_values(render_chart):
    objects = render_chart(
        values_files=[MONITORING_VALUES],
        set_strings={"secrets.apiKeys.name": "keys", "secrets.apiKeys.metricsKey": "scrape"},
    )
    (endpoint,) = find(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["authorization"]["credentials"] == {"name": "keys", "key": "scrape"}
    env = {
        e["name"]: e for e in ray_pod_templates(objects)["worker"]["spec"]["containers"][0]["env"]
    }
    assert env["OURO_METRICS_API_KEYS"]["valueFrom"]["secretKeyRef"]["key"] == "scrape"


def test_an_open_dev_server_is_scraped_without_authorization(render_chart):
    objects = render_chart(values_files=[VALUES_FILES["cpu-dev"], MONITORING_VALUES])
    (endpoint,) = find(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert "authorization" not in endpoint
    for template in ray_pod_templates(objects).values():
        names = {entry["name"] for entry in template["spec"]["containers"][0]["env"]}
        assert "OURO_METRICS_API_KEYS" not in names


def test_a_keyed_server_without_a_metrics_key_refuses_a_service_monitor(render_chart):
    with pytest.raises(RenderError, match="secrets.apiKeys.metricsKey"):
        render_chart(
            set_values={"monitoring.serviceMonitor.enabled": "true"},
            set_strings={"secrets.apiKeys.metricsKey": ""},
        )


def test_the_pod_monitor_scrapes_rays_metrics_port_on_every_ray_pod(monitored):
    monitor = find(monitored, "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"].items()
    for role, template in ray_pod_templates(monitored).items():
        assert selector <= template["metadata"]["labels"].items(), role
        ports = template["spec"]["containers"][0]["ports"]
        assert {"name": "metrics", "containerPort": 8080} in ports, role
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"


def test_the_dashboard_configmap_carries_the_charts_dashboard_for_grafanas_sidecar(monitored):
    configmap = find(monitored, "ConfigMap", "ouro-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Ouro"}
    shipped = json.loads((CHART_DIR / "dashboards" / "ouro.json").read_text(encoding="utf-8"))
    assert json.loads(configmap["data"]["ouro.json"]) == shipped


def test_a_chart_without_its_dashboard_file_refuses_the_dashboard(render_chart, tmp_path):
    chart = tmp_path / "ouro"
    shutil.copytree(CHART_DIR, chart, ignore=shutil.ignore_patterns("dashboards"))
    with pytest.raises(RenderError, match="dashboards/ouro.json"):
        render_chart(chart_dir=chart, set_values={"monitoring.dashboard.enabled": "true"})


def test_network_policy_opens_the_metrics_ports_only_with_monitoring(rendered, render_chart):
    def metrics_rules(objects):
        policy = find(objects, "NetworkPolicy", "ouro-ray")
        return [
            rule
            for rule in policy["spec"]["ingress"]
            if {"port": "metrics", "protocol": "TCP"} in rule.get("ports", [])
        ]

    assert metrics_rules(rendered["default"]) == []
    prometheus = [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    objects = render_chart(
        values_files=[MONITORING_VALUES],
        set_strings={
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name": "monitoring"
        },
    )
    (rule,) = metrics_rules(objects)
    assert rule == {
        "ports": [{"port": "serve", "protocol": "TCP"}, {"port": "metrics", "protocol": "TCP"}],
        "from": prometheus,
    }


# -- Validation against the Prometheus Operator's CRDs ------------------------------------


def test_rendered_monitoring_objects_match_the_prometheus_operators_models(monitored):
    assert prometheus_operator_errors(monitored) == []


def test_validation_rejects_a_key_the_crd_does_not_have(monitored):
    monitor = copy.deepcopy(find(monitored, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["scrapeTimout"] = "5s"  # typo of scrapeTimeout
    rule = copy.deepcopy(find(monitored, "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["fro"] = "5m"
    assert prometheus_operator_errors([monitor, rule]) == [
        "ServiceMonitor/ouro: spec.endpoints[0].scrapeTimout: unknown field",
        "PrometheusRule/ouro: spec.groups[0].rules[0].fro: unknown field",
    ]


def test_validation_rejects_wrong_types_and_missing_fields(monitored):
    monitor = copy.deepcopy(find(monitored, "PodMonitor"))
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "30 seconds"
    del monitor["spec"]["selector"]
    errors = prometheus_operator_errors([monitor])
    assert any("interval: String should match pattern" in error for error in errors)
    assert "PodMonitor/ouro-ray: spec.selector: Field required" in errors


def test_chart_check_fails_a_rendering_with_a_typo_in_a_service_monitor(monitored):
    checker = ManifestChecker(crd=None)
    assert checker("monitoring", monitored).status == PASS
    broken = copy.deepcopy(monitored)
    find(broken, "ServiceMonitor")["spec"]["endpoint"] = []
    result = checker("monitoring", broken)
    assert result.status == FAIL
    assert result.problems == ["ServiceMonitor/ouro: spec.endpoint: unknown field"]


# -- Kustomize ----------------------------------------------------------------------------


def test_the_monitoring_overlay_adds_the_charts_monitoring_objects(kube_tools, render_chart):
    built = kustomize_build(kube_tools, KUSTOMIZE_OVERLAYS["t4-monitoring"])
    chart = render_chart(values_files=[MONITORING_VALUES], skip_tests=True)
    assert monitoring_objects(built) == monitoring_objects(chart)
    for kind, name in monitoring_objects(chart) + [("NetworkPolicy", "ouro-ray")]:
        ours, theirs = find(built, kind, name), find(chart, kind, name)
        assert ours.get("spec") == theirs.get("spec"), (kind, name)
        assert ours.get("data") == theirs.get("data"), (kind, name)
        assert ours["metadata"]["namespace"] == "ouro"
