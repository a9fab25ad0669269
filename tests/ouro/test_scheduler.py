"""Continuous batching: requests join and leave the running batch at any step.

The engine is driven step by step here (``engine.step()``), so each test says exactly at
which step a request joins, is aborted, or an adapter changes; the async interface is
tested at the end. A request's greedy text must never depend on its neighbours.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from ouro.engine import (
    MIN_TEMPERATURE,
    AsyncEngine,
    EngineLimits,
    EngineOverloadedError,
    GenerationEngine,
    GenerationRequest,
    InvalidRequestError,
    RequestAbortedError,
    SamplingParams,
    StreamDelta,
    sampling,
)

SYSTEM_PROMPT = "You are Ouro, a friendly and helpful assistant."
QUESTIONS = [
    "Hello",
    "What is AI? Tell me everything you know about it.",
    "Do you like movies?",
    "Tell me a joke",
    "Where do you live?",
]


class RecordingSink:
    """Collects one request's deltas (or its error), with the step each arrived in."""

    def __init__(self) -> None:
        self.deltas: list[StreamDelta] = []
        self.steps: list[int] = []
        self.error: BaseException | None = None
        self.step = 0
        self.seq_id: int | None = None
        """The engine's id for the request (what ``abort`` takes)."""

    @property
    def done(self) -> bool:
        return self.error is not None or bool(self.deltas and self.deltas[-1].finish_reason)

    @property
    def text(self) -> str:
        return "".join(delta.text for delta in self.deltas)

    def put(self, delta: StreamDelta) -> None:
        self.deltas.append(delta)
        self.steps.append(self.step)

    def fail(self, error: BaseException) -> None:
        self.error = error


class Driver:
    """Steps an engine and tells every sink which step it is."""

    def __init__(self, engine: GenerationEngine) -> None:
        self.engine = engine
        self.sinks: list[RecordingSink] = []
        self.steps = 0

    def submit(self, req: GenerationRequest) -> RecordingSink:
        sink = RecordingSink()
        sink.seq_id = self.engine.add_request(req, sink)
        self.sinks.append(sink)
        return sink

    def step(self, times: int = 1) -> None:
        for _ in range(times):
            self.steps += 1
            for sink in self.sinks:
                sink.step = self.steps
            self.engine.step()

    def finish(self, limit: int = 500) -> None:
        while not all(sink.done for sink in self.sinks):
            assert self.steps < limit, "the engine stopped making progress"
            self.step()


def load_engine(model_dir: Path, **limits) -> GenerationEngine:
    return GenerationEngine(
        AutoModelForCausalLM.from_pretrained(model_dir),
        AutoTokenizer.from_pretrained(model_dir),
        system_prompt=SYSTEM_PROMPT,
        max_context_tokens=200,
        limits=EngineLimits(**limits),
    )


