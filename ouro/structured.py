"""Structured output: JSON answers and tool calls, enforced token by token with xgrammar.

An answer's format (``JsonFormat`` or ``ToolFormat``, plain data that travels between
processes) is compiled against the engine's tokenizer into a grammar; each row gets a
``GrammarConstraint`` (the engine's ``TokenConstraint``) that masks the tokens the grammar
forbids before every pick. The engine's end-of-turn tokens are the grammar's stop tokens,
so a finished grammar allows nothing but the end of the turn.

Tool calls are written as ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``
(Hermes/Qwen style, what ``ouro.chat`` renders for earlier calls in the history), so a
model sees in its prompts the same format it is held to when it answers.

Why xgrammar 0.2.8 rather than llguidance 1.9.1 (measured on this project's 2-core CPU,
one thread, with the embedded tokenizers; a 2-field object schema, and a nested one with
arrays, enums, a pattern and anyOf; mask = the matcher's bitmask for one token, apply =
setting the forbidden logits of one row to -inf):

==================  ==============  ==============  ===============  ===============
                    xgrammar        llguidance      xgrammar         llguidance
                    ouro-tiny 1k    ouro-tiny 1k    smollm2 49k      smollm2 49k
==================  ==============  ==============  ===============  ===============
tokenizer setup     0.40 s          1.7 s           0.25 s           0.68 s
compile small       1.1 ms          1.3 ms          12.6 ms          2.8 ms
compile nested      2.0 ms          2.1 ms          10.7 ms          3.0 ms
mask per token      4-6 us          46-48 us        8-9 us           49-59 us
apply per token     23-31 us        86-89 us (1)    265 us           286 us (1)
==================  ==============  ==============  ===============  ===============

(1) plain torch unpacking: llguidance's own torch helper is ``torch.compile``-d, which on
CPU needs a C compiler and compiles on first use.

Both produced masks that accepted every token of a valid answer and terminated. The mask is
computed on the engine's loop for every constrained row at every step, so xgrammar's
5-10x cheaper mask wins; its slower compile on a large vocabulary is paid once per schema
(compiled grammars are cached per tokenizer and format). xgrammar applies the mask with a
native kernel on CPU and a Triton kernel on CUDA tensors (triton ships with CUDA torch), so
the engine needs no device-specific code; it also has structural tags, which express
"free text, or a tool call once ``<tool_call>`` is written" (tool_choice "auto") without
a hand-written grammar. Its cost is the triton and apache-tvm-ffi dependencies.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ouro.chat import TOOL_CALL_BEGIN, TOOL_CALL_END, tool_call_prefix
from ouro.engine.types import InvalidRequestError

if TYPE_CHECKING:
    import xgrammar as xgr


def _xgr():
    """xgrammar, imported when a grammar is first compiled or applied: it imports
    transformers, which processes that only pass output formats around (the coordinator,
    the tools) skip."""
    import xgrammar

    return xgrammar


logger = logging.getLogger(__name__)

MAX_WHITESPACE = 1
"""Most whitespace characters between JSON tokens in a tool call's arguments: a small model
must not be able to fill its whole answer with spaces."""


class InvalidFormatError(InvalidRequestError):
    """A response format or tool schema the grammar compiler refuses (names the parameter)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param

    def __reduce__(self):
        # Crosses Ray between replicas: keep the parameter it names.
        return type(self), (str(self), self.param)


@dataclass(frozen=True)
class JsonFormat:
    """The answer is one JSON object, matching ``schema`` when one is given."""

    schema: str | None = None
    """The JSON schema as JSON text (hashable: the cache key); None: any JSON object."""


@dataclass(frozen=True)
class ToolSpec:
    """One function the model may call."""

    name: str
    description: str | None
    parameters: str
    """The JSON schema of its arguments, as JSON text."""

    def describe(self) -> dict:
        """The tool as chat templates and ``ouro.chat.describe_tools`` take it (OpenAI form)."""
        function: dict[str, Any] = {"name": self.name, "parameters": json.loads(self.parameters)}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolFormat:
    """The answer may call (or, when ``required``, must call) one of ``tools``."""

    tools: tuple[ToolSpec, ...]
    required: bool
    """True: the answer is exactly one tool call; False: text, or text then one call."""


