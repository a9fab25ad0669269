"""The training job's settings: flags > --config YAML > environment > defaults.

The recipe is TrainJobConfig (``OURO_TRAIN_<FIELD>``); storage, model and registry are
OuroSettings fields (``OURO_<FIELD>``), read the same way Serve reads them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ouro.configuration import ConfigError, load_settings, read_config_file
from ouro.settings import OuroSettings
from tests.fixtures.settings import settings_layers
from train_job.cli import load_command, main
from train_job.config import (
    CHATTERBOT_SOURCE,
    GENERIC_GPU_RECIPE,
    RECIPES_DIR,
    TrainJobConfig,
    recipe_for,
)
from train_job.dataset import load_conversations


def parse(argv: list[str]) -> tuple[OuroSettings, TrainJobConfig]:
    _args, settings, config = load_command(["run", *argv])
    assert config is not None
    return settings, config


def test_defaults_when_nothing_is_set_are_the_default_base_models_recipe() -> None:
    settings, config = parse([])
    assert settings == OuroSettings()
    recipe = recipe_for(settings.base_model)
    assert recipe is not None and recipe.name == "smollm2-135m.yaml"
    expected = load_settings(TrainJobConfig, config_file=recipe, known=[OuroSettings])
    assert config.model_dump() == expected.model_dump()
    assert config.recipe == "smollm2-135m.yaml" and config.to_params()["recipe"] == config.recipe
    assert config.routing and config.lora_layers == 8


def test_each_embedded_model_gets_its_own_recipe_and_a_path_the_generic_gpu_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OURO_BASE_MODEL", "ouro-tiny")
    _, tiny = parse([])
    assert tiny.recipe == "cpu-ouro-tiny.yaml" and not tiny.routing
    monkeypatch.setenv("OURO_BASE_MODEL", str(tmp_path / "some-model"))
    settings, generic = parse([])
    assert generic.recipe == "gpu-generic.yaml"
    expected = load_settings(TrainJobConfig, config_file=GENERIC_GPU_RECIPE, known=[OuroSettings])
    assert generic.model_dump() == expected.model_dump()
    assert settings.base_model == str(tmp_path / "some-model")  # the recipe names none


@pytest.mark.parametrize(
    ("base_model", "recipe", "why"),
    [
        ("smollm2-135m", "smollm2-135m.yaml", "the embedded model's own recipe"),
        ("ouro-tiny", "cpu-ouro-tiny.yaml", "the embedded model's own recipe"),
        ("meta-llama/Llama-3.2-3B-Instruct", "gpu-llama-3b.yaml", "made for this model"),
        ("meta-llama/llama-3.2-3b-instruct", "gpu-llama-3b.yaml", "made for this model"),
        ("Qwen/Qwen2.5-1.5B-Instruct", "gpu-generic.yaml", "the generic GPU recipe"),
        ("/models/Llama-3.2-3B-Instruct", "gpu-generic.yaml", "the generic GPU recipe"),
        ("./models/my-model", "gpu-generic.yaml", "the generic GPU recipe"),
    ],
)
def test_recipe_for_each_kind_of_base_model_logs_which_and_why(
    base_model: str, recipe: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="train_job.config"):
        chosen = recipe_for(base_model)
    assert chosen.name == recipe and chosen.is_file()
    assert f"training recipe for base model {base_model}: {recipe} (" in caplog.text
    assert why in caplog.text


RECIPE_FILES = sorted(RECIPES_DIR.glob("*.yaml"))
SOURCE_FIELDS = ("replay_source", "regression_source", "probe_source")


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


@pytest.mark.parametrize("recipe", RECIPE_FILES, ids=lambda path: path.name)
def test_every_shipped_recipe_loads_and_needs_no_file_on_a_volume(recipe: Path) -> None:
    config = load_settings(TrainJobConfig, config_file=recipe, known=[OuroSettings])
    raw = read_config_file(recipe)
    absolute = [text for text in _strings(raw) if text.startswith(("/", "~"))]
    assert not absolute, f"{recipe.name} names paths that must pre-exist: {absolute}"
    # Every conversation source ships in a package, and loads.
    for name in SOURCE_FIELDS:
        source = getattr(config, name)
        assert source in (None, CHATTERBOT_SOURCE), f"{recipe.name}: {name}={source!r}"
        if source is not None:
            assert load_conversations(source)


def test_the_generic_gpu_recipe_sets_what_the_llama_recipe_sets() -> None:
    llama = read_config_file(RECIPES_DIR / "gpu-llama-3b.yaml")
    generic = read_config_file(GENERIC_GPU_RECIPE)
    assert "base_model" not in generic  # it serves any model
    assert set(generic) == set(llama) - {"base_model"}


def test_a_recipe_made_for_another_base_model_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tiny_recipe = recipe_for("ouro-tiny")
    assert tiny_recipe is not None
    with caplog.at_level("WARNING"):
        settings, config = parse(["--config", str(tiny_recipe), "--base-model", "smollm2-135m"])
    assert settings.base_model == "smollm2-135m" and config.recipe == "cpu-ouro-tiny.yaml"
    assert "made for base model ouro-tiny, but this cycle trains smollm2-135m" in caplog.text


def test_precedence_flags_over_yaml_over_env_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = settings_layers(
        tmp_path,
        monkeypatch,
        file={
            "max_steps": 30,
            "learning_rate": 0.002,
            "lora_r": 4,
            "base_model": "from-yaml",
            "registered_model_name": "yaml-model",
        },
        env={
            "OURO_TRAIN_MAX_STEPS": "10",
            "OURO_TRAIN_LEARNING_RATE": "0.5",
            "OURO_TRAIN_SEED": "7",
            "OURO_BASE_MODEL": "from-env",
            "OURO_REGISTERED_MODEL_NAME": "env-model",
            "OURO_DATA_DIR": str(tmp_path / "from-env"),
        },
    )

    settings, config = parse(
        ["--config", str(job), "--max-steps", "40", "--base-model", "from-flag"]
    )

    assert config.max_steps == 40  # flag beats YAML and env
    assert config.learning_rate == 0.002  # YAML beats env
    assert config.lora_r == 4  # YAML beats the default
    assert config.seed == 7  # env beats the default
    assert config.replay_size == TrainJobConfig.model_fields["replay_size"].default
    assert settings.base_model == "from-flag"  # the shared settings: the same order
    assert settings.registered_model_name == "yaml-model"
    assert settings.data_dir == tmp_path / "from-env"


def test_env_values_are_typed_like_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OURO_TRAIN_AUTO_PROMOTE", "true")
    monkeypatch.setenv("OURO_TRAIN_LORA_TARGET_MODULES", "q_proj, v_proj")
    monkeypatch.setenv("OURO_TRAIN_HELD_OUT_SHARE", "0")
    monkeypatch.setenv("OURO_TRAIN_GENERALISATION_MIN", "0.5")
    _settings, config = parse([])
    assert config.auto_promote is True
    assert config.lora_target_modules == ["q_proj", "v_proj"]
    assert config.held_out_share == 0.0
    assert config.generalisation_min == 0.5

    _settings, flagged = parse(["--lora-target-modules", "q_proj", "o_proj", "--no-auto-promote"])
    assert flagged.lora_target_modules == ["q_proj", "o_proj"]
    assert flagged.auto_promote is False


def test_registry_flags_spell_as_before(tmp_path: Path) -> None:
    settings, _config = parse(["--data-dir", str(tmp_path / "flag"), "--mlflow-uri", "x"])
    assert settings.data_dir == tmp_path / "flag"
    assert settings.tracking_uri == "x"
    _args, status_settings, config = load_command(
        ["status", "--mlflow-tracking-uri", "y", "--registered-model-name", "m"]
    )
    assert (status_settings.tracking_uri, status_settings.registered_model_name) == ("y", "m")
    assert config is None


def test_unknown_yaml_key_is_a_config_error(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("max_stepz: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="max_stepz"):
        parse(["--config", str(job)])


def test_unknown_env_variable_under_the_training_prefix_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OURO_TRAIN_LERNING_RATE", "0.1")
    with pytest.raises(ConfigError, match="OURO_TRAIN_LERNING_RATE"):
        parse([])


@pytest.mark.parametrize(
    ("field", "value"),
    [("held_out_share", 1.0), ("fix_rate_min", 1.5), ("max_length", 4), ("lora_r", 0)],
)
def test_out_of_range_values_are_rejected(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        TrainJobConfig(**{field: value})
    with pytest.raises(ConfigError, match=field):
        parse([f"--{field.replace('_', '-')}", str(value)])


def test_a_run_with_no_length_is_rejected() -> None:
    with pytest.raises(ValidationError, match="num_train_epochs"):
        TrainJobConfig(max_steps=0, num_train_epochs=0)


def test_cli_exits_2_on_bad_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("- not a mapping\n", encoding="utf-8")
    assert main(["run", "--config", str(job), "--data-dir", str(tmp_path)]) == 2
    assert "mapping" in caplog.text
    assert main(["run", "--fix-rate-min", "2", "--data-dir", str(tmp_path)]) == 2
    assert "fix_rate_min" in caplog.text
    assert main(["status", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert not (tmp_path / "mlflow").exists()  # nothing started


def test_bad_flag_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--max-steps", "many"])
    assert exit_info.value.code == 2


def test_log_level_is_a_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OURO_LOG_LEVEL", "debug")
    _args, settings, _config = load_command(["scopes", "--data-dir", str(tmp_path)])
    assert settings.log_level == "DEBUG"


def test_example_configs_parse() -> None:
    configs = sorted((Path(__file__).parents[2] / "train_job" / "configs").glob("*.yaml"))
    assert configs, "example configs are missing"
    for path in configs:
        parse(["--config", str(path)])
