"""Canary rollout: a new version answers a sticky share of the traffic asking for ``ouro``,
and what users do with its answers promotes it or rolls it back.

The parts, each usable without Ray:

- **Assignment** (:func:`serves_canary`): a conversation goes to the canary when a hash
  of (canary version, API key name, ``user`` field, first user turn) falls below the
  canary's share. Every replica computes the same answer with no shared state, a
  conversation keeps its version while the share holds, and a step up only moves
  production conversations over (a canary conversation stays on the canary). A client
  that echoes an earlier answer's completion id (``x-ouro-conversation``) keeps the
  conversation with the side that answered it through step-ups too: the id names that
  side (:func:`assigned_completion_id`). Each canary version draws its own slice of
  users.
- **State** (:class:`CanaryState`): the canary's version, step, share, pause flag and the
  signals counted so far for both sides, kept as one registered-model tag next to alias
  ``canary``, so every replica and ``python -m train_job canary`` read the same state, and
  the controller survives restarts.
- **Judgement** (:func:`judge`): Flagger's rule first (the canary's error rate or p99 time
  to first token beyond their thresholds rolls it back at once), then Wald's sequential
  probability ratio test on the rate of bad outcomes (a correction or a thumbs-down per
  answered request), canary against production over the same window: it rolls back as
  soon as the evidence of harm is strong (once ``health_min_requests`` are in), and
  promotes only once the canary has answered ``min_requests``; otherwise it continues. A
  maximum duration ends it with a configured default.
- **Actions** (:class:`Rollout`): start, promote, roll back, pause and resume on the
  registry. Every ending is written on the version as a tag (:data:`TAG_ROLLOUT`: who or
  what decided, why, the figures and the test's statistic), so an operator moving
  aliases by hand in the MLflow UI is understood too: alias ``canary`` gone means the
  canary ended; ``production`` moved onto it means it was promoted.

The statistic, in plain words: of all bad outcomes seen on both sides, the canary's
share is compared with the share its traffic alone would explain. Given ``n`` bad
outcomes, the canary's count is binomial with probability ``rr * Nc / (rr * Nc + Np)``
when its rate is ``rr`` times production's (``Nc``, ``Np``: requests answered). The log
likelihood ratio of ``rr = relative_risk`` against ``rr = 1`` crossing
``log((1 - beta) / alpha)`` rolls back; crossing ``log(beta / (1 - alpha))`` promotes.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ouro.names import ALIAS_CANARY, ALIAS_PRODUCTION, BASE_MODEL_NAME, version_label
from ouro.registry import TAG_ROLLOUT_DECISION, AdapterRegistry, RegistryError, RegistrySnapshot
from ouro.settings import OuroSettings

logger = logging.getLogger(__name__)

CANARY_STATE_TAG = "ouro.canary"
"""Registered-model tag: the running canary's :class:`CanaryState` as JSON."""
TAG_ROLLOUT = "ouro.rollout"
"""Version tag: how the version's canary ended (:class:`RolloutRecord` as JSON; the bare
decision is ``registry.TAG_ROLLOUT_DECISION``, which the registry reads)."""

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
"""Upper bounds (seconds) of the time-to-first-token histogram the signals carry."""


TTFT_FLOOR_S = 0.25
"""Production's p99 time to first token is taken as at least this in the latency check: a
quarter second is never slow, and at that scale one cold adapter load moves a p99."""


class Decision(enum.StrEnum):
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    CONTINUE = "continue"


# -- signals ------------------------------------------------------------------------------


