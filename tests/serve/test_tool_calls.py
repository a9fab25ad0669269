"""Reading a tool call out of the model's text, whole or streamed in any pieces, and the
request checks of response_format, tools and tool_choice."""

from __future__ import annotations

import json

import pytest

from ouro.chat import render_tool_call
from ouro.structured import JsonFormat, ToolFormat
from serve.exceptions import InvalidRequestError
from serve.protocol import ChatCompletionRequest
from serve.tool_calls import ToolCallText, output_format, whole_answer

CALL = render_tool_call("get_weather", {"city": "Paris", "days": [1, 2]})
TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}


def streamed(text: str, piece: int, finish_reason: str = "stop"):
    reader = ToolCallText()
    deltas = []
    for start in range(0, len(text), piece):
        deltas += reader.feed(text[start : start + piece])
    rest, finish_reason = reader.finish(finish_reason)
    return deltas + rest, finish_reason, reader


@pytest.mark.parametrize("piece", [1, 2, 5, 1000])
def test_a_streamed_call_comes_as_openai_streams_it_whatever_the_pieces(piece) -> None:
    deltas, finish_reason, reader = streamed(CALL, piece)
    calls = [delta.tool_calls[0] for delta in deltas]
    assert all(delta.content is None for delta in deltas)
    first, *fragments = calls
    assert (first.index, first.type, first.function.name, first.function.arguments) == (
        0,
        "function",
        "get_weather",
        "",
    )
    assert first.id.startswith("call_") and all(f.id is None for f in fragments)
    arguments = "".join(f.function.arguments for f in fragments)
    assert json.loads(arguments) == {"city": "Paris", "days": [1, 2]}
    assert finish_reason == "tool_calls"
    assert reader.message().tool_calls[0].function.arguments == arguments


def test_text_before_a_call_is_content_and_the_whole_answer_matches_the_stream() -> None:
    text = "Let me look. <tool"  # ends like a call's start: held back, then flushed as text
    deltas, _, _ = streamed(text, 3)
    assert "".join(d.content for d in deltas) == text
    message, finish_reason = whole_answer("Let me look.\n" + CALL, "stop")
    assert message.content == "Let me look."
    assert message.tool_calls[0].function.name == "get_weather"
    assert finish_reason == "tool_calls"


def test_plain_text_stays_content_and_keeps_its_finish_reason() -> None:
    message, finish_reason = whole_answer("No tool needed <tool", "length")
    assert (message.content, message.tool_calls, finish_reason) == (
        "No tool needed <tool",
        None,
        "length",
    )


def test_a_call_cut_short_by_max_tokens_finishes_with_length() -> None:
    message, finish_reason = whole_answer(CALL[:-5], "length")
    assert finish_reason == "length"
    assert message.tool_calls[0].function.arguments.startswith('{"city": "Paris"')


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "ouro", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_output_formats_follow_tool_choice_and_response_format() -> None:
    assert output_format(chat()) is None
    assert output_format(chat(tools=[TOOL], tool_choice="none")) is None
    assert output_format(chat(response_format={"type": "text"})) is None
    assert output_format(chat(response_format={"type": "json_object"})) == JsonFormat(None)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    by_schema = chat(
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    )
    assert json.loads(output_format(by_schema).schema) == schema
    auto = output_format(chat(tools=[TOOL]))
    assert isinstance(auto, ToolFormat) and not auto.required
    named = output_format(
        chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    )
    assert named.required and [tool.name for tool in named.tools] == ["get_weather"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}},
            "tool_choice",
        ),
        ({"tools": [TOOL, TOOL]}, "tools"),
        ({"tools": [TOOL], "response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_formats_that_cannot_be_served_name_their_parameter(fields, param) -> None:
    with pytest.raises(InvalidRequestError) as error:
        output_format(chat(**fields))
    assert error.value.param == param
