"""Start a training Job now from the training CronJob, like ``kubectl create job --from=cronjob/NAME``.

The Job gets the CronJob's ``jobTemplate`` (its spec, labels and annotations), the
annotation ``cronjob.kubernetes.io/instantiate: manual`` and an ownerReference to the
CronJob (so the CronJob's history limits clean it up), and a unique name made here: a
client-side name instead of ``generateName`` keeps the name known before the call and
works against API emulators that lack ``generateName``.

A manual Job is outside the CronJob's ``concurrencyPolicy: Forbid``, so the trigger
refuses to start one while another Job of the same CronJob is still running.

The API calls made here are exactly those in :data:`RBAC_RULES`, which the Helm chart's
"trigger" Role grants (its test checks the Role against this list).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from ouro.errors import OuroError

logger = logging.getLogger(__name__)

RBAC_RULES: tuple[tuple[str, str, str], ...] = (
    ("batch", "cronjobs", "get"),  # read_namespaced_cron_job
    ("batch", "jobs", "create"),  # create_namespaced_job
    ("batch", "jobs", "get"),  # read_namespaced_job
    ("batch", "jobs", "list"),  # list_namespaced_job (active Jobs; the watch's initial list)
    ("batch", "jobs", "watch"),  # watch on list_namespaced_job (follow)
    ("", "pods", "list"),  # list_namespaced_pod (the Job's pods, follow)
    ("", "pods/log", "get"),  # read_namespaced_pod_log (follow)
)
"""(API group, resource, verb) of every Kubernetes API call the trigger makes."""

MANUAL_ANNOTATION = "cronjob.kubernetes.io/instantiate"
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
MAX_NAME_CHARS = 52
"""Job names longer than this leave no room for the Job controller's pod-name suffix."""


class TriggerError(OuroError):
    """The Job could not be created or followed."""


class TriggerBusyError(TriggerError):
    """A Job of this CronJob is still running."""


@dataclass
class TriggerResult:
    job_name: str
    namespace: str
    succeeded: bool | None = None
    """None when not followed to the end."""


def api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """In-cluster credentials when running in a pod and no kubeconfig is named, else a kubeconfig."""
    if kubeconfig is None and context is None:
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        except ConfigException:
            logger.debug("not in a cluster: using the kubeconfig")
    try:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except (ConfigException, OSError) as exc:
        raise TriggerError(f"no Kubernetes credentials: {exc}") from exc


def job_name_for(cronjob: str, now: float | None = None) -> str:
    """``<cronjob>-manual-<unix time>-<4 hex>``, cut to fit a Job name."""
    suffix = f"-manual-{int(now if now is not None else time.time())}-{secrets.token_hex(2)}"
    return cronjob[: MAX_NAME_CHARS - len(suffix)].rstrip("-") + suffix


def job_from_cronjob(cronjob: client.V1CronJob, name: str) -> client.V1Job:
    """The Job ``kubectl create job --from=cronjob/...`` would create."""
    template = cronjob.spec.job_template
    template_meta = template.metadata or client.V1ObjectMeta()
    if not cronjob.metadata.uid:
        raise TriggerError(f"CronJob {cronjob.metadata.name} has no uid to own the Job")
    annotations = dict(template_meta.annotations or {})
    annotations[MANUAL_ANNOTATION] = "manual"
    owner = client.V1OwnerReference(
        api_version="batch/v1",
        kind="CronJob",
        name=cronjob.metadata.name,
        uid=cronjob.metadata.uid,
        controller=True,
        # blockOwnerDeletion would need "update" on cronjobs/finalizers where the
        # OwnerReferencesPermissionEnforcement admission plugin runs; the Role does not grant it.
    )
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=client.V1ObjectMeta(
            name=name,
            namespace=cronjob.metadata.namespace,
            labels=dict(template_meta.labels or {}),
            annotations=annotations,
            owner_references=[owner],
        ),
        spec=template.spec,
    )


def owned_by(job: client.V1Job, cronjob_name: str) -> bool:
    return any(
        ref.kind == "CronJob" and ref.name == cronjob_name
        for ref in (job.metadata.owner_references or [])
    )


def job_finished(job: client.V1Job) -> bool | None:
    """True: Complete; False: Failed; None: still running."""
    for condition in (job.status.conditions if job.status else None) or []:
        if condition.status == "True" and condition.type in ("Complete", "Failed"):
            return condition.type == "Complete"
    return None


