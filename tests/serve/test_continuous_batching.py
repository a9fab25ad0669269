"""Continuous batching through the real Serve app: no waiting for a batch, abort on disconnect.

One app for the module (tiny random model, local MLflow store, no adapters), streaming
every step's text (``stream_interval_s=0``) so a test can stop reading after two chunks.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ouro.engine import GenerationEngine, GenerationRequest, SamplingParams
from tests.fixtures.serve import ServeStack

pytestmark = pytest.mark.integration

QUESTIONS = ["Hello there", "What do you like?", "Tell me about the sea", "Good night"]


@pytest.fixture(scope="module")
def stack(serve_stack_factory, tiny_random_model_dir: Path) -> ServeStack:
    return serve_stack_factory(
        {
            "base_model": str(tiny_random_model_dir),
            "allow_unauthenticated": True,
            "stream_interval_s": 0,
            "max_tokens_limit": 200,
            "max_context_tokens": 256,
        }
    )


@pytest.fixture(scope="module")
def engine(stack: ServeStack) -> GenerationEngine:
    """The same model in this process: what each request must answer."""
    return GenerationEngine.from_settings(stack.settings)


def engine_metrics(stack: ServeStack) -> dict[str, float]:
    """The LLM replicas' engine samples in /metrics (a bucket as ``name{le}``), summed over
    replicas."""
    text = httpx.get(f"{stack.base_url}/metrics", timeout=30).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ouro_engine_"):
                key = sample.name
                if "le" in sample.labels:
                    key += "{" + sample.labels["le"] + "}"
                values[key] = values.get(key, 0.0) + sample.value
    return values


def wait_for(condition, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def wait_for_abort(stack: ServeStack, aborted_before: float) -> None:
    """Until the engine has counted one more abort and no row is running."""
    wait_for(
        lambda: (
            engine_metrics(stack).get("ouro_engine_aborted_requests_total", 0.0) > aborted_before
        ),
        what="the abort to be counted",
    )
    wait_for(
        lambda: engine_metrics(stack)["ouro_engine_running_requests"] == 0,
        what="the batch to empty",
    )


def test_a_client_that_closes_its_stream_is_aborted_within_a_step(stack: ServeStack) -> None:
    before = engine_metrics(stack).get("ouro_engine_aborted_requests_total", 0.0)
    body = {
        "model": "ouro-base",
        "messages": [{"role": "user", "content": QUESTIONS[0]}],
        "max_tokens": 200,
        "stop": [],
        "stream": True,
    }
    chunks = 0
    with httpx.Client(base_url=stack.base_url, timeout=60) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"]:
                    chunks += 1
                if chunks == 3:  # the role chunk, then two chunks of text
                    break
    # The connection is closed: the row must leave the engine long before 200 tokens.
    wait_for_abort(stack, before)
    with stack.http() as client:
        answer = client.post(
            "/v1/chat/completions",
            json={"model": "ouro-base", "messages": body["messages"], "max_tokens": 8},
        )
    assert answer.status_code == 200
    assert answer.json()["usage"]["completion_tokens"] > 0


def test_requests_arriving_at_different_times_get_the_engines_answers(
    stack: ServeStack, engine: GenerationEngine
) -> None:
    jobs = [(QUESTIONS[i % len(QUESTIONS)], 10 + 7 * (i % 3), i % 2 == 0) for i in range(8)]
    expected = [
        engine.generate(
            [GenerationRequest([{"role": "user", "content": q}], SamplingParams(max_tokens=n))]
        )[0].text
        for q, n, _ in jobs
    ]

    def ask(index: int) -> str:
        question, max_tokens, streamed = jobs[index]
        time.sleep(0.05 * index)  # each joins a batch that is already decoding
        client = stack.openai()
        messages = [{"role": "user", "content": question}]
        if not streamed:
            answer = client.chat.completions.create(
                model="ouro-base", messages=messages, max_tokens=max_tokens, temperature=0
            )
            return answer.choices[0].message.content
        stream = client.chat.completions.create(
            model="ouro-base", messages=messages, max_tokens=max_tokens, stream=True
        )
        return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        answers = list(pool.map(ask, range(len(jobs))))
    assert answers == expected
    metrics = engine_metrics(stack)
    # Requests shared steps: some steps ran more than one row.
    assert metrics["ouro_engine_batch_size_count"] > metrics["ouro_engine_batch_size_bucket{1}"]
    assert metrics["ouro_engine_step_seconds_count"] == metrics["ouro_engine_batch_size_count"]
