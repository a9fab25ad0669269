"""What the HTTP front asks of its replica's LLM server, and what comes back.

A stream from ``LLMServer.generate_stream`` is, in order: one ``ServedModel`` (which
version answers and the router's reason, known before any token, so they can go in the
response headers), then
for each of the call's ``n`` choices (interleaved, each event naming its ``index``) any
number of ``TextDelta`` and one ``Finished``. ``LLMServer.generate`` returns one
``LLMResult``. Failures are raised (the front maps them with ``serve.errors``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from serve.replica_report import ReplicaReport

from ouro.engine import PositionLogprobs, SamplingParams
from ouro.structured import OutputFormat


@dataclass(frozen=True)
class LLMCall:
    """One chat completion to generate."""

    model: str
    """The name the client asked for: 'ouro', 'ouro@<alias>', 'ouro@v<N>' or 'ouro-base'."""
    messages: list[dict]
    """Chat-template messages: content as plain strings, plus ``tool_calls`` and
    ``tool_call_id`` where the conversation has them (``serve.protocol``)."""
    params: SamplingParams
    """How to decode."""
    request_id: str
    """The HTTP request's id, for the LLM server's logs."""
    output: OutputFormat | None = None
    """The format the answer is held to (JSON, tool calls); None: free text."""
    unrouted: bool = False
    """Answer with the named version's adapter whatever the router says (an admin's
    ``x-ouro-unrouted: true``; the front checks the key)."""


ROUTE_BASE = "base"
"""ServedModel.route of a request for the base model itself (nothing was routed)."""


@dataclass(frozen=True)
class ServedModel:
    """The exact version that answers a request, and how the router chose it."""

    label: str
    """'ouro@v<N>', 'ouro@<scope>/v<N>' or 'ouro-base': what the response's ``model``
    field says."""
    version: int | None
    """Registry version; None for the base model."""
    scope: str | None = None
    """The personal scope of a personal version; None for shared versions and the base."""
    route: str | None = None
    """The router's reason (``ouro.routing.RouteDecision.reason``: 'match', 'no_match',
    'no_index', 'forced'), or 'base' for a request for the base model; None until the
    LLM server has decided."""
    similarity: float | None = None
    """Cosine between the request and the nearest correction of the version that decided
    (None when no index was searched)."""
    router_cpu_s: float = 0.0
    """Thread CPU seconds the routing decision took (embedding and search)."""


@dataclass(frozen=True)
class TextDelta:
    """New text of one choice of a streamed answer."""

    text: str
    index: int = 0
    """Which choice."""
    logprobs: tuple[PositionLogprobs, ...] = ()
    """With ``logprobs``: one entry per token the text covers (text may be empty while
    tokens are held back)."""


@dataclass(frozen=True)
class Finished:
    """The end of one choice of an answer."""

    finish_reason: str
    """'stop' or 'length'."""
    prompt_tokens: int
    completion_tokens: int
    """Tokens this choice generated."""
    first_token_s: float
    """Seconds from the LLM server receiving the call to this choice's first token."""
    index: int = 0
    """Which choice."""


@dataclass(frozen=True)
class LLMChoice:
    """One whole choice."""

    text: str
    finished: Finished
    logprobs: tuple[PositionLogprobs, ...] = ()


@dataclass(frozen=True)
class LLMResult:
    """A whole answer (``LLMServer.generate``): its choices in index order."""

    served: ServedModel
    choices: list[LLMChoice]


LLMEvent = ServedModel | TextDelta | Finished
"""What a stream from ``LLMBackend.generate_stream`` yields (see the module's docstring)."""


class LLMBackend(Protocol):
    """What the front calls on its replica's LLM server (``serve.llm_server.LLMServer``)."""

    async def generate(self, call: LLMCall) -> LLMResult:
        """The whole answer."""
        ...

    def generate_stream(self, call: LLMCall) -> AsyncGenerator[LLMEvent, None]:
        """``ServedModel``, then ``TextDelta`` and ``Finished`` events; closing it early
        aborts the answer."""
        ...

    async def report(self) -> ReplicaReport:
        """The replica's state now."""
        ...