def trigger(
    api: client.ApiClient,
    cronjob_name: str,
    namespace: str,
    *,
    follow: bool = False,
    timeout_s: float = 4 * 3600,
    poll_s: float = 5.0,
    write: Callable[[str], None] = print,
) -> TriggerResult:
    """Create a Job from the CronJob; with ``follow``, print its pods' logs until it ends."""
    batch = client.BatchV1Api(api)
    try:
        cronjob = batch.read_namespaced_cron_job(cronjob_name, namespace)
    except ApiException as exc:
        raise TriggerError(_api_message(exc, f"cronjob/{cronjob_name} in {namespace}")) from exc
    cronjob.metadata.namespace = cronjob.metadata.namespace or namespace

    running = [
        job.metadata.name
        for job in batch.list_namespaced_job(namespace).items
        if owned_by(job, cronjob_name) and job_finished(job) is None
    ]
    if running:
        raise TriggerBusyError(
            f"job(s) {', '.join(sorted(running))} of cronjob/{cronjob_name} still running; "
            "wait for them to finish (two training cycles must not race to register)"
        )

    name = job_name_for(cronjob_name)
    try:
        batch.create_namespaced_job(namespace, job_from_cronjob(cronjob, name))
    except ApiException as exc:
        raise TriggerError(_api_message(exc, f"creating job/{name}")) from exc
    logger.info("created job/%s from cronjob/%s in %s", name, cronjob_name, namespace)
    result = TriggerResult(job_name=name, namespace=namespace)
    if follow:
        result.succeeded = follow_job(
            api, name, namespace, timeout_s=timeout_s, poll_s=poll_s, write=write
        )
    return result


def follow_job(
    api: client.ApiClient,
    name: str,
    namespace: str,
    *,
    timeout_s: float,
    poll_s: float,
    write: Callable[[str], None] = print,
) -> bool:
    """Print each pod's log as it runs; return whether the Job completed (TriggerError on timeout)."""
    batch = client.BatchV1Api(api)
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout_s
    streamed: set[str] = set()
    while True:
        job = batch.read_namespaced_job(name, namespace)
        outcome = job_finished(job)
        for pod in _job_pods(core, name, namespace):
            if pod.metadata.name in streamed or pod.status is None:
                continue
            if pod.status.phase in ("Running", "Succeeded", "Failed") or outcome is not None:
                streamed.add(pod.metadata.name)
                _stream_log(core, pod.metadata.name, namespace, follow=outcome is None, write=write)
        if outcome is not None:
            logger.info("job/%s %s", name, "completed" if outcome else "failed")
            return outcome
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TriggerError(f"job/{name} did not finish within {timeout_s:.0f} s")
        _wait_for_change(batch, name, namespace, min(poll_s, remaining))


def _job_pods(core: client.CoreV1Api, job_name: str, namespace: str) -> list[client.V1Pod]:
    # Filtered here as well as by the selector: some API emulators ignore label selectors.
    pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items
    return sorted(
        (
            pod
            for pod in pods
            if any((pod.metadata.labels or {}).get(key) == job_name for key in JOB_NAME_LABELS)
        ),
        key=lambda pod: pod.metadata.name,
    )


def _stream_log(
    core: client.CoreV1Api,
    pod: str,
    namespace: str,
    *,
    follow: bool,
    write: Callable[[str], None],
) -> None:
    try:
        response = core.read_namespaced_pod_log(
            pod, namespace, follow=follow, _preload_content=False
        )
        pending = b""
        for chunk in response.stream():  # chunks, not lines: split them here
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                write(f"[{pod}] {line.decode('utf-8', 'replace').rstrip()}")
        if pending.strip():
            write(f"[{pod}] {pending.decode('utf-8', 'replace').rstrip()}")
        response.release_conn()
    except ApiException as exc:
        logger.warning("cannot read the log of pod/%s: %s", pod, _api_message(exc, "log"))


def _wait_for_change(batch: client.BatchV1Api, name: str, namespace: str, seconds: float) -> None:
    """Block until the Job changes (a watch event) or ``seconds`` pass."""
    stream = watch.Watch()
    try:
        for event in stream.stream(
            batch.list_namespaced_job,
            namespace,
            field_selector=f"metadata.name={name}",
            timeout_seconds=max(1, int(seconds)),
            _request_timeout=seconds + 5,
        ):
            obj = event.get("object")
            if obj is not None and obj.metadata.name == name and event.get("type") != "ADDED":
                return
    except (ApiException, urllib3.exceptions.HTTPError) as exc:
        # A read timeout is the normal end when the server ignores timeout_seconds.
        logger.debug("watch on job/%s ended: %s", name, exc)
    finally:
        stream.stop()


def _api_message(exc: ApiException, what: str) -> str:
    return f"{what}: {exc.status} {exc.reason}"
