"""What a routed cycle trains: augmented corrections, hard negatives, the index it stores."""

from __future__ import annotations

import random

import pytest

from ouro.routing import RouteKey, Router, RoutingBoundary, SentenceEmbedder
from train_job.config import TrainJobConfig
from train_job.dataset import Correction, build_dataset
from train_job.routed import augment, mine_hard_negatives, plan_routing, with_last_user_turn

SYSTEM = "You are a test bot."


def correction(cid: str, question: str, answer: str) -> Correction:
    return Correction(
        id=cid,
        messages=({"role": "user", "content": question},),
        completion="wrong",
        correction=answer,
    )


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder()


def test_augment_gives_distinct_surface_variants() -> None:
    variants = augment("What are your opening hours?", 6, random.Random(0))
    assert len(variants) == 6 == len(set(variants))
    assert "What are your opening hours?" not in variants
    # Surface changes only: every variant keeps the question's words.
    for variant in variants:
        assert "opening hours" in variant.lower()
    assert augment("Hi?", 0, random.Random(0)) == []


def test_with_last_user_turn_replaces_only_the_last_user_turn() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    assert [m["content"] for m in with_last_user_turn(messages, "z")] == ["a", "b", "z"]
    assert messages[2]["content"] == "c"


def test_hard_negatives_are_pool_prompts_the_router_would_route(embedder) -> None:
    from ouro.routing import CorrectionIndex

    index = CorrectionIndex.build(
        embedder,
        [("hours", RouteKey("What are your opening hours?"))],
        RoutingBoundary(0.6, 0.3),
    )
    pool = ["what are your opening hours today", "Do you like football?", "I lost my keys."]
    negatives = mine_hard_negatives(Router(embedder), index, pool, per_correction=4)
    assert negatives == ["what are your opening hours today"]
    assert mine_hard_negatives(Router(embedder), index, pool, per_correction=0) == []


def test_a_routed_dataset_trains_variants_and_negatives_with_the_base_answers(
    embedder, tmp_path
) -> None:
    config = TrainJobConfig(
        held_out_share=0.0, replay_size=0, augmentations=3, hard_negatives_per_correction=2
    )
    corrections = [
        correction("c1", "What are your opening hours?", "We open at 9 am."),
        correction("c2", "Who made you?", "The Ouro team made me."),
    ]
    asked: list[str] = []

    def answerer(prompts):
        asked.extend(p[-1]["content"] for p in prompts)
        return [f"base answer to {p[-1]['content']}" for p in prompts]

    def planner(train, pool):
        # The test's pool holds one near neighbour of c1 and nothing near c2.
        pool = ["what are your opening hours on mondays", "Tell me about the weather."]
        return plan_routing(embedder, train, pool, config, tmp_path)

    dataset = build_dataset(corrections, config, SYSTEM, answerer, planner=planner)

    assert dataset.routing is not None and len(dataset.routing.index) == 2
    completions = [row["completion"][0]["content"] for row in dataset.rows]
    assert completions.count("We open at 9 am.") == 1 + 3
    assert completions.count("The Ouro team made me.") == 1 + 3
    routed_pool = dataset.routing.hard_negatives
    assert asked == routed_pool and all("opening hours" in p for p in routed_pool)
    assert [c[-1]["content"] for c in dataset.hard_negatives] == [
        f"base answer to {p}" for p in routed_pool
    ]
    assert "routing" in dataset.manifest(watermark=None, replay_source="chatterbot")
    # The fitted boundary is cached: a second plan reads it back.
    assert list(tmp_path.glob("boundary-*.json"))


def test_a_routed_cycle_needs_the_answerer() -> None:
    config = TrainJobConfig(held_out_share=0.0, replay_size=0)
    with pytest.raises(ValueError, match="answerer"):
        build_dataset(
            [correction("c1", "q?", "a.")], config, SYSTEM, None, planner=lambda t, p: None
        )


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
