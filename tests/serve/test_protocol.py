"""The OpenAI request and chunk models: what they accept, normalise and send."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from serve.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    DeltaMessage,
    Usage,
)


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
            "logprobs": True,
        }
    )
    assert request.messages[1].text() == "Hello"
    assert request.stop_sequences == ["\n"]
    assert request.requested_max_tokens() == 20
    assert request.model_extra == {"logprobs": True}
    assert not request.include_usage()


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
