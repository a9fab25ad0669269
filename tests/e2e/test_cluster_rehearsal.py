"""A rehearsal of the cluster on one machine: what the chart deploys, run as the chart says.

The chart is rendered with its CPU values (and an API-key Secret). From the rendered
objects the test takes the RayService's ``serveConfigV2`` (import path, args, deployment
options, HTTP options), the Ray containers' environment, the training CronJob's container
(the image's ENTRYPOINT from Dockerfile.train, the args and the environment) and the
Secret keys they reference. It deploys that Serve config to a local Ray through the call
KubeRay makes (Serve's ``deploy_apps``), runs that CronJob command as a process, and
drives one correction -> cycle -> swap -> rollback through them. A renamed flag,
environment variable or value then fails here instead of in a pod.

What is changed, and only that: paths of the pods' volumes become folders of the test,
and the HTTP host loopback on a free port. Through the chart's own values: the base model
is the embedded ouro-tiny, put on the cache volume (``model.baseModel``, a path there), MLflow
the test's server (``mlflow.externalTrackingUri``), and the training recipe the tiny one
(``training.config`` and ``training.extraArgs``). Ray Serve's HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY``)
is left out: on one machine it needs a network namespace of its own, and
tests/serve/test_haproxy_ingress.py covers it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ouro.names import BASE_MODEL_NAME, version_label
from tests.fixtures.charts import RenderChart
from tests.fixtures.mlflow import free_port
from tests.fixtures.serve import wait_until_ready
from tests.fixtures.train_job import CORRECTION_PAIRS, TINY_CONFIG_FILE
from tools.docker_context import exec_form
from tools.manifests import find
from tools.paths import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

CPU_VALUES = REPO_ROOT / "charts" / "ouro" / "values-cpu-dev.yaml"
SECRET = "ouro-api-keys"
SECRET_DATA = {  # the keys the chart's values name, as NOTES.txt tells users to create them
    "api-keys": "alice:sk-rehearsal-alice,bob:sk-rehearsal-bob",
    "admin-api-keys": "ops:sk-rehearsal-admin",
    "metrics-api-key": "sk-rehearsal-metrics",
}
CLIENT_KEY = "sk-rehearsal-alice"
ADMIN_KEY = "sk-rehearsal-admin"
IMAGE_CODE_DIR = "/app"
"""Where the images keep the code (Dockerfile.*: WORKDIR /app, on PYTHONPATH)."""
SWAP_TIMEOUT_S = 180.0


MODEL = "/data/models/ouro-tiny"
"""The base model, as a path on the cache volume (a form model.baseModel takes)."""
DATASET = "/data/datasets/conversations.jsonl"
"""Where the replay and regression conversations sit on the cache volume (as an operator
puts a dataset there)."""


def rendered(render_chart: RenderChart, mlflow: str) -> list[dict[str, Any]]:
    return render_chart(
        values_files=(CPU_VALUES,),
        set_strings={
            "secrets.apiKeys.name": SECRET,
            "model.baseModel": MODEL,
            "mlflow.externalTrackingUri": mlflow,
            "training.config": f"{IMAGE_CODE_DIR}/{TINY_CONFIG_FILE.relative_to(REPO_ROOT)}",
            # What the small build knows: replayed and measured, so forgetting shows.
            "training.extraArgs[0]": "--replay-source",
            "training.extraArgs[1]": DATASET,
            "training.extraArgs[2]": "--regression-source",
            "training.extraArgs[3]": DATASET,
        },
        set_values={"serve.settings.allowUnauthenticated": "false", "mlflow.enabled": "false"},
    )


class Pods:
    """The pods' paths and Secrets, mapped onto this machine."""

    def __init__(self, root: Path, mounts: dict[str, Path]) -> None:
        self.root = root
        self.mounts = mounts
        self.secret_refs: set[tuple[str, str, bool]] = set()

    def path(self, value: str) -> str:
        for mount, local in sorted(self.mounts.items(), key=lambda m: -len(m[0])):
            if value == mount or value.startswith(mount + "/"):
                return str(local) + value[len(mount) :]
        return value

    def env(self, container: dict[str, Any]) -> dict[str, str]:
        """A container's environment as the kubelet would set it, paths mapped."""
        env: dict[str, str] = {}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = self.path(str(item["value"]))
                continue
            ref = item["valueFrom"]["secretKeyRef"]
            optional = bool(ref.get("optional", False))
            self.secret_refs.add((ref["name"], ref["key"], optional))
            assert ref["name"] == SECRET, ref
            if ref["key"] in SECRET_DATA:
                env[item["name"]] = SECRET_DATA[ref["key"]]
            else:
                assert optional, f"{item['name']} needs key {ref['key']!r} no doc asks for"
        return env


