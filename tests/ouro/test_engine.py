"""The generation engine on a tiny random Llama with real PEFT LoRA adapters."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ouro.engine import (
    AdapterIncompatibleError,
    AdapterNotFoundError,
    AsyncEngine,
    GenerationEngine,
    GenerationRequest,
    IncrementalDetokenizer,
    InvalidRequestError,
    SamplingParams,
    StreamDelta,
)
from ouro.engine.async_engine import INLINE_PROMPT_CHARS
from tests.fixtures.models import LORA_TARGETS

SYSTEM_PROMPT = "You are Ouro, a friendly and helpful assistant."
CONVERSATIONS = [
    [{"role": "user", "content": "Hello"}],
    [{"role": "user", "content": "What is AI? Tell me everything you know about it."}],
    [
        {"role": "user", "content": "Hi, how is it going?"},
        {"role": "assistant", "content": "Good."},
        {"role": "user", "content": "Do you like movies?"},
    ],
    [{"role": "user", "content": "Tell me a joke"}],
]


def load_engine(model_dir: Path, max_context_tokens: int = 200) -> GenerationEngine:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return GenerationEngine(
        model, tokenizer, system_prompt=SYSTEM_PROMPT, max_context_tokens=max_context_tokens
    )


@pytest.fixture
def engine(tiny_random_model_dir: Path) -> GenerationEngine:
    return load_engine(tiny_random_model_dir)


@pytest.fixture
def adapters(tiny_random_model_dir: Path, make_lora_adapter) -> dict[str, Path]:
    return {
        name: make_lora_adapter(tiny_random_model_dir, seed) for name, seed in [("a", 1), ("b", 2)]
    }


def request(index: int, adapter: str | None = None, **params) -> GenerationRequest:
    params.setdefault("max_tokens", 12)
    return GenerationRequest(
        messages=CONVERSATIONS[index % len(CONVERSATIONS)],
        params=SamplingParams(**params),
        adapter=adapter,
        request_id=f"r{index}",
    )


def reference_generate(model_dir: Path, adapter_dir: Path | None, engine, requests) -> list[str]:
    """The one-request-at-a-time way: a fresh model with one adapter, HF generate per request."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir).eval()
    texts = []
    for req in requests:
        prompt = torch.tensor([engine.prompt_ids(req)])
        with torch.inference_mode():
            output = model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=req.params.max_tokens,
                do_sample=False,
                eos_token_id=sorted(engine.end_ids),
                pad_token_id=engine.pad_id,
            )
        texts.append(
            engine.tokenizer.decode(output[0, prompt.shape[1] :], skip_special_tokens=True)
        )
    return texts


def test_mixed_adapter_batch_equals_each_adapter_run_alone(engine, adapters, tiny_random_model_dir):
    for name, path in adapters.items():
        engine.add_adapter(name, path)
    names = [None, "a", "b", "a", None, "b", "b", None]
    batch = [request(index, adapter, max_tokens=10 + index) for index, adapter in enumerate(names)]

    mixed = engine.generate(batch)

    for req, output in zip(batch, mixed, strict=True):
        assert output == engine.generate([req])[0]
    for adapter in (None, "a", "b"):
        rows = [index for index, req in enumerate(batch) if req.adapter == adapter]
        adapter_dir = adapters[adapter] if adapter else None
        expected = reference_generate(
            tiny_random_model_dir, adapter_dir, engine, [batch[index] for index in rows]
        )
        assert [mixed[index].text for index in rows] == expected
    # The adapters really change the answers, so the comparison above means something.
    variants = engine.generate([request(1, name) for name in (None, "a", "b")])
    assert len({output.text for output in variants}) == 3


