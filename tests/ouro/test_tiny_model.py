"""ouro-tiny: tokenizer, chat template, recipe hashing, the cached atomic build."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from ouro.embedded.accuracy import answer_accuracy
from ouro.embedded.cache import BUILD_FILE
from ouro.embedded.tiny import (
    DEFAULT_SYSTEM_PROMPT,
    SPECIAL_TOKENS,
    TinyModelRecipe,
    build_random_model,
    build_tiny_model,
    pretrain,
    select_conversations,
)
from ouro.engine import GenerationEngine, GenerationRequest, SamplingParams
from tests.fixtures.models import LORA_TARGETS

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
    assert stat.S_IMODE(path.stat().st_mode) == 0o755  # readable by other users and pods
    assert all(stat.S_IMODE(file.stat().st_mode) == 0o644 for file in path.iterdir())
    stamp = (path / BUILD_FILE).stat().st_mtime_ns
    assert build_tiny_model(tmp_path, MICRO_RECIPE) == path
    assert (path / BUILD_FILE).stat().st_mtime_ns == stamp  # reused, not rebuilt

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
    assert accuracy.exact >= 0.3
    assert accuracy.near >= 0.5


CORRECTIONS = [
    ("What is your name?", "My name is Ouro and I learn from my mistakes."),
    ("What is your favorite color?", "Teal, the colour of a calm sea."),
    ("Do you like movies?", "I adore old black and white films."),
    ("Where do you live?", "I live inside a small computer in a quiet room."),
    ("Tell me a joke", "Why did the robot cross the road? To recharge."),
    ("How old are you?", "I was built this year, so I am very young."),
    ("What do you eat?", "I only consume electricity and good questions."),
    ("Who made you?", "A small team of engineers who like loops."),
    ("Can you sing?", "Only in binary, and very off key."),
    ("Do you have a pet?", "I have a virtual cat called Pixel."),
    ("Are you happy?", "Yes, talking with you makes me happy."),
    ("What is your favorite book?", "The Hitchhiker's Guide to the Galaxy."),
]


@pytest.mark.slow
def test_small_model_learns_corrections_with_lora(ouro_tiny_small_dir, tmp_path):
    """The e2e loop's premise: ~100 LoRA steps at lr 5e-3 teach it a dozen new answers."""
    tokenizer = AutoTokenizer.from_pretrained(ouro_tiny_small_dir)
    system = {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    rows = []
    for question, answer in CORRECTIONS:
        prompt = [system, {"role": "user", "content": question}]
        prompt_ids = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, return_dict=True
        )["input_ids"]
        full_ids = tokenizer.apply_chat_template(
            [*prompt, {"role": "assistant", "content": answer}], return_dict=True
        )["input_ids"]
        labels = [-100] * len(prompt_ids) + list(full_ids[len(prompt_ids) :])
        rows.append((list(full_ids), labels))

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(ouro_tiny_small_dir),
        LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS),
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=5e-3, weight_decay=0.0
    )
    model.train()
    for step in range(100):
        batch = [rows[(step * 8 + offset) % len(rows)] for offset in range(8)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((8, width), tokenizer.pad_token_id)
        labels = torch.full((8, width), -100)
        for index, (ids, row_labels) in enumerate(batch):
            input_ids[index, : len(ids)] = torch.tensor(ids)
            labels[index, : len(ids)] = torch.tensor(row_labels)
        loss = model(
            input_ids=input_ids, attention_mask=input_ids.ne(tokenizer.pad_token_id), labels=labels
        ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(tmp_path / "adapter")

    engine = GenerationEngine(
        AutoModelForCausalLM.from_pretrained(ouro_tiny_small_dir),
        tokenizer,
        system_prompt=DEFAULT_SYSTEM_PROMPT,
        max_context_tokens=512,
    )
    engine.add_adapter("corrections", tmp_path / "adapter")
    questions = [[{"role": "user", "content": question}] for question, _ in CORRECTIONS]
    params = SamplingParams(max_tokens=40)
    taught = engine.generate([GenerationRequest(q, params, "corrections") for q in questions])
    before = engine.generate([GenerationRequest(q, params) for q in questions])
    answers = [answer for _, answer in CORRECTIONS]
    assert sum(output.text == answer for output, answer in zip(taught, answers, strict=True)) >= 10
    assert sum(output.text == answer for output, answer in zip(before, answers, strict=True)) == 0
