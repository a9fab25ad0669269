"""``make chart-check``: validate the Helm chart, the kustomize overlays and the Dockerfiles offline.

No cluster can run where this project is built, so every check uses a real tool that
runs without one: helm and kubectl (pinned, sha256-checked, see tools.kube_tools),
kubernetes-validate's schemas, KubeRay's RayService CRD schema (from ../shared/schemas,
skipped with a message where absent), the Prometheus Operator's models (cloudcoil) for
the monitoring objects, the project's own Serve entry point, hadolint, and the
Dockerfiles' COPY sources against the .dockerignore'd build context (tools.docker_context).

    python -m tools.chart_check

Prints one line per step and exits 1 when any step fails.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tools import chart_docs, docker_context, kustomize_base
from tools.kube_tools import KubeTools, ToolFetchError, ensure_kube_tools, hadolint_path
from tools.manifests import RenderError, helm_lint, helm_template, kustomize_build
from tools.paths import (
    CHART_DIR,
    DOCKERFILES,
    KUSTOMIZE_OVERLAYS,
    MONITORING_VALUES,
    RAYSERVICE_CRD,
    REPO_ROOT,
    VALUES_FILES,
)
from tools.validation import (
    KUBERNETES_VERSION,
    PROMETHEUS_OPERATOR_KINDS,
    CrdValidator,
    ServeAppMissingError,
    kubernetes_errors,
    prometheus_operator_errors,
    serve_config_errors,
)

logger = logging.getLogger(__name__)

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

LINTED_VALUES = {**VALUES_FILES, "monitoring": MONITORING_VALUES}
"""The shipped values files, and the one that turns every monitoring object on."""


@dataclass
class StepResult:
    """Outcome of one step: status, a one-line summary and the problems found."""

    name: str
    status: str
    summary: str
    problems: list[str] = field(default_factory=list)


@dataclass
class ManifestChecker:
    """Validates one rendering (a values file or an overlay) end to end."""

    crd: CrdValidator | None
    missing_apps: set[str] = field(default_factory=set)
    """import_paths whose module is absent, reported once by the "Serve entry point" step."""

    def __call__(self, name: str, objects: Sequence[dict[str, Any]]) -> StepResult:
        problems, custom = kubernetes_errors(objects)
        rayservices = [obj for obj in objects if obj.get("kind") == "RayService"]
        monitoring = [obj for obj in objects if obj.get("kind") in PROMETHEUS_OPERATOR_KINDS]
        checked = ["RayService/", *(f"{kind}/" for kind in PROMETHEUS_OPERATOR_KINDS)]
        unexpected = [kind for kind in custom if not any(known in kind for known in checked)]
        problems += [f"no schema for {kind}" for kind in unexpected]
        notes = [f"{len(objects)} objects valid for Kubernetes {KUBERNETES_VERSION} (strict)"]
        if monitoring:
            problems += prometheus_operator_errors(monitoring)
            notes.append(f"{len(monitoring)} Prometheus Operator objects match its models")
        if not rayservices:
            problems.append("no RayService rendered")
        if self.crd is None:
            notes.append(f"RayService CRD check SKIPPED ({RAYSERVICE_CRD} absent)")
        else:
            for rayservice in rayservices:
                problems += self.crd.errors(rayservice)
            notes.append("RayService valid for KubeRay v1.7.0")
        for rayservice in rayservices:
            try:
                problems += serve_config_errors(rayservice)
                notes.append("serveConfigV2 args and deployments match serve.app")
            except ServeAppMissingError as error:
                self.missing_apps.add(str(error))
        return StepResult(name, FAIL if problems else PASS, "; ".join(notes), problems)


def _timed(step: Callable[[], StepResult]) -> StepResult:
    started = time.monotonic()
    result = step()
    result.summary += f" ({time.monotonic() - started:.1f}s)"
    return result


def check_docs() -> StepResult:
    problems = chart_docs.check()
    return StepResult(
        "values docs",
        FAIL if problems else PASS,
        "every value documented and read; README current",
        problems,
    )


def check_lint(tools: KubeTools) -> StepResult:
    problems = []
    for name, values_file in LINTED_VALUES.items():
        try:
            helm_lint(tools, values_file)
        except RenderError as error:
            problems.append(f"{name}: {error}")
    return StepResult(
        "helm lint --strict",
        FAIL if problems else PASS,
        f"{len(LINTED_VALUES)} values files",
        problems,
    )


def check_helm_renderings(tools: KubeTools, checker: ManifestChecker) -> list[StepResult]:
    results = []
    for values_file in LINTED_VALUES.values():
        step = f"helm template -f {values_file.relative_to(CHART_DIR)}"
        try:
            objects = helm_template(tools, values_files=[values_file])
        except RenderError as error:
            results.append(StepResult(step, FAIL, "render failed", [str(error)]))
            continue
        result = _timed(lambda step=step, objects=objects: checker(step, objects))
        if values_file == MONITORING_VALUES:
            kinds = {obj.get("kind") for obj in objects}
            missing = [kind for kind in PROMETHEUS_OPERATOR_KINDS if kind not in kinds]
            result.problems += [f"no {kind} rendered" for kind in missing]
            result.status = FAIL if result.problems else result.status
        results.append(result)
    return results


def check_kustomize(tools: KubeTools, checker: ManifestChecker) -> list[StepResult]:
    stale = kustomize_base.check(tools)
    results = [
        StepResult(
            "kustomize base",
            FAIL if stale else PASS,
            "k8s/base and k8s/components/monitoring match the chart's renderings",
            stale,
        )
    ]
    for name, overlay in KUSTOMIZE_OVERLAYS.items():
        step = f"kubectl kustomize overlays/{name}"
        try:
            objects = kustomize_build(tools, overlay)
        except RenderError as error:
            results.append(StepResult(step, FAIL, "build failed", [str(error)]))
            continue
        results.append(_timed(lambda step=step, objects=objects: checker(step, objects)))
    return results


def check_dockerfiles() -> StepResult:
    try:
        hadolint = hadolint_path()
    except ToolFetchError as error:
        return StepResult("hadolint", FAIL, "hadolint missing", [str(error)])
    problems = []
    for dockerfile in DOCKERFILES:
        if not dockerfile.exists():
            problems.append(f"{dockerfile.name} missing")
            continue
        result = subprocess.run(
            [str(hadolint), "--no-color", str(dockerfile.relative_to(REPO_ROOT))],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO_ROOT,
        )
        if result.returncode != 0:
            problems += result.stdout.strip().splitlines() or [result.stderr.strip()]
    names = ", ".join(path.name for path in DOCKERFILES)
    return StepResult("hadolint", FAIL if problems else PASS, names, problems)


def check_docker_context() -> StepResult:
    problems = docker_context.check()
    return StepResult(
        "docker build context",
        FAIL if problems else PASS,
        "every COPY/ADD source passes .dockerignore",
        problems,
    )


def run_checks() -> list[StepResult]:
    try:
        tools = ensure_kube_tools()
    except ToolFetchError as error:
        return [StepResult("pinned tools", FAIL, "helm/kubectl unavailable", [str(error)])]
    results = [StepResult("pinned tools", PASS, "helm and kubectl match their sha256 pins")]
    crd = CrdValidator(RAYSERVICE_CRD) if RAYSERVICE_CRD.exists() else None
    if crd is None:
        results.append(
            StepResult(
                "KubeRay CRD schema",
                SKIP,
                f"{RAYSERVICE_CRD} not found: RayService objects are not checked against KubeRay's schema",
            )
        )
    checker = ManifestChecker(crd)
    results.append(_timed(check_docs))
    results.append(_timed(lambda: check_lint(tools)))
    results += check_helm_renderings(tools, checker)
    results += check_kustomize(tools, checker)
    missing = sorted(checker.missing_apps)
    results.append(
        StepResult(
            "Serve entry point",
            FAIL if missing else PASS,
            "the app serveConfigV2 names is missing"
            if missing
            else "serveConfigV2's import_path imports",
            missing,
        )
    )
    results.append(_timed(check_dockerfiles))
    results.append(_timed(check_docker_context))
    return results


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    results = run_checks()
    for result in results:
        print(f"{result.status} {result.name}: {result.summary}")
        for problem in result.problems:
            print(f"    {problem}")
    failed = [result.name for result in results if result.status == FAIL]
    elapsed = time.monotonic() - started
    if failed:
        print(f"chart-check FAILED ({len(failed)} of {len(results)} steps, {elapsed:.0f}s)")
        return 1
    print(f"chart-check passed ({len(results)} steps, {elapsed:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
