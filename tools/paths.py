"""Where the repository's packaging pieces live, relative to the repository root."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The repository checkout this package belongs to."""

TOOLS_DIR = REPO_ROOT / ".tools"
"""Ignored folder for downloaded tools (never committed)."""

CHART_DIR = REPO_ROOT / "charts" / "ouro"
"""The Helm chart."""

KUSTOMIZE_DIR = REPO_ROOT / "k8s"
"""Kustomize base and overlays."""

DOCKERFILES = (REPO_ROOT / "Dockerfile.serve", REPO_ROOT / "Dockerfile.train")
"""The two container images' recipes."""

KUBERAY_SCHEMA_DIR = REPO_ROOT.parent / "shared" / "schemas" / "kuberay-v1.7.0"
"""KubeRay's CRDs, provided beside the project (never copied into it); may be absent."""

RAYSERVICE_CRD = KUBERAY_SCHEMA_DIR / "ray.io_rayservices.yaml"
"""The RayService CustomResourceDefinition whose v1 openAPIV3Schema validates our output."""

VALUES_FILES = {
    "default": CHART_DIR / "values.yaml",
    "cpu-dev": CHART_DIR / "values-cpu-dev.yaml",
    "external-mlflow-s3": CHART_DIR / "values-external-mlflow-s3.yaml",
}
"""Every values file the chart ships, by name: each is linted, rendered and validated."""

MONITORING_VALUES = CHART_DIR / "ci" / "monitoring-values.yaml"
"""Every monitoring object on (off by default): linted, rendered and validated as well."""

KUSTOMIZE_BASE = KUSTOMIZE_DIR / "base"
"""Generated from the chart (``python -m tools.kustomize_base``); do not edit by hand."""

KUSTOMIZE_MONITORING = KUSTOMIZE_DIR / "components" / "monitoring"
"""A kustomize Component: the chart's monitoring objects (generated like the base)."""

KUSTOMIZE_OVERLAYS = {
    "dev-cpu": KUSTOMIZE_DIR / "overlays" / "dev-cpu",
    "t4": KUSTOMIZE_DIR / "overlays" / "t4",
    "t4-monitoring": KUSTOMIZE_DIR / "overlays" / "t4-monitoring",
}
"""Every kustomize overlay, by name: each is built and validated."""