def request(index: int, adapter: str | None = None, **params) -> GenerationRequest:
    params.setdefault("max_tokens", 14)
    return GenerationRequest(
        messages=[{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
        params=SamplingParams(**params),
        adapter=adapter,
        request_id=f"r{index}",
    )


@pytest.fixture
def engine(tiny_random_model_dir: Path, make_lora_adapter) -> GenerationEngine:
    engine = load_engine(tiny_random_model_dir)
    for name, seed in [("a", 1), ("b", 2)]:
        engine.add_adapter(name, make_lora_adapter(tiny_random_model_dir, seed))
    return engine


def alone(engine: GenerationEngine, req: GenerationRequest) -> str:
    return engine.generate([req])[0].text


@pytest.mark.parametrize("join_at", [0, 1, 4, 9])
def test_a_request_joining_at_step_k_gets_the_text_it_gets_alone(engine, join_at):
    neighbours = [request(0, "a"), request(1, None, max_tokens=20), request(2, "b")]
    newcomer = request(3, "a", max_tokens=12)
    expected = [alone(engine, req) for req in [*neighbours, newcomer]]

    driver = Driver(engine)
    sinks = [driver.submit(req) for req in neighbours]
    driver.step(join_at)
    sinks.append(driver.submit(newcomer))
    driver.finish()
    assert [sink.text for sink in sinks] == expected
    assert engine.stats().running_requests == 0


def test_a_full_batch_gives_each_request_its_text_alone(engine):
    batch = [request(index, [None, "a", "b"][index % 3], max_tokens=10) for index in range(12)]
    expected = [alone(engine, req) for req in batch]
    assert [output.text for output in engine.generate(batch)] == expected


def test_stop_strings_end_a_row_in_a_running_batch(engine):
    full = alone(engine, request(1, max_tokens=20))
    stop = full[5:8]
    stopped_req = request(1, max_tokens=20, stop=(stop,))
    driver = Driver(engine)
    other = driver.submit(request(0, "b", max_tokens=20))
    driver.step(2)
    stopped = driver.submit(stopped_req)
    driver.finish()
    assert stopped.text == full[: full.index(stop)]
    assert stopped.deltas[-1].finish_reason == "stop"
    assert other.text == alone(engine, request(0, "b", max_tokens=20))


def test_aborted_neighbours_leave_at_once_and_the_others_are_unchanged(engine):
    batch = [request(index, [None, "a"][index % 2], max_tokens=16) for index in range(4)]
    expected = [alone(engine, req) for req in batch]
    driver = Driver(engine)
    sinks = [driver.submit(req) for req in batch]
    driver.step(3)
    seen = [len(sink.deltas) for sink in sinks]
    engine.abort(sinks[1].seq_id)
    engine.abort(sinks[2].seq_id)
    driver.step()
    assert engine.stats().running_requests == 2
    assert engine.stats().aborted_requests == 2
    driver.finish()
    for index in (1, 2):
        assert isinstance(sinks[index].error, RequestAbortedError)
        assert len(sinks[index].deltas) == seen[index], "nothing after the abort"
    assert [sinks[0].text, sinks[3].text] == [expected[0], expected[3]]


def test_abort_names_one_request_by_the_engine_id_not_the_clients(engine):
    """Two clients may send the same x-request-id: aborting one leaves the other alone."""
    first, second = request(0, max_tokens=16), request(1, max_tokens=16)
    second = GenerationRequest(second.messages, second.params, request_id=first.request_id)
    expected = alone(engine, second)
    driver = Driver(engine)
    sinks = [driver.submit(first), driver.submit(second)]
    assert sinks[0].seq_id != sinks[1].seq_id
    driver.step(2)
    engine.abort(sinks[0].seq_id)
    engine.abort(sinks[0].seq_id + 1000)  # an id the engine never gave: nothing happens
    driver.finish()
    assert isinstance(sinks[0].error, RequestAbortedError)
    assert sinks[1].error is None and sinks[1].text == expected
    assert engine.stats().aborted_requests == 1
    engine.abort(sinks[1].seq_id)  # finished: a no-op
    engine.step()
    assert engine.stats().aborted_requests == 1


def test_a_seeded_sampled_request_gives_the_same_text_whatever_its_neighbours(engine):
    sampled = request(2, "a", temperature=0.9, seed=1234, max_tokens=16)
    reference = alone(engine, sampled)
    assert reference != alone(engine, request(2, "a", temperature=0.9, seed=99, max_tokens=16))
    for join_at in (0, 3):
        driver = Driver(engine)
        driver.submit(request(0, None, temperature=1.0, max_tokens=20))
        driver.submit(request(4, "b", max_tokens=18))
        driver.step(join_at)
        sink = driver.submit(sampled)
        driver.finish()
        assert sink.text == reference


def test_requests_past_the_kv_budget_wait_and_all_complete(tiny_random_model_dir):
    probe = load_engine(tiny_random_model_dir)
    reqs = [request(index, max_tokens=12) for index in range(5)]
    expected = [alone(probe, req) for req in reqs]
    sizes = [len(probe.prompt_ids(req)) + 12 for req in reqs]
    engine = load_engine(tiny_random_model_dir, max_kv_cache_tokens=max(sizes) * 2)

    driver = Driver(engine)
    sinks = [driver.submit(req) for req in reqs]
    most_running, most_usage = 0, 0.0
    while not all(sink.done for sink in sinks):
        driver.step()
        stats = engine.stats()
        most_running = max(most_running, stats.running_requests)
        most_usage = max(most_usage, stats.kv_cache_usage)
    assert most_running == 2
    assert 0 < most_usage <= 1
    assert [sink.text for sink in sinks] == expected


def test_past_the_queue_bound_a_request_is_refused(tiny_random_model_dir):
    engine = load_engine(tiny_random_model_dir, max_waiting_requests=2)
    driver = Driver(engine)
    driver.submit(request(0))
    driver.submit(request(1))
    with pytest.raises(EngineOverloadedError):
        driver.submit(request(2))
    driver.finish()
    assert engine.stats().waiting_requests == 0


def test_a_long_prompt_is_prefilled_in_chunks_while_others_decode(tiny_random_model_dir):
    engine = load_engine(tiny_random_model_dir, max_prefill_tokens_per_step=8)
    long_req = GenerationRequest(
        [{"role": "user", "content": " ".join(QUESTIONS)}],
        SamplingParams(max_tokens=8),
        request_id="long",
    )
    prompt_tokens = len(engine.prompt_ids(long_req))
    assert prompt_tokens > 40
    expected = alone(engine, long_req)
    driver = Driver(engine)
    decoding = driver.submit(request(0, max_tokens=40))
    driver.step(2)
    before = len(decoding.deltas)
    long_sink = driver.submit(long_req)
    chunks = -(-prompt_tokens // 8)
    driver.step(chunks - 1)
    assert not long_sink.deltas, "still prefilling"
    assert len(decoding.deltas) == before + chunks - 1, "one token per step meanwhile"
    driver.finish()
    assert long_sink.text == expected


def test_adapter_changes_between_steps_never_give_a_wrong_adapter_token(engine, tmp_path):
    on_a, on_base = request(0, "a", max_tokens=20), request(1, None, max_tokens=20)
    expected_base = alone(engine, on_base)
    driver = Driver(engine)
    sink_a, sink_base = driver.submit(on_a), driver.submit(on_base)
    driver.step(3)
    engine.remove_adapter("a")  # rows on it are aborted, never continued without it
    driver.step()
    assert isinstance(sink_a.error, RequestAbortedError)
    assert engine.stats().running_requests == 1
    driver.finish()
    assert sink_base.text == expected_base


class ForbidsEverything:
    """A structured-output constraint whose grammar allows no token at all."""

    finished = False

    def mask_logits(self, logits) -> None:
        logits.fill_(float("-inf"))

    def accept(self, token: int) -> None:
        raise AssertionError("no token can be accepted")


def test_a_row_that_fails_inside_the_engine_fails_alone(engine):
    neighbours = [request(0, "a"), request(1), request(2, temperature=0.8, seed=5)]
    expected = [alone(engine, req) for req in neighbours]
    driver = Driver(engine)
    sinks = [driver.submit(req) for req in neighbours]
    driver.step(2)
    # A sampled row with nothing to draw from, in the same batch as sampled neighbours.
    failing = request(3, temperature=1.0, seed=666)
    failing.constraint = ForbidsEverything
    failed = driver.submit(failing)
    driver.finish()
    assert isinstance(failed.error, sampling.UndrawableRowError)
    assert [sink.text for sink in sinks] == expected
    assert engine.stats().failed_requests == 1


def test_text_that_cannot_be_encoded_is_refused_before_any_work(engine):
    bad = GenerationRequest([{"role": "user", "content": "\ud800x"}], SamplingParams())
    with pytest.raises(InvalidRequestError):
        engine.add_request(bad, RecordingSink())
    assert engine.stats().waiting_requests == 0


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 1e-39},
        {"temperature": 1.1754943508222875e-38},
        {"temperature": 1.0, "top_p": 1e-300},
    ],
)
def test_extreme_sampling_settings_decode_safely(engine, params):
    # A positive temperature below MIN_TEMPERATURE samples at MIN_TEMPERATURE; a tiny top_p
    # keeps the best token only.
    output = engine.generate([request(0, max_tokens=8, seed=3, **params)])[0]
    if "top_p" in params:
        expected = alone(engine, request(0, max_tokens=8))  # greedy
    else:
        expected = alone(engine, request(0, max_tokens=8, seed=3, temperature=MIN_TEMPERATURE))
    assert output.text == expected


