"""ouro-tiny: tokenizer, chat template, recipe hashing, the cached atomic build."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ouro.tiny_model import (
    RECIPE_FILE,
    SPECIAL_TOKENS,
    TinyModelRecipe,
    answer_accuracy,
    build_random_model,
    build_tiny_model,
    pretrain,
    select_conversations,
)

MICRO_RECIPE = TinyModelRecipe(
    vocab_size=320,
    hidden_size=32,
    intermediate_size=64,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    max_position_embeddings=128,
    epochs=1,
    batch_size=8,
    warmup_steps=2,
    max_conversations=40,
)
"""Builds in a couple of seconds: for the build mechanics, not for quality."""


@pytest.fixture(scope="module")
def tokenizer(tiny_random_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_random_model_dir)


def test_special_tokens_are_single_tokens(tokenizer):
    for token in SPECIAL_TOKENS:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids) == [token]
    assert tokenizer.eos_token == "<|eot_id|>"
    assert tokenizer.bos_token == "<|begin_of_text|>"
    assert tokenizer.pad_token_id not in (tokenizer.eos_token_id, tokenizer.bos_token_id)


def test_byte_level_tokenizer_round_trips_any_text(tokenizer):
    text = "Ünïcødé, emoji 🙂 and 漢字 survive"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_chat_template_marks_assistant_tokens_for_the_loss(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye"},
    ]
    encoded = tokenizer.apply_chat_template(
        messages, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    assistant_text = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert assistant_text == "Hi there<|eot_id|>Goodbye<|eot_id|>"
    text = tokenizer.decode(ids)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")


def test_recipe_fingerprint_is_stable_and_tracks_every_field():
    assert TinyModelRecipe().fingerprint() == TinyModelRecipe().fingerprint()
    assert TinyModelRecipe.small().fingerprint() != TinyModelRecipe().fingerprint()
    for field in dataclasses.fields(TinyModelRecipe):
        if field.name == "system_prompt":
            changed = dataclasses.replace(MICRO_RECIPE, system_prompt="Other.")
        elif field.name == "max_conversations":
            changed = dataclasses.replace(MICRO_RECIPE, max_conversations=41)
        else:
            value = getattr(MICRO_RECIPE, field.name)
            if isinstance(value, bool):
                bumped = not value
            else:
                bumped = value * 2 + 1 if isinstance(value, int) else value * 2
            changed = dataclasses.replace(MICRO_RECIPE, **{field.name: bumped})
        assert changed.fingerprint() != MICRO_RECIPE.fingerprint(), field.name


def test_pretraining_lowers_the_loss():
    conversations = select_conversations(MICRO_RECIPE)
    model, tokenizer = build_random_model(MICRO_RECIPE, conversations)
    recipe = dataclasses.replace(MICRO_RECIPE, epochs=3)
    losses = pretrain(model, tokenizer, conversations, recipe)
    assert len(losses) == 3 * -(-len(conversations) // recipe.batch_size)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    assert not model.training


def test_build_is_cached_by_recipe_and_loads_with_from_pretrained(tmp_path):
    path = build_tiny_model(tmp_path, MICRO_RECIPE)
    assert path.name == f"ouro-tiny-{MICRO_RECIPE.fingerprint()}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no staging left over
    stamp = (path / RECIPE_FILE).stat().st_mtime_ns
    assert build_tiny_model(tmp_path, MICRO_RECIPE) == path
    assert (path / RECIPE_FILE).stat().st_mtime_ns == stamp  # reused, not rebuilt

    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "llama"
    assert model.config.tie_word_embeddings is False
    assert model.config.hidden_size == MICRO_RECIPE.hidden_size
    assert "{% generation %}" in tokenizer.chat_template.replace(
        "{%- generation %}", "{% generation %}"
    )
    with torch.inference_mode():
        logits = model(**tokenizer("Hello", return_tensors="pt")).logits
    assert logits.shape[-1] == len(tokenizer)


@pytest.mark.slow
def test_small_recipe_answers_corpus_questions(ouro_tiny_small_dir):
    recipe = TinyModelRecipe.small()
    accuracy = answer_accuracy(
        ouro_tiny_small_dir, conversations=select_conversations(recipe), max_questions=96
    )
    assert accuracy.questions == 96
    assert accuracy.near >= 0.25
    assert accuracy.exact > 0