def test_an_adapter_on_the_top_layer_only_batches_with_full_ones(
    engine, adapters, tiny_random_model_dir, tmp_path
):
    """A recipe may put LoRA on the top layers only (``lora_layers``); the bank then holds
    that adapter's columns in those layers and none below, next to adapters on every layer."""
    torch.manual_seed(3)
    top_only = LoraConfig(
        r=4, target_modules=LORA_TARGETS, layers_to_transform=[1], init_lora_weights=False
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_random_model_dir)
    get_peft_model(base, top_only).save_pretrained(tmp_path / "top")
    engine.add_adapter("a", adapters["a"])
    engine.add_adapter("top", tmp_path / "top")
    batch = [request(index, adapter) for index, adapter in enumerate(["top", "a", None, "top"])]

    mixed = engine.generate(batch)

    rows = [0, 3]
    expected = reference_generate(
        tiny_random_model_dir, tmp_path / "top", engine, [batch[i] for i in rows]
    )
    assert [mixed[i].text for i in rows] == expected
    assert mixed[1] == engine.generate([batch[1]])[0]
    assert mixed[0].text != engine.generate([request(0)])[0].text


def test_adapters_of_other_ranks_and_modules_batch_among_many_resident(
    engine, adapters, tiny_random_model_dir, tmp_path
):
    """Rank 4 on attention, rank 16 on the MLP, next to rank-8 adapters on everything, a
    few of them unused: each row generates what PEFT generates with its adapter alone."""
    configs = {
        "r4-attention": LoraConfig(
            r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
        "r16-mlp": LoraConfig(
            r=16, lora_alpha=8, target_modules=["gate_proj", "down_proj"], init_lora_weights=False
        ),
    }
    for seed, (name, config) in enumerate(configs.items()):
        torch.manual_seed(10 + seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_random_model_dir)
        get_peft_model(base, config).save_pretrained(tmp_path / name)
    for name, path in adapters.items():
        engine.add_adapter(name, path)
    for name in configs:
        engine.add_adapter(name, tmp_path / name)
    names = ["r16-mlp", None, "r4-attention", "r16-mlp", "r4-attention"]
    batch = [request(index, adapter) for index, adapter in enumerate(names)]

    mixed = engine.generate(batch)

    for name in configs:
        rows = [index for index, adapter in enumerate(names) if adapter == name]
        expected = reference_generate(
            tiny_random_model_dir, tmp_path / name, engine, [batch[i] for i in rows]
        )
        assert [mixed[i].text for i in rows] == expected
    assert mixed[1] == engine.generate([batch[1]])[0]


def test_base_rows_are_unaffected_by_loaded_adapters(engine, adapters):
    batch = [request(index) for index in range(4)]
    before = engine.generate(batch)
    for name, path in adapters.items():
        engine.add_adapter(name, path)
    mixed = [request(0), request(1, "a"), request(2), request(3, "b")]
    after = engine.generate(mixed)
    assert after[0] == before[0]
    assert after[2] == before[2]
    assert after[1] != before[1]
    assert after[3] != before[3]


def test_greedy_generation_is_deterministic(engine, adapters):
    engine.add_adapter("a", adapters["a"])
    batch = [request(index, "a" if index % 2 else None) for index in range(4)]
    assert engine.generate(batch) == engine.generate(batch)


def test_seeded_sampling_is_reproducible_and_seed_dependent(engine):
    sampled = [request(1, temperature=1.0, seed=seed, max_tokens=16) for seed in (7, 7, 8)]
    first, second, other = engine.generate(sampled)
    assert first.text == second.text
    assert first.text != other.text
    # The seed follows the request, not its place in the batch.
    assert engine.generate([request(2), sampled[0]])[1].text == first.text


def test_tiny_top_p_sampling_equals_greedy(engine):
    greedy = engine.generate([request(1, max_tokens=16)])[0]
    nucleus = engine.generate([request(1, max_tokens=16, temperature=1.5, top_p=1e-6, seed=3)])[0]
    assert nucleus.text == greedy.text


def test_each_request_gets_its_own_max_tokens(engine):
    outputs = engine.generate([request(index, max_tokens=3 + 4 * index) for index in range(4)])
    for index, output in enumerate(outputs):
        assert output.finish_reason == "length"
        assert output.completion_tokens == 3 + 4 * index


def test_stop_strings_end_the_answer_without_the_stop_string(engine):
    full = engine.generate([request(1, max_tokens=24)])[0].text
    stop = full[6:9]
    cut = full.index(stop)
    stopped, untouched = engine.generate(
        [request(1, max_tokens=24, stop=("never-generated", stop)), request(1, max_tokens=24)]
    )
    assert stopped.text == full[:cut]
    assert stopped.finish_reason == "stop"
    assert stopped.completion_tokens < untouched.completion_tokens
    assert untouched.text == full


def stream_each(engine, batch, *, on_loop=None) -> list[list[StreamDelta]]:
    """Every request of ``batch`` streamed at once through an AsyncEngine: each one's
    deltas. ``on_loop(loop)`` runs on the event loop first."""

    async def stream_all() -> list[list[StreamDelta]]:
        if on_loop is not None:
            on_loop(asyncio.get_running_loop())

        async def collect(req) -> list[StreamDelta]:
            return [delta async for delta in runner.generate(req)]

        return await asyncio.gather(*(collect(req) for req in batch))

    runner = AsyncEngine(engine)
    runner.start()
    try:
        return asyncio.run(stream_all())
    finally:
        runner.shutdown()


def test_streamed_text_equals_generated_text_for_a_mixed_batch(engine, adapters):
    for name, path in adapters.items():
        engine.add_adapter(name, path)
    full = engine.generate([request(1, max_tokens=20)])[0].text
    batch = [
        request(0, None, max_tokens=5),
        request(1, "a", max_tokens=20),
        request(2, "b", max_tokens=9, stop=(full[4:6],)),
        request(1, None, max_tokens=20, stop=(full[4:6],)),
    ]
    expected = engine.generate(batch)
    streams = stream_each(engine, batch)
    for output, deltas in zip(expected, streams, strict=True):
        assert "".join(delta.text for delta in deltas) == output.text
        assert [delta.finish_reason for delta in deltas[:-1]] == [None] * (len(deltas) - 1)
        assert deltas[-1].finish_reason == output.finish_reason
        assert deltas[-1].completion_tokens == output.completion_tokens


def test_one_step_of_many_streams_wakes_the_event_loop_once(engine):
    """Deltas the engine thread posts before the loop runs reach it in one wake-up."""
    batch = [request(index, max_tokens=16) for index in range(4)]
    expected = [output.text for output in engine.generate(batch)]
    wakeups = 0

    def count_wakeups(loop: asyncio.AbstractEventLoop) -> None:
        original = loop.call_soon_threadsafe

        def counting(callback, *args, **kwargs):
            nonlocal wakeups
            wakeups += threading.current_thread().name == "ouro-engine"
            return original(callback, *args, **kwargs)

        loop.call_soon_threadsafe = counting

    steps_before = engine.stats().steps
    streams = stream_each(engine, batch, on_loop=count_wakeups)
    assert ["".join(delta.text for delta in deltas) for deltas in streams] == expected
    # However busy the machine: the loop may run between two rows' posts, but a step's
    # deltas wait for the step's end.
    assert 0 < wakeups <= engine.stats().steps - steps_before


def test_a_long_conversation_is_tokenized_off_the_event_loop(engine):
    """Conversations past INLINE_PROMPT_CHARS are formatted in a worker thread; the
    answer is the same as the engine's own."""
    conversation = []
    while sum(len(message["content"]) for message in conversation) <= INLINE_PROMPT_CHARS:
        turn = len(conversation)
        conversation += [
            {"role": "user", "content": f"Question number {turn} about the weather"},
            {"role": "assistant", "content": f"Answer number {turn}: sunny"},
        ]
    conversation.append({"role": "user", "content": "And tomorrow?"})
    long_request = GenerationRequest(conversation, SamplingParams())  # older turns truncated
    short_request = request(0)
    threads: dict[str, str] = {}
    original = engine.prompt_ids

    def recording(req):
        threads["long" if req is long_request else "short"] = threading.current_thread().name
        return original(req)

    engine.prompt_ids = recording
    runner = AsyncEngine(engine)
    runner.start()

    async def answer(req) -> str:
        return "".join([delta.text async for delta in runner.generate(req, stream=False)])

    try:
        answers = [asyncio.run(answer(req)) for req in (long_request, short_request)]
    finally:
        runner.shutdown()
        del engine.prompt_ids
    assert threads["short"] == "MainThread"  # the loop's thread: no hop for a short one
    assert threads["long"] != "MainThread"
    assert answers == [output.text for output in engine.generate([long_request, short_request])]


def test_usage_counts_prompt_and_completion_tokens(engine):
    req = request(2, max_tokens=7)
    output = engine.generate([req])[0]
    assert output.prompt_tokens == len(engine.prompt_ids(req))
    assert output.prompt_tokens == len(
        engine.tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM_PROMPT}, *req.messages],
            add_generation_prompt=True,
            return_dict=True,
        )["input_ids"]
    )
    assert output.completion_tokens == 7


