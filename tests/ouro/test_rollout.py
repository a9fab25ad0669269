"""Canary rollout: the sticky split, the sequential test on known inputs, and the
controller acting on a real MLflow registry (a local store)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from ouro.names import ALIAS_CANARY, ALIAS_PRODUCTION
from ouro.registry import TAG_WATERMARK, AdapterRegistry
from ouro.rollout import (
    CANARY_STATE_TAG,
    TTFT_BUCKETS,
    ArmCounts,
    CanaryController,
    CanaryPolicy,
    CanaryState,
    Decision,
    NoCanaryError,
    Rollout,
    assigned_completion_id,
    assigned_version,
    canary_bucket,
    echoed_assignment,
    first_user_turn,
    judge,
    log_likelihood_ratio,
    next_step,
    rollout_record,
    serves_canary,
)
from tests.ouro.test_registry import adapter_dir, register  # noqa: F401 - fixture

# -- assignment ----------------------------------------------------------------------------


def state(share: float, version: int = 8, **fields) -> CanaryState:
    return CanaryState(
        version=version,
        production_version=7,
        started_at=0.0,
        share=share,
        updated_at=0.0,
        **fields,
    )


def conversations(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    return [(f"key{rng.randrange(50)}", f"user{i}", f"question {rng.random()}") for i in range(n)]


def test_the_canary_answers_its_share_of_conversations_and_every_replica_agrees() -> None:
    talks = conversations(20_000)
    on_canary = [serves_canary(state(10), *talk) for talk in talks]
    assert 0.09 < sum(on_canary) / len(talks) < 0.11
    # No shared state: the same inputs give the same side, in any process.
    assert on_canary == [serves_canary(state(10), *talk) for talk in talks]
    assert canary_bucket(8, "alice", "u1", "hi") == canary_bucket(8, "alice", "u1", "hi")


def test_a_step_up_keeps_every_canary_conversation_on_the_canary() -> None:
    talks = conversations(5_000, seed=1)
    at_10 = {talk for talk in talks if serves_canary(state(10), *talk)}
    at_25 = {talk for talk in talks if serves_canary(state(25), *talk)}
    assert at_10 < at_25
    assert 0.22 < len(at_25) / len(talks) < 0.28


def test_a_conversation_that_echoes_its_side_keeps_it_through_every_step() -> None:
    talks = conversations(5_000, seed=3)
    base = "chatcmpl-" + "b" * 32
    first_side = {
        talk: "ouro@v8" if serves_canary(state(10), *talk) else "ouro@v7" for talk in talks
    }
    for share in (25, 50, 100):
        for talk, side in first_side.items():
            earlier = echoed_assignment(assigned_completion_id(base, side))
            assert serves_canary(state(share), *talk, earlier) == (side == "ouro@v8")
    # Once the canary it was on has ended (another version is the canary), it is
    # production's; an answer that was not assigned (a pinned name) leaves the hash to it.
    assert not serves_canary(state(100, version=9), "k", "u", "q", "ouro@v8")
    assert echoed_assignment(base) is None


@pytest.mark.parametrize("echoed", ["", "fb-123", "chatcmpl-" + "a" * 31, "chatcmpl-x.v8"])
def test_an_echoed_conversation_that_is_no_completion_id_is_refused(echoed: str) -> None:
    with pytest.raises(ValueError, match="not a completion id"):
        echoed_assignment(echoed)


def test_each_canary_version_draws_its_own_slice_of_users() -> None:
    talks = conversations(5_000, seed=2)
    v8 = {talk for talk in talks if serves_canary(state(10, version=8), *talk)}
    v9 = {talk for talk in talks if serves_canary(state(10, version=9), *talk)}
    assert len(v8 & v9) < 0.3 * len(v8)


def test_a_conversation_is_known_by_its_first_user_turn() -> None:
    first = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]
    later = [*first, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "?"}]
    assert first_user_turn(first) == first_user_turn(later) == "hi"
    assert first_user_turn([{"role": "system", "content": "x"}]) == ""


def test_completion_ids_carry_the_assigned_version() -> None:
    base = "chatcmpl-" + "a" * 32
    assert assigned_version(assigned_completion_id(base, "ouro@v8")) == "ouro@v8"
    assert assigned_version(assigned_completion_id(base, "ouro-base")) == "ouro-base"
    for plain in (None, base, "chatcmpl-123", base + ".v0", base + ".x8"):
        assert assigned_version(plain) is None


# -- the sequential test on known inputs -----------------------------------------------------


def arm(requests: int, bad: int = 0, errors: int = 0, ttft_bucket: int = 4) -> ArmCounts:
    ttft = [0] * 13
    ttft[ttft_bucket] = requests
    return ArmCounts(requests=requests, corrections=bad, errors=errors, ttft=tuple(ttft))


def test_the_log_likelihood_ratio_matches_the_binomial_formula() -> None:
    canary, production = arm(200, bad=30), arm(1800, bad=360)
    theta0, theta1 = 200 / 2000, 2 * 200 / (2 * 200 + 1800)
    expected = 30 * math.log(theta1 / theta0) + 360 * math.log((1 - theta1) / (1 - theta0))
    assert log_likelihood_ratio(canary, production, 2.0) == pytest.approx(expected)
    assert log_likelihood_ratio(ArmCounts(), production, 2.0) == 0.0


POLICY = CanaryPolicy(min_requests=200, health_min_requests=50)


@pytest.mark.parametrize(
    ("canary", "production", "decision", "why"),
    [
        (arm(200, bad=20), arm(1800, bad=360), Decision.PROMOTE, "not worse"),
        (arm(200, bad=80), arm(1800, bad=180), Decision.ROLLBACK, "worse"),
        (arm(150, bad=80), arm(1350, bad=135), Decision.ROLLBACK, "worse"),  # no wait
        (arm(150, bad=5), arm(1350, bad=270), Decision.CONTINUE, "collecting"),  # promote waits
        (arm(40, bad=40), arm(360, bad=4), Decision.CONTINUE, "collecting"),  # too few yet
        (arm(200, bad=4), arm(1800, bad=36), Decision.CONTINUE, "collecting"),
        (arm(60, errors=3), arm(540, errors=1), Decision.ROLLBACK, "error rate"),
        (arm(60, ttft_bucket=9), arm(540, ttft_bucket=4), Decision.ROLLBACK, "time to first"),
        (arm(60, ttft_bucket=5), arm(540, ttft_bucket=2), Decision.CONTINUE, "collecting"),
        (arm(40, errors=10), arm(360), Decision.CONTINUE, "collecting"),
    ],
)
def test_the_judgement_on_known_signals(canary, production, decision, why) -> None:
    verdict = judge(POLICY, state(10, canary=canary, production=production), now=60.0)
    assert verdict.decision is decision
    assert why in verdict.reason


def test_a_paused_canary_is_never_decided_and_a_late_one_gets_the_default() -> None:
    bad = state(10, canary=arm(300, bad=200), production=arm(2700, bad=20), paused=True)
    assert judge(POLICY, bad, now=60.0).decision is Decision.CONTINUE
    quiet = state(10, canary=arm(10), production=arm(90))
    assert judge(POLICY, quiet, now=POLICY.max_duration_s).decision is Decision.PROMOTE
    strict = CanaryPolicy(default_decision=Decision.ROLLBACK)
    assert judge(strict, quiet, now=strict.max_duration_s).decision is Decision.ROLLBACK


def test_a_step_waits_for_enough_answers_and_evidence_that_leans_to_good() -> None:
    policy = CanaryPolicy(steps=(10.0, 25.0, 50.0), health_min_requests=50)

    def stepped(**fields) -> float:
        return next_step(policy, state(10, **fields)).share

    assert stepped(canary=arm(49)) == 10.0
    assert stepped(canary=arm(50), statistic=-0.5) == 25.0
    assert stepped(canary=arm(50), statistic=0.5) == 10.0  # leaning to harm: hold
    assert stepped(canary=arm(500), paused=True) == 10.0
    at_last = state(50, step=2, canary=arm(500))
    assert next_step(policy, at_last) == at_last


def test_the_p99_is_interpolated_within_its_bucket_as_prometheus_does() -> None:
    def counts(by_bound: dict[float, int]) -> ArmCounts:
        ttft = [by_bound.get(bound, 0) for bound in TTFT_BUCKETS] + [by_bound.get(math.inf, 0)]
        return ArmCounts(requests=sum(ttft), ttft=tuple(ttft))

    # 990 answers within (0.5 s, 1 s], 11 slow ones within (10 s, 30 s]: the p99 is 1.1% of
    # the way into the slow bucket, not its 30 s bound.
    slow_few = counts({1: 990, 30: 11})
    assert slow_few.ttft_quantile(0.99) == pytest.approx(10 + 20 * (0.99 * 1001 - 990) / 11)
    assert counts({1: 1000}).ttft_quantile(0.5) == pytest.approx(0.75)
    assert counts({0.005: 10}).ttft_quantile(0.5) == pytest.approx(0.0025)  # from 0
    assert counts({math.inf: 5}).ttft_quantile(0.99) == TTFT_BUCKETS[-1]
    assert ArmCounts().ttft_quantile(0.99) is None


def test_counts_since_survive_a_replica_restart() -> None:
    before, after = arm(100, bad=5), arm(30, bad=1)  # the replica restarted in between
    assert after.minus(before).requests == 30
    assert arm(130, bad=6).minus(before) == ArmCounts(
        requests=30, corrections=1, ttft=tuple([0] * 4 + [30] + [0] * 8)
    )


# -- the controller against a real registry --------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry(tmp_path: Path, adapter_dir: Path) -> AdapterRegistry:  # noqa: F811 - fixture
    registry = AdapterRegistry(f"sqlite:///{tmp_path}/mlflow.db", "ouro-adapter")
    register(registry, adapter_dir, 2, **{TAG_WATERMARK: "1;20250101"})
    registry.set_alias(ALIAS_PRODUCTION, 1)
    return registry


def counts(canary: ArmCounts, production: ArmCounts, replica: str = "r0") -> dict:
    return {(replica, "ouro@v2"): canary, (replica, "ouro@v1"): production}


def test_the_controller_steps_up_then_rolls_a_worse_canary_back(registry) -> None:
    clock = Clock()
    rollout = Rollout(registry, CanaryPolicy(steps=(10.0, 25.0)), clock=clock)
    rollout.start(2)
    controller = CanaryController(rollout)
    # Counted before the canary's first evaluation: production's old traffic is not its window.
    verdict = controller.evaluate(counts(ArmCounts(), arm(5000, bad=50)))
    assert verdict.decision is Decision.CONTINUE
    saved = rollout.state()
    assert (saved.share, saved.production.requests) == (10.0, 0)  # nothing seen: no step
    # Enough answers at 10% and nothing against it: the next step.
    controller.evaluate(counts(arm(60, bad=1), arm(5000 + 540, bad=50 + 10)))
    assert rollout.state().share == 25.0

    clock.now += 60
    verdict = controller.evaluate(counts(arm(220, bad=90), arm(5000 + 1980, bad=50 + 198)))
    assert verdict.decision is Decision.ROLLBACK, verdict.reason
    snapshot = registry.snapshot()
    assert ALIAS_CANARY not in snapshot.aliases
    assert snapshot.production == 1
    assert CANARY_STATE_TAG not in snapshot.model_tags
    record = rollout_record(snapshot.versions[2].tags)
    assert record.decision is Decision.ROLLBACK and record.by == "controller"
    assert (record.canary.requests, record.production.requests) == (220, 1980)
    assert record.decision is Decision.ROLLBACK
    # Its corrections count as pending again: the newest version trained is v1.
    assert snapshot.versions[2].rolled_back
    assert snapshot.last_trained().version == 1
    assert controller.evaluate({}) is None


def test_the_controller_promotes_a_canary_that_is_not_worse(registry) -> None:
    rollout = Rollout(registry, CanaryPolicy(), clock=Clock())
    rollout.start(2)
    controller = CanaryController(rollout)
    controller.evaluate(counts(ArmCounts(), ArmCounts()))
    verdict = controller.evaluate(counts(arm(250, bad=10), arm(2250, bad=400)))
    assert verdict.decision is Decision.PROMOTE, verdict.reason
    snapshot = registry.snapshot()
    assert snapshot.production == 2 and ALIAS_CANARY not in snapshot.aliases


def test_a_restarted_controller_continues_from_the_saved_counts(registry) -> None:
    rollout = Rollout(registry, CanaryPolicy(), clock=Clock())
    rollout.start(2)
    first = CanaryController(rollout)
    first.evaluate(counts(ArmCounts(), ArmCounts()))
    first.evaluate(counts(arm(100, bad=2), arm(900, bad=40)))
    # A new controller (the coordinator restarted) sees the replicas' counters as they are.
    second = CanaryController(rollout)
    second.evaluate(counts(arm(100, bad=2), arm(900, bad=40)))
    second.evaluate(counts(arm(150, bad=3), arm(1350, bad=60)))
    saved = rollout.state()
    assert (saved.canary.requests, saved.production.requests) == (150, 1350)


def test_operators_pause_abort_and_promote_by_hand(registry) -> None:
    rollout = Rollout(registry, CanaryPolicy(), clock=Clock())
    with pytest.raises(NoCanaryError):
        rollout.abort("operator")
    rollout.start(2)
    controller = CanaryController(rollout)
    rollout.set_paused(True)
    worse = counts(arm(300, bad=250), arm(2700, bad=27))
    controller.evaluate(counts(ArmCounts(), ArmCounts()))
    assert controller.evaluate(worse).decision is Decision.CONTINUE
    assert rollout.state().share == 10.0  # paused: no step either
    rollout.set_paused(False)
    record = rollout.abort("operator (test)", "looks wrong")
    assert (record.decision, record.reason) == (Decision.ROLLBACK, "looks wrong")
    assert rollout.state() is None

    # Production moved onto a canary by hand (the MLflow UI) is a promotion.
    rollout.start(2)
    registry.set_alias(ALIAS_PRODUCTION, 2)
    verdict = CanaryController(rollout).evaluate({})
    assert verdict.decision is Decision.PROMOTE
    snapshot = registry.snapshot()
    assert ALIAS_CANARY not in snapshot.aliases
    assert rollout_record(snapshot.versions[2].tags).by == "operator"


def test_a_canary_started_again_counts_none_of_the_earlier_ones_traffic(registry) -> None:
    clock = Clock()
    rollout = Rollout(registry, CanaryPolicy(), clock=clock)
    controller = CanaryController(rollout)
    rollout.start(2)
    controller.evaluate(counts(ArmCounts(), ArmCounts()))
    controller.evaluate(counts(arm(40, bad=3), arm(360, bad=30)))
    rollout.abort("operator")
    clock.now += 1
    rollout.start(2)  # the same version again: the replicas' counters still hold the first
    controller.evaluate(counts(arm(40, bad=3), arm(360, bad=30)))
    controller.evaluate(counts(arm(45, bad=3), arm(400, bad=31)))
    saved = rollout.state()
    assert (saved.canary.requests, saved.production.requests) == (5, 40)
