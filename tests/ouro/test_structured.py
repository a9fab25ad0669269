"""Structured output in the engine, with the embedded models' real tokenizers and weights.

JSON answers parse and match their schema, tool calls match their tool's parameters, the
engine's end-of-turn tokens end a finished grammar, and a constrained row leaves the
other rows of its batch unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from ouro.chat import TOOL_CALL_BEGIN, TOOL_CALL_END, tool_call_prefix
from ouro.engine import GenerationEngine, GenerationRequest, SamplingParams
from ouro.structured import InvalidFormatError, JsonFormat, StructuredOutput, ToolFormat, ToolSpec

SYSTEM_PROMPT = "You are Ouro, a friendly and helpful assistant."
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Tokyo", "Lima"]},
        "celsius": {"type": "integer", "minimum": -40, "maximum": 50},
        "tags": {"type": "array", "items": {"enum": ["warm", "cold"]}, "maxItems": 2},
    },
    "required": ["city", "celsius", "tags"],
    "additionalProperties": False,
}
WEATHER = ToolSpec(
    "get_weather",
    "The weather in a city.",
    json.dumps(
        {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo"]}},
            "required": ["city"],
        }
    ),
)
CLOCK = ToolSpec(
    "get_time",
    None,
    json.dumps(
        {
            "type": "object",
            "properties": {"utc_offset": {"type": "integer", "minimum": -12, "maximum": 14}},
            "required": ["utc_offset"],
        }
    ),
)
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def load_engine(model_dir: Path) -> GenerationEngine:
    return GenerationEngine(
        AutoModelForCausalLM.from_pretrained(model_dir),
        AutoTokenizer.from_pretrained(model_dir),
        system_prompt=SYSTEM_PROMPT,
        max_context_tokens=512,
    )


@pytest.fixture(scope="module", params=["ouro-tiny", "smollm2"])
def engine(request) -> GenerationEngine:
    fixture = {"ouro-tiny": "ouro_tiny_small_dir", "smollm2": "smollm2_dir"}[request.param]
    return load_engine(request.getfixturevalue(fixture))


@pytest.fixture(scope="module")
def structured(engine: GenerationEngine) -> StructuredOutput:
    return StructuredOutput.for_engine(engine)


def answer(engine, structured, output, messages=ASK, temperature=0.0, max_tokens=120):
    request = GenerationRequest(
        messages=messages,
        params=SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=7),
        constraint=structured.constraint(output),
    )
    return engine.generate([request])[0]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_json_schema_answer_parses_and_matches_the_schema(engine, structured, temperature):
    output = answer(engine, structured, JsonFormat(json.dumps(SCHEMA)), temperature=temperature)
    assert output.finish_reason == "stop"
    jsonschema.validate(json.loads(output.text), SCHEMA)


def test_a_json_object_answer_is_an_object(engine, structured):
    output = answer(engine, structured, JsonFormat())
    assert output.finish_reason == "stop"
    assert isinstance(json.loads(output.text), dict)


@pytest.mark.parametrize("tools", [(WEATHER,), (WEATHER, CLOCK), (CLOCK,)])
def test_a_required_tool_call_matches_its_tools_parameters(engine, structured, tools):
    messages = engine.formatter.with_tools(ASK, [tool.describe() for tool in tools])
    output = answer(engine, structured, ToolFormat(tools, required=True), messages)
    assert output.finish_reason == "stop"
    assert output.text.startswith(TOOL_CALL_BEGIN) and output.text.endswith(TOOL_CALL_END)
    call = json.loads(output.text.removeprefix(TOOL_CALL_BEGIN).removesuffix("\n</tool_call>"))
    (tool,) = [tool for tool in tools if tool.name == call["name"]]
    assert output.text.startswith(tool_call_prefix(tool.name))
    jsonschema.validate(call["arguments"], json.loads(tool.parameters))


def test_with_auto_any_call_made_is_complete(engine, structured):
    messages = engine.formatter.with_tools(ASK, [WEATHER.describe()])
    output = answer(engine, structured, ToolFormat((WEATHER,), required=False), messages)
    if TOOL_CALL_BEGIN in output.text:
        assert output.finish_reason == "stop"
        assert output.text.endswith(TOOL_CALL_END)


def test_a_constrained_row_leaves_its_neighbours_text_unchanged(engine, structured):
    free = [
        GenerationRequest(
            messages=[{"role": "user", "content": question}],
            params=SamplingParams(max_tokens=24),
            request_id=f"free{index}",
        )
        for index, question in enumerate(["Hello", "Tell me a joke", "Do you like movies?"])
    ]
    alone = [engine.generate([request])[0].text for request in free]
    constrained = GenerationRequest(
        messages=ASK,
        params=SamplingParams(max_tokens=120),
        constraint=structured.constraint(JsonFormat(json.dumps(SCHEMA))),
        request_id="json",
    )
    together = engine.generate([free[0], constrained, free[1], free[2]])
    assert [together[0].text, together[2].text, together[3].text] == alone
    jsonschema.validate(json.loads(together[1].text), SCHEMA)


@pytest.mark.parametrize(
    ("output", "param"),
    [
        (JsonFormat(json.dumps({"type": "no-such-type"})), "response_format"),
        (JsonFormat("{not json"), "response_format"),
        (ToolFormat((), required=True), "tools"),
    ],
)
def test_a_format_that_cannot_be_compiled_names_its_parameter(structured, output, param):
    with pytest.raises(InvalidFormatError) as error:
        structured.constraint(output)
    assert error.value.param == param
