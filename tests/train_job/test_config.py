"""Configuration: flags > YAML > environment > defaults, shared fields through OuroSettings."""

from __future__ import annotations

from pathlib import Path

import pytest

from train_job.cli import build_parser, main, parse_run_config
from train_job.config import TrainJobConfig, TrainJobConfigError, env_layer, yaml_layer


def parse(argv: list[str], environ: dict[str, str] | None = None) -> TrainJobConfig:
    return parse_run_config(build_parser(), ["run", *argv], environ or {})[1]


def test_defaults_when_nothing_is_set() -> None:
    config = parse([])
    assert config == TrainJobConfig()
    assert config.data_dir is None  # left to OuroSettings


def test_precedence_flags_over_yaml_over_env_over_defaults(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("max_steps: 30\nlearning_rate: 0.002\nlora_r: 4\n", encoding="utf-8")
    environ = {
        "OURO_TRAIN_MAX_STEPS": "10",
        "OURO_TRAIN_LEARNING_RATE": "0.5",
        "OURO_TRAIN_SEED": "7",
    }

    config = parse(["--config", str(job), "--max-steps", "40"], environ)

    assert config.max_steps == 40  # flag beats YAML and env
    assert config.learning_rate == 0.002  # YAML beats env
    assert config.lora_r == 4  # YAML beats the default
    assert config.seed == 7  # env beats the default
    assert config.replay_size == TrainJobConfig().replay_size  # default


def test_env_values_are_typed_like_flags() -> None:
    config = parse(
        [],
        {
            "OURO_TRAIN_AUTO_PROMOTE": "true",
            "OURO_TRAIN_LORA_TARGET_MODULES": "q_proj, v_proj",
            "OURO_TRAIN_HELD_OUT_SHARE": "0",
            "OURO_TRAIN_GENERALISATION_MIN": "0.5",
        },
    )
    assert config.auto_promote is True
    assert config.lora_target_modules == ["q_proj", "v_proj"]
    assert config.held_out_share == 0.0
    assert config.generalisation_min == 0.5


def test_shared_fields_come_from_ouro_settings_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OURO_DATA_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("OURO_REGISTERED_MODEL_NAME", "env-model")
    monkeypatch.setenv("OURO_MLFLOW_TRACKING_URI", "http://127.0.0.1:1")

    from_env = parse([]).settings()
    assert from_env.data_dir == tmp_path / "from-env"
    assert from_env.registered_model_name == "env-model"

    yaml_file = tmp_path / "job.yaml"
    yaml_file.write_text("registered_model_name: yaml-model\n", encoding="utf-8")
    overridden = parse(
        ["--config", str(yaml_file), "--data-dir", str(tmp_path / "flag"), "--mlflow-uri", "x"]
    ).settings()
    assert overridden.data_dir == tmp_path / "flag"
    assert overridden.registered_model_name == "yaml-model"
    assert overridden.tracking_uri == "x"


def test_unknown_yaml_key_is_a_config_error(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("max_stepz: 3\n", encoding="utf-8")
    with pytest.raises(TrainJobConfigError, match="max_stepz"):
        yaml_layer(job)


def test_unknown_env_variable_is_a_config_error() -> None:
    with pytest.raises(TrainJobConfigError, match="OURO_TRAIN_LERNING_RATE"):
        env_layer({"OURO_TRAIN_LERNING_RATE": "0.1"})


@pytest.mark.parametrize(
    ("field", "value"),
    [("held_out_share", 1.0), ("fix_rate_min", 1.5), ("max_length", 4), ("lora_r", 0)],
)
def test_out_of_range_values_are_rejected(field: str, value: float) -> None:
    with pytest.raises(TrainJobConfigError, match=field):
        TrainJobConfig(**{field: value})


def test_cli_exits_2_on_bad_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("- not a mapping\n", encoding="utf-8")
    assert main(["run", "--config", str(job), "--data-dir", str(tmp_path)]) == 2
    assert "mapping" in caplog.text
    assert main(["run", "--fix-rate-min", "2", "--data-dir", str(tmp_path)]) == 2
    assert not (tmp_path / "mlflow").exists()  # nothing started


def test_bad_flag_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--max-steps", "many"])
    assert exit_info.value.code == 2


def test_example_configs_parse() -> None:
    configs = sorted((Path(__file__).parents[2] / "train_job" / "configs").glob("*.yaml"))
    assert configs, "example configs are missing"
    for path in configs:
        parse(["--config", str(path)])