class ArmCounts(BaseModel):
    """What one side (canary or production) was seen to do: cumulative counts."""

    model_config = ConfigDict(frozen=True)

    requests: int = Field(0, description="Chat completions answered.")
    errors: int = Field(0, description="Of those, failed by the server (5xx or mid-stream).")
    corrections: int = Field(0, description="Corrections of its answers.")
    thumbs_up: int = Field(0, description="Ratings up on its answers.")
    thumbs_down: int = Field(0, description="Ratings down on its answers.")
    ttft: tuple[int, ...] = Field(
        (0,) * (len(TTFT_BUCKETS) + 1),
        description="Answers per time-to-first-token bucket (TTFT_BUCKETS, then +Inf).",
    )

    @property
    def bad(self) -> int:
        """Bad outcomes: corrections and thumbs-down."""
        return self.corrections + self.thumbs_down

    def __add__(self, other: ArmCounts) -> ArmCounts:
        return ArmCounts(
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            corrections=self.corrections + other.corrections,
            thumbs_up=self.thumbs_up + other.thumbs_up,
            thumbs_down=self.thumbs_down + other.thumbs_down,
            ttft=tuple(a + b for a, b in zip(self.ttft, other.ttft, strict=True)),
        )

    def minus(self, earlier: ArmCounts) -> ArmCounts:
        """What was counted since ``earlier``; a count that went down (the counting
        replica restarted) counts from zero, as Prometheus' ``increase`` does."""

        def since(now: int, then: int) -> int:
            return now - then if now >= then else now

        return ArmCounts(
            requests=since(self.requests, earlier.requests),
            errors=since(self.errors, earlier.errors),
            corrections=since(self.corrections, earlier.corrections),
            thumbs_up=since(self.thumbs_up, earlier.thumbs_up),
            thumbs_down=since(self.thumbs_down, earlier.thumbs_down),
            ttft=tuple(since(a, b) for a, b in zip(self.ttft, earlier.ttft, strict=True)),
        )

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def bad_rate(self) -> float:
        return self.bad / self.requests if self.requests else 0.0

    def ttft_quantile(self, q: float) -> float | None:
        """The ``q`` quantile of the time to first token, estimated as Prometheus'
        ``histogram_quantile`` does: linearly within the bucket it falls in (from 0 for the
        first), the last finite bound when it falls beyond it; None: no answer counted.
        So a few slow answers move the estimate by their share of the bucket, not to its
        upper bound."""
        total = sum(self.ttft)
        if not total:
            return None
        rank = q * total
        below, lower = 0, 0.0
        for upper, count in zip(TTFT_BUCKETS, self.ttft, strict=False):
            if below + count >= rank and count:
                return lower + (upper - lower) * (rank - below) / count
            below, lower = below + count, upper
        return TTFT_BUCKETS[-1]

    @staticmethod
    def ttft_bucket(seconds: float) -> int:
        """The index of the bucket ``seconds`` falls in."""
        return bisect.bisect_left(TTFT_BUCKETS, seconds)


class CanaryState(BaseModel):
    """The running canary, as kept in the registered-model tag :data:`CANARY_STATE_TAG`."""

    model_config = ConfigDict(frozen=True)

    version: int
    production_version: int | None = Field(
        description="What 'ouro' answers with besides the canary (None: the base model)."
    )
    started_at: float = Field(description="Unix seconds.")
    step: int = Field(0, description="Index into the policy's steps.")
    share: float = Field(description="Percent of 'ouro' traffic the canary answers now.")
    paused: bool = Field(False, description="An operator paused it: no step, no decision.")
    updated_at: float = Field(description="When the controller last evaluated it.")
    canary: ArmCounts = Field(default_factory=ArmCounts)
    production: ArmCounts = Field(default_factory=ArmCounts)
    statistic: float = Field(0.0, description="The sequential test's log likelihood ratio.")

    def encode(self) -> str:
        return self.model_dump_json()

    @classmethod
    def decode(cls, text: str | None) -> CanaryState | None:
        if not text:
            return None
        try:
            return cls.model_validate_json(text)
        except ValidationError:
            logger.warning("ignoring an unreadable %s tag", CANARY_STATE_TAG)
            return None


def canary_state(snapshot: RegistrySnapshot) -> CanaryState | None:
    """The running canary of a snapshot: alias ``canary`` and its state tag, when they agree.

    Alias ``canary`` without a state for that version (moved by hand in the MLflow UI)
    reads as a canary starting now at the first step's share; the controller writes its
    state at its next evaluation.
    """
    version = snapshot.aliases.get(ALIAS_CANARY)
    if version is None or version == snapshot.production:
        return None
    state = CanaryState.decode(snapshot.model_tags.get(CANARY_STATE_TAG))
    if state is not None and state.version == version:
        return state
    return None


# -- assignment ---------------------------------------------------------------------------


def canary_bucket(version: int, key_name: str | None, user: str | None, first_turn: str) -> float:
    """Where a conversation falls in [0, 1) for canary ``version`` (stable everywhere)."""
    material = "\x1f".join((str(version), key_name or "", user or "", first_turn))
    digest = hashlib.blake2b(material.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def first_user_turn(messages: Sequence[Mapping[str, object]]) -> str:
    """The conversation's first user turn (its identity across turns); '' when none."""
    for message in messages:
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content, sort_keys=True)
    return ""


