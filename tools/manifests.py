"""Render the chart and the kustomize overlays into Kubernetes objects (lists of dicts)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tools.kube_tools import KubeTools
from tools.paths import CHART_DIR

DEFAULT_RELEASE = "ouro"
DEFAULT_NAMESPACE = "ouro"


class RenderError(RuntimeError):
    """helm or kubectl refused to render (bad values, template error, invalid kustomization)."""


def parse_manifests(text: str) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a multi-document stream."""
    return [document for document in yaml.safe_load_all(text) if document]


def _run(command: Sequence[str]) -> str:
    result = subprocess.run(list(command), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        report = "\n".join(part.strip() for part in (result.stderr, result.stdout) if part.strip())
        raise RenderError(f"{Path(command[0]).name} {command[1]} failed: {report}")
    return result.stdout


def helm_template(
    tools: KubeTools,
    *,
    values_files: Sequence[Path] = (),
    set_values: Mapping[str, str] | None = None,
    set_strings: Mapping[str, str] | None = None,
    release: str = DEFAULT_RELEASE,
    namespace: str = DEFAULT_NAMESPACE,
    chart_dir: Path = CHART_DIR,
    skip_tests: bool = False,
) -> list[dict[str, Any]]:
    """``helm template`` of the chart; raises RenderError when Helm refuses the values.

    ``set_values`` go through ``--set`` (typed: numbers, booleans), ``set_strings``
    through ``--set-string``.
    """
    command = [str(tools.helm), "template", release, str(chart_dir), "--namespace", namespace]
    for values_file in values_files:
        command += ["--values", str(values_file)]
    for key, value in (set_values or {}).items():
        command += ["--set", f"{key}={value}"]
    for key, value in (set_strings or {}).items():
        command += ["--set-string", f"{key}={value}"]
    if skip_tests:
        command.append("--skip-tests")
    return parse_manifests(_run(command))


def helm_lint(tools: KubeTools, values_file: Path, chart_dir: Path = CHART_DIR) -> str:
    """``helm lint --strict`` with one values file; returns its report, raises RenderError."""
    return _run([str(tools.helm), "lint", "--strict", str(chart_dir), "--values", str(values_file)])


def kustomize_build(tools: KubeTools, directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR`` (offline); raises RenderError."""
    return parse_manifests(_run([str(tools.kubectl), "kustomize", str(directory)]))


def find(objects: Sequence[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of a kind (and name); KeyError when absent or ambiguous."""
    matches = [
        obj
        for obj in objects
        if obj.get("kind") == kind and (name is None or obj["metadata"]["name"] == name)
    ]
    if len(matches) != 1:
        raise KeyError(f"expected one {kind} {name or ''}, found {len(matches)}")
    return matches[0]


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, pod spec) for every pod an object creates, including RayService's Ray pods."""
    kind, name, spec = obj.get("kind"), obj["metadata"]["name"], obj.get("spec", {})
    label = f"{kind}/{name}"
    if kind == "Pod":
        yield label, spec
    elif kind in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        yield label, spec["template"]["spec"]
    elif kind == "CronJob":
        yield label, spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "RayService":
        cluster = spec["rayClusterConfig"]
        yield f"{label} head", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"{label} worker {group['groupName']}", group["template"]["spec"]


def containers(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, container) for every container and init container an object creates."""
    for label, spec in pod_specs(obj):
        for container in spec.get("initContainers", []) + spec.get("containers", []):
            yield f"{label} container {container['name']}", container
    autoscaler = obj.get("spec", {}).get("rayClusterConfig", {}).get("autoscalerOptions")
    if obj.get("kind") == "RayService" and obj["spec"]["rayClusterConfig"].get(
        "enableInTreeAutoscaling"
    ):
        # KubeRay adds this sidecar to the head pod from autoscalerOptions.
        yield f"RayService/{obj['metadata']['name']} autoscaler", autoscaler or {}
