"""Dataset building: context kept, loss on the correction, split, replay, hash, length fitting."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from ouro.corpus import load_chatterbot_conversations
from ouro.engine import GenerationEngine, GenerationRequest, SamplingParams
from ouro.settings import OuroSettings
from train_job.config import SOURCE_REPLAY, TrainJobConfig
from train_job.corrections import Correction
from train_job.dataset import build_dataset, conversation_rows, split_held_out
from train_job.replay import cache_file, self_answerer
from train_job.train import fit_rows

SYSTEM = "You are a test bot."


def corrections(count: int) -> list[Correction]:
    return [
        Correction(
            id=f"fb-{index:032x}",
            messages=(
                {"role": "user", "content": f"hello {index}"},
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": f"question {index}?"},
            ),
            completion="wrong",
            correction=f"answer {index}.",
        )
        for index in range(count)
    ]


def test_a_correction_row_keeps_the_whole_conversation_and_trains_on_the_correction() -> None:
    config = TrainJobConfig(held_out_share=0.0, replay_size=0)
    dataset = build_dataset(corrections(1), config, SYSTEM)

    assert dataset.rows == [
        {
            "prompt": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "hello 0"},
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "question 0?"},
            ],
            "completion": [{"role": "assistant", "content": "answer 0."}],
        }
    ]


def test_replay_rows_carry_loss_on_every_assistant_turn() -> None:
    conversation = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    rows = conversation_rows(conversation, SYSTEM)
    assert [row["completion"][0]["content"] for row in rows] == ["b", "d"]
    assert rows[1]["prompt"][-1] == {"role": "user", "content": "c"}
    assert all(row["prompt"][0]["role"] == "system" for row in rows)


def test_held_out_split_is_proportional_and_deterministic() -> None:
    first = corrections(20)
    train, held = split_held_out(first, 0.1, seed=0)
    assert len(held) == 2 and len(train) == 18
    assert {c.id for c in train}.isdisjoint({c.id for c in held})
    assert split_held_out(first, 0.1, seed=0) == (train, held)

    assert len(split_held_out(corrections(30), 0.1, seed=0)[1]) == 3
    assert split_held_out(first, 0.1, seed=1) != (train, held)  # the seed picks them

    assert len(split_held_out(corrections(1), 0.5, seed=0)[0]) == 1  # always one to train


def test_regression_probe_and_replay_sets_are_disjoint_and_skip_corrected_questions() -> None:
    corpus = load_chatterbot_conversations()
    asked = corpus[0][0]["content"]
    correction = Correction(
        id="fb-1", messages=({"role": "user", "content": asked},), completion="x", correction="y"
    )
    config = TrainJobConfig(
        replay_size=40,
        regression_size=20,
        probe_size=10,
        held_out_share=0,
        replay_answers=SOURCE_REPLAY,
    )

    dataset = build_dataset([correction], config, SYSTEM)

    regression_questions = {c[0]["content"].lower() for c in dataset.regression}
    assert len(dataset.regression) == 20 and len(dataset.replay) == 40
    assert regression_questions.isdisjoint(c[0]["content"].lower() for c in dataset.replay)
    assert len(dataset.probes) == 10
    assert all(p[0]["content"].lower() != asked.lower() for p in dataset.probes)
    assert all(c[0]["content"].lower() != asked.lower() for c in dataset.regression)
    # Fixed by the seed: the next cycle measures on the same texts.
    assert build_dataset([correction], config, SYSTEM).regression == dataset.regression


def test_dataset_hash_follows_the_training_rows() -> None:
    config = TrainJobConfig(held_out_share=0.0, replay_size=4, replay_answers=SOURCE_REPLAY)
    same = build_dataset(corrections(3), config, SYSTEM)
    assert build_dataset(corrections(3), config, SYSTEM).sha256 == same.sha256
    assert build_dataset(corrections(4), config, SYSTEM).sha256 != same.sha256
    manifest = same.manifest(watermark="1;20250101", replay_source="chatterbot")
    assert manifest["dataset_sha256"] == same.sha256
    assert manifest["train_correction_ids"] == [c.id for c in corrections(3)]
    assert "answer 0." not in str(manifest)  # ids and counts, not user text


def test_probe_file_and_chat_jsonl_sources(tmp_path: Path) -> None:
    probes = tmp_path / "probes.txt"
    probes.write_text("How are you?\n\nWhat is AI?\nHow are you?\n", encoding="utf-8")
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        '{"messages": [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"}]}\n'
        '{"messages": [{"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2"}]}\n',
        encoding="utf-8",
    )
    config = TrainJobConfig(
        probe_source=str(probes),
        replay_source=str(chat),
        regression_source=str(chat),
        regression_size=1,
        replay_size=5,
        held_out_share=0,
        replay_answers=SOURCE_REPLAY,
    )
    dataset = build_dataset(corrections(1), config, SYSTEM)
    assert [p[0]["content"] for p in dataset.probes] == ["How are you?", "What is AI?"]
    assert len(dataset.regression) == 1 and len(dataset.replay) == 1


def test_fit_rows_drops_the_oldest_turns_first(tiny_random_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_random_model_dir)
    long_turn = "word " * 60
    row = {
        "prompt": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": long_turn},
            {"role": "assistant", "content": long_turn},
            {"role": "user", "content": "the latest question?"},
        ],
        "completion": [{"role": "assistant", "content": "the answer."}],
    }
    budget = 80
    (fitted,) = fit_rows([row], tokenizer, budget)
    assert fitted["prompt"] == [row["prompt"][0], row["prompt"][-1]]
    assert fitted["completion"] == row["completion"]
    (untouched,) = fit_rows([row], tokenizer, 4096)
    assert untouched == row


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_every_correction_is_either_trained_or_held_out(share: float) -> None:
    config = TrainJobConfig(held_out_share=share, replay_size=0)
    dataset = build_dataset(corrections(10), config, SYSTEM)
    assert len(dataset.train) + len(dataset.held_out) == 10
    assert len(dataset.rows) == len(dataset.train)


def test_self_distilled_replay_is_the_base_models_own_answers_generated_once(
    ouro_tiny_small_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = OuroSettings(
        base_model=str(ouro_tiny_small_dir), data_dir=tmp_path, system_prompt=SYSTEM
    )
    config = TrainJobConfig(held_out_share=0.0, replay_size=6, regression_size=4, probe_size=0)
    answerer = self_answerer(settings, max_new_tokens=24)

    dataset = build_dataset(corrections(2), config, SYSTEM, answerer)

    source = load_chatterbot_conversations()
    questions = {c[0]["content"] for c in source}
    assert dataset.replay, "the model finished none of its answers"
    for conversation in dataset.replay:
        user, assistant = conversation
        assert user["role"] == "user" and user["content"] in questions
        assert assistant["role"] == "assistant" and assistant["content"]
    engine = GenerationEngine.from_settings(settings)
    prompt = dataset.replay[0][:1]
    (own,) = engine.generate([GenerationRequest(prompt, SamplingParams(max_tokens=24))])
    assert dataset.replay[0][1]["content"] == own.text.strip()
    # Replay rows carry the loss on the model's own answers, under the system prompt.
    own_answers = {conversation[1]["content"] for conversation in dataset.replay}
    replay_rows = [row for row in dataset.rows if row["completion"][0]["content"] in own_answers]
    assert len(replay_rows) >= len(own_answers)
    assert all(row["prompt"][0] == {"role": "system", "content": SYSTEM} for row in replay_rows)

    # The next cycle reads the cache: the model is not loaded again.
    assert cache_file(settings, 24).is_file()

    def no_model(*args, **kwargs):
        raise AssertionError("the replay answers were generated again")

    monkeypatch.setattr(GenerationEngine, "from_settings", no_model)
    assert build_dataset(corrections(2), config, SYSTEM, answerer).replay == dataset.replay


def test_self_replay_needs_an_answerer() -> None:
    with pytest.raises(ValueError, match="answerer"):
        build_dataset(corrections(1), TrainJobConfig(replay_size=2), SYSTEM)
