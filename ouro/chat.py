"""Chat formatting: messages to prompt token ids through the tokenizer's chat template.

Serving (ouro.engine) and training (train_job.train) both format through
:class:`ChatFormatter`, so a model is trained on exactly the prompts it is served.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from ouro.errors import OuroError

logger = logging.getLogger(__name__)

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""ChatML, as SmolLM2 and Qwen lay it out, for the embedded smollm2-135m. Unlike the
template in SmolLM2's GGUF it adds no built-in system prompt (Ouro's configured one is
put in front by ChatFormatter), and its ``{% generation %}`` markers let TRL put the loss
on assistant tokens only. The engine stops on ``<|im_end|>``."""


TOOL_CALL_BEGIN = "<tool_call>"
TOOL_CALL_END = "}\n</tool_call>"
"""A tool call is written ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``
(Hermes/Qwen style): how earlier calls appear in prompts and how ``ouro.structured`` holds
an answer that calls a tool."""

TOOLS_HEADER = (
    "Functions you may call:\n<tools>\n{tools}\n</tools>\nTo call one, answer "
    '<tool_call>\n{{"name": <name>, "arguments": <JSON object>}}\n</tool_call>'
)
"""Compact: small models have short contexts, and every prompt with tools carries it."""


def tool_call_prefix(name: str) -> str:
    """A call's text up to its arguments."""
    return f'{TOOL_CALL_BEGIN}\n{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": '


def render_tool_call(name: str, arguments: dict) -> str:
    """A tool call as the model writes it."""
    return tool_call_prefix(name) + json.dumps(arguments, ensure_ascii=False) + TOOL_CALL_END


class PromptTooLongError(OuroError):
    """Even the system prompt plus the latest user turn do not fit the context budget."""


def with_system_prompt(messages: Sequence[dict], system_prompt: str) -> list[dict]:
    """A copy of the conversation with ``system_prompt`` in front when it has no system turn:
    the one rule for what the model is served, trained on and scored on."""
    messages = [dict(message) for message in messages]
    if system_prompt and not any(message["role"] == "system" for message in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


class ChatFormatter:
    """Renders conversations with the tokenizer's chat template, within a token budget.

    The system prompt is put first when the conversation has none. When the prompt is
    longer than the budget, the OLDEST turns go first; the system prompt and the latest
    user turn always stay.
    """

    def __init__(self, tokenizer, system_prompt: str, max_context_tokens: int) -> None:
        if max_context_tokens <= 0:
            raise ValueError("max_context_tokens must be positive")
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.max_context_tokens = max_context_tokens

    def with_system_prompt(self, messages: Sequence[dict]) -> list[dict]:
        """The conversation, with the default system prompt in front when it has none."""
        return with_system_prompt(messages, self.system_prompt)

    def with_tools(self, messages: Sequence[dict], tools: Sequence[dict] = ()) -> list[dict]:
        """The conversation with tools as plain text, which every chat template renders:
        the tools' functions (name, description, parameters) after the system prompt, earlier tool calls
        in their assistant turn's content, tool results as the 'tool' turn's content.

        The embedded models' templates have no tools section of their own (and changing a
        template renames the cached models), so tools go through the messages instead.
        """
        messages = self.with_system_prompt(messages) if tools else [dict(m) for m in messages]
        if tools:
            described = "\n".join(
                json.dumps(tool["function"], ensure_ascii=False, separators=(",", ":"))
                for tool in tools
            )
            block = TOOLS_HEADER.format(tools=described)
            if messages and messages[0]["role"] == "system":
                system = messages[0]["content"]
                messages[0]["content"] = f"{system}\n\n{block}" if system else block
            else:
                messages.insert(0, {"role": "system", "content": block})
        for message in messages:
            calls = message.pop("tool_calls", None)
            if calls:
                rendered = "\n".join(
                    render_tool_call(call["function"]["name"], call["function"]["arguments"])
                    for call in calls
                )
                content = message.get("content") or ""
                message["content"] = f"{content}\n{rendered}" if content else rendered
            message.pop("tool_call_id", None)
        return messages

    def render(self, messages: Sequence[dict]) -> list[int]:
        """Token ids of ``messages`` as they are, plus the assistant generation prompt."""
        encoded = self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, return_dict=True
        )
        return list(encoded["input_ids"])

    def prompt_ids(
        self, messages: Sequence[dict], max_prompt_tokens: int | None = None
    ) -> list[int]:
        """Prompt token ids for ``messages``, shortened from the oldest turn when too long.

        ``max_prompt_tokens`` tightens the budget for one call (e.g. to leave room for
        the answer). Raises PromptTooLongError when the system prompt and the latest
        user turn alone are over budget.
        """
        return self.fit(messages, max_prompt_tokens)[1]

    def fit(
        self, messages: Sequence[dict], max_prompt_tokens: int | None = None
    ) -> tuple[list[dict], list[int]]:
        """The messages that fit the budget (system prompt in front) and their prompt ids.

        What ``prompt_ids`` sends to the model; training uses the messages to shorten its
        examples the same way.
        """
        budget = self.max_context_tokens
        if max_prompt_tokens is not None:
            budget = min(budget, max_prompt_tokens)
        messages = self.with_system_prompt(messages)
        ids = self.render(messages)
        if len(ids) <= budget:
            return messages, ids

        system = [message for message in messages if message["role"] == "system"]
        turns = [message for message in messages if message["role"] != "system"]
        # Candidate starting points: each user turn, up to the latest one (always kept).
        starts = [index for index, message in enumerate(turns) if message["role"] == "user"]
        if not starts:
            starts = [len(turns) - 1] if turns else [0]
        # Fewer turns never make the prompt longer, so search for the earliest start that fits.
        low, high = 0, len(starts) - 1
        best: tuple[list[dict], list[int]] | None = None
        while low <= high:
            middle = (low + high) // 2
            kept = system + turns[starts[middle] :]
            candidate = self.render(kept)
            if len(candidate) <= budget:
                best, high = (kept, candidate), middle - 1
            else:
                low = middle + 1
        if best is None:
            raise PromptTooLongError(
                f"the prompt needs more than {budget} tokens even with only the system "
                "prompt and the latest user message"
            )
        logger.debug("dropped the oldest turns to fit %s prompt tokens", budget)
        return best