def test_long_conversations_are_truncated_to_the_context(tiny_random_model_dir):
    engine = load_engine(tiny_random_model_dir, max_context_tokens=120)
    long_conversation = []
    for turn in range(30):
        long_conversation += [
            {"role": "user", "content": f"Question number {turn} about something"},
            {"role": "assistant", "content": f"Answer number {turn}"},
        ]
    long_conversation.append({"role": "user", "content": "The latest question"})
    output = engine.generate([GenerationRequest(long_conversation, SamplingParams(max_tokens=4))])
    assert output[0].prompt_tokens <= 120
    assert output[0].completion_tokens == 4


def test_concurrent_callers_get_the_same_answers_as_sequential_ones(engine, adapters):
    engine.add_adapter("a", adapters["a"])
    batches = [
        [request(index + offset, "a" if (index + offset) % 2 else None) for index in range(3)]
        for offset in range(6)
    ]
    expected = [engine.generate(batch) for batch in batches]

    def churn() -> None:  # loading and unloading another adapter meanwhile
        for _ in range(3):
            engine.add_adapter("b", adapters["b"])
            engine.remove_adapter("b")

    with ThreadPoolExecutor(max_workers=7) as pool:
        churning = pool.submit(churn)
        futures = [pool.submit(engine.generate, batch) for batch in batches]
        results = [future.result() for future in futures]  # re-raises a worker's error
        churning.result()
    assert results == expected