def serves_canary(
    state: CanaryState,
    key_name: str | None,
    user: str | None,
    first_turn: str,
    earlier: str | None = None,
) -> bool:
    """Whether the canary answers this conversation.

    ``earlier``: the version an earlier answer of the conversation was assigned to
    (:func:`assigned_version` of the id the client echoed). The conversation stays on
    that side whatever the share is now: on this canary if it was this canary, on
    production otherwise (a production answer, or a canary that has since ended). None:
    the hash decides at the current share."""
    if earlier is not None:
        return earlier == version_label(state.version)
    return canary_bucket(state.version, key_name, user, first_turn) * 100 < state.share


_COMPLETION_ID = re.compile(r"^chatcmpl-[0-9a-f]{32}(?:\.(v[1-9][0-9]*|base))?$")


def assigned_completion_id(base_id: str, version: str) -> str:
    """A completion id that carries the version the rollout assigned the answer to
    (``chatcmpl-<hex>.v8``, ``chatcmpl-<hex>.base``), so feedback that cites the id is
    counted for that side even when the answer came from the version's parent."""
    suffix = "base" if version == BASE_MODEL_NAME else version.rpartition("@")[2]
    return f"{base_id}.{suffix}"


def assigned_version(completion_id: str | None) -> str | None:
    """The version label an :func:`assigned_completion_id` names (None: no assignment)."""
    return _assigned(_COMPLETION_ID.match(completion_id or ""))


def echoed_assignment(completion_id: str) -> str | None:
    """:func:`assigned_version` of a completion id a client sent back; ValueError when the
    text is not a completion id at all (a typo should not silently re-split the
    conversation)."""
    match = _COMPLETION_ID.match(completion_id)
    if match is None:
        raise ValueError(f"not a completion id: {completion_id[:80]!r}")
    return _assigned(match)


def _assigned(match: re.Match | None) -> str | None:
    """The version label a completion id's suffix names (None: no suffix, or no id)."""
    suffix = match.group(1) if match is not None else None
    if suffix is None:
        return None
    return BASE_MODEL_NAME if suffix == "base" else version_label(int(suffix[1:]))


# -- judgement ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CanaryPolicy:
    """The rules a canary is judged by: ``OuroSettings.canary_<field>``, whose defaults and
    descriptions are the only ones (each field here defaults to its setting's default)."""

    steps: tuple[float, ...] = field(default_factory=lambda: tuple(_setting_default("steps")))
    interval_s: float = field(default_factory=lambda: _setting_default("interval_s"))
    min_requests: int = field(default_factory=lambda: _setting_default("min_requests"))
    health_min_requests: int = field(
        default_factory=lambda: _setting_default("health_min_requests")
    )
    max_error_rate: float = field(default_factory=lambda: _setting_default("max_error_rate"))
    max_ttft_ratio: float = field(default_factory=lambda: _setting_default("max_ttft_ratio"))
    relative_risk: float = field(default_factory=lambda: _setting_default("relative_risk"))
    alpha: float = field(default_factory=lambda: _setting_default("alpha"))
    beta: float = field(default_factory=lambda: _setting_default("beta"))
    max_duration_s: float = field(default_factory=lambda: _setting_default("max_duration_s"))
    default_decision: Decision = field(
        default_factory=lambda: Decision(_setting_default("default_decision"))
    )

    @classmethod
    def from_settings(cls, settings: OuroSettings) -> CanaryPolicy:
        values = {f.name: getattr(settings, f"canary_{f.name}") for f in fields(cls)}
        values["steps"] = tuple(values["steps"])
        values["default_decision"] = Decision(values["default_decision"])
        return cls(**values)

    @property
    def rollback_bound(self) -> float:
        return math.log((1 - self.beta) / self.alpha)

    @property
    def promote_bound(self) -> float:
        return math.log(self.beta / (1 - self.alpha))


def _setting_default(name: str):
    return OuroSettings.model_fields[f"canary_{name}"].get_default(call_default_factory=True)


