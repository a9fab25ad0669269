"""Training: a fresh LoRA adapter on the base model, with TRL's SFTTrainer.

Every cycle starts from the base model (never from the previous adapter), so a version is
a function of the data it lists, and one bad cycle cannot poison the next. On CUDA with a
compatible Unsloth installed (the training image), the base is loaded 4-bit through
Unsloth's FastLanguageModel (faster, less memory); everywhere else plain PEFT LoRA on the
model ``ouro.models`` loads (4-bit NF4 too when the settings ask for it, prepared for
k-bit training). Both use the dtypes of ``ouro.precision``.

Unsloth is imported before TRL (TRL is imported only when a cycle trains, never at module
level), because importing it replaces ``trl.SFTTrainer`` with its own patched trainer; the
trainer is looked up on ``trl`` after that. Its side effects are pinned first: no usage
statistics fetched from the Hub, and its compiled cache under the data dir rather than the
working directory. Importing it also patches transformers' model classes for the whole
process, so the gates evaluate in a fresh process (see ``train_job.gates``).
"""

from __future__ import annotations

import gc
import importlib
import importlib.metadata
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from datasets import Dataset
from packaging.requirements import Requirement
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import ProgressCallback, TrainerCallback, set_seed

from ouro.chat import ChatFormatter, PromptTooLongError
from ouro.models import load_base_model, resolve_base_model, select_device
from ouro.precision import Precision, keep_trainable_dtype, precision_for
from ouro.settings import OuroSettings
from train_job.config import TrainJobConfig

logger = logging.getLogger(__name__)

LogSink = Callable[[int, dict[str, float]], None]
"""Receives (global step, logged values) after each optimizer step (loss, learning_rate, ...)."""


@dataclass
class TrainResult:
    """What training produced."""

    adapter_dir: Path
    """A PEFT adapter directory (adapter_config.json + adapter_model.safetensors)."""
    backend: str
    """'unsloth' or 'peft'."""
    steps: int
    train_loss: float
    """Mean training loss over the run, as the Trainer reports it."""
    rows: int


class _LogForwarder(TrainerCallback):
    """Hands each step's logged values (loss curve) to a sink, e.g. MLflow."""

    def __init__(self, sink: LogSink) -> None:
        self.sink = sink

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D401 - Trainer API
        if logs:
            numbers = {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}
            self.sink(state.global_step, numbers)