def test_missing_adapter_directory_is_a_typed_error(engine, tmp_path):
    with pytest.raises(AdapterNotFoundError):
        engine.add_adapter("gone", tmp_path / "does-not-exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterNotFoundError):
        engine.add_adapter("empty", tmp_path / "empty")
    assert engine.adapter_names() == []


def test_unknown_adapter_in_a_request_is_a_typed_error(engine, adapters):
    with pytest.raises(AdapterNotFoundError):
        engine.generate([request(0, "nope")])
    engine.add_adapter("a", adapters["a"])
    engine.remove_adapter("a")
    with pytest.raises(AdapterNotFoundError):
        engine.add_request(request(0, "a"), sink=None)
    with pytest.raises(AdapterNotFoundError):
        engine.remove_adapter("a")


@pytest.fixture(scope="module")
def wrong_shape_adapter(tmp_path_factory, tiny_random_model_dir) -> Path:
    """A LoRA adapter made for a Llama of another width."""
    config = LlamaConfig.from_pretrained(tiny_random_model_dir)
    config.hidden_size, config.intermediate_size = 32, 48
    model = LlamaForCausalLM(config)
    adapter_dir = tmp_path_factory.mktemp("wrong-shape-lora")
    get_peft_model(model, LoraConfig(r=4, target_modules=LORA_TARGETS)).save_pretrained(adapter_dir)
    return adapter_dir


@pytest.fixture(scope="module")
def unsupported_adapters(tmp_path_factory, tiny_random_model_dir) -> dict[str, Path]:
    """PEFT adapters the engine does not serve: DoRA, and one that retrains whole modules."""
    configs = {
        "dora": LoraConfig(r=4, target_modules=["q_proj"], use_dora=True),
        "modules-to-save": LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]),
    }
    paths = {}
    for name, config in configs.items():
        model = AutoModelForCausalLM.from_pretrained(tiny_random_model_dir)
        paths[name] = tmp_path_factory.mktemp(name)
        get_peft_model(model, config).save_pretrained(paths[name])
    return paths