def test_seeds_out_of_range_are_refused():
    with pytest.raises(InvalidRequestError):
        SamplingParams(temperature=1, seed=2**64)


# -- the async interface ------------------------------------------------------------------
def test_async_generate_streams_and_a_closed_stream_aborts_its_row(engine):
    runner = AsyncEngine(engine)
    runner.start()
    expected = alone(engine, request(1, max_tokens=24))

    async def scenario() -> tuple[str, list[StreamDelta]]:
        long_stream = runner.generate(request(0, "a", max_tokens=150))
        received = [await anext(long_stream), await anext(long_stream)]
        await long_stream.aclose()  # the client went away after two chunks
        other = [delta async for delta in runner.generate(request(1, max_tokens=24))]
        whole = [delta async for delta in runner.generate(request(1, max_tokens=24), stream=False)]
        assert len(whole) == 1 and whole[0].text == "".join(delta.text for delta in other)
        assert whole[0].first_token_at is not None
        return "".join(delta.text for delta in other), received

    try:
        text, received = asyncio.run(scenario())
        runner.check_health()
    finally:
        runner.shutdown()
    assert len(received) == 2 and received[-1].finish_reason is None
    assert text == expected
    stats = runner.stats()
    assert stats.aborted_requests == 1
    assert stats.running_requests == 0


