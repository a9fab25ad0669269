"""The dashboard and the alerts, checked against a real Prometheus scraping a running Ouro.

``python -m serve`` (what ``make run`` starts) with a metrics key, and Debian's
``prometheus`` on 127.0.0.1 scraping it as the chart's ServiceMonitor does: one target,
``/metrics``, the metrics key as a bearer token. Users chat, one errs, one corrects an
answer, one training cycle runs, and a canary answers part of the traffic. Then every
panel query of the committed dashboard and every alert expression of the chart's
PrometheusRule must evaluate, name only metrics the stack exports, and (panels) return
data.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from ouro.names import BASE_MODEL_NAME, version_label
from ouro.registry import AdapterRegistry
from ouro.rollout import Rollout
from tests.fixtures.charts import RenderChart
from tests.fixtures.mlflow import free_port
from tests.fixtures.serve import register_adapter_version, wait_until_ready
from tests.fixtures.serve_cli import LocalServe, start_local_serve
from tests.fixtures.train_job import CORRECTION_PAIRS
from tools.dashboard import DASHBOARD_FILE, concrete_query, panel_queries
from tools.dashboard_snapshot import render_snapshot
from tools.manifests import DEFAULT_NAMESPACE
from tools.paths import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

CLIENT_KEY = "prom-client-key"
ADMIN_KEY = "prom-admin-key"
METRICS_KEY = "prom-metrics-key"
SCRAPE_INTERVAL_S = 1
MONITORING_VALUES = REPO_ROOT / "charts" / "ouro" / "ci" / "monitoring-values.yaml"
METRIC_NAME = re.compile(r"\bouro_[a-z0-9_]+\b")
WINDOW = "15m"
SNAPSHOT_ENV = "OURO_DASHBOARD_SNAPSHOT"
"""Set to a PNG path to draw the panels from this run (how docs/dashboard.png is made)."""


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, ouro_tiny_small_dir: Path
) -> Iterator[LocalServe]:
    env = {
        "OURO_BASE_MODEL": str(ouro_tiny_small_dir),
        "OURO_MLFLOW_TRACKING_URI": mlflow_server,
        "OURO_REGISTERED_MODEL_NAME": f"ouro-adapter-prom-{random.randrange(1 << 30)}",
        "OURO_REGISTRY_POLL_INTERVAL_S": "2",
        "OURO_API_KEYS": CLIENT_KEY,
        "OURO_ADMIN_API_KEYS": ADMIN_KEY,
        "OURO_ADMIN_API_KEY": ADMIN_KEY,
        "OURO_METRICS_API_KEYS": METRICS_KEY,
    }
    with start_local_serve(tmp_path_factory.mktemp("prometheus"), env) as local:
        yield local


@pytest.fixture(scope="module")
def monitoring_objects(render_chart: RenderChart) -> list[dict]:
    """The chart rendered with every monitoring object on."""
    return render_chart(values_files=(MONITORING_VALUES,))


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory, stack: LocalServe, monitoring_objects: list[dict]
) -> Iterator[str]:
    """Prometheus on 127.0.0.1 scraping the stack; its API's base URL."""
    binary = shutil.which("prometheus")
    assert binary, "Prometheus is missing: `make install-test` installs Debian's package"
    work = tmp_path_factory.mktemp("prometheus-data")
    (work / "token").write_text(METRICS_KEY)
    target = stack.base_url.removeprefix("http://")
    # The labels the ServiceMonitor's target gets (job: its Service), which the rules select.
    (service,) = [
        o
        for o in monitoring_objects
        if o["kind"] == "Service" and o["metadata"]["name"].endswith("-metrics")
    ]
    labels = {"namespace": service["metadata"].get("namespace", DEFAULT_NAMESPACE)}
    config = {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {  # what the chart's ServiceMonitor generates: one target, bearer authorization
                "job_name": service["metadata"]["name"],
                "metrics_path": "/metrics",
                "authorization": {"type": "Bearer", "credentials_file": str(work / "token")},
                "static_configs": [{"targets": [target], "labels": labels}],
            }
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (work / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, 60, path="/-/ready")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def query(prometheus: str, expr: str) -> list:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=30)
    body = response.json()
    assert body.get("status") == "success", (expr, body)
    return body["data"]["result"]


def alert_expressions(objects: list[dict]) -> list[tuple[str, str]]:
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    return [
        (item["alert"], item["expr"])
        for group in rule["spec"]["groups"]
        for item in group["rules"]
        if "alert" in item
    ]


