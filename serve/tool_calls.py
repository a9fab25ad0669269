"""response_format, tools and tool_choice: from the request to an answer format, and from
the generated text back to OpenAI's ``tool_calls``.

``output_format`` turns a request into the ``ouro.structured`` format the LLM server
compiles (it checks what can be checked without a tokenizer; the LLM server's compiler
refuses a schema it cannot use, before any stream starts). ``ToolCallText`` reads the
model's text, whole or streamed, and splits it into content and one tool call, as OpenAI
streams them: the call's first chunk carries index, id, type, name and empty arguments,
later ones argument fragments.
"""

from __future__ import annotations

import json
import re
import uuid

from ouro.chat import TOOL_CALL_BEGIN, TOOL_CALL_END
from ouro.structured import JsonFormat, OutputFormat, ToolFormat, ToolSpec
from serve.exceptions import InvalidRequestError
from serve.protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    DeltaMessage,
    FunctionCallDelta,
    FunctionCallOut,
    ToolCallDelta,
    ToolCallOut,
)

FINISH_TOOL_CALLS = "tool_calls"

_CALL_HEAD = re.compile(
    re.escape(TOOL_CALL_BEGIN)
    + r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*'
)
"""A call's text up to its arguments (``ouro.chat.tool_call_prefix``), name captured."""


def output_format(request: ChatCompletionRequest) -> OutputFormat | None:
    """The format the answer is held to, or None for free text."""
    choice = request.tool_choice
    tools = request.tools or []
    if choice not in (None, "none", "auto") and not tools:
        raise InvalidRequestError("tool_choice needs tools to choose from", "tool_choice")
    names = [tool.function.name for tool in tools]
    if len(set(names)) != len(names):
        raise InvalidRequestError("tools must have distinct function names", "tools")
    calls_tools = bool(tools) and choice != "none"
    response_format = request.response_format
    if response_format is not None and response_format.type != "text":
        if calls_tools:
            raise InvalidRequestError(
                "response_format cannot be combined with tools yet: set tool_choice to "
                "'none' or leave response_format unset",
                "response_format",
                code="unsupported_parameter",
            )
        schema = response_format.json_schema
        return JsonFormat(json.dumps(schema.schema_) if schema is not None else None)
    if not calls_tools:
        return None
    specs = tuple(
        ToolSpec(
            tool.function.name, tool.function.description, json.dumps(tool.function.parameters)
        )
        for tool in tools
    )
    if isinstance(choice, str) or choice is None:
        return ToolFormat(specs, required=choice == "required")
    named = [spec for spec in specs if spec.name == choice.function.name]
    if not named:
        raise InvalidRequestError(
            f"tool_choice names {choice.function.name!r}, which is not in tools", "tool_choice"
        )
    return ToolFormat(tuple(named), required=True)


class ToolCallText:
    """Splits an answer's text into content and (at most) one tool call, incrementally.

    ``feed`` takes text as it comes and returns the deltas it completes; ``finish`` the
    rest, and the choice's finish_reason. Text that may still turn into a call's start
    or end is held back until it is known.
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._state = "text"  # then "call" (head incomplete), then "arguments"
        self.content = ""
        self.call: ToolCallOut | None = None

    def feed(self, text: str) -> list[DeltaMessage]:
        self._buffer += text
        deltas: list[DeltaMessage] = []
        if self._state == "text":
            start = self._buffer.find(TOOL_CALL_BEGIN)
            if start < 0:
                keep = _partial_suffix(self._buffer, TOOL_CALL_BEGIN)
                self._add_content(self._buffer[: len(self._buffer) - keep], deltas)
                self._buffer = self._buffer[len(self._buffer) - keep :]
                return deltas
            self._add_content(self._buffer[:start], deltas)
            self._buffer = self._buffer[start:]
            self._state = "call"
        if self._state == "call":
            head = _CALL_HEAD.match(self._buffer)
            if head is None:
                return deltas
            self.call = ToolCallOut(
                id=f"call_{uuid.uuid4().hex[:24]}",
                function=FunctionCallOut(name=json.loads(head.group(1)), arguments=""),
            )
            deltas.append(self._call_delta(self.call.id, self.call.function.name, ""))
            self._buffer = self._buffer[head.end() :]
            self._state = "arguments"
        # The last characters may be the call's end, which is not part of the arguments.
        ready = len(self._buffer) - len(TOOL_CALL_END)
        if ready > 0:
            self._add_arguments(self._buffer[:ready], deltas)
            self._buffer = self._buffer[ready:]
        return deltas

    def finish(self, finish_reason: str) -> tuple[list[DeltaMessage], str]:
        """The held-back deltas, and the finish_reason: 'tool_calls' for a complete call."""
        deltas: list[DeltaMessage] = []
        rest, self._buffer = self._buffer, ""
        if self._state == "arguments":
            complete = rest.endswith(TOOL_CALL_END)
            self._add_arguments(rest[: -len(TOOL_CALL_END)] if complete else rest, deltas)
            if complete and finish_reason == "stop":
                return deltas, FINISH_TOOL_CALLS
        else:
            self._add_content(rest, deltas)
        return deltas, finish_reason

    def message(self) -> AssistantMessage:
        """The whole answer (after ``finish``): content null when only a call was made."""
        if self.call is None:
            return AssistantMessage(content=self.content)
        return AssistantMessage(content=self.content.strip() or None, tool_calls=[self.call])

    def _add_content(self, text: str, deltas: list[DeltaMessage]) -> None:
        if text:
            self.content += text
            deltas.append(DeltaMessage(content=text))

    def _add_arguments(self, text: str, deltas: list[DeltaMessage]) -> None:
        if text:
            self.call.function.arguments += text
            deltas.append(self._call_delta(None, None, text))

    @staticmethod
    def _call_delta(call_id: str | None, name: str | None, arguments: str) -> DeltaMessage:
        function = FunctionCallDelta(name=name, arguments=arguments)
        typed = "function" if call_id is not None else None
        return DeltaMessage(
            tool_calls=[ToolCallDelta(index=0, id=call_id, type=typed, function=function)]
        )


def whole_answer(text: str, finish_reason: str) -> tuple[AssistantMessage, str]:
    """A non-streamed answer's message and finish_reason."""
    reader = ToolCallText()
    reader.feed(text)
    _, finish_reason = reader.finish(finish_reason)
    return reader.message(), finish_reason


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that begins ``marker`` (0 if none)."""
    for length in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-length:]):
            return length
    return 0
