"""smollm2-135m: the GGUF converted once into the cache, ChatML with Ouro's system prompt,
assistant-only loss marks, and a real answer through the engine."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, LlamaForCausalLM

from ouro.chat import CHATML_TEMPLATE, ChatFormatter
from ouro.embedded import SMOLLM2_MODEL, build_embedded_model
from ouro.embedded.cache import BUILD_FILE
from ouro.embedded.smollm2 import conversion_key, file_sha256, gguf_path
from ouro.engine import GenerationEngine, GenerationRequest, SamplingParams
from ouro.settings import DEFAULT_BASE_MODEL, OuroSettings
from tests.fixtures.models import TEST_MODEL_CACHE

SYSTEM = "You are Ouro, a friendly and helpful assistant."


def test_smollm2_is_the_default_base_model(tmp_path: Path) -> None:
    assert OuroSettings(data_dir=tmp_path).base_model == DEFAULT_BASE_MODEL == SMOLLM2_MODEL


def test_conversion_is_cached_by_the_gguf_hash_and_loads_as_a_plain_llama(
    smollm2_dir: Path,
) -> None:
    key = conversion_key(file_sha256(gguf_path()))
    assert smollm2_dir.name == f"{SMOLLM2_MODEL}-{key}"
    build = json.loads((smollm2_dir / BUILD_FILE).read_text())
    assert build["gguf_sha256"] == file_sha256(gguf_path())
    assert (smollm2_dir / "model.safetensors").is_file()

    weights = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert build_embedded_model(SMOLLM2_MODEL, TEST_MODEL_CACHE) == smollm2_dir
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == weights  # not redone

    model = LlamaForCausalLM.from_pretrained(smollm2_dir)
    assert not hasattr(model.config, "quantization_config")
    assert model.config.num_hidden_layers == 30


def test_chatml_uses_ouros_system_prompt_and_marks_assistant_tokens(smollm2_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.chat_template == CHATML_TEMPLATE
    formatter = ChatFormatter(tokenizer, SYSTEM, max_context_tokens=512)

    prompt = tokenizer.decode(formatter.prompt_ids([{"role": "user", "content": "Hi"}]))
    assert prompt == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert "SmolLM" not in prompt

    messages = formatter.with_system_prompt(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]
    )
    encoded = tokenizer.apply_chat_template(
        messages, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    marked = [token for token, keep in zip(ids, mask, strict=True) if keep]
    assert tokenizer.decode(marked) == "Hello there.<|im_end|>"


def test_smollm2_answers_a_plain_question_and_stops_at_end_of_turn(smollm2_dir: Path) -> None:
    model = LlamaForCausalLM.from_pretrained(smollm2_dir)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    engine = GenerationEngine(model, tokenizer, system_prompt=SYSTEM, max_context_tokens=512)
    request = GenerationRequest(
        [{"role": "user", "content": "What is the capital of France?"}],
        SamplingParams(max_tokens=48),
    )
    (output,) = engine.generate([request])
    assert "Paris" in output.text
    assert "<|im_end|>" not in output.text