class _LossProgress(ProgressCallback):
    """transformers' progress bar (on stderr) with the loss in it, instead of printing every
    step's log dict to stdout, which belongs to the command's result."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)


def lora_arguments(config: TrainJobConfig, num_layers: int) -> dict[str, Any]:
    """The recipe's LoRA settings, as PEFT's ``LoraConfig`` and Unsloth's ``get_peft_model``
    both take them, for a base model of ``num_layers`` decoder layers."""
    top = config.lora_layers
    return {
        "r": config.lora_r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": list(config.lora_target_modules),
        "layers_to_transform": (
            list(range(num_layers - top, num_layers)) if top and top < num_layers else None
        ),
        "bias": "none",
    }


UNSLOTH_PACKAGES = ("unsloth", "unsloth_zoo")
UNSLOTH_CACHE_DIR = "unsloth_compiled_cache"
"""Unsloth's compiled-module cache, under the data dir (the image's working dir is read-only)."""


def unsloth_incompatibilities() -> list[str]:
    """Why the installed Unsloth cannot be used: its own declared requirements (and
    unsloth_zoo's) that the installed packages do not meet. Empty when it can be used.

    The CPU stack pins newer transformers/TRL/datasets than Unsloth accepts; installed
    beside them (``--no-deps``) it would run against versions it was never made for.
    """
    problems = []
    for package in UNSLOTH_PACKAGES:
        try:
            declared = importlib.metadata.requires(package) or []
        except importlib.metadata.PackageNotFoundError:
            if package == "unsloth":
                return ["unsloth is not installed"]
            continue
        for line in declared:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            try:
                installed = importlib.metadata.version(requirement.name)
            except importlib.metadata.PackageNotFoundError:
                problems.append(f"{package} needs {requirement}, which is not installed")
                continue
            if not requirement.specifier.contains(installed, prereleases=True):
                problems.append(f"{package} needs {requirement}, installed {installed}")
    return problems


def unsloth_usable(config: TrainJobConfig, settings: OuroSettings) -> bool:
    """Train with Unsloth: asked for, on CUDA, installed and compatible (logged when not)."""
    if not config.use_unsloth or select_device(settings).type != "cuda":
        return False
    if importlib.util.find_spec("unsloth") is None:
        logger.info("Unsloth is not installed: training with plain PEFT")
        return False
    problems = unsloth_incompatibilities()
    if problems:
        logger.warning("Unsloth cannot be used (%s): training with plain PEFT", "; ".join(problems))
        return False
    return True


def import_unsloth(data_dir: Path) -> ModuleType:
    """Import Unsloth with its side effects pinned; before TRL, so its trainer patch applies."""
    # Read at import: its "statistics" download a file from the Hub to count installs.
    os.environ["UNSLOTH_DISABLE_STATISTICS"] = "1"
    # Read at import by unsloth_zoo.compiler; the default is relative to the working dir.
    cache = (Path(data_dir) / UNSLOTH_CACHE_DIR).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["UNSLOTH_COMPILE_LOCATION"] = str(cache)
    return importlib.import_module("unsloth")


def trl_trainer() -> tuple[type, type]:
    """(SFTTrainer, SFTConfig) as ``trl`` exports them now: Unsloth's once it is imported."""
    import trl  # here, not at module level: after Unsloth (see the module docstring)

    return trl.SFTTrainer, trl.SFTConfig


def train_adapter(
    config: TrainJobConfig,
    settings: OuroSettings,
    rows: list[dict],
    work_dir: Path,
    on_log: LogSink | None = None,
) -> TrainResult:
    """Train a new LoRA adapter on ``rows`` (prompt-completion) and save it in work_dir/adapter."""
    if not rows:
        raise ValueError("nothing to train on")
    set_seed(config.seed)
    device = select_device(settings)
    precision = precision_for(device)
    if unsloth_usable(config, settings):
        unsloth = import_unsloth(settings.data_dir)
        model, tokenizer = _unsloth_model(unsloth, config, settings, precision)
        backend = "unsloth"
    else:
        loaded = load_base_model(settings)
        model, tokenizer = loaded.model, loaded.tokenizer
        if loaded.quantized:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        set_seed(config.seed)  # LoRA's initial weights
        lora = lora_arguments(config, model.config.num_hidden_layers)
        model = get_peft_model(model, LoraConfig(**lora, task_type="CAUSAL_LM"))
        backend = "peft"

    fitted = fit_rows(rows, tokenizer, config.max_length)
    trainer_class, _ = trl_trainer()
    trainer = trainer_class(
        model=model,
        args=sft_config(config, work_dir / "checkpoints", device, precision),
        train_dataset=Dataset.from_list(fitted),
        processing_class=tokenizer,
        callbacks=[_LogForwarder(on_log)] if on_log else None,
    )
    # TRL casts a k-bit model's LoRA weights to bf16 in the constructor; fp16 needs fp32.
    keep_trainable_dtype(trainer.model, precision)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_LossProgress)
    logger.info("training a LoRA adapter (%s) on %s rows", backend, len(fitted))
    output = trainer.train()
    adapter_dir = work_dir / "adapter"
    trainer.model.save_pretrained(adapter_dir)
    result = TrainResult(
        adapter_dir=adapter_dir,
        backend=backend,
        steps=output.global_step,
        train_loss=float(output.training_loss),
        rows=len(fitted),
    )
    # The gates load the base model and this adapter fresh from disk, as Serve will.
    del trainer, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def sft_config(
    config: TrainJobConfig, output_dir: Path, device: torch.device, precision: Precision
):
    """TRL's SFTConfig (Unsloth's, once imported) for this config, device and precision."""
    _, config_class = trl_trainer()
    return config_class(
        output_dir=str(output_dir),
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        num_train_epochs=config.num_train_epochs,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        seed=config.seed,
        data_seed=config.seed,
        max_length=config.max_length,
        completion_only_loss=True,  # prompt-completion rows: loss on the assistant turn only
        packing=False,
        # (TRL's padding_free needs FlashAttention, which CPUs and T4s lack; packing would
        # mix rows in one attention window.)
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        bf16=precision.bf16,  # TRL defaults to bf16=True, which fails on CPU and a T4
        fp16=precision.fp16,
        use_cpu=device.type != "cuda",
        logging_steps=1,
        save_strategy="no",  # a killed cycle leaves nothing to resume; the next one redoes it
        report_to="none",  # the cycle logs to its own MLflow run (see on_log)
        disable_tqdm=False,
        dataloader_pin_memory=False,
    )


def fit_rows(rows: list[dict], tokenizer, max_length: int) -> list[dict]:
    """Rows whose prompt is shortened from the oldest turn until prompt + completion fit.

    The prompt goes through ouro.chat.ChatFormatter, as at serving time, so training and
    serving cannot drift: the system prompt and the latest user turn stay. A row that
    still does not fit keeps only those two and is truncated by TRL (logged).
    """
    # The rows carry their system prompt already (train_job.dataset puts it in).
    formatter = ChatFormatter(tokenizer, system_prompt="", max_context_tokens=max_length)
    fitted = []
    too_long = 0
    for row in rows:
        prompt, completion = row["prompt"], row["completion"]
        answer_tokens = _length(tokenizer, prompt + completion) - len(formatter.render(prompt))
        try:
            prompt, _ = formatter.fit(prompt, max_length - answer_tokens)
        except PromptTooLongError:
            too_long += 1
            latest_user = max((i for i, m in enumerate(prompt) if m["role"] == "user"), default=0)
            prompt = [m for m in prompt[:latest_user] if m["role"] == "system"] + prompt[
                latest_user:
            ]
        fitted.append({"prompt": prompt, "completion": completion})
    if too_long:
        logger.warning(
            "%s rows exceed max_length=%s even shortened; TRL truncates them", too_long, max_length
        )
    return fitted


def _length(tokenizer, messages: list[dict]) -> int:
    return len(
        tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    )


def _unsloth_model(
    unsloth: ModuleType, config: TrainJobConfig, settings: OuroSettings, precision: Precision
):
    fast = unsloth.FastLanguageModel
    model, tokenizer = fast.from_pretrained(
        model_name=resolve_base_model(settings),
        max_seq_length=config.max_length,
        load_in_4bit=settings.quantization != "none",
        dtype=precision.compute_dtype,
        # Otherwise a Hub id is remapped to Unsloth's own pre-quantised repo: training and
        # serving would use different weights.
        use_exact_model_name=True,
    )
    model = fast.get_peft_model(
        model,
        **lora_arguments(config, model.config.num_hidden_layers),
        use_gradient_checkpointing="unsloth",
        random_state=config.seed,
    )
    return model, tokenizer