def test_adding_an_adapter_does_not_wait_for_a_running_generation(
    engine, tiny_random_model_dir, make_lora_adapter
):
    runner = AsyncEngine(engine)
    runner.start()
    third = make_lora_adapter(tiny_random_model_dir, 3)
    finished = threading.Event()

    async def scenario() -> int:
        async def long_generation() -> None:
            async for _ in runner.generate(request(0, max_tokens=180)):
                pass
            finished.set()

        task = asyncio.create_task(long_generation())
        while runner.stats().running_requests == 0:
            await asyncio.sleep(0.01)
        await runner.add_adapter("c", third)
        done_before = finished.is_set()
        steps = runner.stats().steps
        await task
        return done_before, steps

    try:
        done_before, steps_at_load = asyncio.run(scenario())
    finally:
        runner.shutdown()
    assert not done_before, "the load waited for the whole generation"
    assert steps_at_load < 180
    assert "c" in runner.adapter_names()


class ForcedTokens:
    """A constraint that allows exactly one token sequence (a grammar with one sentence)."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens
        self.accepted: list[int] = []

    def mask_logits(self, logits) -> None:
        allowed = logits[self.tokens[len(self.accepted)]].item()
        logits.fill_(float("-inf"))
        logits[self.tokens[len(self.accepted)]] = allowed

    def accept(self, token: int) -> None:
        assert token == self.tokens[len(self.accepted)], "a forbidden token was picked"
        self.accepted.append(token)

    @property
    def finished(self) -> bool:
        return len(self.accepted) == len(self.tokens)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_constrained_row_follows_its_constraint_and_its_neighbours_are_unchanged(
    engine, temperature
):
    target = engine.tokenizer.encode("hello there friend", add_special_tokens=False)
    expected = [alone(engine, request(index)) for index in range(3)]
    driver = Driver(engine)
    free = [driver.submit(request(index)) for index in range(3)]
    constrained = GenerationRequest(
        messages=[{"role": "user", "content": QUESTIONS[1]}],
        params=SamplingParams(max_tokens=40, temperature=temperature, seed=3),
        constraint=lambda: ForcedTokens(target),
        request_id="constrained",
    )
    forced = driver.submit(constrained)
    driver.finish()
    assert [sink.text for sink in free] == expected
    assert forced.error is None
    assert forced.text == engine.tokenizer.decode(target)
    assert forced.deltas[-1].finish_reason == "stop"
    assert forced.deltas[-1].completion_tokens == len(target)
