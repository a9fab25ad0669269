"""Offline validation of rendered objects: Kubernetes schemas, KubeRay's CRD, the Prometheus
Operator's kinds, Serve's config."""

from __future__ import annotations

import copy
import importlib
import importlib.util
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from ouro.settings import OuroSettings

KUBERNETES_VERSION = "1.33"
"""The Kubernetes version the manifests are validated against."""

SERVE_DEPLOYMENTS = ("LLMServer",)
"""Deployment names of the Serve app, as serve.app:build_app defines them."""


def kubernetes_errors(
    objects: Sequence[dict[str, Any]], version: str = KUBERNETES_VERSION
) -> tuple[list[str], list[str]]:
    """Strict schema errors of built-in kinds, and the custom kinds it has no schema for."""
    errors: list[str] = []
    custom: list[str] = []
    for obj in objects:
        label = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            errors.append(f"{label}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError:
            custom.append(f"{obj.get('apiVersion')} {label}")
    return errors, custom


def _strict(schema: Any) -> Any:
    """The schema with unknown fields rejected wherever it lists its fields.

    The API server prunes (or, with kubectl's default strict field validation, rejects)
    fields a CRD does not declare; plain JSON Schema would let a typo through.
    """
    if isinstance(schema, dict):
        strict = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in strict
            and "additionalProperties" not in strict
            and not strict.get("x-kubernetes-preserve-unknown-fields")
        ):
            strict["additionalProperties"] = False
        return strict
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


class CrdValidator:
    """Validates objects of one custom resource against its CRD's openAPIV3Schema (Draft 7)."""

    def __init__(self, crd_file: Path, version: str = "v1") -> None:
        self.crd_file = crd_file
        self.version = version

    @cached_property
    def _validator(self) -> jsonschema.Draft7Validator:
        crd = yaml.safe_load(self.crd_file.read_text(encoding="utf-8"))
        versions = {entry["name"]: entry for entry in crd["spec"]["versions"]}
        schema = copy.deepcopy(versions[self.version]["schema"]["openAPIV3Schema"])
        return jsonschema.Draft7Validator(_strict(schema))

    @cached_property
    def kind(self) -> str:
        crd = yaml.safe_load(self.crd_file.read_text(encoding="utf-8"))
        return crd["spec"]["names"]["kind"]

    def errors(self, obj: dict[str, Any]) -> list[str]:
        label = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        return [
            f"{label}: {'.'.join(str(part) for part in error.absolute_path)}: {error.message}"
            for error in self._validator.iter_errors(obj)
        ]


PROMETHEUS_OPERATOR_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
"""monitoring.coreos.com/v1 kinds the chart renders, checked by prometheus_operator_errors."""


def _prometheus_operator_models() -> dict[str, type]:
    # Imported on use: the generated module is large (about 2 s to import).
    from cloudcoil.models.prometheus_operator import v1

    return {kind: getattr(v1, kind) for kind in PROMETHEUS_OPERATOR_KINDS}


def _dropped(given: Any, kept: Any, path: str = "") -> list[str]:
    """Where ``kept`` (a model's dump) lost or changed what ``given`` (the object) had."""
    if isinstance(given, dict) and isinstance(kept, dict):
        problems = []
        for key, value in given.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in kept:
                problems.append(f"{where}: unknown field")
            else:
                problems += _dropped(value, kept[key], where)
        return problems
    if isinstance(given, list) and isinstance(kept, list) and len(given) == len(kept):
        return [
            problem
            for index, (item, kept_item) in enumerate(zip(given, kept, strict=True))
            for problem in _dropped(item, kept_item, f"{path}[{index}]")
        ]
    return [] if given == kept else [f"{path}: {given!r} became {kept!r}"]


def _location(loc: Sequence[Any]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def prometheus_operator_errors(objects: Sequence[dict[str, Any]]) -> list[str]:
    """Errors of ServiceMonitor, PodMonitor and PrometheusRule objects against the pydantic
    models generated from the Prometheus Operator's CRDs (cloudcoil).

    The models ignore unknown keys, so an object must also survive the round trip through
    its model unchanged: a typo'd key (which the API server would prune or refuse) fails.
    """
    import pydantic

    models = _prometheus_operator_models()
    errors: list[str] = []
    for obj in objects:
        model = models.get(obj.get("kind", ""))
        if model is None:
            continue
        label = f"{obj['kind']}/{obj.get('metadata', {}).get('name')}"
        try:
            parsed = model.model_validate(obj)
        except pydantic.ValidationError as error:
            errors += [
                f"{label}: {_location(problem['loc'])}: {problem['msg']}"
                for problem in error.errors()
            ]
            continue
        kept = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
        errors += [f"{label}: {problem}" for problem in _dropped(obj, kept)]
    return errors


class ServeAppMissingError(LookupError):
    """serveConfigV2 names an import_path whose module does not exist (yet)."""


def _import_app(import_path: str) -> tuple[ModuleType | None, list[str]]:
    """The module an import_path names, or the problems that stop it from loading."""
    module_name, _, attribute = import_path.partition(":")
    if not attribute:
        return None, [f"import_path {import_path!r} is not 'module:attribute'"]
    if importlib.util.find_spec(module_name.split(".")[0]) is None or (
        importlib.util.find_spec(module_name) is None
    ):
        raise ServeAppMissingError(
            f"import_path {import_path}: module {module_name} does not exist (yet)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        return None, [f"import_path {import_path}: importing {module_name} failed: {error}"]
    if not callable(getattr(module, attribute, None)):
        return None, [f"import_path {import_path}: {module_name} has no callable {attribute}"]
    return module, []


def _deployment_names(module: ModuleType) -> set[str]:
    """Names of the Serve deployments the app module defines or imports."""
    return {
        value.name
        for value in vars(module).values()
        if type(value).__name__ == "Deployment" and isinstance(getattr(value, "name", None), str)
    }


def serve_config_errors(rayservice: dict[str, Any]) -> list[str]:
    """Problems with a RayService's serveConfigV2: YAML, import_path, args, deployments.

    Raises ServeAppMissingError when the app's module is not there at all, so callers can
    tell a missing app from a broken config.
    """
    label = f"RayService/{rayservice['metadata']['name']}"
    try:
        config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    except yaml.YAMLError as error:
        return [f"{label}: serveConfigV2 is not YAML: {error}"]
    applications = config.get("applications") or []
    if not applications:
        return [f"{label}: serveConfigV2 has no applications"]
    errors: list[str] = []
    fields = set(OuroSettings.model_fields)  # args are OuroSettings overrides
    for application in applications:
        module, problems = _import_app(application["import_path"])
        errors += [f"{label}: {problem}" for problem in problems]
        unknown = sorted(set(application.get("args") or {}) - fields)
        if unknown:
            errors.append(f"{label}: args that are not OuroSettings fields: {unknown}")
        names = tuple(deployment["name"] for deployment in application.get("deployments", []))
        if sorted(names) != sorted(SERVE_DEPLOYMENTS):
            errors.append(f"{label}: deployments {names}, expected {SERVE_DEPLOYMENTS}")
        defined = _deployment_names(module) if module is not None else set()
        if defined and not set(names) <= defined:
            missing = sorted(set(names) - defined)
            errors.append(f"{label}: {application['import_path']} defines no deployment {missing}")
        for deployment in application.get("deployments", []):
            scaling = deployment.get("autoscaling_config") or {}
            if scaling.get("min_replicas", 0) > scaling.get("max_replicas", 1):
                errors.append(f"{label}: {deployment['name']} min_replicas > max_replicas")
    return errors
