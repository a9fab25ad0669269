"""The Kubernetes trigger against the kmock API emulator.

kmock stores and serves objects but runs no controllers (the test plays the Job
controller: it creates the pod and marks the Job complete), ignores label selectors and
assigns no uid (the CronJob is created with one, as a real API server would give it).
The kubernetes client is synchronous, so it runs in a thread while kmock's event loop
serves it.
"""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from kubernetes import client

from train_job.cli import main
from train_job.trigger import (
    MANUAL_ANNOTATION,
    TriggerBusyError,
    TriggerError,
    job_from_cronjob,
    job_name_for,
    trigger,
)

NAMESPACE = "ouro"
CRONJOB = "ouro-train"


def cronjob_body() -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": CRONJOB, "namespace": NAMESPACE, "uid": "3f1c0a52-cron"},
        "spec": {
            "schedule": "0 3 * * *",
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {
                "metadata": {
                    "labels": {"app.kubernetes.io/component": "train"},
                    "annotations": {"team": "ml"},
                },
                "spec": {
                    "backoffLimit": 1,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {"name": "train", "image": "ouro-train:1", "args": ["run"]}
                            ],
                        }
                    },
                },
            },
        },
    }


@pytest_asyncio.fixture
async def api(kmock) -> client.ApiClient:
    kmock.resources["batch/v1/jobs"] = {}
    kmock.resources["v1/pods"] = {}
    api = client.ApiClient(client.Configuration(host=str(kmock.url).rstrip("/")))
    await asyncio.to_thread(
        client.BatchV1Api(api).create_namespaced_cron_job, NAMESPACE, cronjob_body()
    )
    return api


async def stored_jobs(kmock) -> list[dict]:
    return [
        obj.raw
        for (resource, _namespace, _name), obj in list(kmock.objects.items())
        if resource.plural == "jobs" and not obj.deleted
    ]


@pytest.mark.asyncio
async def test_trigger_creates_a_job_like_kubectl_create_job_from(kmock, api) -> None:
    result = await asyncio.to_thread(trigger, api, CRONJOB, NAMESPACE)

    (job,) = await stored_jobs(kmock)
    assert job["metadata"]["name"] == result.job_name
    assert result.job_name.startswith(f"{CRONJOB}-manual-")
    assert job["metadata"]["labels"] == {"app.kubernetes.io/component": "train"}
    assert job["metadata"]["annotations"] == {"team": "ml", MANUAL_ANNOTATION: "manual"}
    (owner,) = job["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "name": CRONJOB,
        "uid": "3f1c0a52-cron",
        "controller": True,
    }
    template = cronjob_body()["spec"]["jobTemplate"]["spec"]
    assert job["spec"]["backoffLimit"] == template["backoffLimit"]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["run"]
    assert result.succeeded is None  # not followed


@pytest.mark.asyncio
async def test_a_running_job_of_the_cronjob_blocks_another(kmock, api) -> None:
    await asyncio.to_thread(trigger, api, CRONJOB, NAMESPACE)
    with pytest.raises(TriggerBusyError, match="still running"):
        await asyncio.to_thread(trigger, api, CRONJOB, NAMESPACE)
    assert len(await stored_jobs(kmock)) == 1


@pytest.mark.asyncio
async def test_follow_prints_the_pod_log_and_reports_completion(kmock, api) -> None:
    lines: list[str] = []
    follow = asyncio.create_task(
        asyncio.to_thread(
            trigger,
            api,
            CRONJOB,
            NAMESPACE,
            follow=True,
            poll_s=0.5,
            timeout_s=60,
            write=lines.append,
        )
    )
    # Play the Job controller: wait for the Job, start its pod, let it finish.
    for _ in range(200):
        jobs = await stored_jobs(kmock)
        if jobs:
            break
        await asyncio.sleep(0.05)
    (job,) = jobs
    job_name = job["metadata"]["name"]
    pod_name = f"{job_name}-x7k2p"
    kmock[f"get /api/v1/namespaces/{NAMESPACE}/pods/{pod_name}/log"] << (
        b"collect: 20 corrections\nregistered ouro-adapter v1\n"
    )
    core = client.CoreV1Api(api)
    batch = client.BatchV1Api(api)
    await asyncio.to_thread(
        core.create_namespaced_pod,
        NAMESPACE,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": NAMESPACE,
                "labels": {"batch.kubernetes.io/job-name": job_name},
            },
            "spec": {"containers": [{"name": "train", "image": "ouro-train:1"}]},
            "status": {"phase": "Running"},
        },
    )
    await asyncio.sleep(1.0)
    await asyncio.to_thread(
        batch.patch_namespaced_job_status,
        job_name,
        NAMESPACE,
        {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}},
    )

    result = await asyncio.wait_for(follow, timeout=60)

    assert result.succeeded is True
    assert lines == [
        f"[{pod_name}] collect: 20 corrections",
        f"[{pod_name}] registered ouro-adapter v1",
    ]


@pytest.mark.asyncio
async def test_a_missing_cronjob_is_a_clear_error(kmock, api) -> None:
    with pytest.raises(TriggerError, match="404"):
        await asyncio.to_thread(trigger, api, "no-such-cronjob", NAMESPACE)


def test_job_names_are_unique_and_fit() -> None:
    long_name = "a-very-long-training-cronjob-name-for-a-big-deployment-x"
    names = {job_name_for(long_name, now=1_700_000_000) for _ in range(20)}
    assert len(names) > 1
    assert all(len(name) <= 52 and name[0].isalnum() for name in names)


def test_a_cronjob_without_uid_cannot_own_the_job() -> None:
    cronjob = client.ApiClient()._ApiClient__deserialize(cronjob_body(), "V1CronJob")
    cronjob.metadata.uid = None
    with pytest.raises(TriggerError, match="uid"):
        job_from_cronjob(cronjob, "x")


@pytest.mark.asyncio
async def test_the_cli_uses_a_kubeconfig_and_refuses_a_second_run(kmock, api, tmp_path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
        f"clusters: [{{name: kmock, cluster: {{server: '{str(kmock.url).rstrip('/')}'}}}}]\n"
        "users: [{name: tester, user: {token: not-checked}}]\n"
        "contexts: [{name: test, context: {cluster: kmock, user: tester}}]\n",
        encoding="utf-8",
    )
    argv = [
        "trigger",
        "--cronjob",
        CRONJOB,
        "--namespace",
        NAMESPACE,
        "--kubeconfig",
        str(kubeconfig),
    ]

    assert await asyncio.to_thread(main, argv) == 0
    assert len(await stored_jobs(kmock)) == 1
    assert await asyncio.to_thread(main, argv) == 5  # its first Job is still running
    assert await asyncio.to_thread(main, [*argv[:-2], "--kubeconfig", str(tmp_path / "no")]) == 1