def test_incompatible_first_adapter_leaves_the_base_model_as_it_was(
    engine, adapters, wrong_shape_adapter, tmp_path
):
    batch = [request(index) for index in range(3)]
    before = engine.generate(batch)
    with pytest.raises(AdapterIncompatibleError):
        engine.add_adapter("wrong", wrong_shape_adapter)
    other_modules = tmp_path / "other-modules"
    shutil.copytree(adapters["a"], other_modules)
    config = json.loads((other_modules / "adapter_config.json").read_text())
    config["target_modules"] = ["query_key_value"]  # a module name this Llama does not have
    (other_modules / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterIncompatibleError):
        engine.add_adapter("other-modules", other_modules)
    assert engine.adapter_names() == []
    assert engine.generate(batch) == before
    assert not any("lora" in name for name, _ in engine.model.named_modules())


def test_incompatible_adapter_leaves_loaded_adapters_working(
    engine, adapters, wrong_shape_adapter, unsupported_adapters, tmp_path
):
    engine.add_adapter("a", adapters["a"])
    batch = [request(0, "a"), request(1), request(2, "a")]
    before = engine.generate(batch)

    with pytest.raises(AdapterIncompatibleError):
        engine.add_adapter("wrong", wrong_shape_adapter)
    broken = tmp_path / "broken"
    shutil.copytree(adapters["b"], broken)
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA", "r": "eight"')
    with pytest.raises(AdapterIncompatibleError):
        engine.add_adapter("broken", broken)

    for unsupported in ("dora", "modules-to-save"):
        with pytest.raises(AdapterIncompatibleError):
            engine.add_adapter(unsupported, unsupported_adapters[unsupported])

    assert engine.adapter_names() == ["a"]
    assert engine.generate(batch) == before
    engine.add_adapter("b", adapters["b"])  # and new adapters still load
    assert engine.adapter_names() == ["a", "b"]


def test_removing_the_last_adapter_restores_the_plain_base_model(engine, adapters):
    batch = [request(index) for index in range(3)]
    before = engine.generate(batch)
    engine.add_adapter("a", adapters["a"])
    engine.add_adapter("b", adapters["b"])
    engine.remove_adapter("a")
    assert engine.adapter_names() == ["b"]
    engine.remove_adapter("b")
    assert engine.adapter_names() == []
    assert engine.generate(batch) == before
    assert not isinstance(engine.model, PeftModel)