def drive_traffic_and_one_cycle(stack: LocalServe, small_model_chat_jsonl: Path) -> None:
    """Chats, an error, corrections, a training cycle, a routed answer corrected again
    (the router's false-accept signal), then a canary whose answers users rate: every
    kind of series moves."""
    with stack.http(CLIENT_KEY) as http:

        def ask(question: str, model: str = "ouro") -> dict:
            body = {"model": model, "messages": [{"role": "user", "content": question}]}
            response = http.post("/v1/chat/completions", json={**body, "max_tokens": 8})
            assert response.status_code == 200, response.text
            return response.json()

        def correct(question: str, answer: dict, correction: str) -> str:
            response = http.post(
                "/v1/feedback",
                json={
                    "messages": [{"role": "user", "content": question}],
                    "completion": answer["choices"][0]["message"]["content"] or "?",
                    "correction": correction,
                    "model": answer["model"],
                    "completion_id": answer["id"],
                },
            )
            assert response.status_code == 201, response.text
            return response.json()["id"]

        for question in ("Hello there", "What do you like?"):
            ask(question, BASE_MODEL_NAME)
        assert http.post("/v1/chat/completions", json={"model": "ouro"}).status_code == 400
        pairs = CORRECTION_PAIRS[:10]  # what the closed-loop test shows a cycle learns
        asked = {correct(q, ask(q), correction): q for q, correction in pairs}
        # Routed, so that the version answers its corrections as a router's match.
        # Serve is told to re-read the registry, as the CronJob's cycle tells it.
        trained = stack.train_tiny_cycle(
            small_model_chat_jsonl, "--routing", "--json", "--notify-url", stack.base_url
        )
        assert trained.returncode == 0, trained.stdout + trained.stderr
        cycle = json.loads(trained.stdout)
        assert (cycle["release"], cycle["version"]) == ("production", 1), cycle["message"]
        # A trained one (the recipe holds a share of the corrections out of training).
        trained_ids = stack.dataset_manifest(cycle["run_id"])["train_correction_ids"]
        question = asked[trained_ids[0]]
        deadline = time.monotonic() + 120  # and polls it every 2 s besides
        routed = ask(question)
        while routed["model"] != version_label(1) and time.monotonic() < deadline:
            time.sleep(1)
            routed = ask(question)
        # Routed to its correction.
        assert routed["model"] == version_label(1), (routed["model"], stack.log_tail())
        correct(question, routed, "Not that: this answer is wrong.")

        # A canary (a copy of v1 registered as v2) answering a share of 'ouro' traffic,
        # rated by its users: the canary panels' series move.
        registry = AdapterRegistry(
            stack.env["OURO_MLFLOW_TRACKING_URI"], stack.env["OURO_REGISTERED_MODEL_NAME"]
        )
        adapter = registry.download(1, Path(tempfile.mkdtemp(prefix="ouro-prom-canary-")))
        Rollout(registry).start(register_adapter_version(registry, adapter))
        refreshed = http.post(
            "/admin/registry/refresh", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        assert refreshed.status_code == 200, refreshed.text
        for i in range(30):
            answer = ask(f"Tell me something about topic number {i}.")
            rated = http.post(
                "/v1/feedback",
                json={
                    "messages": [
                        {"role": "user", "content": f"Tell me something about topic number {i}."}
                    ],
                    "completion": answer["choices"][0]["message"]["content"] or "?",
                    "rating": "down" if i % 2 else "up",
                    "model": answer["model"],
                    "completion_id": answer["id"],
                },
            )
            assert rated.status_code == 201, rated.text


def test_every_panel_and_alert_evaluates_on_what_the_stack_exports(
    stack: LocalServe,
    prometheus: str,
    monitoring_objects: list[dict],
    small_model_chat_jsonl: Path,
) -> None:
    drive_traffic_and_one_cycle(stack, small_model_chat_jsonl)
    time.sleep(5 * SCRAPE_INTERVAL_S)  # a few scrapes after the last change
    exported = set(
        httpx.get(f"{prometheus}/api/v1/label/__name__/values", timeout=30).json()["data"]
    )
    assert "ouro_training_consecutive_failed_cycles" in exported, sorted(exported)

    dashboard = json.loads(DASHBOARD_FILE.read_text())
    panels = panel_queries(dashboard)
    alerts = alert_expressions(monitoring_objects)
    assert panels and alerts
    for title, expr in [*panels, *alerts]:
        unknown = set(METRIC_NAME.findall(expr)) - exported
        assert not unknown, f"{title}: {expr} names metrics the stack does not export: {unknown}"

    by_panel: dict[str, bool] = {}
    for title, expr in panels:
        # A window that reaches back over the traffic before the cycle.
        returned = bool(query(prometheus, concrete_query(expr, window=WINDOW)))
        by_panel[title] = by_panel.get(title, False) or returned
    empty = [title for title, returned in by_panel.items() if not returned]
    assert not empty, f"panels with no data after traffic and a cycle: {empty}"
    for _alert, expr in alerts:
        query(prometheus, expr)  # evaluates without error (firing or not)
    # The rules select this install's series (else absent() would fire): a healthy stack
    # with a registry it reaches raises neither.
    firing = {alert for alert, expr in alerts if query(prometheus, expr)}
    assert not firing & {"OuroNoReadyReplica", "OuroRegistryUnreachable"}, firing
    if os.environ.get(SNAPSHOT_ENV):  # the docs' picture of the panels, from this run
        render_snapshot(
            prometheus, dashboard, Path(os.environ[SNAPSHOT_ENV]), minutes=10, window="2m"
        )
