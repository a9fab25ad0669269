"""The example Serve config files are valid Serve configs that build this app."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve import Application
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve.schema import ServeDeploySchema

from serve.app import UnknownSettingError, build_app
from serve.auth import UnauthenticatedStartupError
from serve.coordinator import COORDINATOR_NAME
from serve.llm_server import LLM_SERVER_NAME

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "serve" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_each_config_builds_the_app_with_its_args(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    (application,) = config.applications
    assert application.import_path == "serve.app:build_app"
    assert application.route_prefix == "/"
    assert {d.name for d in application.deployments} <= {LLM_SERVER_NAME, COORDINATOR_NAME}
    # What a cluster puts in the environment; the data dir moves out of the repo.
    monkeypatch.setenv("OURO_API_KEYS", "sk-config-test-key")
    monkeypatch.setenv("OURO_MLFLOW_TRACKING_URI", "http://mlflow.invalid:5000")
    args = {**application.args, "data_dir": str(tmp_path)}
    app = call_user_app_builder_with_args_if_necessary(build_app, args)
    assert isinstance(app, Application)


def test_unknown_args_and_an_unallowed_open_server_fail_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OURO_API_KEYS", "OURO_ADMIN_API_KEYS", "OURO_ALLOW_UNAUTHENTICATED"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UnknownSettingError, match="max_tokens_limt"):
        build_app({"data_dir": str(tmp_path), "max_tokens_limt": 5, "allow_unauthenticated": True})
    with pytest.raises(UnauthenticatedStartupError, match="no API key"):
        build_app({"data_dir": str(tmp_path)})