def log_likelihood_ratio(canary: ArmCounts, production: ArmCounts, relative_risk: float) -> float:
    """Evidence that the canary's bad-outcome rate is ``relative_risk`` times production's
    rather than equal to it (0 when either side answered nothing)."""
    if not canary.requests or not production.requests:
        return 0.0
    exposure = canary.requests / (canary.requests + production.requests)
    worse = (
        relative_risk * canary.requests / (relative_risk * canary.requests + production.requests)
    )
    return canary.bad * math.log(worse / exposure) + production.bad * math.log(
        (1 - worse) / (1 - exposure)
    )


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str
    statistic: float


def judge(policy: CanaryPolicy, state: CanaryState, now: float) -> Verdict:
    """What to do with the canary given the signals in ``state`` (see the module docstring)."""
    canary, production = state.canary, state.production
    statistic = log_likelihood_ratio(canary, production, policy.relative_risk)
    if state.paused:
        return Verdict(Decision.CONTINUE, "paused by an operator", statistic)
    healthy_sample = min(canary.requests, production.requests) >= policy.health_min_requests
    if healthy_sample and canary.error_rate > production.error_rate + policy.max_error_rate:
        return Verdict(
            Decision.ROLLBACK,
            f"error rate {canary.error_rate:.3f} against production's "
            f"{production.error_rate:.3f} (allowed +{policy.max_error_rate})",
            statistic,
        )
    canary_p99, production_p99 = canary.ttft_quantile(0.99), production.ttft_quantile(0.99)
    if (
        healthy_sample
        and canary_p99 is not None
        and production_p99 is not None
        and canary_p99 > policy.max_ttft_ratio * max(production_p99, TTFT_FLOOR_S)
    ):
        return Verdict(
            Decision.ROLLBACK,
            f"p99 time to first token {canary_p99:.3g}s against production's "
            f"{production_p99:.3g}s "
            f"(allowed x{policy.max_ttft_ratio})",
            statistic,
        )
    figures = (
        f"bad outcomes {canary.bad}/{canary.requests} against production's "
        f"{production.bad}/{production.requests}, log likelihood ratio {statistic:.2f}"
    )
    # Wald's test keeps its error rates whenever it stops, so strong evidence of harm rolls
    # back as soon as the health sample is there; promotion waits for min_requests.
    if canary.requests >= policy.health_min_requests and statistic >= policy.rollback_bound:
        return Verdict(Decision.ROLLBACK, f"worse than production: {figures}", statistic)
    if canary.requests >= policy.min_requests and statistic <= policy.promote_bound:
        return Verdict(Decision.PROMOTE, f"not worse than production: {figures}", statistic)
    if now - state.started_at >= policy.max_duration_s:
        return Verdict(
            policy.default_decision,
            f"undecided after {policy.max_duration_s:.0f}s, the default applies: {figures}",
            statistic,
        )
    return Verdict(Decision.CONTINUE, f"collecting: {figures}", statistic)


def next_step(policy: CanaryPolicy, state: CanaryState) -> CanaryState:
    """The state one step further (Flagger's step weights) when the current step has shown
    enough: each step waits for ``health_min_requests`` more canary answers, and for the
    evidence to lean towards "as good" (a statistic at or below 0), so that more users meet
    the canary only while nothing speaks against it. Else the same state."""
    step = state.step + 1
    if (
        step >= len(policy.steps)
        or state.paused
        or state.canary.requests < step * policy.health_min_requests
        or state.statistic > 0
    ):
        return state
    return state.model_copy(update={"step": step, "share": policy.steps[step]})


# -- the registry side ----------------------------------------------------------------------


class NoCanaryError(RegistryError):
    """An operation on the canary when none is running."""


class RolloutRecord(BaseModel):
    """How a version's canary ended, written on the version as :data:`TAG_ROLLOUT`."""

    decision: Decision
    by: str = Field(description="'controller', or the operator's command.")
    reason: str
    at: float
    statistic: float = 0.0
    canary: ArmCounts = Field(default_factory=ArmCounts)
    production: ArmCounts = Field(default_factory=ArmCounts)
    production_version: int | None = None


def rollout_record(tags: Mapping[str, str]) -> RolloutRecord | None:
    """A version's rollout record from its tags (None: it never ended a canary)."""
    text = tags.get(TAG_ROLLOUT)
    if not text:
        return None
    try:
        return RolloutRecord.model_validate_json(text)
    except ValidationError:
        logger.warning("ignoring an unreadable %s tag", TAG_ROLLOUT)
        return None


