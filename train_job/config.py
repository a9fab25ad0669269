"""The training job's recipe: one pydantic-settings class, environment prefix ``OURO_TRAIN_``.

Set like every Ouro setting (see :mod:`ouro.configuration`): flags > the ``--config`` YAML
file > environment (``OURO_TRAIN_<FIELD>``, e.g. ``OURO_TRAIN_MAX_STEPS=50``; lists
comma-separated) > the defaults below. Storage, model and registry are not here: they are
:class:`ouro.settings.OuroSettings` fields, which Serve reads too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, PrivateAttr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ouro.settings import CommaList

logger = logging.getLogger(__name__)

RECIPES_DIR = Path(__file__).with_name("configs")
EMBEDDED_RECIPES = {
    "smollm2-135m": RECIPES_DIR / "smollm2-135m.yaml",
    "ouro-tiny": RECIPES_DIR / "cpu-ouro-tiny.yaml",
}
"""The recipe each embedded base model ships."""
HUB_RECIPES = {
    "meta-llama/llama-3.2-3b-instruct": RECIPES_DIR / "gpu-llama-3b.yaml",
}
"""Recipes made for a Hub model, by lower-case id (the Hub ignores case in ids)."""
GENERIC_GPU_RECIPE = RECIPES_DIR / "gpu-generic.yaml"
"""The recipe of any other Hub id or path: conservative settings for a 1-8B instruct model."""
GENERIC_RECIPE = "defaults"

CHATTERBOT_SOURCE = "chatterbot"
"""Conversation source naming the chatterbot-corpus that ships in a package."""

SELF_REPLAY = "self"
SOURCE_REPLAY = "source"
"""Whose answers are replayed: the base model's own, or the replay source's."""


class TrainJobConfig(BaseSettings):
    """Configuration of one training cycle (``python -m train_job run``).

    Groups:
        Registry: experiment_name, auto_promote, canary, notify_url.
        Data: replay_source, replay_answers, replay_max_new_tokens, replay_size,
            correction_share, held_out_share, regression_source, regression_size,
            probe_source, probe_size, min_corrections.
        LoRA: lora_r, lora_alpha, lora_dropout, lora_target_modules, lora_layers.
        Training: learning_rate, lr_scheduler_type, warmup_steps, max_steps,
            num_train_epochs, per_device_train_batch_size, gradient_accumulation_steps,
            group_by_length, max_length, seed, cpu_threads, use_unsloth.
        Routing: routing, router_max_false_accept, router_max_near_miss_accept,
            router_lesson_weight.
        Gates: answer_f1_threshold, fix_rate_min, generalisation_min,
            max_perplexity_rise_pct, probe_f1_min, locality_min, locality_f1_threshold,
            max_degenerate_answers, gate_max_new_tokens.
    """

    model_config = SettingsConfigDict(
        env_prefix="OURO_TRAIN_", extra="forbid", validate_default=True
    )
    owns_env_prefix: ClassVar[bool] = True
    """No other program reads OURO_TRAIN_*: a variable naming no field is an error."""
    _recipe: str = PrivateAttr(GENERIC_RECIPE)

    @property
    def recipe(self) -> str:
        """Which recipe file this config came from ('defaults' when none)."""
        return self._recipe

    # -- registry ----------------------------------------------------------------------
    experiment_name: str = Field(
        "ouro-train", description="MLflow experiment holding one run per cycle."
    )
    auto_promote: bool = Field(
        False, description="Also move alias 'production' to a version that passed the gates."
    )
    canary: bool = Field(
        False,
        description="Start a canary with a shared version that passed the gates: alias "
        "'canary' answers a share of 'ouro' traffic until users' signals promote or roll it "
        "back (ouro.rollout; Serve's OURO_CANARY_* settings). --auto-promote wins.",
    )
    notify_url: str | None = Field(
        None,
        description="Serve's base URL: after moving 'production' or starting a canary, ask it to re-read the "
        "registry now (POST /admin/registry/refresh with the admin key, OURO_ADMIN_API_KEY).",
    )

    # -- data ------------------------------------------------------------------------
    replay_source: str = Field(
        CHATTERBOT_SOURCE,
        description="General conversations mixed in so the bot does not forget: "
        "'chatterbot' (the corpus shipped in a package) or a chat JSONL file "
        "written by `python -m data build`.",
    )
    replay_answers: Literal["self", "source"] = Field(
        SELF_REPLAY,
        description="'self': replay the base model's own greedy answers to the replay "
        "source's first user turns (generated once per base model, cached), which "
        "keeps unrelated answers as they were; 'source': replay the source's "
        "conversations as written (right for ouro-tiny, which memorised them).",
    )
    replay_max_new_tokens: int = Field(
        256,
        gt=0,
        description="Longest self-distilled replay answer; answers the base model has not "
        "finished by then are dropped. smollm2-135m is wordy: with 64 tokens it "
        "finished 4 of 16 chatterbot prompts.",
    )
    replay_size: int = Field(
        16,
        ge=0,
        description="Replay conversations sampled per cycle (0: none). A routed recipe needs "
        "none (docs/routing.md); 16 self-distilled answers for an unrouted one.",
    )
    correction_share: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="Share of the training rows that are corrections: correction rows "
        "are repeated to reach it, so a large replay sample (seen about once, "
        "which keeps it from being memorised) does not drown them.",
    )
    held_out_share: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Share of corrections kept out of training to measure "
        "generalisation (those are not learned this cycle).",
    )
    regression_source: str = Field(
        CHATTERBOT_SOURCE,
        description="Held-out conversations for the perplexity gate: 'chatterbot' or a "
        "chat JSONL file. Never overlaps the replay sample when both are the same.",
    )
    regression_size: int = Field(
        16,
        ge=0,
        description="Conversations in the regression (perplexity) set.",
    )
    probe_source: str | None = Field(
        None,
        description="Probe prompts whose answers must stay close to the baseline's: a "
        "text file (one prompt a line) or a chat JSONL. Default: the first user "
        "turn of each regression conversation.",
    )
    probe_size: int = Field(16, ge=0, description="Probe prompts used.")
    min_corrections: int = Field(
        1,
        ge=1,
        description="Fewest new corrections that start a training cycle.",
    )

    # -- LoRA ------------------------------------------------------------------------
    lora_r: int = Field(16, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(32, gt=0, description="LoRA alpha (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout.")
    lora_target_modules: CommaList = Field(
        min_length=1,
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        description="Modules that get LoRA weights (Llama names).",
    )
    lora_layers: int | None = Field(
        None,
        gt=0,
        description="LoRA on the top N decoder layers only (unset: every layer). The backward "
        "pass then stops at the lowest of them (cheaper per step), and the lower layers' "
        "features stay as they were.",
    )

    # -- training --------------------------------------------------------------------
    learning_rate: float = Field(
        2e-3,
        gt=0,
        description="Peak learning rate: 5e-3 in smollm2-135m's routed recipe, 4e-3 for "
        "ouro-tiny, ~2e-4 for a 3B model (train_job/configs/).",
    )
    lr_scheduler_type: str = Field("linear", description="LR schedule.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    max_steps: int = Field(
        0,
        description="Optimizer steps; 0 or less: use num_train_epochs.",
    )
    num_train_epochs: float = Field(3.0, description="Epochs when max_steps <= 0.")
    per_device_train_batch_size: int = Field(4, gt=0, description="Batch size.")
    gradient_accumulation_steps: int = Field(
        1,
        gt=0,
        description="Batches accumulated per optimizer step.",
    )
    group_by_length: bool = Field(
        True,
        description="Batch rows of about one length (less padding: a short correction "
        "padded to a long self-replay answer costs that answer's compute); false: "
        "random batches.",
    )
    max_length: int = Field(
        512,
        ge=16,
        description="Longest training example in tokens; longer conversations lose "
        "their oldest turns first, as at serving time.",
    )
    seed: int = Field(
        0,
        description="Seed for sampling, the split, LoRA init and training.",
    )
    cpu_threads: int = Field(
        1,
        ge=0,
        description="torch CPU threads (0: torch's default, one per core). One is "
        "fastest for the embedded model when Serve or anything else shares the "
        "cores: 20 corrections trained in 23 s on 1 thread, 228 s on 2 threads "
        "of a busy 2-core machine.",
    )
    use_unsloth: bool = Field(
        True,
        description="On CUDA, train with Unsloth's FastLanguageModel (4-bit) when it is "
        "installed and its declared requirements are met (the training image); plain "
        "PEFT otherwise and always on CPU.",
    )

    # -- routing ---------------------------------------------------------------------
    routing: bool = Field(
        True,
        description="Store a correction index with the version, so Serve answers with its "
        "adapter only the requests the router matches to a learned correction, each as "
        "that correction's question (ouro.routing), and gate through the router. False: "
        "an unrouted adapter that answers everything.",
    )
    router_max_false_accept: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Most share of unrelated prompts (the replay pool's first user turns "
        "and the calibration's own questions) the fitted routing boundary may send to the "
        "version's corrections; each is answered as the correction it matched. 0.01 is "
        "the loop's unrelated-locality target (99% unchanged) spent on the router.",
    )
    router_max_near_miss_accept: float = Field(
        0.10,
        ge=0.0,
        le=1.0,
        description="Most share of the calibration's near-miss pairs (same-shaped, "
        "different questions) the fitted routing boundary may accept; within it the "
        "boundary reaching the most paraphrases is taken. 0.10 is the loop's near-miss "
        "locality target (90% unchanged) spent on the router alone.",
    )
    router_lesson_weight: float = Field(
        3.0,
        ge=1.0,
        description="How many calibration pairs one lesson from users counts for: a "
        "paraphrase the router missed or a different question it matched, as their "
        "corrections showed (train_job.routed.learn). Above 1: users' own wordings say "
        "more about what they ask than the written pairs do.",
    )

    # -- gates -----------------------------------------------------------------------
    answer_f1_threshold: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="BERTScore F1 (offline all-MiniLM-L6-v2, no rescaling) at or above "
        "which an answer counts as matching its correction.",
    )
    fix_rate_min: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="Least share of trained corrections the new adapter must reproduce.",
    )
    generalisation_min: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Least fix rate on the held-out corrections; unset: reported only.",
    )
    max_perplexity_rise_pct: float = Field(
        50.0,
        ge=0,
        description="Most the assistant-token perplexity on the regression set may rise "
        "over the baseline (production, or the base model), in percent.",
    )
    probe_f1_min: float = Field(
        0.6,
        ge=0.0,
        le=1.0,
        description="Least mean BERTScore F1 between the new and the baseline answers "
        "to the probe prompts.",
    )
    locality_min: float | None = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="Least share of probe prompts whose answer, "
        "through the router, stays as production's (token F1 >= locality_f1_threshold); "
        "unset: reported only.",
    )
    locality_f1_threshold: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="Token F1 at or above which an answer counts as unchanged.",
    )
    max_degenerate_answers: int = Field(
        0,
        ge=0,
        description="Most answers (to the corrections and the probes) that fall into a loop "
        "('Uh... Uh... Uh...', see ouro.scoring.repeats_a_phrase) beyond the baseline's "
        "own count on the same prompts.",
    )
    gate_max_new_tokens: int = Field(
        64,
        gt=0,
        description="Most tokens generated per gate answer.",
    )

    @model_validator(mode="after")
    def _has_a_length(self) -> TrainJobConfig:
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("num_train_epochs must be > 0 when max_steps is not set")
        return self

    def to_params(self) -> dict[str, str]:
        """Flat string view for MLflow params (with the recipe it came from)."""
        params = {
            name: ",".join(value) if isinstance(value, list) else str(value)
            for name, value in self.model_dump().items()
            if value is not None
        }
        return {**params, "recipe": self.recipe}

    def from_recipe(self, recipe: Path | None) -> TrainJobConfig:
        """This config, noted as coming from ``recipe``."""
        self._recipe = recipe.name if recipe is not None else GENERIC_RECIPE
        return self


def recipe_for(base_model: str) -> Path:
    """The recipe that trains ``base_model`` when no ``--config`` names one (logged, with why).

    An embedded model's own recipe; a recipe made for that Hub id
    (``meta-llama/Llama-3.2-3B-Instruct``: ``gpu-llama-3b.yaml``); else, for any other Hub id
    or path, ``gpu-generic.yaml``.
    """
    if base_model in EMBEDDED_RECIPES:
        recipe, why = EMBEDDED_RECIPES[base_model], "the embedded model's own recipe"
    elif base_model.lower() in HUB_RECIPES:
        recipe, why = HUB_RECIPES[base_model.lower()], "the recipe made for this model"
    else:
        recipe = GENERIC_GPU_RECIPE
        why = "no recipe is made for this model: the generic GPU recipe; --config picks another"
    logger.info("training recipe for base model %s: %s (%s)", base_model, recipe.name, why)
    return recipe


def check_recipe_matches(recipe: Path, recipe_base_model: str | None, base_model: str) -> None:
    """Warn when an explicit recipe was made for another base model than the one trained."""
    if recipe_base_model is not None and recipe_base_model != base_model:
        logger.warning(
            "the recipe %s was made for base model %s, but this cycle trains %s: its "
            "learning rate, layers and gates may not suit it",
            recipe,
            recipe_base_model,
            base_model,
        )
