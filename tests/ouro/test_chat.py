"""Chat formatting and truncation with the project's real tokenizer and chat template."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from ouro.chat import ChatFormatter, PromptTooLongError

SYSTEM_PROMPT = "You are Ouro, a friendly and helpful assistant."


@pytest.fixture(scope="module")
def tokenizer(tiny_random_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_random_model_dir)


def rendered(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False)


def long_conversation(turns: int) -> list[dict]:
    messages = []
    for turn in range(turns):
        messages += [
            {"role": "user", "content": f"Question {turn}: what about topic number {turn}?"},
            {"role": "assistant", "content": f"Answer {turn}: that topic is fine."},
        ]
    messages.append({"role": "user", "content": "Latest question: are you still there?"})
    return messages


def test_system_prompt_is_added_when_missing(tokenizer):
    formatter = ChatFormatter(tokenizer, SYSTEM_PROMPT, 512)
    text = rendered(tokenizer, formatter.prompt_ids([{"role": "user", "content": "Hello"}]))
    assert text.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + SYSTEM_PROMPT
    )
    assert text.endswith("Hello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_a_conversations_own_system_prompt_is_kept(tokenizer):
    formatter = ChatFormatter(tokenizer, SYSTEM_PROMPT, 512)
    messages = [
        {"role": "system", "content": "Answer like a pirate."},
        {"role": "user", "content": "Hello"},
    ]
    text = rendered(tokenizer, formatter.prompt_ids(messages))
    assert "Answer like a pirate." in text
    assert SYSTEM_PROMPT not in text


def test_long_conversation_drops_the_oldest_turns_first(tokenizer):
    messages = long_conversation(40)
    full = ChatFormatter(tokenizer, SYSTEM_PROMPT, 100_000).prompt_ids(messages)
    budget = len(full) // 3
    ids = ChatFormatter(tokenizer, SYSTEM_PROMPT, budget).prompt_ids(messages)
    text = rendered(tokenizer, ids)

    assert len(ids) <= budget
    assert SYSTEM_PROMPT in text
    assert "Latest question: are you still there?" in text
    assert "Question 0:" not in text  # the oldest went first
    assert "Answer 39: that topic is fine." in text  # the newest history stayed
    kept = [turn for turn in range(40) if f"Question {turn}:" in text]
    assert kept == list(range(kept[0], 40))  # a contiguous, most recent stretch
    # As much history as fits: one more exchange would break the budget.
    assert (
        len(
            ChatFormatter(tokenizer, SYSTEM_PROMPT, budget).render(
                [{"role": "system", "content": SYSTEM_PROMPT}, *messages[2 * (kept[0] - 1) :]]
            )
        )
        > budget
    )
    # The kept prompt starts with a user turn, never a dangling assistant answer.
    assert text.index("Question") < text.index("Answer")


def test_per_call_budget_tightens_the_context(tokenizer):
    formatter = ChatFormatter(tokenizer, SYSTEM_PROMPT, 100_000)
    messages = long_conversation(20)
    assert len(formatter.prompt_ids(messages, max_prompt_tokens=80)) <= 80


def test_fit_returns_the_kept_messages_with_their_prompt_ids(tokenizer):
    formatter = ChatFormatter(tokenizer, SYSTEM_PROMPT, 100_000)
    messages = long_conversation(20)
    kept, ids = formatter.fit(messages, max_prompt_tokens=120)

    assert ids == formatter.prompt_ids(messages, max_prompt_tokens=120)
    assert ids == formatter.render(kept)  # what training shortens to is what is served
    assert kept[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert kept[-1] == messages[-1] and kept[1]["role"] == "user"
    assert len(kept) < len(messages)


def test_latest_user_turn_too_long_is_a_typed_error(tokenizer):
    formatter = ChatFormatter(tokenizer, SYSTEM_PROMPT, 64)
    huge = [{"role": "user", "content": "word " * 500}]
    with pytest.raises(PromptTooLongError):
        formatter.prompt_ids(huge)
