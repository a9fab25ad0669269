"""Structured output and tools through the real app, with clients nobody on the project wrote.

One Serve app on ouro-tiny for the module. The OpenAI Agents SDK runs an agent with a
function tool, langchain-openai asks for a structured output and binds tools, and the
official client checks the wire format (tool-call chunks, JSON answers, 400s). A toy
model will not choose a tool by itself, so the agent asks for one (tool_choice
"required"); tool parameters and schemas use enums and integers, which such a model
finishes, where free strings could run to max_tokens.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Literal

import jsonschema
import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.fixtures.serve import ServeStack

pytestmark = pytest.mark.integration

MODEL = "ouro-base"
KEY = "sk-client-" + "c" * 24
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo", "Lima"]}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"utc_offset": {"type": "integer", "minimum": -12, "maximum": 14}},
            "required": ["utc_offset"],
        },
    },
}
FORECAST_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Tokyo", "Lima"]},
        "sky": {"type": "string", "enum": ["sunny", "cloudy", "rainy"]},
        "celsius": {"type": "integer", "minimum": -40, "maximum": 50},
        "windy": {"type": "boolean"},
    },
    "required": ["city", "sky", "celsius", "windy"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


class Forecast(BaseModel):
    city: Literal["Paris", "Tokyo", "Lima"]
    sky: Literal["sunny", "cloudy", "rainy"]
    windy: bool


@pytest.fixture(scope="module")
def stack(serve_stack_factory, mlflow_server: str, ouro_tiny_small_dir: Path) -> ServeStack:
    return serve_stack_factory(
        {
            "base_model": str(ouro_tiny_small_dir),
            "mlflow_tracking_uri": mlflow_server,
            "registered_model_name": f"ouro-structured-{uuid.uuid4().hex[:8]}",
            "api_keys": [KEY],
            "max_tokens_limit": 256,
            "default_max_tokens": 128,
        }
    )


@pytest.fixture(scope="module")
def client(stack: ServeStack) -> openai.OpenAI:
    return stack.openai(KEY)


# -- the wire format -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "tool_choice", ["required", {"type": "function", "function": {"name": "get_time"}}]
)
def test_a_required_tool_call_matches_its_tool_schema(client: openai.OpenAI, tool_choice) -> None:
    answer = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=tool_choice
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    if isinstance(tool_choice, dict):
        assert call.function.name == "get_time"
    tool = {"get_weather": WEATHER_TOOL, "get_time": TIME_TOOL}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


def test_a_tool_call_streams_as_openai_streams_it(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER_TOOL], tool_choice="required", stream=True
        )
    )
    calls = [chunk.choices[0].delta.tool_calls for chunk in chunks if chunk.choices]
    calls = [call for delta_calls in calls if delta_calls for call in delta_calls]
    first, *fragments = calls
    assert (first.index, first.type, first.function.name) == (0, "function", "get_weather")
    assert first.id.startswith("call_") and first.function.arguments == ""
    assert fragments and all(f.id is None and f.function.name is None for f in fragments)
    arguments = json.loads("".join(f.function.arguments for f in fragments))
    jsonschema.validate(arguments, WEATHER_TOOL["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert all(not chunk.choices[0].delta.content for chunk in chunks if chunk.choices)


def test_with_auto_the_answer_is_text_or_a_valid_call(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER_TOOL])
    choice = answer.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        arguments = json.loads(choice.message.tool_calls[0].function.arguments)
        jsonschema.validate(arguments, WEATHER_TOOL["function"]["parameters"])
    else:
        assert choice.finish_reason in ("stop", "length")
        assert "<tool_call>" not in choice.message.content


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_answers_match_their_schema(client: openai.OpenAI, stream: bool) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "forecast", "schema": FORECAST_SCHEMA, "strict": True},
    }
    answer = client.chat.completions.create(
        model=MODEL, messages=ASK, response_format=response_format, stream=stream
    )
    if stream:
        chunks = list(answer)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish_reason = chunks[-1].choices[0].finish_reason
    else:
        text, finish_reason = answer.choices[0].message.content, answer.choices[0].finish_reason
    assert finish_reason == "stop"
    jsonschema.validate(json.loads(text), FORECAST_SCHEMA)


def test_json_object_answers_are_json_objects(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL, messages=ASK, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(answer.choices[0].message.content), dict)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "bad", "schema": {"type": "no-such-type"}},
                }
            },
            "response_format",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {
                "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "x"}},
            },
            "tool_choice",
        ),
        ({"tools": [WEATHER_TOOL], "response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_formats_that_cannot_be_served_are_400s_naming_the_parameter(
    stack: ServeStack, body: dict, param: str, stream: bool
) -> None:
    request = {"model": MODEL, "messages": ASK, "stream": stream, **body}
    with stack.http(KEY) as http:
        answer = http.post("/v1/chat/completions", json=request)
    assert answer.status_code == 400, answer.text[:300]
    assert answer.json()["error"]["param"].startswith(param)


# -- real clients -----------------------------------------------------------------------------


def test_an_agents_sdk_agent_calls_its_tool_and_gets_the_result_back(stack: ServeStack) -> None:
    set_tracing_disabled(True)  # nothing leaves the machine
    cities: list[str] = []

    @function_tool
    def get_weather(city: Literal["Paris", "Tokyo", "Lima"]) -> str:
        """The weather in a city."""
        cities.append(city)
        return f"sunny and 21 C in {city}"

    async def run():
        client = openai.AsyncOpenAI(base_url=stack.api_base, api_key=KEY, max_retries=0)
        agent = Agent(
            name="weather",
            instructions="Use the weather tool.",
            tools=[get_weather],
            model=OpenAIChatCompletionsModel(model=MODEL, openai_client=client),
            # Room for a call; ouro-tiny's 512-token context holds the rest of the prompt.
            model_settings=ModelSettings(tool_choice="required", max_tokens=96),
        )
        return await Runner.run(agent, "What is the weather in Paris?", max_turns=3)

    result = asyncio.run(run())
    assert len(cities) == 1
    items = result.to_input_list()
    outputs = [item for item in items if item.get("type") == "function_call_output"]
    assert [item["output"] for item in outputs] == [f"sunny and 21 C in {cities[0]}"]
    # The run went on after the tool: the model answered with the result in its prompt.
    assert isinstance(result.final_output, str)


def test_langchain_with_structured_output_returns_a_parsed_object(stack: ServeStack) -> None:
    llm = ChatOpenAI(
        model=MODEL, base_url=stack.api_base, api_key=KEY, max_retries=0, max_tokens=128
    )
    forecast = llm.with_structured_output(Forecast).invoke("What is the weather in Paris?")
    assert isinstance(forecast, Forecast)


def test_langchain_bind_tools_returns_tool_calls(stack: ServeStack) -> None:
    @tool
    def get_weather(city: Literal["Paris", "Tokyo", "Lima"]) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    llm = ChatOpenAI(
        model=MODEL, base_url=stack.api_base, api_key=KEY, max_retries=0, max_tokens=128
    )
    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(
        "What is the weather in Paris?"
    )
    (call,) = message.tool_calls
    assert call["name"] == "get_weather"
    assert call["args"]["city"] in ("Paris", "Tokyo", "Lima")
