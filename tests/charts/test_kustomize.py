"""k8s/: the generated base matches the chart, the overlays build and agree with the chart."""

from __future__ import annotations

from typing import Any

import pytest

from tools import kustomize_base
from tools.manifests import kustomize_build
from tools.paths import KUSTOMIZE_OVERLAYS, VALUES_FILES

NAMED_LISTS = {"env", "volumes", "volumeMounts", "containers", "ports"}


def normalized(value: Any, key: str = "") -> Any:
    """The object with name-keyed lists sorted: a strategic merge patch may reorder them."""
    if isinstance(value, dict):
        return {k: normalized(v, k) for k, v in value.items()}
    if isinstance(value, list):
        items = [normalized(item) for item in value]
        if key in NAMED_LISTS and all(isinstance(item, dict) and "name" in item for item in items):
            return sorted(items, key=lambda item: item["name"])
        return items
    return value


def specs(objects: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    return {
        (obj["kind"], obj["metadata"]["name"]): normalized(obj.get("spec"))
        for obj in objects
        if obj["kind"] != "Namespace"
    }


@pytest.fixture(scope="module")
def overlays(kube_tools) -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize_build(kube_tools, path) for name, path in KUSTOMIZE_OVERLAYS.items()}


def test_base_is_the_charts_current_rendering(kube_tools):
    assert kustomize_base.check(kube_tools) == []


def test_base_has_no_helm_only_labels_or_test_hooks():
    text = kustomize_base.BASE_FILE.read_text(encoding="utf-8")
    assert "helm.sh/chart" not in text and "managed-by: Helm" not in text
    assert "helm.sh/hook" not in text


@pytest.mark.parametrize("name", sorted(KUSTOMIZE_OVERLAYS))
def test_overlay_puts_everything_in_the_ouro_namespace(overlays, name):
    for obj in overlays[name]:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "ouro", obj["metadata"]["name"]
    binding = next(obj for obj in overlays[name] if obj["kind"] == "RoleBinding")
    assert binding["subjects"][0]["namespace"] == "ouro"


@pytest.mark.parametrize(("overlay", "values"), [("t4", "default"), ("dev-cpu", "cpu-dev")])
def test_overlay_runs_the_same_workloads_as_the_chart(overlays, render_chart, overlay, values):
    chart = specs(render_chart(values_files=[VALUES_FILES[values]], skip_tests=True))
    assert specs(overlays[overlay]) == chart


def test_dev_cpu_overlay_asks_for_no_gpu(overlays):
    text = str(overlays["dev-cpu"])
    assert "nvidia.com/gpu" not in text
    assert "num_gpus: 0" in text