OutputFormat = JsonFormat | ToolFormat


class GrammarConstraint:
    """One row's grammar matcher, as the engine's ``TokenConstraint``."""

    def __init__(self, compiled: xgr.CompiledGrammar, vocab_size: int) -> None:
        self._matcher = _xgr().GrammarMatcher(compiled)
        self._vocab_size = vocab_size
        self._bitmask = _xgr().allocate_token_bitmask(1, vocab_size)

    def mask_logits(self, logits: torch.Tensor) -> None:
        self._matcher.fill_next_token_bitmask(self._bitmask)
        bitmask = self._bitmask.to(logits.device, non_blocking=True)
        # A view: the kernel writes into the engine's logits row.
        _xgr().apply_token_bitmask_inplace(
            logits.unsqueeze(0), bitmask, vocab_size=self._vocab_size
        )

    def accept(self, token: int) -> None:
        if not self._matcher.accept_token(token):
            raise ValueError(f"token {token} does not follow the answer's grammar")

    @property
    def finished(self) -> bool:
        return self._matcher.is_terminated()


class StructuredOutput:
    """Compiles answer formats for one tokenizer and makes per-row constraints.

    ``end_ids`` are the engine's end-of-turn tokens (the grammar's stop tokens);
    ``vocab_size`` is the width of the model's logits (it may exceed the tokenizer's).
    """

    def __init__(self, tokenizer, vocab_size: int, end_ids: Iterable[int]) -> None:
        info = _xgr().TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(end_ids)
        )
        self.vocab_size = vocab_size
        # xgrammar's compiler caches compiled grammars by their source; one thread: the
        # engine's CPU budget is small and schemas compile in milliseconds.
        self._compiler = _xgr().GrammarCompiler(info, max_threads=1)
        self._lock = threading.Lock()

    @classmethod
    def for_engine(cls, engine) -> StructuredOutput:
        """The one for a ``GenerationEngine``'s model, tokenizer and end-of-turn tokens."""
        vocab_size = engine.model.get_output_embeddings().weight.shape[0]
        return cls(engine.tokenizer, vocab_size, engine.end_ids)

    def compile(self, output: OutputFormat) -> xgr.CompiledGrammar:
        """The grammar of ``output``; InvalidFormatError when its schema cannot be used."""
        param = "response_format" if isinstance(output, JsonFormat) else "tools"
        try:
            with self._lock:
                if isinstance(output, JsonFormat):
                    return self._compiler.compile_json_schema(
                        output.schema or '{"type": "object"}', any_whitespace=False
                    )
                return self._compiler.compile_structural_tag(_tool_tag(output))
        except (RuntimeError, ValueError, TypeError) as error:
            raise InvalidFormatError(
                f"{param}: the schema cannot be used: {error}", param
            ) from error

    def constraint(self, output: OutputFormat) -> Callable[[], GrammarConstraint]:
        """A factory of fresh constraints for ``output`` (``GenerationRequest.constraint``);
        compiles now, so a bad schema fails before the request is queued."""
        compiled = self.compile(output)
        return lambda: GrammarConstraint(compiled, self.vocab_size)


def _tool_tag(output: ToolFormat) -> xgr.StructuralTag:
    """Structural tag of a tool-call answer: one call (required), or text with at most one
    call, which starts when the model writes ``<tool_call>`` (auto)."""
    if not output.tools:
        raise ValueError("no tools to call")
    tags = [
        _xgr().structural_tag.TagFormat(
            begin=tool_call_prefix(tool.name),
            content=_xgr().structural_tag.JSONSchemaFormat(
                json_schema=json.loads(tool.parameters), max_whitespace_cnt=MAX_WHITESPACE
            ),
            end=TOOL_CALL_END,
        )
        for tool in output.tools
    ]
    if output.required:
        body = tags[0] if len(tags) == 1 else _xgr().structural_tag.OrFormat(elements=tags)
    else:
        body = _xgr().structural_tag.TriggeredTagsFormat(
            triggers=[TOOL_CALL_BEGIN], tags=tags, stop_after_first=True
        )
    return _xgr().StructuralTag(format=body)
