"""What a routed cycle trains: the corrected prompts, and the index it stores."""

from __future__ import annotations

import pytest

from ouro.embedding import SentenceEmbedder
from train_job.config import TrainJobConfig
from train_job.corrections import Correction
from train_job.dataset import build_dataset
from train_job.routed import plan_routing

SYSTEM = "You are a test bot."


def correction(cid: str, question: str, answer: str) -> Correction:
    return Correction(
        id=cid,
        messages=({"role": "user", "content": question},),
        completion="wrong",
        correction=answer,
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
