"""Continuous batching through the real Serve app: no waiting for a batch, abort on disconnect.

It runs twice in CI: as is, behind Serve's proxy actor, and behind Ray Serve's HAProxy
ingress, the chart's default, in a private network (``tests/serve/test_haproxy_ingress.py``).
One app for the module (tiny random model, local MLflow store, no adapters), streaming
every step's text (``stream_interval_s=0``) so a test can stop reading after two chunks.
The registry is polled every ten minutes only: the replicas' periodic reports never come
during the tests, so every abort seen in /metrics was fetched by the scrape itself.
"""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadtests.private_network import current_ingress
from ouro.engine import GenerationEngine, GenerationRequest, SamplingParams
from tests.fixtures.serve import ServeStack

pytestmark = pytest.mark.integration

QUESTIONS = ["Hello there", "What do you like?", "Tell me about the sea", "Good night"]
ABORT_SEEN_S = 3.0
"""How soon after the client goes the abort must be in /metrics: the row leaves at the next
step and the scrape asks the replica for its state then (no waiting for a registry poll)."""


@pytest.fixture(scope="module")
def stack(serve_stack_factory, tiny_random_model_dir: Path) -> ServeStack:
    return serve_stack_factory(
        {
            "base_model": str(tiny_random_model_dir),
            "allow_unauthenticated": True,
            "stream_interval_s": 0,
            "max_tokens_limit": 200,
            "max_context_tokens": 256,
            "registry_poll_interval_s": 600,
        }
    )


@pytest.fixture(scope="module")
def engine(stack: ServeStack) -> GenerationEngine:
    """The same model in this process: what each request must answer."""
    return GenerationEngine.from_settings(stack.settings)


@pytest.fixture(scope="module")
def no_end(engine: GenerationEngine) -> dict[str, float]:
    """A logit_bias that keeps the random model from ending its answer early."""
    return {str(token): -100.0 for token in engine.end_ids}


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
        time.sleep(0.1)


def aborted(stack: ServeStack) -> float:
    return engine_metrics(stack).get("ouro_engine_aborted_requests_total", 0.0)


def wait_for_aborts(stack: ServeStack, aborted_before: float, count: int = 1) -> None:
    """Until /metrics shows ``count`` more aborts and no row running, within ABORT_SEEN_S."""
    wait_for(
        lambda: aborted(stack) >= aborted_before + count,
        ABORT_SEEN_S,
        what=f"{count} abort(s) in /metrics",
    )
    wait_for(
        lambda: engine_metrics(stack)["ouro_engine_running_requests"] == 0,
        ABORT_SEEN_S,
        what="the batch to empty",
    )


def read_then_drop(
    stack: ServeStack, question: str, logit_bias: dict[str, float], chunks_wanted: int = 3
) -> None:
    """Stream an answer of up to 200 tokens, close the connection after ``chunks_wanted``."""
    body = {
        "model": "ouro-base",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 200,
        "stop": [],
        "logit_bias": logit_bias,
        "stream": True,
    }
    chunks = 0
    with httpx.Client(base_url=stack.base_url, timeout=60) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"]:
                    chunks += 1
                if chunks == chunks_wanted:  # the role chunk, then text
                    break


def test_the_api_port_is_answered_by_the_ingress_the_environment_asks_for(
    stack: ServeStack,
) -> None:
    port = httpx.URL(stack.base_url).port
    (listener,) = (
        connection
        for connection in psutil.net_connections(kind="tcp")
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
    )
    name = psutil.Process(listener.pid).name()
    expected = {"haproxy": "haproxy", "proxy": "ray::ProxyActor"}[current_ingress()]
    assert name == expected


def test_a_client_that_closes_its_stream_is_aborted_within_a_step(
    stack: ServeStack, no_end: dict[str, float]
) -> None:
    before = aborted(stack)
    read_then_drop(stack, QUESTIONS[0], no_end)
    # The connection is closed: the row must leave the engine long before 200 tokens.
    wait_for_aborts(stack, before)
    with stack.http() as client:
        answer = client.post(
            "/v1/chat/completions",
            json={
                "model": "ouro-base",
                "messages": [{"role": "user", "content": QUESTIONS[0]}],
                "max_tokens": 8,
            },
        )
    assert answer.status_code == 200
    assert answer.json()["usage"]["completion_tokens"] > 0


def test_three_dropped_streams_show_as_three_aborts_in_metrics_at_once(
    stack: ServeStack, no_end: dict[str, float]
) -> None:
    before = aborted(stack)
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda question: read_then_drop(stack, question, no_end), QUESTIONS[1:4]))
    dropped = time.monotonic()
    wait_for_aborts(stack, before, count=3)
    assert time.monotonic() - dropped < ABORT_SEEN_S
    text = httpx.get(f"{stack.base_url}/metrics", timeout=30).text
    assert "ouro_replica_report_stale{" in text
    assert all(
        sample.value == 0
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ouro_replica_report_stale"
    )


def test_a_client_that_gives_up_on_a_whole_answer_is_aborted_too(
    stack: ServeStack, no_end: dict[str, float]
) -> None:
    before = aborted(stack)
    body = json.dumps(
        {
            "model": "ouro-base",
            "messages": [{"role": "user", "content": QUESTIONS[2]}],
            "max_tokens": 200,
            "n": 4,
            "stop": [],
            "logit_bias": no_end,
        }
    ).encode()
    url = httpx.URL(stack.base_url)
    with socket.create_connection((url.host, url.port), timeout=30) as connection:
        connection.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\n"
            + f"Host: {url.host}:{url.port}\r\nContent-Type: application/json\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        # Hang up once the rows are decoding, long before their 200 tokens.
        wait_for(
            lambda: engine_metrics(stack)["ouro_engine_running_requests"] > 0,
            ABORT_SEEN_S,
            what="the request to be decoding",
        )
    wait_for_aborts(stack, before)


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
