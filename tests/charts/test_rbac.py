"""The trigger's RBAC: exactly what `python -m train_job trigger` calls, nothing more."""

from __future__ import annotations

import ast
import re

from tools.manifests import find, pod_specs
from tools.paths import REPO_ROOT

TRIGGER_RULES = {
    ("batch", "cronjobs"): {"get"},
    ("batch", "jobs"): {"create", "get", "list", "watch"},
    ("", "pods"): {"list"},
    ("", "pods/log"): {"get"},
}
"""What the trigger does: read the CronJob, create a Job from its template, follow the Job
(get, list, watch), find its pod (list) and stream the pod's log (pods/log get)."""

# kubernetes client method (BatchV1Api / CoreV1Api) -> (API group, resource, verb)
CLIENT_CALLS = {
    "read_namespaced_cron_job": ("batch", "cronjobs", "get"),
    "create_namespaced_job": ("batch", "jobs", "create"),
    "read_namespaced_job": ("batch", "jobs", "get"),
    "read_namespaced_job_status": ("batch", "jobs/status", "get"),
    "list_namespaced_job": ("batch", "jobs", "list"),
    "delete_namespaced_job": ("batch", "jobs", "delete"),
    "list_namespaced_pod": ("", "pods", "list"),
    "read_namespaced_pod": ("", "pods", "get"),
    "read_namespaced_pod_log": ("", "pods/log", "get"),
    "list_namespaced_event": ("", "events", "list"),
}


def role_rules(objects) -> dict[tuple[str, str], set[str]]:
    rules: dict[tuple[str, str], set[str]] = {}
    for rule in find(objects, "Role")["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                rules.setdefault((group, resource), set()).update(rule["verbs"])
    return rules


def test_role_grants_exactly_what_the_trigger_needs(rendered):
    objects = rendered["default"]
    assert role_rules(objects) == TRIGGER_RULES
    role = find(objects, "Role")
    (cronjob_rule,) = [r for r in role["rules"] if r["resources"] == ["cronjobs"]]
    assert cronjob_rule["resourceNames"] == [find(objects, "CronJob")["metadata"]["name"]]
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_role_is_bound_to_the_trigger_service_account_in_the_release_namespace(render_chart):
    objects = render_chart(namespace="team-a", release="bot")
    binding = find(objects, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": find(objects, "Role")["metadata"]["name"],
    }
    (subject,) = binding["subjects"]
    trigger_account = find(objects, "ServiceAccount", "bot-ouro-trigger")
    assert subject == {
        "kind": "ServiceAccount",
        "name": trigger_account["metadata"]["name"],
        "namespace": "team-a",
    }


def test_no_workload_runs_under_the_trigger_account(rendered):
    for obj in rendered["default"]:
        for label, pod in pod_specs(obj):
            assert pod.get("serviceAccountName") != "ouro-trigger", label
    workload_account = find(rendered["default"], "ServiceAccount", "ouro")
    assert workload_account["automountServiceAccountToken"] is False


def test_rbac_can_be_turned_off(render_chart):
    objects = render_chart(set_values={"rbac.create": "false"})
    kinds = {obj["kind"] for obj in objects}
    assert not kinds & {"Role", "RoleBinding"}
    assert not [o for o in objects if o["metadata"]["name"] == "ouro-trigger"]


CLIENT_METHOD = re.compile(r"(read|list|create|delete|patch|replace)_namespaced_\w+")


def required_permissions(source: str) -> set[tuple[str, str, str]]:
    """(group, resource, verb) that a module's kubernetes client calls need.

    A method handed to ``watch.Watch().stream(...)`` or called with ``watch=True`` also
    needs "watch". Methods missing from CLIENT_CALLS come back as ("?", method, "?").
    """
    needed: set[tuple[str, str, str]] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and CLIENT_METHOD.fullmatch(node.attr):
            needed.add(CLIENT_CALLS.get(node.attr, ("?", node.attr, "?")))
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        watched = None
        if node.func.attr == "stream" and node.args and isinstance(node.args[0], ast.Attribute):
            watched = node.args[0].attr
        elif any(
            keyword.arg == "watch"
            and isinstance(keyword.value, ast.Constant)
            and keyword.value.value
            for keyword in node.keywords
        ):
            watched = node.func.attr
        if watched in CLIENT_CALLS:
            group, resource, _ = CLIENT_CALLS[watched]
            needed.add((group, resource, "watch"))
    return needed


def uncovered(
    needed: set[tuple[str, str, str]], allowed: dict[tuple[str, str], set[str]]
) -> list[str]:
    return sorted(
        f"{verb} {group or 'core'}/{resource}"
        for group, resource, verb in needed
        if verb not in allowed.get((group, resource), set())
    )


def test_the_cross_check_catches_calls_the_role_does_not_allow(rendered):
    allowed = role_rules(rendered["default"])
    covered = """
from kubernetes import client, watch
batch, core = client.BatchV1Api(), client.CoreV1Api()
cronjob = batch.read_namespaced_cron_job("ouro-train", "ouro")
batch.create_namespaced_job("ouro", body)
for event in watch.Watch().stream(batch.list_namespaced_job, "ouro"):
    batch.read_namespaced_job(event["object"].metadata.name, "ouro")
pods = core.list_namespaced_pod("ouro", label_selector="job-name=x")
core.read_namespaced_pod_log(pods.items[0].metadata.name, "ouro", follow=True)
"""
    assert required_permissions(covered) >= {("batch", "jobs", "watch"), ("", "pods/log", "get")}
    assert uncovered(required_permissions(covered), allowed) == []
    beyond = "core.list_namespaced_pod('ouro', watch=True)\nbatch.read_namespaced_job_status('x', 'ouro')\nbatch.delete_namespaced_job('x', 'ouro')"
    assert uncovered(required_permissions(beyond), allowed) == [
        "delete batch/jobs",
        "get batch/jobs/status",
        "watch core/pods",
    ]


def test_trigger_client_calls_are_covered_by_the_role(rendered):
    """Cross-check with train_job's client code: every API call it makes is allowed."""
    sources = {
        path.name: path.read_text(encoding="utf-8")
        for path in sorted((REPO_ROOT / "train_job").rglob("*.py"))
    }
    needed = {name: required_permissions(source) for name, source in sources.items()}
    needed = {name: permissions for name, permissions in needed.items() if permissions}
    # The trigger exists: finding no client calls means this check stopped seeing them.
    assert "trigger.py" in needed, "no Kubernetes client calls found in train_job/trigger.py"
    allowed = role_rules(rendered["default"])
    for name, permissions in needed.items():
        unknown = [method for group, method, verb in permissions if group == "?"]
        assert not unknown, f"{name} calls {unknown}: add them to CLIENT_CALLS"
        assert uncovered(permissions, allowed) == [], name


def test_role_equals_the_rules_the_trigger_module_declares(rendered):
    from train_job import trigger  # an import error fails the test, never skips it

    declared: dict[tuple[str, str], set[str]] = {}
    for group, resource, verb in trigger.RBAC_RULES:
        declared.setdefault((group, resource), set()).add(verb)
    assert role_rules(rendered["default"]) == declared