@dataclass
class Rollout:
    """Canary operations on one registered model."""

    registry: AdapterRegistry
    policy: CanaryPolicy = field(default_factory=CanaryPolicy)
    clock: Callable[[], float] = time.time

    def _now(self) -> float:
        return self.clock()

    def state(self, snapshot: RegistrySnapshot | None = None) -> CanaryState | None:
        """The running canary, with a fresh state when alias ``canary`` was set by hand."""
        snapshot = snapshot if snapshot is not None else self.registry.snapshot()
        version = snapshot.aliases.get(ALIAS_CANARY)
        if version is None:
            return None
        state = CanaryState.decode(snapshot.model_tags.get(CANARY_STATE_TAG))
        if state is None or state.version != version:
            state = self._fresh(version, snapshot.production)
        return state

    def _fresh(self, version: int, production: int | None) -> CanaryState:
        now = self._now()
        return CanaryState(
            version=version,
            production_version=production,
            started_at=now,
            share=self.policy.steps[0],
            updated_at=now,
        )

    def start(self, version: int) -> CanaryState:
        """Make ``version`` the canary (replacing any running one) at the first step."""
        production = self.registry.alias_version(ALIAS_PRODUCTION)
        state = self._fresh(version, production)
        self.save(state)
        self.registry.set_alias(ALIAS_CANARY, version)
        logger.info(
            "canary %s answers %s%% of 'ouro' against %s",
            version_label(version),
            state.share,
            version_label(production) if production else "the base model",
        )
        return state

    def save(self, state: CanaryState) -> None:
        self.registry.set_model_tag(CANARY_STATE_TAG, state.encode())

    def set_paused(self, paused: bool) -> CanaryState:
        state = self._require()
        state = state.model_copy(update={"paused": paused, "updated_at": self._now()})
        self.save(state)
        logger.info("canary %s %s", version_label(state.version), "paused" if paused else "resumed")
        return state

    def end(
        self,
        state: CanaryState,
        decision: Decision,
        *,
        by: str,
        reason: str,
        statistic: float = 0.0,
    ) -> RolloutRecord:
        """Promote (``production`` <- canary) or roll back (alias removed); either way the
        version is tagged with the decision and the figures, and alias ``canary`` removed."""
        record = RolloutRecord(
            decision=decision,
            by=by,
            reason=reason,
            at=self._now(),
            statistic=statistic,
            canary=state.canary,
            production=state.production,
            production_version=state.production_version,
        )
        self.registry.set_version_tag(state.version, TAG_ROLLOUT, record.model_dump_json())
        self.registry.set_version_tag(state.version, TAG_ROLLOUT_DECISION, decision.value)
        if decision is Decision.PROMOTE:
            self.registry.set_alias(ALIAS_PRODUCTION, state.version)
        self.registry.delete_alias(ALIAS_CANARY)
        self.registry.delete_model_tag(CANARY_STATE_TAG)
        logger.info("canary %s: %s by %s (%s)", version_label(state.version), decision, by, reason)
        return record

    def _require(self) -> CanaryState:
        state = self.state()
        if state is None:
            raise NoCanaryError(f"{self.registry.model_name!r} has no canary running")
        return state

    def promote(self, by: str, reason: str = "promoted by an operator") -> RolloutRecord:
        state = self._require()
        return self.end(state, Decision.PROMOTE, by=by, reason=reason, statistic=state.statistic)

    def abort(self, by: str, reason: str = "aborted by an operator") -> RolloutRecord:
        state = self._require()
        return self.end(state, Decision.ROLLBACK, by=by, reason=reason, statistic=state.statistic)


