"""ouro-tiny: the embedded toy model the project builds itself.

A small Llama, with a byte-level BPE tokenizer trained here and Llama-3 special tokens,
pretrained on the English chatterbot-corpus conversations formatted with its own chat
template. Nothing is downloaded. The result is saved with ``save_pretrained`` into
``<cache_dir>/ouro-tiny-<recipe hash>/`` and loads like any Hub model. It knows the
corpus and little else: the fast model of the tests, not one to chat with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ouro.corpus import load_chatterbot_conversations
from ouro.embedded.cache import cached_build
from ouro.settings import OuroSettings

logger = logging.getLogger(__name__)

MODEL_PREFIX = "ouro-tiny"
# Bump when the build code changes in a way the recipe fields do not capture.
BUILD_FORMAT = 1

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
END_OF_TURN = "<|eot_id|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (BEGIN_OF_TEXT, END_OF_TEXT, START_HEADER, END_HEADER, END_OF_TURN, PAD)

# Llama-3 layout. The {% generation %} markers let TRL compute the loss on assistant
# tokens only (assistant_only_loss / return_assistant_tokens_mask).
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- generation %}{{- message['content'] | trim }}{{- '<|eot_id|>' }}{%- endgeneration %}"
    "{%- else %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- message['content'] | trim }}{{- '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

DEFAULT_SYSTEM_PROMPT: str = OuroSettings.model_fields["system_prompt"].default
"""The serving default, so the model is trained under the prompt it is served with."""


@dataclass(frozen=True)
class TinyModelRecipe:
    """Everything that decides the built model; its hash names the cache folder."""

    vocab_size: int = 2048
    """Target BPE vocabulary size (special tokens included)."""
    hidden_size: int = 128
    """Width of the residual stream."""
    intermediate_size: int = 344
    """Width of the MLP."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention, like Llama 3)."""
    max_position_embeddings: int = 1024
    """Context length."""
    initializer_range: float = 0.05
    """Std of the initial weights; the default 0.02 leaves a tiny model too flat to teach."""
    max_turns_per_example: int = 6
    """Long conversations are cut into windows of at most this many messages."""
    max_example_tokens: int = 256
    """Longest training example; longer windows are cut."""
    assistant_only_loss: bool = False
    """Learn only the assistant turns (the rest is context) instead of every token."""
    epochs: int = 20
    """Passes over the corpus."""
    batch_size: int = 32
    """Examples per optimiser step."""
    learning_rate: float = 3e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay)."""
    warmup_steps: int = 30
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    max_conversations: int | None = None
    """Train on the first N conversations only (None: all of them)."""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    """System prompt every training conversation starts with (the serving default)."""
    seed: int = 0
    """Seeds the tokenizer order, the initial weights and the batch order."""

    @classmethod
    def small(cls) -> TinyModelRecipe:
        """A reduced recipe for tests: 300 conversations, 2 layers; builds in seconds, still talks."""
        return cls(
            vocab_size=1024,
            hidden_size=128,
            intermediate_size=344,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            max_position_embeddings=512,
            epochs=20,
            batch_size=16,
            max_conversations=300,
            assistant_only_loss=True,
        )

    def fingerprint(self) -> str:
        """Short stable hash of the recipe (and the build format)."""
        payload = json.dumps(
            {"format": BUILD_FORMAT, **dataclasses.asdict(self)}, sort_keys=True
        ).encode()
        return hashlib.sha256(payload).hexdigest()[:12]


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``, with Llama-3 special tokens."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BEGIN_OF_TEXT,
        eos_token=END_OF_TURN,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def corpus_texts(conversations: list[list[dict]], system_prompt: str) -> list[str]:
    """The texts the tokenizer learns from: each turn as the chat template lays it out.

    The headers and the system prompt recur in every conversation, so BPE learns them as
    few tokens, which keeps training sequences short.
    """
    texts = []
    for conversation in conversations:
        texts.append(f"system\n\n{system_prompt}")
        texts += [f"{message['role']}\n\n{message['content']}" for message in conversation]
    return texts


def build_model_config(recipe: TinyModelRecipe, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """A Llama config sized by the recipe, with untied embeddings (easier to teach)."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        max_position_embeddings=recipe.max_position_embeddings,
        initializer_range=recipe.initializer_range,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.convert_tokens_to_ids(BEGIN_OF_TEXT),
        eos_token_id=[
            tokenizer.convert_tokens_to_ids(END_OF_TURN),
            tokenizer.convert_tokens_to_ids(END_OF_TEXT),
        ],
        pad_token_id=tokenizer.pad_token_id,
    )


