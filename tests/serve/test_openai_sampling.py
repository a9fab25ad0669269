"""logprobs, n, logit_bias and penalties through the real app, with the OpenAI SDK.

One Serve app for the module (tiny random model, a real MLflow server with an empty
registered model); the engine-level behaviour (logprobs against direct forwards, the
penalty formula) is tested in tests/ouro/test_sampling.py, here what the API makes of it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import openai
import pytest
from transformers import AutoTokenizer

from ouro.engine import MAX_CHOICES
from tests.fixtures.serve import ServeStack

pytestmark = pytest.mark.integration

HELLO = [{"role": "user", "content": "Hello there, how are you?"}]
API_KEY = "sk-sampling-" + "c" * 24


@pytest.fixture(scope="module")
def stack(serve_stack_factory, mlflow_server: str, tiny_random_model_dir: Path) -> ServeStack:
    return serve_stack_factory(
        {
            "base_model": str(tiny_random_model_dir),
            "mlflow_tracking_uri": mlflow_server,
            "registered_model_name": f"ouro-sampling-{uuid.uuid4().hex[:8]}",
            "api_keys": [API_KEY],
            "max_tokens_limit": 32,
            "default_max_tokens": 12,
            # Streamed deltas coalesced over several tokens: their logprobs must merge too.
            "stream_interval_s": 0.05,
        }
    )


@pytest.fixture(scope="module")
def client(stack: ServeStack) -> openai.OpenAI:
    return stack.openai(API_KEY)


def streamed(client: openai.OpenAI, **request) -> list:
    return list(
        client.chat.completions.create(
            model="ouro",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
            **request,
        )
    )


def entries(logprobs) -> list[tuple]:
    return [
        (
            entry.token,
            entry.logprob,
            tuple(entry.bytes),
            [(top.token, top.logprob) for top in entry.top_logprobs],
        )
        for entry in logprobs.content
    ]


def test_logprobs_come_back_whole_and_streamed(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model="ouro", messages=HELLO, max_tokens=16, logprobs=True, top_logprobs=3
    )
    (choice,) = whole.choices
    content = choice.logprobs.content
    assert len(content) == whole.usage.completion_tokens
    for entry in content:
        tops = [top.logprob for top in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        # Greedy, nothing else asked: the generated token is the most likely one.
        assert (entry.token, entry.logprob) == (entry.top_logprobs[0].token, tops[0])
        assert entry.logprob <= 0 and entry.bytes

    chunks = streamed(client, max_tokens=16, logprobs=True, top_logprobs=3)
    with_logprobs = [c.choices[0] for c in chunks if c.choices and c.choices[0].logprobs]
    # Each chunk carries the logprobs of the tokens its delta covers: together, the whole's.
    merged = [entry for chunk_choice in with_logprobs for entry in entries(chunk_choice.logprobs)]
    assert merged == entries(choice.logprobs)
    assert all(c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].delta.content)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content

    plain = client.chat.completions.create(model="ouro", messages=HELLO, max_tokens=4)
    assert plain.choices[0].logprobs is None


def test_n_choices_whole_and_streamed(client: openai.OpenAI) -> None:
    single = client.chat.completions.create(model="ouro", messages=HELLO, max_tokens=10)
    greedy = client.chat.completions.create(model="ouro", messages=HELLO, max_tokens=10, n=2)
    assert [choice.index for choice in greedy.choices] == [0, 1]
    assert {choice.message.content for choice in greedy.choices} == {
        single.choices[0].message.content
    }
    assert greedy.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counted once
    assert greedy.usage.completion_tokens == 2 * single.usage.completion_tokens

    sampled = {"max_tokens": 12, "n": 2, "temperature": 1.0, "seed": 11}
    whole = client.chat.completions.create(model="ouro", messages=HELLO, **sampled)
    texts = [choice.message.content for choice in whole.choices]
    assert texts[0] != texts[1]
    chunks = streamed(client, **sampled)
    by_index: dict[int, str] = {0: "", 1: ""}
    finishes: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            by_index[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert [by_index[0], by_index[1]] == texts
    assert finishes == {0: whole.choices[0].finish_reason, 1: whole.choices[1].finish_reason}
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_logit_bias_forces_a_token_and_a_bad_id_is_a_bad_request(
    client: openai.OpenAI, tiny_random_model_dir: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_random_model_dir)
    forced = tokenizer.encode(" help", add_special_tokens=False)[0]
    answer = client.chat.completions.create(
        model="ouro", messages=HELLO, max_tokens=5, logit_bias={str(forced): 100}
    )
    assert answer.choices[0].message.content == tokenizer.decode([forced] * 5)

    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(
                model="ouro", messages=HELLO, logit_bias={str(len(tokenizer) + 5): 1}, stream=stream
            )
        assert bad.value.param == "logit_bias"


def test_penalties_are_accepted_and_change_a_repetitive_answer(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="ouro", messages=HELLO, max_tokens=24)
    penalised = [
        client.chat.completions.create(
            model="ouro", messages=HELLO, max_tokens=24, presence_penalty=2, frequency_penalty=2
        )
        for _ in range(2)
    ]
    assert penalised[0].choices[0].message.content == penalised[1].choices[0].message.content
    assert penalised[0].choices[0].message.content != plain.choices[0].message.content


@pytest.mark.parametrize(
    ("request_fields", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs, as OpenAI refuses it
        ({"n": MAX_CHOICES + 1}, "n"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"logit_bias": {"12": 101}}, "logit_bias.12"),
    ],
)
def test_sampling_parameters_out_of_range_are_bad_requests(
    client: openai.OpenAI, request_fields: dict, param: str
) -> None:
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(
                model="ouro", messages=HELLO, stream=stream, **request_fields
            )
        assert bad.value.param == param
