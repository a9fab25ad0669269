"""What goes into the engine and what comes out: requests, sampling settings, deltas, errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from ouro.errors import OuroError

FINISH_STOP = "stop"
FINISH_LENGTH = "length"

SEED_RANGE = (-(2**63), 2**64)
"""Seeds ``torch.Generator.manual_seed`` accepts: [low, high)."""
MIN_TEMPERATURE = 1e-2
"""Positive temperatures below this are raised to it, as vLLM does: below it a draw is
greedy in all but name, and logits divided by less overflow float32. Only 0 decodes
greedily."""
MAX_TOP_LOGPROBS = 20
"""Most alternatives a token's logprobs list (OpenAI's bound)."""
MAX_CHOICES = 8
"""Most choices (``n``) one request may ask for: each is a row of the batch."""
PENALTY_RANGE = (-2.0, 2.0)
"""presence_penalty and frequency_penalty bounds (OpenAI's)."""
LOGIT_BIAS_RANGE = (-100.0, 100.0)
"""logit_bias value bounds (OpenAI's)."""


class AdapterError(OuroError):
    """A LoRA adapter could not be used."""


class AdapterNotFoundError(AdapterError):
    """No adapter at that path, or no adapter loaded under that name."""


class AdapterIncompatibleError(AdapterError):
    """The adapter does not fit the base model (other architecture, shapes or modules)."""


class InvalidRequestError(OuroError, ValueError):
    """A generation request that cannot be served as asked (``param``: the setting at fault)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class EngineOverloadedError(OuroError):
    """The engine's waiting queue is full: try again later."""


class EngineStoppedError(OuroError):
    """The engine is not running (never started, shut down, or its loop died)."""


class RequestAbortedError(OuroError):
    """The request was aborted before it finished (client gone, or its adapter removed)."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded."""

    max_tokens: int = 256
    """Most tokens to generate."""
    temperature: float = 0.0
    """0 means greedy (deterministic); higher values sample more freely. Positive values
    below MIN_TEMPERATURE act as MIN_TEMPERATURE."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    stop: tuple[str, ...] = ()
    """Strings that end the answer (not included in it)."""
    seed: int | None = None
    """Seeds this request's sampling; None draws a fresh seed."""
    n: int = 1
    """Choices to generate, each a row of the batch (see ``choice``)."""
    logprobs: bool = False
    """Report each generated token's logprob (see :mod:`ouro.engine.sampling` for which
    distribution)."""
    top_logprobs: int = 0
    """With ``logprobs``: also this many most likely tokens at each position."""
    presence_penalty: float = 0.0
    """Subtracted once from the logit of every token already generated (OpenAI's)."""
    frequency_penalty: float = 0.0
    """Subtracted from a token's logit once per time it was already generated (OpenAI's)."""
    logit_bias: Mapping[int, float] = field(default_factory=dict, hash=False)
    """Token id -> added to its logit at every step (+100 forces it, -100 bans it)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        if 0 < self.temperature < MIN_TEMPERATURE:
            object.__setattr__(self, "temperature", MIN_TEMPERATURE)
        # A copy keyed by int: the caller's mapping may change, and JSON keys are strings.
        object.__setattr__(
            self, "logit_bias", {int(token): float(bias) for token, bias in self.logit_bias.items()}
        )
        if not 1 <= self.n <= MAX_CHOICES:
            raise InvalidRequestError(f"n must be in [1, {MAX_CHOICES}]", "n")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequestError(
                f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]", "top_logprobs"
            )
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequestError("top_logprobs needs logprobs", "top_logprobs")
        for name in ("presence_penalty", "frequency_penalty"):
            if not PENALTY_RANGE[0] <= getattr(self, name) <= PENALTY_RANGE[1]:
                raise InvalidRequestError(f"{name} must be in {list(PENALTY_RANGE)}", name)
        if any(
            not LOGIT_BIAS_RANGE[0] <= bias <= LOGIT_BIAS_RANGE[1]
            for bias in self.logit_bias.values()
        ):
            raise InvalidRequestError(
                f"logit_bias values must be in {list(LOGIT_BIAS_RANGE)}", "logit_bias"
            )
        if self.max_tokens < 1:
            raise InvalidRequestError("max_tokens must be at least 1")
        if not self.temperature >= 0:  # also catches NaN
            raise InvalidRequestError("temperature must not be negative")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError("top_p must be in (0, 1]")
        if any(not stop for stop in self.stop):
            raise InvalidRequestError("stop strings must not be empty")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed < SEED_RANGE[1]:
            raise InvalidRequestError(f"seed must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def choice(self, index: int) -> SamplingParams:
        """The settings of choice ``index`` of ``n``: one choice, seeded ``seed + index``
        (wrapped into the seed range) when a seed is given."""
        seed = self.seed
        if seed is not None:
            low, high = SEED_RANGE
            seed = (seed + index - low) % (high - low) + low
        return replace(self, n=1, seed=seed)


class TokenConstraint(Protocol):
    """One row's structured-output state (a grammar matcher), advanced token by token.

    The engine calls ``mask_logits`` before it picks the row's next token, then
    ``accept`` with the token it picked; once ``finished`` the row ends ('stop').
    """

    def mask_logits(self, logits: torch.Tensor) -> None:
        """Set the logits of tokens the grammar forbids next to -inf (one vocab row, in place)."""

    def accept(self, token: int) -> None:
        """Advance past ``token`` (one ``mask_logits`` allowed)."""

    @property
    def finished(self) -> bool:
        """The output is complete: nothing more may follow."""


@dataclass
class GenerationRequest:
    """One conversation to answer."""

    messages: list[dict]
    """OpenAI-style messages: [{"role": ..., "content": ...}, ...]."""
    params: SamplingParams = field(default_factory=SamplingParams)
    """Decoding settings."""
    adapter: str | None = None
    """Name of a loaded adapter, or None for the base model."""
    request_id: str = ""
    """The client's id for the request (``x-request-id``), for logs only: the engine never
    acts on it, since any client can send any id (``abort`` takes the engine's own id)."""
    constraint: Callable[[], TokenConstraint] | None = None
    """Makes a fresh constraint for the answer (structured output); None: free text."""


@dataclass(frozen=True)
class GenerationOutput:
    """A finished answer (one choice)."""

    text: str
    """The generated text (stop string and end-of-turn token excluded)."""
    finish_reason: str
    """'stop' (end of turn or a stop string) or 'length' (max_tokens or the context)."""
    prompt_tokens: int
    """Tokens in the prompt after formatting and truncation."""
    completion_tokens: int
    """Tokens generated."""
    index: int = 0
    """Which choice of the request's ``n``."""
    logprobs: tuple[PositionLogprobs, ...] = ()
    """With ``logprobs``: one entry per generated token."""


@dataclass(frozen=True)
class TokenLogprob:
    """One token and its logprob (see :mod:`ouro.engine.sampling` for the distribution)."""

    token_id: int
    token: str
    """The token's text as decoded alone (may hold U+FFFD for part of a character)."""
    token_bytes: bytes
    """The token's exact bytes (a byte-level token's part of a UTF-8 character included)."""
    logprob: float


@dataclass(frozen=True)
class PositionLogprobs:
    """What ``logprobs`` reports for one generated token."""

    chosen: TokenLogprob
    """The generated token."""
    top: tuple[TokenLogprob, ...]
    """The ``top_logprobs`` most likely tokens at that position, most likely first."""


@dataclass(frozen=True)
class StreamDelta:
    """What one or more decoding steps added to one request."""

    text: str
    """New text since the previous delta (may be empty while text is held back)."""
    finish_reason: str | None
    """Set on the request's last delta."""
    prompt_tokens: int
    """Tokens in the prompt."""
    completion_tokens: int
    """Tokens generated so far."""
    first_token_at: float | None = None
    """``time.monotonic()`` when the request's first token was sampled."""
    index: int = 0
    """Which choice (of the request's ``n``) this delta belongs to."""
    logprobs: tuple[PositionLogprobs, ...] = ()
    """With ``logprobs``: one entry per token this delta covers (also tokens whose text
    is held back or not shown, e.g. the end-of-turn token)."""


@dataclass(frozen=True)
class EngineLimits:
    """The scheduler's budgets (vLLM's max_num_seqs, KV blocks and max_num_batched_tokens)."""

    max_running_requests: int = 16
    """Most requests decoding at once (the batch)."""
    max_waiting_requests: int = 64
    """Most requests waiting for a place; past that ``EngineOverloadedError``."""
    max_kv_cache_tokens: int = 16384
    """KV-cache tokens the running requests may reserve (prompt + max_tokens each)."""
    max_prefill_tokens_per_step: int = 256
    """Prompt tokens prefilled per step; longer prompts are prefilled over several steps
    (chunked prefill) so the rows already decoding keep moving."""

    def __post_init__(self) -> None:
        for name in (
            "max_running_requests",
            "max_waiting_requests",
            "max_kv_cache_tokens",
            "max_prefill_tokens_per_step",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


STEP_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's state and counters (exported as Prometheus metrics)."""

    running_requests: int
    """Requests in the decode batch or being prefilled."""
    waiting_requests: int
    """Requests waiting for a place."""
    kv_cache_usage: float
    """Reserved KV-cache tokens / ``max_kv_cache_tokens`` (0..1)."""
    aborted_requests: int
    """Requests aborted since start (cumulative)."""
    failed_requests: int
    """Requests that failed inside the engine since start (cumulative)."""
    finished_requests: int
    """Requests that finished normally since start (cumulative)."""
    steps: int
    """Steps run since start."""
    step_seconds_sum: float
    step_seconds_buckets: tuple[int, ...]
    """Cumulative counts of steps at most each ``STEP_SECONDS_BUCKETS`` bound (then +Inf)."""
    batch_size_sum: int
    batch_size_buckets: tuple[int, ...]
    """Cumulative counts of steps whose batch size is at most each ``BATCH_SIZE_BUCKETS``
    bound (then +Inf)."""
