"""Answer scores: BERTScore F1 (offline MiniLM), ROUGE-L, token F1, degenerate answers,
perplexity over assistant tokens only."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from ouro.scoring import (
    BertScorer,
    ScoringError,
    assistant_loss,
    assistant_perplexity,
    assistant_token_mask,
    repeats_a_phrase,
    rouge_l,
    token_f1,
)

SYSTEM = "You are Ouro, a friendly and helpful assistant."
CONVERSATION = [
    {"role": "user", "content": "Hello there, how are you?"},
    {"role": "assistant", "content": "I am fine, thank you. And you?"},
    {"role": "user", "content": "Great. What is the weather like?"},
    {"role": "assistant", "content": "Sunny and warm today."},
]


@pytest.fixture(scope="module")
def bert_scorer() -> BertScorer:
    return BertScorer()


@pytest.fixture(scope="module")
def tiny(tiny_random_model_dir: Path):
    model = AutoModelForCausalLM.from_pretrained(tiny_random_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_random_model_dir)


def test_bertscore_orders_paraphrase_above_unrelated(bert_scorer: BertScorer) -> None:
    reference = "The cat sat on the mat."
    identical, paraphrase, unrelated = bert_scorer.f1(
        [reference, "A cat was sitting on the mat.", "The stock market fell sharply today."],
        [reference] * 3,
    )
    assert identical == pytest.approx(1.0, abs=1e-4)
    assert paraphrase > 0.8
    assert unrelated < 0.3
    assert identical > paraphrase > unrelated


def test_bertscore_blank_text_and_lengths(bert_scorer: BertScorer) -> None:
    assert bert_scorer.f1(["", "  ", "fine"], ["something", "", "fine"]) == [
        0.0,
        1.0,
        pytest.approx(1.0, abs=1e-4),
    ]
    with pytest.raises(ScoringError):
        bert_scorer.f1(["one"], ["one", "two"])


def test_rouge_l() -> None:
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l("dogs bark loudly", "the cat sat") == 0.0
    assert 0.0 < rouge_l("the cat sat", "the cat sat on the mat") < 1.0
    assert rouge_l("", "the cat") == 0.0


def test_mask_matches_the_templates_generation_markers(tiny) -> None:
    _model, tokenizer = tiny
    ids, mask = assistant_token_mask(tokenizer, CONVERSATION, SYSTEM)
    expected = tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, *CONVERSATION],
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    assert ids == list(expected["input_ids"])
    assert [int(flag) for flag in mask] == list(expected["assistant_masks"])


def test_only_assistant_tokens_are_scored(tiny) -> None:
    _model, tokenizer = tiny
    ids, mask = assistant_token_mask(tokenizer, CONVERSATION, SYSTEM)
    scored = tokenizer.decode([token for token, flag in zip(ids, mask, strict=True) if flag])
    assert scored == "I am fine, thank you. And you?<|eot_id|>Sunny and warm today.<|eot_id|>"


def test_user_and_system_text_do_not_change_the_scored_tokens(tiny) -> None:
    model, tokenizer = tiny
    longer_user = [dict(m) for m in CONVERSATION]
    longer_user[0]["content"] = "Hello there! " * 4 + "How are you doing on this fine day?"
    longer_user[2]["content"] = "Good."
    base = assistant_loss(model, tokenizer, [CONVERSATION], SYSTEM)
    assert base.tokens == sum(assistant_token_mask(tokenizer, CONVERSATION, SYSTEM)[1])
    assert assistant_loss(model, tokenizer, [longer_user], SYSTEM).tokens == base.tokens
    assert assistant_loss(model, tokenizer, [CONVERSATION], "Be brief.").tokens == base.tokens
    longer_answer = [dict(m) for m in CONVERSATION]
    longer_answer[3]["content"] = "Sunny and warm today, with a light breeze from the sea."
    assert assistant_loss(model, tokenizer, [longer_answer], SYSTEM).tokens > base.tokens


def test_perplexity_equals_the_masked_language_model_loss(tiny) -> None:
    model, tokenizer = tiny
    ids, mask = assistant_token_mask(tokenizer, CONVERSATION, SYSTEM)
    labels = torch.tensor([[t if flag else -100 for t, flag in zip(ids, mask, strict=True)]])
    with torch.no_grad():
        expected = math.exp(float(model(input_ids=torch.tensor([ids]), labels=labels).loss))
    assert assistant_perplexity(model, tokenizer, [CONVERSATION], SYSTEM) == pytest.approx(
        expected, rel=1e-4
    )


def test_batching_and_padding_do_not_change_the_result(tiny) -> None:
    model, tokenizer = tiny
    conversations = [CONVERSATION, CONVERSATION[:2], CONVERSATION[2:]]
    one_by_one = [assistant_loss(model, tokenizer, [c], SYSTEM) for c in conversations]
    together = assistant_loss(model, tokenizer, conversations, SYSTEM, batch_size=3)
    assert together.tokens == sum(loss.tokens for loss in one_by_one)
    assert together.nll_sum == pytest.approx(sum(loss.nll_sum for loss in one_by_one), rel=1e-4)


def test_long_conversations_are_cut_and_counted(tiny) -> None:
    model, tokenizer = tiny
    full = assistant_loss(model, tokenizer, [CONVERSATION], SYSTEM)
    ids, mask = assistant_token_mask(tokenizer, CONVERSATION, SYSTEM)
    cut = assistant_loss(model, tokenizer, [CONVERSATION], SYSTEM, max_length=len(ids) - 3)
    assert cut.truncated_tokens == sum(mask[len(ids) - 3 :]) > 0
    assert cut.tokens == full.tokens - cut.truncated_tokens


def test_adapter_name_selects_base_or_adapter(
    tiny, tiny_random_model_dir, make_lora_adapter
) -> None:
    model, tokenizer = tiny
    base_ppl = assistant_perplexity(model, tokenizer, [CONVERSATION], SYSTEM)
    wrapped = AutoModelForCausalLM.from_pretrained(tiny_random_model_dir).eval()
    peft_model = PeftModel.from_pretrained(
        wrapped, str(make_lora_adapter(tiny_random_model_dir, 1)), adapter_name="a1"
    ).eval()
    through_base = assistant_perplexity(
        peft_model, tokenizer, [CONVERSATION], SYSTEM, adapter_name="__base__"
    )
    through_adapter = assistant_perplexity(
        peft_model, tokenizer, [CONVERSATION], SYSTEM, adapter_name="a1"
    )
    assert through_base == pytest.approx(base_ppl, rel=1e-4)
    assert through_adapter != pytest.approx(base_ppl, rel=1e-3)


def test_nothing_to_score_is_an_error(tiny) -> None:
    model, tokenizer = tiny
    with pytest.raises(ScoringError):
        assistant_perplexity(model, tokenizer, [CONVERSATION[:1]], SYSTEM)
    with pytest.raises(ScoringError):
        assistant_token_mask(tokenizer, [{"role": "assistant", "content": "Hi"}], "")


def test_token_f1_is_word_overlap_ignoring_case_and_punctuation() -> None:
    assert token_f1("The capital is Paris.", "the capital is paris") == 1.0
    assert token_f1("Paris", "The capital is Paris.") == pytest.approx(2 * 1 * 0.25 / 1.25)
    assert token_f1("Berlin.", "Paris.") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("...", "Paris") == 0.0


@pytest.mark.parametrize(
    "answer",
    [
        "Uh... Uh... Uh...",
        "I think so. I am sure I am sure I am sure.",
        "The the the the cat.",
        "Let me see: one two three one two three one two three",
        "Sure. The plan is to go and then go and then go and then go and",
    ],
)
def test_a_phrase_repeated_back_to_back_is_degenerate(answer: str) -> None:
    assert repeats_a_phrase(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "The capital of France is Paris.",
        "No, no. That is very very good.",
        "I'm here to help. What can I do? I'm here to help you with that.",
        "He said no, no, no, and then he left the room without a word.",
        "",
    ],
)
def test_ordinary_answers_are_not_degenerate(answer: str) -> None:
    assert not repeats_a_phrase(answer)
