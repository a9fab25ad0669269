"""The OpenAI request and chunk models: what they accept, normalise and send."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoTokenizer

from ouro.engine import MAX_CHOICES, MAX_TOP_LOGPROBS, MIN_TEMPERATURE, SamplingParams
from serve.protocol import (
    MIN_TOP_P,
    NOT_YET_SUPPORTED,
    SEED_MAX,
    SEED_MIN,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    ContentFrames,
    DeltaMessage,
    FeedbackRequest,
    ReplicaStatus,
    Usage,
)
from serve.replica_report import ReplicaReport

HELLO = [{"role": "user", "content": "Hello"}]


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "ouro", "messages": HELLO, **fields})


def error_location(**fields) -> tuple:
    with pytest.raises(ValidationError) as error:
        chat(**fields)
    return error.value.errors()[0]["loc"]


def test_a_request_normalises_what_openai_allows() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "ouro",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}],
                },
            ],
            "stop": "\n",
            "max_tokens": 50,
            "max_completion_tokens": 20,
            "metadata": {"x": "y"},
        }
    )
    assert request.messages[1].text() == "Hello"
    assert request.stop_sequences == ["\n"]
    assert request.requested_max_tokens() == 20
    assert request.model_extra == {"metadata": {"x": "y"}}
    assert not request.include_usage()
    assert request.unsupported_parameter() is None


@pytest.mark.parametrize(
    "content", [None, 5, [{"type": "image_url", "image_url": {"url": "x"}}], [{"text": "no type"}]]
)
def test_content_other_than_text_is_refused_at_content(content) -> None:
    with pytest.raises(ValidationError) as error:
        ChatCompletionRequest.model_validate(
            {"model": "ouro", "messages": [{"role": "user", "content": content}]}
        )
    assert error.value.errors()[0]["loc"] == ("messages", 0, "content")


def test_chunks_carry_only_the_delta_fields_they_set() -> None:
    chunk = ChatCompletionChunk(
        id="chatcmpl-1",
        created=1,
        model="ouro@v7",
        choices=[ChunkChoice(delta=DeltaMessage(content="Hi"))],
    )
    body = json.loads(chunk.sse(include_usage_field=False).removeprefix("data: "))
    assert body["choices"][0]["delta"] == {"content": "Hi"}
    assert body["choices"][0]["finish_reason"] is None
    assert "usage" not in body
    last = ChatCompletionChunk(
        id="chatcmpl-1", created=1, model="ouro@v7", choices=[], usage=Usage.of(3, 4)
    )
    body = json.loads(last.sse(include_usage_field=True).removeprefix("data: "))
    assert body["choices"] == [] and body["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
    }


# -- what would fail inside the engine is refused or made safe here -----------------------


@pytest.mark.parametrize(
    ("messages", "location"),
    [
        ([{"role": "user", "content": "\ud800x"}], ("messages", 0, "content")),
        (
            [{"role": "user", "content": [{"type": "text", "text": "a\udfffb"}]}],
            ("messages", 0, "content"),
        ),
    ],
    ids=["string", "parts"],
)
def test_text_that_cannot_be_encoded_is_refused_at_its_field(messages, location) -> None:
    with pytest.raises(ValidationError) as error:
        ChatCompletionRequest.model_validate({"model": "ouro", "messages": messages})
    (first,) = error.value.errors()
    assert first["loc"] == location
    assert "lone surrogate" in first["msg"]
    assert error_location(stop=["ok", "\ud800"]) == ("stop",)
    assert error_location(user="\ud800") == ("user",)


def test_the_seed_range_is_what_torch_generators_accept() -> None:
    for seed in (SEED_MIN, 0, SEED_MAX):
        assert chat(seed=seed).seed == seed
        torch.Generator().manual_seed(seed)
    for seed in (SEED_MIN - 1, SEED_MAX + 1, 2**64):
        assert error_location(seed=seed) == ("seed",)
        with pytest.raises((RuntimeError, ValueError)):  # torch's overflow errors
            torch.Generator().manual_seed(seed)


def test_a_tiny_temperature_is_raised_to_the_floor_that_keeps_softmax_finite() -> None:
    logits = torch.tensor([30.0, -30.0, 0.0])
    assert not torch.softmax(logits / 1e-39, dim=-1).isfinite().all()  # what the floor prevents
    # The engine's SamplingParams holds the one floor; the API passes temperatures through.
    for tiny in (1e-39, 1.1754943508222875e-38, 1e-5):
        assert chat(temperature=tiny).temperature == tiny
        params = SamplingParams(temperature=tiny)
        assert params.temperature == MIN_TEMPERATURE and not params.greedy
        assert torch.softmax(logits / params.temperature, dim=-1).isfinite().all()
    assert SamplingParams(temperature=0).greedy  # greedy stays greedy
    assert SamplingParams(temperature=0.7).temperature == 0.7


def test_a_tiny_top_p_is_raised_to_a_floor_float32_can_compare_with() -> None:
    probs = torch.tensor([0.6, 0.4])
    # The engine's nucleus rule drops a token once the mass before it reaches top_p; a
    # top_p that rounds to 0 in float32 drops every token, the first included.
    assert ((probs.cumsum(-1) - probs) >= 1e-300).all()
    top_p = chat(top_p=1e-300).top_p
    assert top_p == MIN_TOP_P
    assert ((probs.cumsum(-1) - probs) >= top_p).tolist() == [False, True]
    assert chat(top_p=0.9).top_p == 0.9


# -- OpenAI parameters the engine does not implement yet ----------------------------------

UNSUPPORTED = {
    "functions": [{"name": "f", "parameters": {}}],
    "function_call": {"name": "f"},
    "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "wav"},
    "prediction": {"type": "content", "content": "x"},
    "web_search_options": {},
}
DEFAULTS = {
    "functions": [],
    "function_call": "auto",
    "modalities": ["text"],
    "audio": None,
    "prediction": None,
    "web_search_options": None,
}


def test_unsupported_parameters_are_named_and_their_defaults_pass() -> None:
    assert set(UNSUPPORTED) == set(NOT_YET_SUPPORTED) == set(DEFAULTS)
    for name, value in UNSUPPORTED.items():
        assert chat(**{name: value}).unsupported_parameter() == name
    assert chat(**DEFAULTS).unsupported_parameter() is None


# -- messages real clients send ------------------------------------------------------------

AGENT_TURNS = [
    {"role": "developer", "content": "Use the tools."},
    {"role": "user", "content": "Weather in Paris?"},
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
    {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
]

# The shape transformers documents for tool use (tool_calls[].function.arguments a dict,
# tool messages after them), as tool-aware templates such as Llama 3.1's render it.
TOOL_AWARE_TEMPLATE = (
    "{%- for m in messages %}"
    "<{{ m.role }}>"
    "{%- if m.tool_calls %}{%- for c in m.tool_calls %}"
    "[{{ c.id }}:{{ c.function.name }}({{ c.function.arguments | tojson }})]"
    "{%- endfor %}{%- endif %}"
    "{%- if m.role == 'tool' %}[{{ m.tool_call_id }}]{%- endif %}"
    "{{ m.content }}</{{ m.role }}>"
    "{%- endfor %}"
)


def test_developer_tool_and_tool_call_turns_become_chat_template_messages(
    tiny_random_model_dir,
) -> None:
    request = chat(messages=AGENT_TURNS)
    messages = request.engine_messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[2]["content"] == ""
    assert messages[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert messages[3] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}

    tokenizer = AutoTokenizer.from_pretrained(tiny_random_model_dir)
    rendered = tokenizer.apply_chat_template(
        messages, chat_template=TOOL_AWARE_TEMPLATE, tokenize=False
    )
    assert rendered == (
        "<system>Use the tools.</system><user>Weather in Paris?</user>"
        '<assistant>[call_1:get_weather({"city": "Paris"})]</assistant>'
        "<tool>[call_1]sunny</tool>"
    )
    # The project's own template renders the same messages too (content only).
    assert "sunny" in tokenizer.apply_chat_template(messages, tokenize=False)


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ({"role": "tool", "content": "x"}, "tool_call_id"),
        ({"role": "assistant", "content": None}, "content is required"),
        ({"role": "user", "content": None}, "content must be a string"),
        (
            {
                "role": "user",
                "content": "x",
                "tool_calls": [AGENT_TURNS[2]["tool_calls"][0]],
            },
            "only assistant",
        ),
        (
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}
                ],
            },
            "JSON object",
        ),
    ],
    ids=["tool without id", "assistant without content", "null user", "user calls", "bad args"],
)
def test_malformed_tool_turns_are_refused(message, problem) -> None:
    with pytest.raises(ValidationError) as error:
        chat(messages=[message, *HELLO])
    assert problem in str(error.value)
    assert error.value.errors()[0]["loc"][:2] == ("messages", 0)


def test_feedback_accepts_list_of_parts_content_like_chat() -> None:
    feedback = FeedbackRequest.model_validate(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}],
                }
            ],
            "completion": "a",
            "correction": "b",
        }
    )
    assert feedback.messages[0].content == "Hello"
    assert feedback.messages[0].model_dump(include={"role", "content"}) == {
        "role": "user",
        "content": "Hello",
    }


# -- sampling parameters: accepted within OpenAI's bounds -------------------------------

SAMPLING = {
    "n": 3,
    "logprobs": True,
    "top_logprobs": 20,
    "presence_penalty": 2.0,
    "frequency_penalty": -2.0,
    "logit_bias": {"42": 100, "7": -100},
}


def test_sampling_parameters_are_accepted_within_their_bounds() -> None:
    request = chat(**SAMPLING)
    assert request.unsupported_parameter() is None
    assert request.logit_bias == {"42": 100.0, "7": -100.0}


@pytest.mark.parametrize(
    ("fields", "location"),
    [
        ({"n": 0}, ("n",)),
        ({"n": MAX_CHOICES + 1}, ("n",)),
        ({"logprobs": True, "top_logprobs": MAX_TOP_LOGPROBS + 1}, ("top_logprobs",)),
        ({"presence_penalty": 2.5}, ("presence_penalty",)),
        ({"frequency_penalty": -2.01}, ("frequency_penalty",)),
        ({"logit_bias": {"42": 101}}, ("logit_bias", "42")),
        ({"logit_bias": {"hello": 1}}, ("logit_bias", "hello", "[key]")),
        ({"logit_bias": {"-1": 1}}, ("logit_bias", "-1", "[key]")),
    ],
    ids=[
        "n 0",
        "n past the bound",
        "top_logprobs 21",
        "presence",
        "frequency",
        "bias",
        "key",
        "neg",
    ],
)
def test_sampling_parameters_past_their_bounds_are_refused_at_their_field(fields, location) -> None:
    assert error_location(**fields) == location


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize(
    "text", ["", "Hello", ' "quoted" \\ back\nslash', "naïve café 東京 🙂", "\x00ouro", "</script>"]
)
def test_a_pre_encoded_content_frame_is_the_chunk_pydantic_would_send(
    text: str, include_usage: bool
) -> None:
    frames = ContentFrames("chatcmpl-" + "a" * 32 + ".v3", 1_700_000_000, "ouro@v3", include_usage)
    for index in (0, 2):
        chunk = ChatCompletionChunk(
            id="chatcmpl-" + "a" * 32 + ".v3",
            created=1_700_000_000,
            model="ouro@v3",
            choices=[ChunkChoice(index=index, delta=DeltaMessage(content=text))],
        )
        assert frames.content(index, text) == chunk.sse(include_usage)


def test_the_public_replica_status_reads_every_field_from_the_replicas_report() -> None:
    """ReplicaStatus is what /readyz publishes of a ReplicaReport: its fields are the
    report's (same names), plus the engine's two queue figures."""
    report_fields = {f.name for f in dataclasses.fields(ReplicaReport)}
    engine_fields = {"running_requests", "waiting_requests"}
    assert set(ReplicaStatus.model_fields) - engine_fields <= report_fields
    report = ReplicaReport(
        replica_id="r1",
        reported_at=1.0,
        production_version=3,
        production_known=True,
        refresh_generation=2,
        adapters_loaded=("v3",),
        adapter_loads=4,
        adapter_evictions=1,
        adapter_load_failures=0,
        registry_reachable=True,
        registry_error=None,
    )
    status = ReplicaStatus.of(report).model_dump()
    for name in set(status) - engine_fields:
        expected = getattr(report, name)
        assert status[name] == (list(expected) if isinstance(expected, tuple) else expected)
    assert status["running_requests"] is None  # no engine figures in this report
