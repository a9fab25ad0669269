"""How every Ouro program is configured: flags > ``--config`` YAML file > environment > defaults.

Each setting is one field of a pydantic-settings class, and nowhere else:

- :class:`ouro.settings.OuroSettings`, environment ``OURO_<FIELD>``: what Serve and the
  training job share (storage, model, registry, serving, personal adapters);
- :class:`train_job.config.TrainJobConfig`, environment ``OURO_TRAIN_<FIELD>``: the
  training job's recipe (data, LoRA, training, gates).

A field's command-line flag (``--field-name``) and its key in a config file are derived
from it here, and its help text is its description. pydantic-settings reads the
environment and the defaults; the file's values and the flags reach it as keyword
arguments, which it ranks above the environment, the flags over the file's.
``python -m tools.settings_table`` writes the table of every setting into the README.
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from ouro.errors import OuroError

SettingsT = TypeVar("SettingsT", bound=BaseSettings)

FLAG_ALIASES_KEY = "flag_aliases"
"""Key of a field's ``json_schema_extra`` listing extra spellings of its flag."""


class ConfigError(OuroError, ValueError):
    """A configuration is invalid: unknown key or variable, bad value, unreadable file."""


def env_name(model: type[BaseSettings], name: str) -> str:
    """The environment variable of field ``name`` of ``model``."""
    return f"{model.model_config.get('env_prefix', '')}{name}".upper()


def flag_names(model: type[BaseSettings], name: str) -> list[str]:
    """The command-line flags of field ``name``: ``--field-name`` and its aliases."""
    extra = model.model_fields[name].json_schema_extra
    aliases = list(extra.get(FLAG_ALIASES_KEY, [])) if isinstance(extra, dict) else []
    return [f"--{name.replace('_', '-')}", *aliases]


def default_of(field: FieldInfo) -> Any:
    """A field's default value (calling its default factory)."""
    return field.get_default(call_default_factory=True)


def add_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseSettings],
    names: Iterable[str] | None = None,
) -> None:
    """Add a flag for each field of ``model`` (or those in ``names``).

    A flag that is not given leaves no attribute on the parsed namespace, so the file,
    the environment and the defaults stay in charge of it.
    """
    selected = model.model_fields if names is None else names
    for name in selected:
        field = model.model_fields[name]
        kind, choices, many = _flag_type(field.annotation)
        default = default_of(field)
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        help_text = (
            f"{field.description or ''} [env {env_name(model, name)}; default: "
            f"{'unset' if shown is None else shown}]"
        ).replace("%", "%%")
        options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options.update(type=kind, choices=choices, metavar=None if choices else name.upper())
            if many:
                options["nargs"] = "+"
        parser.add_argument(*flag_names(model, name), **options)


def _flag_type(annotation: Any) -> tuple[Any, list | None, bool]:
    """(argparse type, choices, takes several values) for a field's annotation."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is Literal:
        return str, list(typing.get_args(annotation)), False
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], None, True
    return annotation, None, False


def read_config_file(path: Path) -> dict[str, Any]:
    """The ``field: value`` mapping of a YAML config file."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field: value")
    return {str(key): value for key, value in document.items()}


def load_settings(
    model: type[SettingsT],
    flags: argparse.Namespace | Mapping[str, Any] | None = None,
    config_file: Path | None = None,
    *,
    known: Collection[type[BaseSettings]] = (),
) -> SettingsT:
    """``model`` from the flags given, the config file, the environment and the defaults.

    The file may also hold the fields of the ``known`` classes (one file configures a
    program that reads several); any other key is an error, as is an unknown variable
    under a prefix the model owns (see :func:`owned_env_prefix`).
    """
    values = given_values(model, flags, config_file, known=known)
    check_environment(model)
    try:
        return model(**values)
    except ValidationError as exc:
        raise ConfigError(describe_errors(model, exc)) from exc


def given_values(
    model: type[BaseSettings],
    flags: argparse.Namespace | Mapping[str, Any] | None = None,
    config_file: Path | None = None,
    *,
    known: Collection[type[BaseSettings]] = (),
) -> dict[str, Any]:
    """The values of ``model``'s fields that the flags or the config file give (flags win),
    unvalidated; what :func:`load_settings` puts over the environment."""
    file_values = read_config_file(config_file) if config_file is not None else {}
    allowed = {name for cls in (model, *known) for name in cls.model_fields}
    unknown = sorted(set(file_values) - allowed)
    if unknown:
        raise ConfigError(f"unknown keys in {config_file}: {', '.join(unknown)}")
    given = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags or {})
    values = {name: value for name, value in file_values.items() if name in model.model_fields}
    values.update({name: value for name, value in given.items() if name in model.model_fields})
    return values


def as_environment(settings: BaseSettings, names: Iterable[str]) -> dict[str, str]:
    """Fields ``names`` of ``settings`` as the environment variables that set them (lists
    comma-separated), for a child process that reads its settings from the environment."""
    variables = {}
    for name, value in settings.model_dump(mode="json", include=set(names)).items():
        if value is None:
            continue
        if isinstance(value, list):
            text = ",".join(map(str, value))
        elif isinstance(value, bool):
            text = str(value).lower()
        else:
            text = str(value)
        variables[env_name(type(settings), name)] = text
    return variables


def check_environment(model: type[BaseSettings], environ: Mapping[str, str] | None = None) -> None:
    """Refuse a variable under ``model``'s owned prefix that names none of its fields.

    A model owns its prefix when no other program reads variables under it
    (``OURO_TRAIN_`` is the training job's alone); a misspelt setting is then an error
    instead of silently having no effect.
    """
    prefix = owned_env_prefix(model)
    if prefix is None:
        return
    environ = os.environ if environ is None else environ
    names = {env_name(model, name) for name in model.model_fields}
    unknown = sorted(key for key in environ if key.startswith(prefix) and key not in names)
    if unknown:
        raise ConfigError(
            f"unknown environment variable {', '.join(unknown)}: under {prefix} "
            f"{model.__name__} reads {', '.join(sorted(names))}"
        )


def owned_env_prefix(model: type[BaseSettings]) -> str | None:
    """The model's env prefix when it declares it owns it (``owns_env_prefix = True``)."""
    if not getattr(model, "owns_env_prefix", False):
        return None
    return str(model.model_config.get("env_prefix", "")).upper() or None


def describe_errors(model: type[BaseSettings], exc: ValidationError) -> str:
    """One line naming each invalid setting and what is wrong with it."""
    problems = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        problems.append(f"{name}: {error['msg']} (got {error.get('input')!r})")
    return f"invalid {model.__name__} settings: " + "; ".join(problems)
