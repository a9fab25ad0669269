"""The training cycle's configuration: one dataclass, settable from defaults, env, YAML, flags.

Precedence, highest first: command-line flags > the ``--config`` YAML file > environment
variables > the defaults below. Environment variables:

- the four settings the whole project shares come from :class:`ouro.settings.OuroSettings`
  (``OURO_DATA_DIR``, ``OURO_BASE_MODEL``, ``OURO_MLFLOW_TRACKING_URI``,
  ``OURO_REGISTERED_MODEL_NAME``), so Serve and the training job read the same variables;
- every other field reads ``OURO_TRAIN_<FIELD>`` (e.g. ``OURO_TRAIN_MAX_STEPS=50``; lists
  comma-separated, booleans true/false).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ouro.errors import OuroError
from ouro.settings import OuroSettings

ENV_PREFIX = "OURO_TRAIN_"
"""Prefix of the environment variables for the fields that only the training job has."""

SHARED_FIELDS = ("data_dir", "base_model", "mlflow_tracking_uri", "registered_model_name")
"""Fields that default to (and are read from the environment by) OuroSettings."""

CHATTERBOT_SOURCE = "chatterbot"
"""Conversation source naming the chatterbot-corpus that ships in a package."""

SELF_REPLAY = "self"
SOURCE_REPLAY = "source"
REPLAY_ANSWERS = (SELF_REPLAY, SOURCE_REPLAY)
"""Whose answers are replayed: the base model's own, or the replay source's."""


class TrainJobConfigError(OuroError, ValueError):
    """The configuration is invalid (unknown key, bad value, unreadable YAML)."""


@dataclass
class TrainJobConfig:
    """Configuration of one training cycle (``python -m train_job run``).

    Groups:
        Storage and registry: data_dir, base_model, mlflow_tracking_uri,
            registered_model_name, experiment_name, auto_promote, notify_url.
        Data: replay_source, replay_answers, replay_max_new_tokens, replay_size,
            correction_share, held_out_share, regression_source, regression_size,
            probe_source, probe_size, min_corrections.
        LoRA: lora_r, lora_alpha, lora_dropout, lora_target_modules.
        Training: learning_rate, lr_scheduler_type, warmup_steps, max_steps,
            num_train_epochs, per_device_train_batch_size, gradient_accumulation_steps,
            group_by_length, max_length, seed, cpu_threads, use_unsloth.
        Gates: answer_f1_threshold, fix_rate_min, generalisation_min,
            max_perplexity_rise_pct, probe_f1_min, max_degenerate_answers,
            gate_max_new_tokens.
    """

    # -- storage and registry -------------------------------------------------------
    data_dir: Path | None = field(
        default=None,
        metadata={
            "help": "Data dir (ledger, model cache, local MLflow store). "
            "Default: OURO_DATA_DIR or ./.ouro."
        },
    )
    base_model: str | None = field(
        default=None,
        metadata={
            "help": "Base model to train the adapter on: 'smollm2-135m', 'ouro-tiny', a "
            "local path or a Hub id. Default: OURO_BASE_MODEL or smollm2-135m."
        },
    )
    mlflow_tracking_uri: str | None = field(
        default=None,
        metadata={
            "help": "MLflow tracking/registry URI. Default: OURO_MLFLOW_TRACKING_URI or "
            "a local store in <data_dir>/mlflow.",
            "aliases": ["--mlflow-uri"],
        },
    )
    registered_model_name: str | None = field(
        default=None,
        metadata={
            "help": "Registered model holding the adapter versions. "
            "Default: OURO_REGISTERED_MODEL_NAME or ouro-adapter."
        },
    )
    experiment_name: str = field(
        default="ouro-train", metadata={"help": "MLflow experiment holding one run per cycle."}
    )
    auto_promote: bool = field(
        default=False,
        metadata={"help": "Also move alias 'production' to a version that passed the gates."},
    )
    notify_url: str | None = field(
        default=None,
        metadata={
            "help": "Serve's base URL: after moving 'production', ask it to re-read the "
            "registry now (POST /admin/registry/refresh with OURO_ADMIN_API_KEY)."
        },
    )

    # -- data ------------------------------------------------------------------------
    replay_source: str = field(
        default=CHATTERBOT_SOURCE,
        metadata={
            "help": "General conversations mixed in so the bot does not forget: "
            "'chatterbot' (the corpus shipped in a package) or a chat JSONL file "
            "written by `python -m data build`."
        },
    )
    replay_answers: str = field(
        default=SELF_REPLAY,
        metadata={
            "help": "'self': replay the base model's own greedy answers to the replay "
            "source's first user turns (generated once per base model, cached), which "
            "keeps unrelated answers as they were; 'source': replay the source's "
            "conversations as written (right for ouro-tiny, which memorised them)."
        },
    )
    replay_max_new_tokens: int = field(
        default=256,
        metadata={
            "help": "Longest self-distilled replay answer; answers the base model has not "
            "finished by then are dropped. smollm2-135m is wordy: with 64 tokens it "
            "finished 4 of 16 chatterbot prompts."
        },
    )
    replay_size: int = field(
        default=16,
        metadata={
            "help": "Replay conversations sampled per cycle (0: none). 16 self-distilled "
            "answers for smollm2-135m (see README, 'The embedded models')."
        },
    )
    correction_share: float = field(
        default=0.5,
        metadata={
            "help": "Share of the training rows that are corrections: correction rows "
            "are repeated to reach it, so a large replay sample (seen about once, "
            "which keeps it from being memorised) does not drown them."
        },
    )
    held_out_share: float = field(
        default=0.1,
        metadata={
            "help": "Share of corrections kept out of training to measure "
            "generalisation (those are not learned this cycle)."
        },
    )
    regression_source: str = field(
        default=CHATTERBOT_SOURCE,
        metadata={
            "help": "Held-out conversations for the perplexity gate: 'chatterbot' or a "
            "chat JSONL file. Never overlaps the replay sample when both are the same."
        },
    )
    regression_size: int = field(
        default=16, metadata={"help": "Conversations in the regression (perplexity) set."}
    )
    probe_source: str | None = field(
        default=None,
        metadata={
            "help": "Probe prompts whose answers must stay close to the baseline's: a "
            "text file (one prompt a line) or a chat JSONL. Default: the first user "
            "turn of each regression conversation."
        },
    )
    probe_size: int = field(default=16, metadata={"help": "Probe prompts used."})
    min_corrections: int = field(
        default=1, metadata={"help": "Fewest new corrections that start a training cycle."}
    )

    # -- LoRA ------------------------------------------------------------------------
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        metadata={"help": "Modules that get LoRA weights (Llama names)."},
    )

    # -- training --------------------------------------------------------------------
    learning_rate: float = field(
        default=2e-3,
        metadata={
            "help": "Peak learning rate: 2e-3 for smollm2-135m (calibration unfinished, see the "
            "README), 4e-3 for ouro-tiny, ~2e-4 for a 3B model."
        },
    )
    lr_scheduler_type: str = field(default="linear", metadata={"help": "LR schedule."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up steps."})
    max_steps: int = field(
        default=0, metadata={"help": "Optimizer steps; 0 or less: use num_train_epochs."}
    )
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs when max_steps <= 0."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Batch size."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Batches accumulated per optimizer step."}
    )
    group_by_length: bool = field(
        default=True,
        metadata={
            "help": "Batch rows of about one length (less padding: a short correction "
            "padded to a long self-replay answer costs that answer's compute); false: "
            "random batches."
        },
    )
    max_length: int = field(
        default=512,
        metadata={
            "help": "Longest training example in tokens; longer conversations lose "
            "their oldest turns first, as at serving time."
        },
    )
    seed: int = field(
        default=0, metadata={"help": "Seed for sampling, the split, LoRA init and training."}
    )
    cpu_threads: int = field(
        default=1,
        metadata={
            "help": "torch CPU threads (0: torch's default, one per core). One is "
            "fastest for the embedded model when Serve or anything else shares the "
            "cores: 20 corrections trained in 23 s on 1 thread, 228 s on 2 threads "
            "of a busy 2-core machine."
        },
    )
    use_unsloth: bool = field(
        default=True,
        metadata={
            "help": "On CUDA, train with Unsloth's FastLanguageModel (4-bit) when it is "
            "installed and its declared requirements are met (the training image); plain "
            "PEFT otherwise and always on CPU."
        },
    )

    # -- gates -----------------------------------------------------------------------
    answer_f1_threshold: float = field(
        default=0.8,
        metadata={
            "help": "BERTScore F1 (offline all-MiniLM-L6-v2, no rescaling) at or above "
            "which an answer counts as matching its correction."
        },
    )
    fix_rate_min: float = field(
        default=0.8,
        metadata={"help": "Least share of trained corrections the new adapter must reproduce."},
    )
    generalisation_min: float | None = field(
        default=None,
        metadata={"help": "Least fix rate on the held-out corrections; unset: reported only."},
    )
    max_perplexity_rise_pct: float = field(
        default=50.0,
        metadata={
            "help": "Most the assistant-token perplexity on the regression set may rise "
            "over the baseline (production, or the base model), in percent."
        },
    )
    probe_f1_min: float = field(
        default=0.6,
        metadata={
            "help": "Least mean BERTScore F1 between the new and the baseline answers "
            "to the probe prompts."
        },
    )
    max_degenerate_answers: int = field(
        default=0,
        metadata={
            "help": "Most answers (to the corrections and the probes) that repeat a phrase "
            "back to back ('Uh... Uh... Uh...') beyond the baseline's own count on the "
            "same prompts."
        },
    )
    gate_max_new_tokens: int = field(
        default=64, metadata={"help": "Most tokens generated per gate answer."}
    )

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be {rule}"
            for name, ok, rule in (
                (
                    "replay_answers",
                    self.replay_answers in REPLAY_ANSWERS,
                    " or ".join(REPLAY_ANSWERS),
                ),
                ("replay_max_new_tokens", self.replay_max_new_tokens > 0, "> 0"),
                ("replay_size", self.replay_size >= 0, ">= 0"),
                ("held_out_share", 0.0 <= self.held_out_share < 1.0, "in [0, 1)"),
                ("correction_share", 0.0 < self.correction_share < 1.0, "in (0, 1)"),
                ("regression_size", self.regression_size >= 0, ">= 0"),
                ("probe_size", self.probe_size >= 0, ">= 0"),
                ("min_corrections", self.min_corrections >= 1, ">= 1"),
                ("lora_r", self.lora_r > 0, "> 0"),
                ("lora_alpha", self.lora_alpha > 0, "> 0"),
                ("lora_dropout", 0.0 <= self.lora_dropout < 1.0, "in [0, 1)"),
                ("lora_target_modules", bool(self.lora_target_modules), "non-empty"),
                ("learning_rate", self.learning_rate > 0, "> 0"),
                ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
                ("num_train_epochs", self.max_steps > 0 or self.num_train_epochs > 0, "> 0"),
                ("per_device_train_batch_size", self.per_device_train_batch_size > 0, "> 0"),
                ("gradient_accumulation_steps", self.gradient_accumulation_steps > 0, "> 0"),
                ("max_length", self.max_length >= 16, ">= 16"),
                ("cpu_threads", self.cpu_threads >= 0, ">= 0"),
                ("answer_f1_threshold", 0.0 <= self.answer_f1_threshold <= 1.0, "in [0, 1]"),
                ("fix_rate_min", 0.0 <= self.fix_rate_min <= 1.0, "in [0, 1]"),
                (
                    "generalisation_min",
                    self.generalisation_min is None or 0.0 <= self.generalisation_min <= 1.0,
                    "in [0, 1]",
                ),
                ("max_perplexity_rise_pct", self.max_perplexity_rise_pct >= 0, ">= 0"),
                ("probe_f1_min", 0.0 <= self.probe_f1_min <= 1.0, "in [0, 1]"),
                ("max_degenerate_answers", self.max_degenerate_answers >= 0, ">= 0"),
                ("gate_max_new_tokens", self.gate_max_new_tokens > 0, "> 0"),
            )
            if not ok
        ]
        if problems:
            raise TrainJobConfigError("invalid training configuration: " + "; ".join(problems))

    def settings(self, base: OuroSettings | None = None) -> OuroSettings:
        """OuroSettings for this cycle: the environment's, with the shared fields set here."""
        overrides = {name: getattr(self, name) for name in SHARED_FIELDS}
        overrides = {name: value for name, value in overrides.items() if value is not None}
        if base is None:
            return OuroSettings(**overrides)
        return base.model_copy(update=overrides)

    def to_params(self) -> dict[str, str]:
        """Flat string view for MLflow params (the shared fields are logged from settings)."""
        return {
            item.name: ",".join(value) if isinstance(value, list) else str(value)
            for item in dataclasses.fields(self)
            if item.name not in SHARED_FIELDS and (value := getattr(self, item.name)) is not None
        }