@dataclass(frozen=True)
class Rehearsal:
    base_url: str
    """The API, as the RayService's Serve config deploys it."""
    command: list[str]
    """The CronJob's container: the image's ENTRYPOINT and the rendered args."""
    env: dict[str, str]
    """The CronJob container's environment."""
    workdir: Path
    """The CronJob container's working directory."""

    def train_job(self, *args: str) -> None:
        """The CronJob's run, or with ``args`` the same image and environment running them
        (what an operator's ``kubectl run`` does)."""
        argv = [*self.command[:3], *args] if args else self.command
        result = subprocess.run(
            argv, cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=1500
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    render_chart: RenderChart,
    mlflow_server: str,
    ouro_tiny_small_dir: Path,
    small_model_chat_jsonl: Path,
) -> Iterator[Rehearsal]:
    """The RayService's Serve app running, and the CronJob's command ready to run."""
    objects = rendered(render_chart, mlflow_server)
    root = tmp_path_factory.mktemp("cluster")
    pods = Pods(
        root,
        {m: root / m.strip("/") for m in ("/data", "/feedback", "/tmp")}
        | {IMAGE_CODE_DIR: REPO_ROOT},
    )
    for local in pods.mounts.values():
        local.mkdir(parents=True, exist_ok=True)
    dataset = Path(pods.path(DATASET))
    dataset.parent.mkdir(parents=True)
    shutil.copyfile(small_model_chat_jsonl, dataset)
    model = Path(pods.path(MODEL))
    model.parent.mkdir(parents=True)
    model.symlink_to(ouro_tiny_small_dir, target_is_directory=True)

    service = find(objects, "RayService")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    (llm,) = [d for d in app["deployments"] if d["name"] == "LLMServer"]
    replicas = llm.get("num_replicas") or llm["autoscaling_config"]["min_replicas"]
    assert replicas >= 2, "the CPU values run more than one replica"
    app["args"] = {k: pods.path(v) if isinstance(v, str) else v for k, v in app["args"].items()}
    port = free_port()
    serve_config["http_options"].update(host="127.0.0.1", port=port)

    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    ray_env = pods.env(head["containers"][0])
    ray_env.pop("RAY_SERVE_ENABLE_HA_PROXY", None)  # see the module's docstring
    ray_env.update(PYTHONPATH=str(REPO_ROOT))

    cron = find(objects, "CronJob")
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    train_env = pods.env(container)
    train_env.update(PYTHONPATH=str(REPO_ROOT), PATH=os.environ["PATH"])
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "OMP_WAIT_POLICY"):
        if name in os.environ:
            train_env.setdefault(name, os.environ[name])
    command = exec_form(REPO_ROOT / "Dockerfile.train", "ENTRYPOINT")
    assert command[0] == "python"
    command = [sys.executable, *command[1:], *(pods.path(a) for a in container["args"])]
    workdir = Path(pods.path(container.get("workingDir", "/tmp")))

    refs = {(name, key) for name, key, _ in pods.secret_refs}
    assert refs == {(SECRET, key) for key in SECRET_DATA}, refs

    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    from serve.local_ray import start_local_ray

    # Ray's processes inherit the containers' environment; only those variables are put
    # back afterwards (start_local_ray's own, such as Ray's auth token, must stay).
    saved = {name: os.environ.get(name) for name in ray_env}
    os.environ.update(ray_env)
    try:
        start_local_ray(root / "ray-home", num_cpus=2, object_store_memory=128 * 1024 * 1024)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    try:
        config = ServeDeploySchema.model_validate(serve_config)
        # What KubeRay does with serveConfigV2: hand it to Serve's controller as it is.
        client = serve_api.serve_start(
            http_options=config.http_options.model_dump(), proxy_location=config.proxy_location
        )
        client.deploy_apps(config, _blocking=False)
        base_url = f"http://127.0.0.1:{port}"
        wait_until_ready(base_url)
        yield Rehearsal(base_url, command, train_env, workdir)
    finally:
        import ray

        serve.shutdown()
        ray.shutdown()


def answer(http: httpx.Client, question: str) -> dict:
    response = http.post(
        "/v1/chat/completions",
        json={
            "model": "ouro",
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 24,
            "temperature": 0,
        },
    )
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(http: httpx.Client, question: str, model: str) -> dict:
    deadline = time.monotonic() + SWAP_TIMEOUT_S
    body = answer(http, question)
    while body["model"] != model and time.monotonic() < deadline:
        time.sleep(1)
        body = answer(http, question)
    assert body["model"] == model, body
    return body


def test_a_correction_trains_swaps_and_rolls_back_through_what_the_chart_deploys(
    cluster: Rehearsal,
) -> None:
    base_url = cluster.base_url
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as http:
        # The named key's key part is what clients send; the name is its scope.
        assert http.get("/v1/models").status_code == 200
        pairs = CORRECTION_PAIRS[:10]
        for question, correction in pairs:
            before = answer(http, question)
            assert before["model"] == BASE_MODEL_NAME
            feedback = http.post(
                "/v1/feedback",
                json={
                    "messages": [{"role": "user", "content": question}],
                    "completion": before["choices"][0]["message"]["content"],
                    "correction": correction,
                    "model": before["model"],
                    "completion_id": before["id"],
                },
            )
            assert feedback.status_code == 201, feedback.text

        cluster.train_job()  # the CronJob's run, auto-promoting
        healed = wait_for(http, pairs[0][0], version_label(1))  # Serve polls the registry
        assert healed["choices"][0]["message"]["content"]

        cluster.train_job("rollback")  # what an operator runs in the training image
        wait_for(http, pairs[0][0], BASE_MODEL_NAME)
    with httpx.Client(base_url=base_url, timeout=30) as scraper:
        metrics = scraper.get(
            "/metrics", headers={"Authorization": f"Bearer {SECRET_DATA['metrics-api-key']}"}
        )
        assert metrics.status_code == 200
        replicas = {
            line.split('replica="')[1].split('"')[0]
            for line in metrics.text.splitlines()
            if line.startswith("ouro_replica_ready{")
        }
        assert len(replicas) >= 2, metrics.text[:2000]
