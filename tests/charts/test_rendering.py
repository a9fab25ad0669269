"""The chart's rendered objects: GPUs, training policy, images, secrets, pod security."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from ouro.rollout import CanaryPolicy
from ouro.settings import OuroSettings
from serve.local_ray import SERVE_ENV
from tools.docker_context import exec_form
from tools.manifests import RenderError, containers, find, pod_specs
from tools.paths import REPO_ROOT, VALUES_FILES

SHIPPED = sorted(VALUES_FILES)
SECRET_LIKE = re.compile(r"(?:^|_)(?:KEYS?|TOKEN|PASSWORD|SECRET|CREDENTIALS?)(?:_|$)")
"""Environment names that hold secrets (OURO_API_KEYS, HF_TOKEN, AWS_SECRET_ACCESS_KEY, ...)."""


def serve_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(find(objects, "RayService")["spec"]["serveConfigV2"])


def deployment_config(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (application,) = serve_config(objects)["applications"]
    return next(d for d in application["deployments"] if d["name"] == name)


def ray_cluster(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "RayService")["spec"]["rayClusterConfig"]


def worker_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (group,) = ray_cluster(objects)["workerGroupSpecs"]
    return group["template"]["spec"]["containers"][0]


def train_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


# -- GPUs ------------------------------------------------------------------------------


def test_default_values_put_one_t4_gpu_on_each_worker_and_training_pod(rendered):
    objects = rendered["default"]
    (group,) = ray_cluster(objects)["workerGroupSpecs"]
    for label, pod, container in (
        ("worker", group["template"]["spec"], worker_container(objects)),
        ("train", train_pod(objects), train_pod(objects)["containers"][0]),
    ):
        resources = container["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == 1, label
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"]
        assert GPU_TOLERATION in pod["tolerations"], label
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "Tesla-T4"}, label
    assert deployment_config(objects, "LLMServer")["ray_actor_options"]["num_gpus"] == 1


def test_gpu_counts_follow_the_values_with_limits_equal_to_requests(render_chart):
    objects = render_chart(
        set_values={
            "serve.workers.gpus": "2",
            "serve.llmDeployment.numGpus": "2",
            "training.gpus": "4",
        }
    )
    worker = worker_container(objects)["resources"]
    train = train_pod(objects)["containers"][0]["resources"]
    assert worker["requests"]["nvidia.com/gpu"] == worker["limits"]["nvidia.com/gpu"] == 2
    assert train["requests"]["nvidia.com/gpu"] == train["limits"]["nvidia.com/gpu"] == 4
    assert deployment_config(objects, "LLMServer")["ray_actor_options"]["num_gpus"] == 2


def test_cpu_dev_values_ask_for_no_gpu_anywhere(rendered):
    objects = rendered["cpu-dev"]
    for label, container in (item for obj in objects for item in containers(obj)):
        for section in ("requests", "limits"):
            assert "nvidia.com/gpu" not in container["resources"].get(section, {}), label
    for label, pod in (item for obj in objects for item in pod_specs(obj)):
        assert not pod.get("nodeSelector"), label
        assert not pod.get("tolerations"), label
    assert deployment_config(objects, "LLMServer")["ray_actor_options"]["num_gpus"] == 0
    assert serve_config(objects)["applications"][0]["args"]["base_model"] == "smollm2-135m"


def test_an_llm_replica_that_needs_more_gpus_than_a_worker_has_is_refused(render_chart):
    with pytest.raises(RenderError, match="numGpus exceeds serve.workers.gpus"):
        render_chart(set_values={"serve.workers.gpus": "0"})


# -- Serve -----------------------------------------------------------------------------


@pytest.mark.parametrize("values", SHIPPED)
def test_serve_config_runs_build_app_with_settings_fields_as_args(rendered, values):
    config = serve_config(rendered[values])
    (application,) = config["applications"]
    assert application["import_path"] == "serve.app:build_app"
    assert set(application["args"]) <= set(OuroSettings.model_fields)
    assert {d["name"] for d in application["deployments"]} == {"LLMServer"}
    for deployment in application["deployments"]:
        scaling = deployment["autoscaling_config"]
        assert 0 < scaling["min_replicas"] <= scaling["max_replicas"]
        assert scaling["target_ongoing_requests"] > 0
    assert config["http_options"]["port"] == 8000


def test_serve_args_carry_the_model_and_the_registry(rendered):
    args = serve_config(rendered["default"])["applications"][0]["args"]
    assert args["base_model"] == "meta-llama/Llama-3.2-3B-Instruct"
    assert args["mlflow_tracking_uri"] == "http://ouro-mlflow:5000"
    assert args["registered_model_name"] == "ouro-adapter"
    external = serve_config(rendered["external-mlflow-s3"])["applications"][0]["args"]
    assert external["mlflow_tracking_uri"] == "https://mlflow.internal.example.com"


def test_an_open_server_must_be_asked_for(render_chart):
    with pytest.raises(RenderError, match="no API keys"):
        render_chart(set_strings={"secrets.apiKeys.name": ""})
    objects = render_chart(
        set_strings={"secrets.apiKeys.name": ""},
        set_values={"serve.settings.allowUnauthenticated": "true"},
    )
    assert serve_config(objects)["applications"][0]["args"]["allow_unauthenticated"] is True
    assert "OURO_API_KEYS" not in env_of(worker_container(objects))


def test_llm_cpus_reach_both_ray_and_the_engine_settings(rendered):
    llm = deployment_config(rendered["default"], "LLMServer")
    args = serve_config(rendered["default"])["applications"][0]["args"]
    assert args["llm_num_cpus"] == llm["ray_actor_options"]["num_cpus"] == 2
    assert "allow_unauthenticated" not in args  # keys come from the Secret


def test_worker_probes_use_the_named_serve_port_on_healthz_and_readyz(rendered):
    worker = worker_container(rendered["default"])
    ports = {port["name"]: port["containerPort"] for port in worker["ports"]}
    assert ports["serve"] == 8000
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "serve"}
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "serve"}
    assert worker["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "serve"}


def test_ray_containers_run_serves_haproxy_ingress_unless_told_otherwise(rendered, render_chart):
    # Replicas of other nodes must be reachable from each node's HAProxy: all interfaces.
    assert serve_config(rendered["default"])["http_options"]["host"] == "0.0.0.0"
    head = ray_cluster(rendered["default"])["headGroupSpec"]["template"]["spec"]["containers"][0]
    for container in (head, worker_container(rendered["default"])):
        env = env_of(container)
        assert env["RAY_SERVE_ENABLE_HA_PROXY"]["value"] == "1"
        # The Serve settings the app is built for, as a local Ray has them.
        assert {name: env[name]["value"] for name in SERVE_ENV} == SERVE_ENV
    proxied = render_chart(set_strings={"serve.ingress": "proxy"})
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in env_of(worker_container(proxied))
    with pytest.raises(RenderError, match="haproxy"):
        render_chart(set_strings={"serve.ingress": "nginx"})


def test_head_runs_no_replicas_and_keeps_kuberays_own_probes(rendered):
    head = ray_cluster(rendered["default"])["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    container = head["template"]["spec"]["containers"][0]
    assert "readinessProbe" not in container and "livenessProbe" not in container


# -- Training --------------------------------------------------------------------------


@pytest.mark.parametrize("values", SHIPPED)
def test_training_cronjob_runs_one_bounded_job_at_a_time(rendered, values):
    cronjob = find(rendered[values], "CronJob")
    spec = cronjob["spec"]
    job = spec["jobTemplate"]["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    assert job["backoffLimit"] >= 0
    assert job["activeDeadlineSeconds"] > 0
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    gate_rule = job["podFailurePolicy"]["rules"][0]
    assert gate_rule["action"] == "FailJob"
    assert gate_rule["onExitCodes"] == {"containerName": "train", "operator": "In", "values": [3]}


def test_training_values_reach_the_cronjob(render_chart):
    spec = find(
        render_chart(
            set_values={"training.backoffLimit": "4", "training.activeDeadlineSeconds": "600"},
            set_strings={"training.schedule": "*/30 * * * *"},
        ),
        "CronJob",
    )["spec"]
    assert spec["schedule"] == "*/30 * * * *"
    assert spec["jobTemplate"]["spec"]["backoffLimit"] == 4
    assert spec["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 600


def test_a_canary_by_default_auto_promote_when_asked_or_only_a_candidate(rendered, render_chart):
    base = ["run", "--base-model", "meta-llama/Llama-3.2-3B-Instruct"]
    assert train_pod(rendered["default"])["containers"][0]["args"] == [*base, "--canary"]
    promoted = render_chart(set_values={"training.autoPromote": "true"})
    assert train_pod(promoted)["containers"][0]["args"] == [*base, "--auto-promote"]
    by_hand = render_chart(set_values={"canary.enabled": "false"})
    assert train_pod(by_hand)["containers"][0]["args"] == base


def test_the_canary_rules_reach_serve_and_training_alike(rendered, render_chart):
    objects = render_chart(set_values={"canary.steps": "{5,25,50}", "canary.minRequests": "400"})
    args = serve_config(objects)["applications"][0]["args"]
    env = env_of(train_pod(objects)["containers"][0])
    assert args["canary_steps"] == env["OURO_CANARY_STEPS"]["value"] == "5,25,50"
    assert args["canary_min_requests"] == int(env["OURO_CANARY_MIN_REQUESTS"]["value"]) == 400
    for field in [name for name in args if name.startswith("canary_")]:
        assert field in OuroSettings.model_fields
    serve_side = OuroSettings(**args)
    train_side = OuroSettings(
        **{
            k.removeprefix("OURO_").lower(): v["value"]
            for k, v in env.items()
            if k.startswith("OURO_CANARY_")
        }
    )
    assert CanaryPolicy.from_settings(serve_side) == CanaryPolicy.from_settings(train_side)
    assert CanaryPolicy.from_settings(serve_side).steps == (5.0, 25.0, 50.0)


def test_training_gets_the_model_settings_as_environment(rendered):
    env = env_of(train_pod(rendered["default"])["containers"][0])
    args = serve_config(rendered["default"])["applications"][0]["args"]
    for field in ("base_model", "quantization", "mlflow_tracking_uri", "registered_model_name"):
        assert env[f"OURO_{field.upper()}"]["value"] == str(args[field])
        assert field in OuroSettings.model_fields


def test_personal_adapters_are_off_by_default_and_reach_serve_and_training(
    rendered, render_chart, tmp_path
):
    def settings(objects) -> tuple[dict, dict]:
        args = serve_config(objects)["applications"][0]["args"]
        env = env_of(train_pod(objects)["containers"][0])
        return args, env

    args, env = settings(rendered["default"])
    assert args["personal_adapters"] is False
    assert env["OURO_PERSONAL_ADAPTERS"]["value"] == "false"
    assert OuroSettings(**args).personal_adapters is False

    values_file = tmp_path / "personal.yaml"  # --set would pass 0.9 as a string
    values_file.write_text(
        "personalAdapters: {enabled: true, consensusScopes: 5, consensusSimilarity: 0.9}\n"
    )
    on = render_chart(values_files=(values_file,))
    args, env = settings(on)
    parsed = OuroSettings(
        **{k: args[k] for k in ("personal_adapters", "consensus_scopes", "consensus_similarity")}
    )
    assert (parsed.personal_adapters, parsed.consensus_scopes, parsed.consensus_similarity) == (
        True,
        5,
        0.9,
    )
    assert env["OURO_PERSONAL_ADAPTERS"]["value"] == "true"
    assert env["OURO_CONSENSUS_SCOPES"]["value"] == "5"
    assert env["OURO_CONSENSUS_SIMILARITY"]["value"] == "0.9"


@pytest.mark.parametrize(
    "values",
    [
        {"personalAdapters.enabled": "yes-please"},
        {"personalAdapters.consensusScopes": "1"},
        {"personalAdapters.consensusSimilarity": "1.5"},
    ],
)
def test_personal_adapter_values_of_the_wrong_kind_are_refused(render_chart, values):
    with pytest.raises(RenderError):
        render_chart(set_values=values)


# -- Images and entry points -----------------------------------------------------------


def test_cronjob_relies_on_the_train_image_entrypoint(rendered):
    entrypoint = exec_form(REPO_ROOT / "Dockerfile.train", "ENTRYPOINT")
    assert entrypoint == ["python", "-m", "train_job"]
    assert exec_form(REPO_ROOT / "Dockerfile.train", "CMD") == ["run"]
    container = train_pod(rendered["default"])["containers"][0]
    assert "command" not in container  # the ENTRYPOINT runs; args replace CMD
    assert container["args"][0] == "run"
    assert container["image"] == "ouro-train:0.1.0"


@pytest.mark.parametrize("auto_promote", [False, True])
def test_cronjob_args_parse_with_train_jobs_own_command_line(render_chart, auto_promote):
    from train_job import cli  # an import error fails the test, never skips it

    objects = render_chart(set_values={"training.autoPromote": str(auto_promote).lower()})
    _args, _settings, config = cli.load_command(train_pod(objects)["containers"][0]["args"])
    assert config is not None and config.auto_promote is auto_promote


def test_ray_containers_use_the_serve_image_that_matches_ray_version(rendered):
    dockerfile = (REPO_ROOT / "Dockerfile.serve").read_text(encoding="utf-8")
    cluster = ray_cluster(rendered["default"])
    base = re.search(r"^FROM rayproject/ray:(\S+)", dockerfile, re.MULTILINE)
    assert base is not None
    assert base.group(1).startswith(f"{cluster['rayVersion']}-py311")
    requirements = (REPO_ROOT / "requirements.txt").read_text(encoding="utf-8")
    assert f"ray[serve]=={cluster['rayVersion']}" in requirements
    assert "ENV PYTHONUNBUFFERED" in dockerfile and "PYTHONPATH=/app" in dockerfile
    assert exec_form(REPO_ROOT / "Dockerfile.serve", "ENTRYPOINT") == [
        "python",
        "-m",
        "serve",
    ]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == worker_container(rendered["default"])["image"] == "ouro-serve:0.1.0"


def test_image_values_set_repository_and_tag(render_chart):
    objects = render_chart(
        set_strings={
            "images.serve.repository": "registry.example/ouro-serve",
            "images.serve.tag": "abc123",
            "images.train.repository": "registry.example/ouro-train",
        }
    )
    assert worker_container(objects)["image"] == "registry.example/ouro-serve:abc123"
    assert train_pod(objects)["containers"][0]["image"] == "registry.example/ouro-train:0.1.0"


# -- Secrets ---------------------------------------------------------------------------


@pytest.mark.parametrize("values", SHIPPED)
def test_secrets_reach_containers_only_through_secret_key_refs(rendered, values):
    objects = rendered[values]
    assert not [obj for obj in objects if obj["kind"] == "Secret"]  # never secret values
    checked = 0
    for label, container in (item for obj in objects for item in containers(obj)):
        for entry in container.get("env", []):
            if SECRET_LIKE.search(entry["name"]):
                checked += 1
                assert "value" not in entry, f"{label}: {entry['name']} has a plain value"
                assert "secretKeyRef" in entry["valueFrom"], f"{label}: {entry['name']}"
    if values != "cpu-dev":
        assert checked > 0  # the default and S3 values do pass secrets


def test_api_keys_and_hf_token_come_from_the_named_secrets(render_chart):
    objects = render_chart(set_strings={"secrets.huggingface.name": "hf"})
    env = env_of(worker_container(objects))
    assert env["OURO_API_KEYS"]["valueFrom"]["secretKeyRef"] == {
        "name": "ouro-api-keys",
        "key": "api-keys",
    }
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    train_env = env_of(train_pod(objects)["containers"][0])
    assert "HF_TOKEN" in train_env and "OURO_API_KEYS" not in train_env  # training needs no keys


def test_postgres_password_and_s3_keys_are_secret_refs(render_chart):
    objects = render_chart(
        set_strings={
            "mlflow.backendStore.type": "postgresql",
            "mlflow.backendStore.postgres.host": "db",
            "mlflow.backendStore.postgres.passwordSecret": "mlflow-db",
            "mlflow.artifacts.type": "s3",
            "mlflow.artifacts.s3.bucket": "adapters",
            "mlflow.artifacts.s3.credentialsSecret": "mlflow-s3",
        }
    )
    mlflow = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(mlflow)
    assert env["MLFLOW_DB_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"] == (
        "postgresql://mlflow:$(MLFLOW_DB_PASSWORD)@db:5432/mlflow"
    )
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"] == "s3://adapters/mlflow"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-s3"
    assert not [
        obj
        for obj in objects
        if obj["kind"] == "PersistentVolumeClaim" and "mlflow" in obj["metadata"]["name"]
    ]


# -- Pod security and resources --------------------------------------------------------


@pytest.mark.parametrize("values", SHIPPED)
def test_every_container_has_resources_and_runs_unprivileged(rendered, values):
    objects = rendered[values]
    labels = []
    for obj in objects:
        pods = dict(pod_specs(obj))
        for label, container in containers(obj):
            labels.append(label)
            resources = container["resources"]
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[section]), f"{label}: {section}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, label
            assert context["runAsNonRoot"] is True, label
            assert context["capabilities"]["drop"] == ["ALL"], label
            assert not context.get("privileged"), label
        for label, pod in pods.items():
            assert pod["securityContext"]["runAsNonRoot"] is True, label
            assert pod["securityContext"]["runAsUser"] != 0, label
    assert any("test-api" in label for label in labels)  # the helm test hook is covered too


@pytest.mark.parametrize("values", SHIPPED)
def test_non_ray_containers_have_a_read_only_root_and_a_scratch_tmp(rendered, values):
    for obj in rendered[values]:
        if obj["kind"] == "RayService":
            continue
        for label, pod in pod_specs(obj):
            volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
            for container in pod["containers"]:
                assert container["securityContext"]["readOnlyRootFilesystem"] is True, label
                mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                if "/tmp" in mounts:
                    assert "emptyDir" in volumes[mounts["/tmp"]], label


def test_only_the_autoscaler_head_mounts_an_api_token(rendered):
    for obj in rendered["default"]:
        for label, pod in pod_specs(obj):
            expected = label.endswith(" head")
            assert pod.get("automountServiceAccountToken") is expected, label


# -- Storage ---------------------------------------------------------------------------


def test_feedback_is_a_read_write_many_claim_mounted_where_settings_look(rendered):
    objects = rendered["default"]
    claims = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PersistentVolumeClaim"}
    assert claims["ouro-feedback"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claims["ouro-feedback"]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for obj in objects:
        if obj["kind"] not in ("RayService", "CronJob"):
            continue
        for label, pod in pod_specs(obj):
            volumes = {v["name"]: v for v in pod["volumes"]}
            container = pod["containers"][0]
            env = env_of(container)
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            feedback_dir = env["OURO_FEEDBACK_DIR"]["value"]
            data_dir = env["OURO_DATA_DIR"]["value"]
            claim = volumes[mounts[feedback_dir]]["persistentVolumeClaim"]["claimName"]
            assert claim == "ouro-feedback", label
            cache = volumes[mounts[data_dir]]["persistentVolumeClaim"]["claimName"]
            assert cache == "ouro-cache", label
            assert env["HF_HOME"]["value"].startswith(f"{data_dir}/"), label
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", label


def test_existing_claims_are_used_instead_of_new_ones(render_chart):
    objects = render_chart(
        set_strings={
            "storage.feedback.existingClaim": "shared-feedback",
            "storage.cache.existingClaim": "models",
        }
    )
    claims = [o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert claims == ["ouro-mlflow"]
    volumes = {v["name"]: v for v in train_pod(objects)["volumes"]}
    assert volumes["feedback"]["persistentVolumeClaim"]["claimName"] == "shared-feedback"
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == "models"


# -- MLflow, network, ingress ----------------------------------------------------------


def test_in_cluster_mlflow_uses_sqlite_on_its_volume_without_telemetry(rendered):
    objects = rendered["default"]
    deployment = find(objects, "Deployment", "ouro-mlflow")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert container["command"] == ["mlflow", "server"]
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"] == "sqlite:////mlflow/mlflow.db"
    assert env["MLFLOW_DISABLE_TELEMETRY"]["value"] == "true"
    assert env["DO_NOT_TRACK"]["value"] == "true"
    assert "ouro-mlflow:5000" in next(
        a for a in container["args"] if a.startswith("--allowed-hosts=")
    )
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    service = find(objects, "Service", "ouro-mlflow")
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_external_mlflow_renders_no_server_and_requires_a_url(rendered, render_chart):
    kinds = {(o["kind"], o["metadata"]["name"]) for o in rendered["external-mlflow-s3"]}
    assert ("Deployment", "ouro-mlflow") not in kinds
    env = env_of(worker_container(rendered["external-mlflow-s3"]))
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "ouro-s3"
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "https://s3.example.com"
    with pytest.raises(RenderError, match="externalTrackingUri is required"):
        render_chart(set_values={"mlflow.enabled": "false"})


def test_network_policies_isolate_mlflow_and_training(rendered):
    policies = {
        o["metadata"]["name"]: o["spec"]
        for o in rendered["default"]
        if o["kind"] == "NetworkPolicy"
    }
    assert set(policies) == {"ouro-ray", "ouro-mlflow", "ouro-train"}
    assert policies["ouro-train"]["ingress"] == []
    (mlflow_rule,) = policies["ouro-mlflow"]["ingress"]
    assert (
        mlflow_rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "ouro"
    )
    serve_rules = [
        r
        for r in policies["ouro-ray"]["ingress"]
        if r.get("ports") == [{"port": "serve", "protocol": "TCP"}]
    ]
    assert serve_rules and "from" not in serve_rules[0]  # the API is open unless apiFrom says


def test_ingress_is_optional_and_targets_kuberays_serve_service(rendered, render_chart):
    assert not [o for o in rendered["default"] if o["kind"] == "Ingress"]
    objects = render_chart(
        set_values={"ingress.enabled": "true"}, set_strings={"ingress.tlsSecretName": "tls"}
    )
    ingress = find(objects, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "ouro-serve-svc", "port": {"name": "serve"}}
    assert ingress["spec"]["tls"][0]["secretName"] == "tls"


def test_helm_test_pod_calls_v1_models_on_the_serve_service(rendered):
    pod = find(rendered["default"], "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    assert "http://ouro-serve-svc:8000/v1/models" in container["args"][0]
    assert (
        env_of(container)["OURO_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "ouro-api-keys"
    )


def test_training_config_selects_the_recipe_the_cronjob_passes(render_chart):
    recipe = "/app/train_job/configs/gpu-llama-3b.yaml"
    objects = render_chart(set_strings={"training.config": recipe})
    container = find(objects, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    # The served model is what trains, whatever base model the recipe names.
    assert container["args"][:5] == [
        "run",
        "--base-model",
        "meta-llama/Llama-3.2-3B-Instruct",
        "--config",
        recipe,
    ]
    default = find(render_chart(), "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert "--config" not in default["containers"][0]["args"]  # the base model's own recipe


def test_the_dashboard_is_reachable_from_the_operators_namespace_only_by_default(render_chart):
    (policy,) = [
        o
        for o in render_chart()
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("-ray")
    ]
    (dashboard,) = [
        rule
        for rule in policy["spec"]["ingress"]
        if any(port["port"] == "dashboard" for port in rule.get("ports", []))
    ]
    assert dashboard["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-operator"}}}
    ]


@pytest.mark.parametrize("strategy", ["NewCluster", "None"])
def test_the_upgrade_strategy_is_the_operators_choice(render_chart, strategy):
    service = find(render_chart(set_strings={"serve.upgradeStrategy": strategy}), "RayService")
    assert service["spec"]["upgradeStrategy"] == {"type": strategy}
