"""What a routed cycle trains: the corrected prompts, and the index it stores."""

from __future__ import annotations

import pytest

from ouro.embedding import SentenceEmbedder
from ouro.routing import (
    NEAR_MISS,
    PARAPHRASE,
    CorrectionIndex,
    JoinedKey,
    RouteKey,
    Router,
    RoutingBoundary,
)
from train_job.config import TrainJobConfig
from train_job.corrections import Correction
from train_job.dataset import build_dataset
from train_job.routed import learn, plan_routing

SYSTEM = "You are a test bot."


def correction(cid: str, question: str, answer: str, model: str | None = None) -> Correction:
    return Correction(
        id=cid,
        messages=({"role": "user", "content": question},),
        completion="wrong",
        correction=answer,
        model=model,
    )


@pytest.fixture(scope="module")
def embedder(sentence_embedder: SentenceEmbedder) -> SentenceEmbedder:
    return sentence_embedder


def test_a_routed_dataset_trains_the_corrections_and_indexes_them(embedder, tmp_path) -> None:
    config = TrainJobConfig(held_out_share=0.0, replay_size=0)
    corrections = [
        correction("c1", "What are your opening hours?", "We open at 9 am."),
        correction("c2", "Who made you?", "The Ouro team made me."),
    ]
    pools: list[list[str]] = []
    pool = ["what are your opening hours on mondays", "Tell me about the weather."]

    def planner(train, replay_pool):
        pools.append(replay_pool)
        return plan_routing(embedder, train, pool, config, tmp_path)

    dataset = build_dataset(corrections, config, SYSTEM, None, planner=planner)

    assert dataset.routing is not None and len(dataset.routing.index) == 2
    assert [e.text for e in dataset.routing.index.entries] == [c.question() for c in corrections]
    # The corrected prompts themselves, as typed: a match is answered as its correction's
    # question, so no variant or neighbour is trained.
    assert [
        (row["prompt"][-1]["content"], row["completion"][0]["content"]) for row in dataset.rows
    ] == [(c.question(), c.correction) for c in corrections]
    assert pools and pools[0], "the replay source's first user turns are the pool"
    assert "routing" in dataset.manifest(watermark=None, replay_source="chatterbot")
    # The fitted boundary is cached: a second plan reads it back.
    assert list(tmp_path.glob("boundary-*.json"))
    cached = plan_routing(embedder, dataset.train, pool, config, tmp_path)
    assert cached.calibration.boundary == dataset.routing.calibration.boundary


def test_trained_targets_end_with_the_end_of_turn_token(smollm2_dir) -> None:
    """The model learns to stop after the correction (the chat template closes the turn)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "We open at 9."}],
        tokenize=False,
        return_assistant_tokens_mask=False,
    )
    assert "We open at 9.<|im_end|>" in rendered
    masked = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "We open at 9."}],
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    trained = [t for t, m in zip(masked["input_ids"], masked["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(trained).endswith("<|im_end|>")


HOURS = correction("c-hours", "What are your opening hours?", "We open at 9 am.", "ouro-base")
NAME = correction("c-name", "What is your name?", "My name is Ouro.", "ouro-base")
# Answered by v1 from its match with HOURS, and corrected otherwise: a false accept.
TODAY = correction(
    "c-today", "What are your opening hours today?", "Today we are closed.", "ouro@v1"
)
# Answered by the base model (v1 did not take it), corrected as NAME was: a false reject.
CALL = correction("c-call", "What should I call you?", "My name is Ouro!", "ouro-base")


@pytest.fixture(scope="module")
def v1(embedder) -> CorrectionIndex:
    """The version that answered: HOURS and NAME, with a boundary loose enough to take a
    same-shaped question and strict enough to miss a paraphrase in other words."""
    keys = [(c.id, RouteKey.of(c.prompt())) for c in (HOURS, NAME)]
    return CorrectionIndex.build(embedder, keys, RoutingBoundary(base=0.55, slope=0.3))


def answered_by_v1(v1: CorrectionIndex):
    """v1 answered (or, for the base model's answers, was the production that let them by)."""
    return lambda c: v1 if c.model in ("ouro@v1", "ouro-base") else None


def test_replayed_decisions_teach_a_false_accept_and_a_false_reject(embedder, v1) -> None:
    router = Router(embedder)
    assert router.decide(v1, TODAY.prompt()).correction_id == "c-hours"  # as it was answered
    assert not router.decide(v1, CALL.prompt()).routed
    config = TrainJobConfig(router_lesson_weight=4.0)

    lessons = learn([HOURS, NAME, TODAY, CALL], router, answered_by_v1(v1), config)

    assert (lessons.false_accepts, lessons.false_rejects) == (1, 1)
    assert [(p.a, p.b, p.label, p.weight, p.source) for p in lessons.pairs] == [
        (HOURS.question(), TODAY.question(), NEAR_MISS, 4.0, "c-today"),
        (NAME.question(), CALL.question(), PARAPHRASE, 4.0, "c-call"),
    ]
    assert lessons.joined == [JoinedKey("c-name", RouteKey(CALL.question()), "c-call")]
    assert lessons.report() == {
        "false_accepts": 1, "false_rejects": 1, "joined_keys": 1, "pairs": 2,
    }  # fmt: skip
    # Without a version to replay (an adapter trained without an index), a correction
    # that repeats another still joins it; nothing is counted against the router.
    unreplayed = learn([HOURS, NAME, TODAY, CALL], router, lambda c: None, config)
    assert (unreplayed.false_accepts, unreplayed.false_rejects) == (0, 0)
    assert [p.label for p in unreplayed.pairs] == [PARAPHRASE]


def test_the_next_version_routes_what_users_corrected(embedder, v1, tmp_path) -> None:
    config = TrainJobConfig(held_out_share=0.0, replay_size=0)
    corrections = [HOURS, NAME, TODAY, CALL]
    pool = ["Tell me about the weather.", "Do you like football?"]
    dataset = build_dataset(
        corrections,
        config,
        SYSTEM,
        None,
        planner=lambda train, _: plan_routing(
            embedder, train, pool, config, tmp_path, answered_by_v1(v1)
        ),
    )
    plan = dataset.routing
    assert plan is not None and plan.report()["lessons"]["false_rejects"] == 1
    router = Router(embedder)
    # The false accept has a key of its own; the false reject reaches the correction it
    # repeats, which alone is trained (it answers as that one).
    today = router.decide(plan.index, TODAY.prompt())
    assert today.correction_id == "c-today" and today.question == TODAY.question()
    call = router.decide(plan.index, CALL.prompt())
    assert call.routed and call.correction_id == "c-name" and call.question == NAME.question()
    assert {row["completion"][0]["content"] for row in dataset.rows} == {
        c.correction for c in (HOURS, NAME, TODAY)
    }
    assert plan.index.lessons == plan.lessons.pairs
    # Forgotten (no longer in the ledger), its key and its lesson are not learned again.
    forgotten = plan_routing(embedder, corrections[:3], pool, config, tmp_path, answered_by_v1(v1))
    assert not router.decide(forgotten.index, CALL.prompt()).routed
    assert all(p.source != "c-call" for p in forgotten.index.lessons)
