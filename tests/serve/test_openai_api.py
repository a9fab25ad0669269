"""The OpenAI protocol, errors, auth, limits, feedback and observability of a real app.

One Serve app for the whole module (tiny random model, a real MLflow server with an
empty registered model, API keys configured), called with the official ``openai``
client and with plain HTTP where the client would hide what is sent.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ouro.engine import MAX_CHOICES
from ouro.ledger import LedgerReader
from tests.fixtures.serve import ServeStack

pytestmark = pytest.mark.integration

CLIENT_KEY = "sk-client-" + "a" * 24
ADMIN_KEY = "sk-admin-" + "b" * 24
METRICS_KEY = "sk-metrics-" + "c" * 24
MAX_MESSAGES = 8
MAX_TOKENS_LIMIT = 48
MAX_BODY_BYTES = 20_000
MAX_FIELD_CHARS = 2_000
HELLO = [{"role": "user", "content": "Hello there, how are you?"}]


@pytest.fixture(scope="module")
def stack(serve_stack_factory, mlflow_server: str, tiny_random_model_dir: Path) -> ServeStack:
    return serve_stack_factory(
        {
            "base_model": str(tiny_random_model_dir),
            "mlflow_tracking_uri": mlflow_server,
            "registered_model_name": f"ouro-serve-api-{uuid.uuid4().hex[:8]}",
            "registry_poll_interval_s": 2.0,
            "api_keys": [CLIENT_KEY],
            "admin_api_keys": [ADMIN_KEY],
            "metrics_api_keys": [METRICS_KEY],
            "max_messages": MAX_MESSAGES,
            "max_tokens_limit": MAX_TOKENS_LIMIT,
            "default_max_tokens": 12,
            "max_body_bytes": MAX_BODY_BYTES,
            "max_feedback_field_chars": MAX_FIELD_CHARS,
            "max_running_requests": 4,
            "max_queued_requests": 2,
        }
    )


@pytest.fixture(scope="module")
def client(stack: ServeStack) -> openai.OpenAI:
    return stack.openai(CLIENT_KEY)


@pytest.fixture(scope="module")
def http(stack: ServeStack):
    with stack.http(CLIENT_KEY) as session:
        yield session


# -- chat completions -------------------------------------------------------------------


def test_streamed_text_equals_the_whole_answer_for_greedy_decoding(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="ouro", messages=HELLO, max_tokens=16, temperature=0
    )
    whole = raw.parse()
    assert raw.headers["x-ouro-model-version"] == "ouro-base"
    assert whole.model == "ouro-base"  # no production version registered yet
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens > 0
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model="ouro",
            messages=HELLO,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert {c.model for c in chunks} == {"ouro-base"}
    assert len({c.id for c in chunks}) == 1
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_a_stream_without_usage_ends_with_done_and_no_usage_field(http: httpx.Client) -> None:
    body = {"model": "ouro-base", "messages": HELLO, "max_tokens": 4, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-ouro-model-version"] == "ouro-base"
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("usage" not in chunk for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_max_tokens_stop_and_seed_are_honoured(client: openai.OpenAI) -> None:
    short = client.chat.completions.create(model="ouro-base", messages=HELLO, max_tokens=3)
    assert short.usage.completion_tokens <= 3
    longer = client.chat.completions.create(
        model="ouro-base", messages=HELLO, max_completion_tokens=20, temperature=0
    )
    text = longer.choices[0].message.content
    assert len(text) > 2
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    stopped = client.chat.completions.create(
        model="ouro-base", messages=HELLO, max_tokens=20, temperature=0, stop=[stop]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stop not in stopped.choices[0].message.content
    assert text.startswith(stopped.choices[0].message.content)
    sampled = [
        client.chat.completions.create(
            model="ouro-base", messages=HELLO, max_tokens=12, temperature=1.5, seed=7
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]


def test_unknown_fields_are_accepted_and_ignored(http: httpx.Client) -> None:
    body = {
        "model": "ouro-base",
        "messages": HELLO,
        "max_tokens": 4,
        "frequency_penalty": 0,
        "store": False,
        "user": "someone",
        "metadata": {"x": "y"},
    }
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"


def test_models_lists_the_names_that_resolve(client: openai.OpenAI) -> None:
    models = {model.id: model for model in client.models.list().data}
    assert set(models) == {"ouro", "ouro-base"}  # nothing registered yet
    assert models["ouro"].model_extra["version"] is None
    assert models["ouro-base"].model_extra["parent"] is None
    assert models["ouro"].owned_by == "ouro"


# -- errors -------------------------------------------------------------------------------

TOO_MANY = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}] * 4 + [
    {"role": "user", "content": "and?"}
]
BAD_REQUESTS = [
    # (case, body, status, param, code)
    ("malformed JSON", b'{"model": "ouro", "messages": [', 400, None, "invalid_json"),
    ("not an object", b"[1, 2]", 400, None, None),
    ("model missing", {"messages": HELLO}, 400, "model", None),
    ("messages missing", {"model": "ouro"}, 400, "messages", None),
    ("messages empty", {"model": "ouro", "messages": []}, 400, "messages", None),
    ("messages not a list", {"model": "ouro", "messages": "hi"}, 400, "messages", None),
    (
        "unknown role",
        {"model": "ouro", "messages": [{"role": "robot", "content": "x"}]},
        400,
        "messages.0.role",
        None,
    ),
    (
        "tool message without its call id",
        {"model": "ouro", "messages": [{"role": "tool", "content": "x"}]},
        400,
        "messages.0",
        None,
    ),
    (
        "lone surrogate",
        {"model": "ouro", "messages": [{"role": "user", "content": "\ud800x"}]},
        400,
        "messages.0.content",
        None,
    ),
    (
        "lone surrogate, streamed",
        {"model": "ouro", "messages": [{"role": "user", "content": "\ud800x"}], "stream": True},
        400,
        "messages.0.content",
        None,
    ),
    (
        "seed past 64 bits",
        {"model": "ouro", "messages": HELLO, "temperature": 1, "seed": 18446744073709551616},
        400,
        "seed",
        None,
    ),
    (
        "seed past 64 bits, streamed",
        {"model": "ouro", "messages": HELLO, "seed": 2**64, "stream": True},
        400,
        "seed",
        None,
    ),
    *[
        (
            f"{name} not supported yet",
            {"model": "ouro", "messages": HELLO, name: value},
            400,
            name,
            "unsupported_parameter",
        )
        for name, value in [
            ("functions", [{"name": "f", "parameters": {}}]),
            ("function_call", {"name": "f"}),
            ("modalities", ["text", "audio"]),
            ("audio", {"voice": "alloy", "format": "wav"}),
            ("prediction", {"type": "content", "content": "x"}),
            ("web_search_options", {}),
        ]
    ],
    (
        "content a number",
        {"model": "ouro", "messages": [{"role": "user", "content": 5}]},
        400,
        "messages.0.content",
        None,
    ),
    (
        "last turn not the user's",
        {"model": "ouro", "messages": [*HELLO, {"role": "assistant", "content": "x"}]},
        400,
        "messages",
        None,
    ),
    ("too many messages", {"model": "ouro", "messages": TOO_MANY}, 400, "messages", None),
    (
        "n past its bound",
        {"model": "ouro", "messages": HELLO, "n": MAX_CHOICES + 1},
        400,
        "n",
        None,
    ),
    (
        "temperature too high",
        {"model": "ouro", "messages": HELLO, "temperature": 5},
        400,
        "temperature",
        None,
    ),
    ("top_p zero", {"model": "ouro", "messages": HELLO, "top_p": 0}, 400, "top_p", None),
    (
        "max_tokens zero",
        {"model": "ouro", "messages": HELLO, "max_tokens": 0},
        400,
        "max_tokens",
        None,
    ),
    (
        "max_tokens a string",
        {"model": "ouro", "messages": HELLO, "max_tokens": "many"},
        400,
        "max_tokens",
        None,
    ),
    (
        "max_tokens over the limit",
        {"model": "ouro", "messages": HELLO, "max_tokens": MAX_TOKENS_LIMIT + 1},
        400,
        "max_tokens",
        None,
    ),
    (
        "max_completion_tokens over the limit",
        {"model": "ouro", "messages": HELLO, "max_completion_tokens": 10_000},
        400,
        "max_completion_tokens",
        None,
    ),
    (
        "five stop strings",
        {"model": "ouro", "messages": HELLO, "stop": ["a", "b", "c", "d", "e"]},
        400,
        "stop",
        None,
    ),
    (
        "stream_options without stream",
        {"model": "ouro", "messages": HELLO, "stream_options": {"include_usage": True}},
        400,
        "stream_options",
        None,
    ),
    ("unknown model", {"model": "gpt-4", "messages": HELLO}, 404, "model", "model_not_found"),
    ("unknown version", {"model": "ouro@v99", "messages": HELLO}, 404, "model", "model_not_found"),
    ("unknown alias", {"model": "ouro@nobody", "messages": HELLO}, 404, "model", "model_not_found"),
    (
        "body too large",
        {"model": "ouro", "messages": [{"role": "user", "content": "x" * MAX_BODY_BYTES}]},
        413,
        None,
        "request_too_large",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_get_their_status_and_the_openai_envelope(
    http: httpx.Client, body, status: int, param: str | None, code: str | None
) -> None:
    # json.dumps escapes lone surrogates as JSON allows ("\\ud800"); httpx's json= cannot.
    content = body if isinstance(body, bytes) else json.dumps(body)
    response = http.post(
        "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code


CRASHED_THE_ENGINE = [
    # (case, fields, status): what the issue saw fail a whole batch with a 500.
    ("lone surrogate", {"messages": [{"role": "user", "content": "\ud800x"}]}, 400),
    ("seed past 64 bits", {"temperature": 1, "seed": 18446744073709551616}, 400),
    ("tiny temperature", {"temperature": 1e-39, "seed": 3}, 200),
    ("smallest float32 temperature", {"temperature": 1.1754943508222875e-38}, 200),
    ("tiny top_p", {"temperature": 1, "top_p": 1e-300, "seed": 5}, 200),
]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_inputs_that_crashed_a_batch_are_refused_or_served_and_spare_their_neighbours(
    stack: ServeStack, stream: bool
) -> None:
    def post(fields: dict) -> tuple[int, str]:
        body = {"model": "ouro-base", "messages": HELLO, "max_tokens": 6, "stream": stream}
        with stack.http(CLIENT_KEY) as session:
            for _attempt in range(30):  # a 429 (queue full on busy cores) is retried
                response = session.post(
                    "/v1/chat/completions",
                    content=json.dumps({**body, **fields}),  # escapes the lone surrogate
                    headers={"content-type": "application/json"},
                )
                if response.status_code != 429:
                    break
                time.sleep(0.5)
            return response.status_code, response.text

    cases = [case[1] for case in CRASHED_THE_ENGINE]
    with ThreadPoolExecutor(max_workers=len(cases) + 5) as pool:
        results = list(pool.map(post, [*cases, *([{"temperature": 0.8}] * 5)]))
    for (case, _, status), (got, text) in zip(CRASHED_THE_ENGINE, results, strict=False):
        assert got == status, f"{case}: {got} {text}"
        assert "server_error" not in text, case
        if status == 200 and stream:
            assert text.rstrip().endswith("data: [DONE]") and '"finish_reason": "' in text
    for got, text in results[len(cases) :]:
        assert got == 200, text
        assert "server_error" not in text


def test_a_prompt_too_long_is_a_400_before_the_stream_starts(http: httpx.Client) -> None:
    body = {"model": "ouro-base", "messages": [{"role": "user", "content": "hello " * 2000}]}
    whole = http.post("/v1/chat/completions", json=body)
    assert whole.status_code == 400, whole.text
    assert whole.json()["error"]["code"] == "context_length_exceeded"
    streamed = http.post("/v1/chat/completions", json={**body, "stream": True})
    assert streamed.status_code == 400, streamed.text[:300]
    assert streamed.json()["error"]["code"] == "context_length_exceeded"


def test_agent_histories_with_developer_tool_calls_and_tool_results_are_answered(
    client: openai.OpenAI,
) -> None:
    messages = [
        {"role": "developer", "content": "Answer from the tool's result."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    answer = client.chat.completions.create(model="ouro-base", messages=messages, max_tokens=4)
    assert answer.choices[0].message.role == "assistant"
    assert answer.usage.prompt_tokens > 0
    streamed = client.chat.completions.create(
        model="ouro-base", messages=messages, max_tokens=4, stream=True
    )
    assert [chunk.choices[0].finish_reason for chunk in streamed][-1] in ("stop", "length")


def test_models_retrieve_gives_one_listed_model_or_404(client: openai.OpenAI) -> None:
    listed = {model.id: model for model in client.models.list().data}
    for name, model in listed.items():
        retrieved = client.models.retrieve(name)
        assert retrieved.model_dump(exclude={"created"}) == model.model_dump(exclude={"created"})
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4")
    assert missing.value.code == "model_not_found"


def test_feedback_takes_list_of_parts_content_like_chat(
    stack: ServeStack, http: httpx.Client
) -> None:
    parts = [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of"}]
    body = feedback_body(
        messages=[*ANSWERED[:-1], {"role": "user", "content": parts}],
        correction="Paris, of course.",
    )
    created = http.post("/v1/feedback", json=body)
    assert created.status_code == 201, created.text
    (record,) = [
        record
        for record in LedgerReader(stack.settings.ledger_dir).scan().records
        if record.id == created.json()["id"]
    ]
    assert record.messages[-1].content == "What is the capital of"


def test_a_body_streamed_past_the_limit_without_content_length_is_refused(
    http: httpx.Client,
) -> None:
    def chunks():
        yield b'{"model": "ouro", "messages": [{"role": "user", "content": "'
        for _ in range(MAX_BODY_BYTES // 1000 + 1):
            yield b"x" * 1000
        yield b'"}]}'

    response = http.post(
        "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_the_openai_client_raises_its_matching_exceptions(stack: ServeStack) -> None:
    good = stack.openai(CLIENT_KEY)
    with pytest.raises(openai.BadRequestError) as bad:
        good.chat.completions.create(model="ouro", messages=HELLO, n=MAX_CHOICES + 1)
    assert bad.value.param == "n"
    with pytest.raises(openai.NotFoundError) as missing:
        good.chat.completions.create(model="ouro@v42", messages=HELLO)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        stack.openai("sk-wrong").chat.completions.create(model="ouro", messages=HELLO)
    with pytest.raises(openai.APIStatusError) as too_large:
        good.chat.completions.create(
            model="ouro", messages=[{"role": "user", "content": "y" * MAX_BODY_BYTES}]
        )
    assert too_large.value.status_code == 413


def test_a_full_queue_answers_429_and_the_rest_are_served(stack: ServeStack) -> None:
    # LLM replica: max_running_requests + max_queued_requests in the engine, max_queued_requests
    # more in the handle; the rest 429.
    body = {"model": "ouro-base", "messages": HELLO, "max_tokens": MAX_TOKENS_LIMIT}

    def post(_: int) -> httpx.Response:
        with stack.http(CLIENT_KEY) as session:
            return session.post("/v1/chat/completions", json=body)

    with ThreadPoolExecutor(max_workers=32) as pool:
        responses = list(pool.map(post, range(32)))
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) == {200, 429}, statuses
    for response in responses:
        if response.status_code == 429:
            assert response.json()["error"]["type"] == "rate_limit_error"


# -- auth ----------------------------------------------------------------------------------

AUTH_CASES = [
    # (method, path, key, expected status)
    ("POST", "/v1/chat/completions", None, 401),
    ("POST", "/v1/chat/completions", "sk-not-a-key", 401),
    ("POST", "/v1/chat/completions", CLIENT_KEY, 200),
    ("POST", "/v1/chat/completions", ADMIN_KEY, 200),
    ("GET", "/v1/models", None, 401),
    ("GET", "/v1/models", CLIENT_KEY, 200),
    ("POST", "/v1/feedback", None, 401),
    ("GET", "/v1/feedback/stats", None, 401),
    ("GET", "/v1/feedback/stats", CLIENT_KEY, 403),
    ("GET", "/v1/feedback/stats", ADMIN_KEY, 200),
    ("POST", "/admin/registry/refresh", None, 401),
    ("POST", "/admin/registry/refresh", CLIENT_KEY, 403),
    ("POST", "/admin/registry/refresh", ADMIN_KEY, 200),
    ("GET", "/healthz", None, 200),
    ("GET", "/readyz", None, 200),
    ("GET", "/metrics", None, 401),
    ("GET", "/metrics", CLIENT_KEY, 403),
    ("GET", "/metrics", METRICS_KEY, 200),
    ("GET", "/metrics", ADMIN_KEY, 200),
    ("GET", "/v1/models", METRICS_KEY, 401),  # a metrics key opens /metrics only
]


@pytest.mark.parametrize(("method", "path", "key", "status"), AUTH_CASES)
def test_api_keys_guard_the_routes(
    stack: ServeStack, method: str, path: str, key: str | None, status: int
) -> None:
    body = {"model": "ouro-base", "messages": HELLO, "max_tokens": 2} if "chat" in path else None
    with stack.http(key) as session:
        response = session.request(method, path, json=body)
    assert response.status_code == status, response.text
    if status in (401, 403):
        error = response.json()["error"]
        assert error["type"] == ("authentication_error" if status == 401 else "permission_error")
        assert all(k not in response.text for k in (CLIENT_KEY, ADMIN_KEY, METRICS_KEY))


# -- feedback --------------------------------------------------------------------------------

ANSWERED = [{"role": "user", "content": "What is the capital of France?"}]


def feedback_body(**changes) -> dict:
    return {
        "messages": ANSWERED,
        "completion": "Lyon.",
        "correction": "Paris.",
        "model": "ouro-base",
        "completion_id": "chatcmpl-123",
        "reason": "wrong city",
        **changes,
    }


def rating_body(**changes) -> dict:
    body = {**feedback_body(rating="down"), **changes}
    del body["correction"]
    return body


def test_a_rating_is_kept_durably_and_never_counts_as_a_correction(
    stack: ServeStack, http: httpx.Client
) -> None:
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = http.post(
        "/v1/feedback",
        json=rating_body(rating="down", completion_id=completion_id, user="u7", model="ouro@v2"),
    )
    assert created.status_code == 201, created.text
    assert created.json()["object"] == "feedback"
    scan = LedgerReader(stack.settings.ledger_dir).scan()
    (record,) = [r for r in scan.records if r.id == created.json()["id"]]
    assert (record.kind, record.rating, record.correction) == ("rating", "down", None)
    assert record.message_dicts() == ANSWERED
    assert (record.completion, record.model, record.completion_id, record.reason) == (
        "Lyon.",
        "ouro@v2",
        completion_id,
        "wrong city",
    )
    assert record.api_key_hash and CLIENT_KEY not in record.api_key_hash
    assert record.id not in {r.id for r in scan.corrections}

    up = http.post("/v1/feedback", json=rating_body(rating="up", completion_id=completion_id))
    assert up.status_code == 201, up.text  # a second rating of an answer is a new record
    assert up.json()["id"] != record.id


@pytest.mark.parametrize("key", [None, "sk-not-a-key"])
def test_a_rating_needs_a_key_like_a_correction(stack: ServeStack, key: str | None) -> None:
    before = len(LedgerReader(stack.settings.ledger_dir).scan().records)
    with stack.http(key) as session:
        response = session.post("/v1/feedback", json=rating_body())
    assert response.status_code == 401, response.text
    assert response.json()["error"]["type"] == "authentication_error"
    assert len(LedgerReader(stack.settings.ledger_dir).scan().records) == before


def test_a_thousand_concurrent_corrections_are_all_kept_once(stack: ServeStack) -> None:
    marker = uuid.uuid4().hex

    def post(index: int) -> str:
        with stack.http(CLIENT_KEY) as session:
            response = session.post(
                "/v1/feedback", json=feedback_body(correction=f"Paris ({marker} #{index}).")
            )
        assert response.status_code == 201, response.text
        assert response.json()["object"] == "feedback"
        return response.json()["id"]

    with ThreadPoolExecutor(max_workers=24) as pool:
        ids = list(pool.map(post, range(1000)))
    assert len(set(ids)) == 1000
    records = [
        record
        for record in LedgerReader(stack.settings.ledger_dir).scan().corrections
        if marker in record.correction
    ]
    assert len(records) == 1000
    assert {record.id for record in records} == set(ids)
    assert {record.correction for record in records} == {
        f"Paris ({marker} #{index})." for index in range(1000)
    }
    assert all(record.api_key_hash and CLIENT_KEY not in record.api_key_hash for record in records)


BAD_FEEDBACK = [
    # (case, body, status, param)
    ("messages empty", feedback_body(messages=[]), 400, "messages"),
    (
        "messages missing",
        {k: v for k, v in feedback_body().items() if k != "messages"},
        400,
        "messages",
    ),
    (
        "ends with the assistant",
        feedback_body(messages=[*ANSWERED, {"role": "assistant", "content": "Lyon."}]),
        400,
        "messages",
    ),
    (
        "unknown role",
        feedback_body(messages=[{"role": "robot", "content": "x"}]),
        400,
        "messages.0.role",
    ),
    ("correction empty", feedback_body(correction="   "), 400, "correction"),
    ("correction same as completion", feedback_body(correction=" Lyon. "), 400, "correction"),
    ("completion not a string", feedback_body(completion=42), 400, "completion"),
    (
        "neither correction nor rating",
        {k: v for k, v in feedback_body().items() if k != "correction"},
        400,
        "correction",
    ),
    ("both correction and rating", feedback_body(rating="up"), 400, "rating"),
    ("rating not up or down", rating_body(rating="meh"), 400, "rating"),
    ("rating upper case", rating_body(rating="UP"), 400, "rating"),
    ("rating a number", rating_body(rating=1), 400, "rating"),
    ("rating null", rating_body(rating=None), 400, "correction"),
    (
        "rating of no user turn",
        rating_body(messages=[*ANSWERED, {"role": "assistant", "content": "Lyon."}]),
        400,
        "messages",
    ),
    ("rating without completion", rating_body(completion=None), 400, "completion"),
    ("rating reason too long", rating_body(reason="r" * (MAX_FIELD_CHARS + 1)), 413, "reason"),
    (
        "correction too long",
        feedback_body(correction="P" * (MAX_FIELD_CHARS + 1)),
        413,
        "correction",
    ),
    ("reason too long", feedback_body(reason="r" * (MAX_FIELD_CHARS + 1)), 413, "reason"),
    ("body too large", feedback_body(reason="r" * MAX_BODY_BYTES), 413, None),
]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [case[1:] for case in BAD_FEEDBACK],
    ids=[case[0] for case in BAD_FEEDBACK],
)
def test_bad_feedback_is_refused_and_nothing_is_written(
    stack: ServeStack, http: httpx.Client, body: dict, status: int, param: str | None
) -> None:
    before = len(LedgerReader(stack.settings.ledger_dir).scan().records)
    response = http.post("/v1/feedback", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert len(LedgerReader(stack.settings.ledger_dir).scan().records) == before


def test_feedback_stats_count_what_the_ledger_holds(stack: ServeStack, http: httpx.Client) -> None:
    created = http.post("/v1/feedback", json=feedback_body(model="ouro@v1", correction="Paris!"))
    assert created.status_code == 201
    for verdict in ("up", "down", "down"):
        rated = http.post("/v1/feedback", json=rating_body(model="ouro@v9", rating=verdict))
        assert rated.status_code == 201
    with stack.http(ADMIN_KEY) as admin:
        stats = admin.get("/v1/feedback/stats").json()
    scan = LedgerReader(stack.settings.ledger_dir).scan()
    # The existing keys count corrections; ratings are counted apart.
    assert stats["total"] == len(scan.corrections) < len(scan.records)
    assert stats["by_model"]["ouro@v1"] == sum(r.model == "ouro@v1" for r in scan.corrections)
    assert "ouro@v9" not in stats["by_model"]
    assert stats["since_last_training"] == stats["total"]  # nothing trained yet
    assert stats["bad_lines"] == 0
    assert stats["ratings"] == {
        verdict: sum(r.rating == verdict for r in scan.ratings) for verdict in ("up", "down")
    }
    assert stats["ratings_by_model"]["ouro@v9"] == {"up": 1, "down": 2}


# -- observability ------------------------------------------------------------------------------


def test_request_ids_are_echoed_and_logged(stack: ServeStack, http: httpx.Client) -> None:
    request_id = f"test-{uuid.uuid4().hex}"
    response = http.post(
        "/v1/chat/completions",
        json={"model": "ouro-base", "messages": HELLO, "max_tokens": 2, "metadata": {"k": "v"}},
        headers={"x-request-id": request_id},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    assert http.get("/healthz").headers["x-request-id"]  # one is made up when none is sent
    logged = []
    for path in (stack.session_dir / "logs").rglob("*"):
        if path.is_file() and path.suffix in (".err", ".out", ".log"):
            logged += [
                line
                for line in path.read_text(errors="replace").splitlines()
                if "ignoring unsupported request fields" in line and request_id in line
            ]
    assert logged, "the ingress's log line carries the request id"


def test_metrics_count_requests_tokens_and_versions(stack: ServeStack, http: httpx.Client) -> None:
    http.post("/v1/chat/completions", json={"model": "ouro", "messages": HELLO, "max_tokens": 3})
    http.post("/v1/chat/completions", json={"model": "ouro", "messages": []})
    text = httpx.get(
        f"{stack.base_url}/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"}
    ).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    def value(name: str, **labels) -> float:
        return sum(
            v
            for (n, ls), v in samples.items()
            if n == name and all((k, w) in ls for k, w in labels.items())
        )

    assert value("ouro_requests_total", route="/v1/chat/completions", status="200") >= 1
    assert value("ouro_errors_total", route="/v1/chat/completions", status="400") >= 1
    assert value("ouro_generated_tokens_total", model="ouro-base") >= 3
    assert value("ouro_time_to_first_token_seconds_count", model="ouro-base") >= 1
    assert value("ouro_completions_total", requested="ouro", model="ouro-base") >= 1
    assert any(
        name == "ouro_model_version" and ("name", "ouro") in labels for name, labels in samples
    )
    assert value("ouro_registry_reachable") == 1
    assert value("ouro_adapter_loads_total") == 0


def test_readiness_reports_the_model_and_the_registry(stack: ServeStack) -> None:
    response = httpx.get(f"{stack.base_url}/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready" and body["model_loaded"]
    assert body["registry"]["reachable"] and not body["registry"]["stale"]
    assert body["serving"]["ouro"] == ["ouro-base"]
    assert httpx.get(f"{stack.base_url}/healthz").json() == {"status": "ok"}


def test_the_chat_page_is_served(stack: ServeStack) -> None:
    page = Path(__file__).resolve().parents[2] / "serve" / "static" / "index.html"
    response = httpx.get(f"{stack.base_url}/")
    if page.is_file():
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert response.text == page.read_text(encoding="utf-8")
    else:
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    missing = httpx.get(f"{stack.base_url}/static/no-such-file.js")
    assert missing.status_code == 404 and "error" in missing.json()