def test_bad_sampling_params_are_rejected():
    for bad in [{"max_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"stop": ("",)}]:
        with pytest.raises(InvalidRequestError):
            SamplingParams(**bad)


def test_detokenizer_never_emits_half_a_character(engine):
    text = "Héllo 🙂 wörld ✓ done"
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    detokenizer = IncrementalDetokenizer(engine.token_decoder)
    pieces = [detokenizer.add(token) for token in ids]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) + detokenizer.flush() == text
    assert len(ids) > len(text.split())  # the emoji really was split over several tokens


def test_detokenizer_holds_back_a_possible_stop_string(engine):
    detokenizer = IncrementalDetokenizer(engine.token_decoder, stop=("END!",))
    pieces = [
        detokenizer.add(token)
        for token in engine.tokenizer("one two EN three END! four", add_special_tokens=False)[
            "input_ids"
        ]
    ]
    assert "".join(pieces) == "one two EN three "
    assert detokenizer.stopped


LONG_TEXT = "Héllo 🙂 wörld ✓ 日本語のテキスト 👩‍👩‍👧 naïve café — «quotes» 🚀🔥 " * 40
"""Thousands of tokens, many characters split over several byte-level tokens."""


def full_decode(engine, ids: list[int]) -> str:
    return engine.tokenizer.decode(
        ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )


def test_detokenizer_streams_the_full_decode_of_long_answers(engine):
    ids = engine.tokenizer(LONG_TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) > 2000
    detokenizer = IncrementalDetokenizer(engine.token_decoder)
    pieces = [detokenizer.add(token) for token in ids]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) + detokenizer.flush() == full_decode(engine, ids) == LONG_TEXT

    # Any token sequence, special tokens and stray bytes of broken characters included.
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(len(engine.tokenizer)) for _ in range(rng.randrange(1, 1500))]
        detokenizer = IncrementalDetokenizer(engine.token_decoder)
        streamed = "".join(detokenizer.add(token) for token in ids) + detokenizer.flush()
        assert streamed == full_decode(engine, ids)

    # A stop string at the end of a long answer still cuts it exactly.
    ids = engine.tokenizer(LONG_TEXT + "END! more", add_special_tokens=False)["input_ids"]
    detokenizer = IncrementalDetokenizer(engine.token_decoder, stop=("END!", "never"))
    pieces = [detokenizer.add(token) for token in ids]
    assert "".join(pieces) == LONG_TEXT
    assert detokenizer.stopped


def test_detokenizer_work_per_token_does_not_grow_with_length(engine):
    decoded: list[int] = []
    """How many tokens each decode call was given."""

    class CountingDecoder:
        special_ids = engine.token_decoder.special_ids

        def decode(self, ids: list[int]) -> str:
            decoded.append(len(ids))
            return engine.token_decoder.decode(ids)

    ids = engine.tokenizer(LONG_TEXT, add_special_tokens=False)["input_ids"]
    detokenizer = IncrementalDetokenizer(CountingDecoder(), stop=("END!",))
    work = []
    for token in ids:
        calls, tokens = len(decoded), sum(decoded)
        detokenizer.add(token)
        work.append((len(decoded) - calls, sum(decoded) - tokens))
    assert max(calls for calls, _ in work) <= 2
    assert max(tokens for _, tokens in work) <= 16  # a window of a few tokens, never the list
    first, last = work[:500], work[-500:]  # the text repeats: the same work at either end
    assert sum(tokens for _, tokens in last) <= sum(tokens for _, tokens in first) * 1.05


def test_streamed_answer_is_the_decode_of_its_tokens(engine):
    """Random tokens from a random model, through the engine: text equals the ids' decode."""
    params = {"max_tokens": 120, "temperature": 2.0, "logprobs": True}
    outputs = engine.generate([request(index, seed=index, **params) for index in range(4)])
    for output in outputs:
        ids = [position.chosen.token_id for position in output.logprobs]
        assert output.completion_tokens == len(ids) > 0
        assert output.text == full_decode(engine, ids)
    assert max(output.completion_tokens for output in outputs) > 60


def test_peft_forward_honours_adapter_names_per_row(tiny_random_model_dir, adapters):
    """What the engine relies on: one forward, each row through its own adapter (or none)."""
    base = AutoModelForCausalLM.from_pretrained(tiny_random_model_dir).eval()
    input_ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12], [5, 6, 7, 8]])
    with torch.inference_mode():
        plain = base(input_ids=input_ids).logits
    model = PeftModel.from_pretrained(base, adapters["a"], adapter_name="a")
    model.load_adapter(adapters["b"], adapter_name="b")
    model.eval()
    with torch.inference_mode():
        mixed = model(input_ids=input_ids, adapter_names=["a", "__base__", "b"]).logits
        model.set_adapter("a")
        only_a = model(input_ids=input_ids).logits
        model.set_adapter("b")
        only_b = model(input_ids=input_ids).logits
    torch.testing.assert_close(mixed[0], only_a[0])
    torch.testing.assert_close(mixed[1], plain[1])
    torch.testing.assert_close(mixed[2], only_b[2])
    assert not torch.allclose(only_a[0], plain[0])