def format_canary(state: CanaryState | None, policy: CanaryPolicy) -> str:
    """``python -m train_job canary status`` for people."""
    if state is None:
        return "no canary running"
    verdict = judge(policy, state, time.time())
    production = production_arm_label(state.production_version)
    lines = [
        f"canary {version_label(state.version)} against {production}: "
        f"{state.share:g}% of 'ouro' traffic (step {state.step + 1} of {len(policy.steps)})"
        + (", PAUSED" if state.paused else ""),
        f"running for {time.time() - state.started_at:.0f}s, last evaluated "
        f"{time.time() - state.updated_at:.0f}s ago",
        f"{'':12}{'requests':>9}{'errors':>8}{'corrected':>10}{'up':>6}{'down':>6}"
        f"{'bad rate':>10}{'p99 TTFT':>10}",
    ]
    for name, arm in (("canary", state.canary), ("production", state.production)):
        p99 = arm.ttft_quantile(0.99)
        lines.append(
            f"{name:12}{arm.requests:>9}{arm.errors:>8}{arm.corrections:>10}"
            f"{arm.thumbs_up:>6}{arm.thumbs_down:>6}{arm.bad_rate:>10.3f}"
            f"{'-' if p99 is None else f'{p99:.3g}s':>10}"
        )
    lines.append(
        f"log likelihood ratio {state.statistic:.2f} (roll back at >= "
        f"{policy.rollback_bound:.2f}, promote at <= {policy.promote_bound:.2f} once the "
        f"canary has {policy.min_requests} requests)"
    )
    lines.append(f"now: {verdict.decision} ({verdict.reason})")
    return "\n".join(lines)


# -- the controller -------------------------------------------------------------------------

CounterKey = tuple[str, str]
"""(replica id, version label) of one replica's cumulative counts for one version."""


class CanaryController:
    """Evaluates the running canary every ``policy.interval_s`` and acts on the verdict.

    It is fed each replica's cumulative counts per version (Serve's metrics, labelled by
    the version the split assigned) and turns them into counts since its first look at
    the canary (at most one interval after the canary started): a count that goes down
    (a replica restarted) counts from zero, and a controller that restarts continues from
    the counts saved in the canary's state, losing at most one interval. An operator's pause,
    promotion or abort is read from the registry at every evaluation, so it wins.
    """

    def __init__(self, rollout: Rollout) -> None:
        self.rollout = rollout
        self._seen: dict[CounterKey, ArmCounts] = {}
        self._canary: tuple[int, float] | None = None
        """(version, start) of the canary being counted."""

    def evaluate(self, counts: Mapping[CounterKey, ArmCounts]) -> Verdict | None:
        """One evaluation; None when no canary runs."""
        rollout = self.rollout
        snapshot = rollout.registry.snapshot()
        if (
            ALIAS_CANARY in snapshot.aliases
            and snapshot.aliases[ALIAS_CANARY] == snapshot.production
        ):
            # Production was moved onto the canary by hand (the MLflow UI): it is promoted.
            state = rollout.state(snapshot) or rollout._fresh(snapshot.production, None)
            rollout.end(
                state, Decision.PROMOTE, by="operator", reason="production moved to it by hand"
            )
            self._canary = None
            return Verdict(Decision.PROMOTE, "production moved to it by hand", state.statistic)
        state = rollout.state(snapshot)
        if state is None:
            self._canary = None
            return None
        canary_label = version_label(state.version)
        if (state.version, state.started_at) != self._canary:
            # First look at this canary: the replicas' counters so far (production's
            # traffic, or an earlier canary of the same version) are not its window, so
            # counting starts now, at most one interval after the canary did.
            self._seen = dict(counts)
            self._canary = (state.version, state.started_at)
        # What 'ouro' answers with now (an operator may have moved production meanwhile).
        production_label = production_arm_label(snapshot.production)
        canary, production = ArmCounts(), ArmCounts()
        for key, value in counts.items():
            if key[1] not in (canary_label, production_label):
                continue
            delta = value.minus(self._seen.get(key, ArmCounts()))
            if key[1] == canary_label:
                canary += delta
            else:
                production += delta
        self._seen = dict(counts)
        now = rollout._now()
        state = state.model_copy(
            update={
                "canary": state.canary + canary,
                "production": state.production + production,
                "production_version": snapshot.production,
                "updated_at": now,
            }
        )
        verdict = judge(rollout.policy, state, now)
        state = state.model_copy(update={"statistic": verdict.statistic})
        if verdict.decision is Decision.CONTINUE:
            state = next_step(rollout.policy, state)
            rollout.save(state)
        else:
            rollout.end(
                state,
                verdict.decision,
                by="controller",
                reason=verdict.reason,
                statistic=verdict.statistic,
            )
            self._canary = None
        logger.info("canary %s: %s (%s)", canary_label, verdict.decision, verdict.reason)
        return verdict


def production_arm_label(version: int | None) -> str:
    """The label production's side is counted under: its version, or the base model."""
    return version_label(version) if version is not None else BASE_MODEL_NAME
