"""The offline validators chart_check relies on: they must catch what a cluster would refuse."""

from __future__ import annotations

import copy
import importlib.util
import sys
import types

import pytest
import yaml

from tools.manifests import find
from tools.paths import RAYSERVICE_CRD
from tools.validation import CrdValidator, kubernetes_errors, serve_config_errors

needs_crd = pytest.mark.skipif(
    not RAYSERVICE_CRD.exists(), reason=f"KubeRay CRD schema not found at {RAYSERVICE_CRD}"
)


@pytest.fixture(scope="module")
def crd() -> CrdValidator:
    return CrdValidator(RAYSERVICE_CRD)


@pytest.fixture
def rayservice(rendered):
    return copy.deepcopy(find(rendered["default"], "RayService"))


@pytest.mark.parametrize("values", ["default", "cpu-dev", "external-mlflow-s3"])
def test_shipped_renderings_pass_strict_kubernetes_validation(rendered, values):
    errors, custom = kubernetes_errors(rendered[values])
    assert errors == []
    assert custom == ["ray.io/v1 RayService/ouro"]  # only the CRD needs KubeRay's schema


def test_kubernetes_validation_rejects_typos_and_wrong_types(rendered):
    typo = copy.deepcopy(find(rendered["default"], "CronJob"))
    typo["spec"]["concurrencyPolicyy"] = "Forbid"
    wrong_type = copy.deepcopy(find(rendered["default"], "CronJob"))
    wrong_type["spec"]["jobTemplate"]["spec"]["backoffLimit"] = "one"
    errors, _ = kubernetes_errors([typo, wrong_type])  # the first error of each object
    assert len(errors) == 2
    assert "concurrencyPolicyy" in errors[0]
    assert "backoffLimit: 'one' is not of type" in errors[1]


@needs_crd
def test_rendered_rayservices_match_kuberays_schema(crd, rendered):
    for values in ("default", "cpu-dev", "external-mlflow-s3"):
        assert crd.errors(find(rendered[values], "RayService")) == [], values
    assert crd.kind == "RayService"


@needs_crd
def test_crd_validation_rejects_unknown_fields_and_wrong_types(crd, rayservice):
    group = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    group["replica"] = 1  # typo of "replicas"
    group["maxReplicas"] = "two"
    del group["groupName"]
    errors = crd.errors(rayservice)
    assert any("'replica' was unexpected" in error for error in errors)
    assert any("'two' is not of type 'integer'" in error for error in errors)
    assert any("'groupName' is a required property" in error for error in errors)


def test_serve_config_errors_flag_unknown_args_and_deployments(rayservice):
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    application = config["applications"][0]
    application["args"]["base_modle"] = "typo"
    application["deployments"][0]["name"] = "LLMServerV2"
    application["import_path"] = "json:dumps"  # importable, so only the config is judged
    rayservice["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    errors = serve_config_errors(rayservice)
    assert any("['base_modle']" in error for error in errors)
    assert any("LLMServerV2" in error for error in errors)


def test_serve_config_errors_flag_a_missing_attribute(rayservice):
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    config["applications"][0]["import_path"] = "json:build_app"
    rayservice["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    assert serve_config_errors(rayservice) == [
        "RayService/ouro: import_path json:build_app: json has no callable build_app"
    ]


def test_configured_deployments_must_exist_in_the_app_module(rayservice, monkeypatch):
    class Deployment:  # stands in for ray.serve.Deployment: same class name, a .name
        def __init__(self, name: str) -> None:
            self.name = name

    def build_app(args):
        return args

    app = types.ModuleType("fake_serve_app")
    app.RegistryCoordinator = Deployment("RegistryCoordinator")
    app.build_app = build_app
    monkeypatch.setitem(sys.modules, "fake_serve_app", app)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    config["applications"][0]["import_path"] = "fake_serve_app:build_app"
    rayservice["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    assert serve_config_errors(rayservice) == [
        "RayService/ouro: fake_serve_app:build_app defines no deployment ['LLMServer']"
    ]