def build_random_model(
    recipe: TinyModelRecipe, conversations: list[list[dict]] | None = None
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """The recipe's tokenizer and an untrained model (seeded)."""
    if conversations is None:
        conversations = select_conversations(recipe)
    tokenizer = build_tokenizer(
        corpus_texts(conversations, recipe.system_prompt), recipe.vocab_size
    )
    tokenizer.model_max_length = recipe.max_position_embeddings
    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(build_model_config(recipe, tokenizer))
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def select_conversations(recipe: TinyModelRecipe) -> list[list[dict]]:
    """The corpus conversations the recipe trains on."""
    conversations = load_chatterbot_conversations()
    if recipe.max_conversations is not None:
        shuffled = list(conversations)
        random.Random(recipe.seed).shuffle(shuffled)
        conversations = shuffled[: recipe.max_conversations]
    return conversations


def build_tiny_model(cache_dir: Path, recipe: TinyModelRecipe = TinyModelRecipe()) -> Path:
    """Build ouro-tiny (or reuse the cached build) and return its directory."""

    def build(folder: Path) -> None:
        conversations = select_conversations(recipe)
        model, tokenizer = build_random_model(recipe, conversations)
        pretrain(model, tokenizer, conversations, recipe)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return cached_build(
        cache_dir, MODEL_PREFIX, recipe.fingerprint(), dataclasses.asdict(recipe), build
    )


def training_examples(
    conversations: list[list[dict]], tokenizer: PreTrainedTokenizerFast, recipe: TinyModelRecipe
) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) of each training window, formatted with the chat template.

    With ``assistant_only_loss`` the labels of everything but the assistant turns are
    -100 (ignored), so the model spends its capacity on answering.
    """
    system = {"role": "system", "content": recipe.system_prompt}
    examples = []
    for conversation in conversations:
        for start in range(0, len(conversation), recipe.max_turns_per_example):
            window = conversation[start : start + recipe.max_turns_per_example]
            encoded = tokenizer.apply_chat_template(
                [system, *window], return_dict=True, return_assistant_tokens_mask=True
            )
            ids = list(encoded["input_ids"])[: recipe.max_example_tokens]
            mask = list(encoded["assistant_masks"])[: recipe.max_example_tokens]
            if recipe.assistant_only_loss:
                labels = [token if keep else -100 for token, keep in zip(ids, mask, strict=True)]
            else:
                labels = list(ids)
            examples.append((ids, labels))
    return examples


def _batches(
    examples: list[tuple[list[int], list[int]]], batch_size: int, rng: random.Random
) -> list[list[int]]:
    # Group similar lengths (less padding), then shuffle the batch order.
    order = sorted(range(len(examples)), key=lambda index: (len(examples[index][0]), rng.random()))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def pretrain(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    conversations: list[list[dict]],
    recipe: TinyModelRecipe,
) -> list[float]:
    """Next-token training on the formatted corpus; returns the loss per step."""
    examples = training_examples(conversations, tokenizer, recipe)
    rng = random.Random(recipe.seed)
    torch.manual_seed(recipe.seed)
    steps_per_epoch = -(-len(examples) // recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, recipe.warmup_steps, total_steps)
    )
    pad_id = tokenizer.pad_token_id
    losses: list[float] = []
    model.train()
    progress = tqdm(total=total_steps, desc=f"pretraining {MODEL_PREFIX}", unit="step")
    for _ in range(recipe.epochs):
        for batch in _batches(examples, recipe.batch_size, rng):
            rows = [examples[index] for index in batch]
            width = max(len(ids) for ids, _ in rows)
            input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
            labels = torch.full((len(rows), width), -100, dtype=torch.long)
            for row_index, (ids, row_labels) in enumerate(rows):
                input_ids[row_index, : len(ids)] = torch.tensor(ids)
                attention_mask[row_index, : len(ids)] = 1
                labels[row_index, : len(ids)] = torch.tensor(row_labels)
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.3f}")
    progress.close()
    model.eval()
    return losses


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.05 + 0.95 * 0.5 * (1.0 + torch.cos(torch.tensor(progress * torch.pi)).item())