def field_names() -> list[str]:
    return [item.name for item in dataclasses.fields(TrainJobConfig)]


def env_layer(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Values of ``OURO_TRAIN_<FIELD>`` variables (as strings; lists split on commas).

    The shared fields are left to OuroSettings, which reads ``OURO_<FIELD>``.
    """
    environ = os.environ if environ is None else environ
    names = {name.upper(): name for name in field_names() if name not in SHARED_FIELDS}
    values: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = names.get(key[len(ENV_PREFIX) :])
        if name is None:
            raise TrainJobConfigError(
                f"unknown environment variable {key}: the training job reads "
                f"{ENV_PREFIX}<FIELD> for these fields: {', '.join(sorted(names.values()))}"
            )
        values[name] = _split_list(name, raw)
    return values


def yaml_layer(path: Path) -> dict[str, Any]:
    """The fields set in a YAML config file (unknown keys are an error)."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TrainJobConfigError(f"cannot read config file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise TrainJobConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise TrainJobConfigError(f"config file {path} must hold a mapping of field: value")
    unknown = sorted(set(map(str, document)) - set(field_names()))
    if unknown:
        raise TrainJobConfigError(f"unknown keys in {path}: {', '.join(unknown)}")
    return {name: _split_list(name, value) for name, value in document.items()}


def _split_list(name: str, value: Any) -> Any:
    if name == "lora_target_modules" and isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value
