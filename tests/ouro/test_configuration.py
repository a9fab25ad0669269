"""One configuration path: each setting is one field, set by flag > config file > env > default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ouro.configuration import ConfigError, as_environment, load_settings
from ouro.settings import OuroSettings
from serve.__main__ import parse_args, settings_overrides
from tests.fixtures.settings import settings_layers
from tools import settings_table
from train_job.config import TrainJobConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
PROGRAM_PACKAGES = ("ouro", "serve", "train_job")
RAW_OURO_READ = re.compile(
    r"""(environ\s*(\.get\(|\[)|getenv\()\s*["']OURO_|["']OURO_\w*["']\s*(not\s+)?in\s+os\.environ"""
)


def test_each_setting_is_one_field_with_a_description() -> None:
    assert not set(OuroSettings.model_fields) & set(TrainJobConfig.model_fields)
    for model in (OuroSettings, TrainJobConfig):
        undocumented = [name for name, field in model.model_fields.items() if not field.description]
        assert undocumented == [], f"{model.__name__} fields without a description"


def test_no_program_reads_an_ouro_variable_by_itself() -> None:
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{number}"
        for package in PROGRAM_PACKAGES
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if RAW_OURO_READ.search(line)
    ]
    assert offenders == []


def test_the_configuration_page_table_is_current() -> None:
    assert settings_table.main(["--check"]) == 0
    table = settings_table.markdown()
    for name in (*OuroSettings.model_fields, *TrainJobConfig.model_fields):
        assert f"| `{name}` |" in table


def test_serve_precedence_flags_over_file_over_env_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = settings_layers(
        tmp_path,
        monkeypatch,
        file={
            "base_model": "from-file",
            "max_body_bytes": 2000,
            "registered_model_name": "file-model",
        },
        env={
            "OURO_BASE_MODEL": "from-env",
            "OURO_MAX_BODY_BYTES": "3000",
            "OURO_MAX_MESSAGES": "7",
            "OURO_API_KEYS": "alice:sk-from-env",
        },
    )

    args = parse_args(
        ["--config", str(config), "--base-model", "from-flag", "--data-dir", str(tmp_path)]
    )
    overrides = settings_overrides(args, num_cpus=2)
    settings = OuroSettings(**overrides)  # what a replica builds: its env, then these

    assert settings.base_model == "from-flag"  # flag beats file and env
    assert settings.max_body_bytes == 2000  # file beats env
    assert settings.max_messages == 7  # env beats the default
    assert settings.max_tokens_limit == OuroSettings.model_fields["max_tokens_limit"].default
    assert settings.registered_model_name == "file-model"
    assert settings.data_dir == tmp_path.resolve()
    assert settings.llm_num_cpus == 2  # one local replica gets every core
    assert "api_keys" not in overrides  # secrets stay in the environment, not in app args


def test_serve_takes_every_setting_as_a_flag(tmp_path: Path) -> None:
    args = parse_args(
        [
            "--data-dir",
            str(tmp_path),
            "--mlflow-uri",
            "http://127.0.0.1:1",
            "--api-keys",
            "alice:sk-a",
            "bob:sk-b",
            "--personal-adapters",
            "--llm-num-cpus",
            "1.5",
        ]
    )
    settings = OuroSettings(**settings_overrides(args, num_cpus=2))
    assert settings.tracking_uri == "http://127.0.0.1:1"
    assert [key.name for key in settings.client_keys()] == ["alice", "bob"]
    assert settings.personal_adapters is True
    assert settings.llm_num_cpus == 1.5  # set, so not replaced by the core count


def test_serve_refuses_a_bad_file_or_value(tmp_path: Path) -> None:
    config = tmp_path / "ouro.yaml"
    config.write_text("max_body_bytez: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="max_body_bytez"):
        settings_overrides(parse_args(["--config", str(config)]), num_cpus=1)
    with pytest.raises(ConfigError, match="max_body_bytes"):
        settings_overrides(parse_args(["--max-body-bytes", "0"]), num_cpus=1)


def test_settings_survive_the_trip_through_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What python -m serve hands its training loop reads back as the same settings."""
    given = {
        "data_dir": tmp_path,
        "api_keys": ["alice:sk-a", "bob:sk-b"],
        "personal_adapters": True,
        "consensus_similarity": 0.7,
        "mlflow_tracking_uri": "http://127.0.0.1:1",
    }
    variables = as_environment(OuroSettings(**given), given)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert load_settings(OuroSettings) == OuroSettings(**given)
