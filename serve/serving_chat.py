"""Chat completions: validate, resolve the model name, call the LLM server, shape the answer.

``ChatCompletions.create`` returns a JSON response, a server-sent event stream, or an
error response; it never raises into the transport. A failure after a stream has
started becomes an error event followed by ``data: [DONE]``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace

from fastapi.responses import JSONResponse, Response, StreamingResponse

from ouro.engine import PositionLogprobs, SamplingParams, TokenLogprob
from ouro.settings import OuroSettings
from ouro.structured import ToolFormat
from serve.auth import Caller
from serve.errors import error_response, stream_error_event
from serve.exceptions import InvalidRequestError, PermissionDeniedError
from serve.llm_calls import Finished, LLMBackend, LLMCall, LLMResult, ServedModel, TextDelta
from serve.logs import current_request_id
from serve.metrics import ServeMetrics
from serve.personal_names import PersonalNames
from serve.protocol import (
    SSE_DONE,
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionTokenLogprob,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    DeltaMessage,
    TopLogprob,
    Usage,
    completion_id,
    now_s,
)
from serve.tool_calls import ToolCallText, output_format, whole_answer

logger = logging.getLogger(__name__)

MODEL_VERSION_HEADER = "x-ouro-model-version"
ROUTE_HEADER = "x-ouro-route"
ROUTE_SIMILARITY_HEADER = "x-ouro-route-similarity"
UNROUTED_HEADER = "x-ouro-unrouted"
PERSONAL_METRIC_LABEL = "ouro@personal"


class ChatCompletions:
    """The logic behind ``POST /v1/chat/completions``."""

    def __init__(
        self,
        settings: OuroSettings,
        llm_server: LLMBackend,
        metrics: ServeMetrics,
        personal: PersonalNames | None = None,
    ) -> None:
        self._settings = settings
        self._llm = llm_server
        self._metrics = metrics
        self._personal = personal

    async def create(
        self, request: ChatCompletionRequest, caller: Caller | None = None, unrouted: bool = False
    ) -> Response:
        """``unrouted``: the request's ``x-ouro-unrouted`` (admin keys only)."""
        try:
            call = self._to_call(request)
            if unrouted:
                if caller is None or not caller.admin:
                    raise PermissionDeniedError(
                        f"{UNROUTED_HEADER} needs an admin API key", UNROUTED_HEADER
                    )
                call = replace(call, unrouted=True)
            if self._personal is not None:
                # The scope comes from the key; 'user' only narrows it (serve.auth).
                scope = caller.scope(request.user) if caller is not None else None
                forwarded = await self._personal.forwarded_name(call.model, scope)
                call = replace(call, model=forwarded)
        except Exception as exc:  # noqa: BLE001 - every failure becomes its envelope
            return error_response(exc)
        if request.stream:
            return await self._stream(call, request)
        try:
            result: LLMResult = await self._llm.generate(call)
        except Exception as exc:  # noqa: BLE001 - mapped by serve.errors (logged there if unexpected)
            return error_response(exc)
        finished = [choice.finished for choice in result.choices]
        self._metrics.observe_route(result.served)
        self._count(request.model, result.served, finished)
        choices = []
        for choice in result.choices:
            message = AssistantMessage(content=choice.text)
            finish_reason = choice.finished.finish_reason
            if isinstance(call.output, ToolFormat):
                message, finish_reason = whole_answer(choice.text, finish_reason)
            choices.append(
                Choice(
                    index=choice.finished.index,
                    message=message,
                    logprobs=_logprobs(choice.logprobs) if call.params.logprobs else None,
                    finish_reason=finish_reason,
                )
            )
        body = ChatCompletionResponse(
            model=result.served.label,
            choices=choices,
            usage=_usage(finished),
        )
        return JSONResponse(body.model_dump(), headers=served_headers(result.served))

    # -- request checks -------------------------------------------------------------------
    def _to_call(self, request: ChatCompletionRequest) -> LLMCall:
        settings = self._settings
        if request.model_extra:
            logger.info("ignoring unsupported request fields: %s", sorted(request.model_extra))
        unsupported = request.unsupported_parameter()
        if unsupported is not None:
            raise InvalidRequestError(
                f"{unsupported} is not supported by this server yet: leave it unset",
                unsupported,
                code="unsupported_parameter",
            )
        if request.stream_options is not None and not request.stream:
            raise InvalidRequestError(
                "stream_options is only allowed with stream=true", "stream_options"
            )
        if len(request.messages) > settings.max_messages:
            raise InvalidRequestError(
                f"too many messages: {len(request.messages)} (the limit is {settings.max_messages})",
                "messages",
            )
        if request.messages[-1].role not in ("user", "tool"):
            raise InvalidRequestError(
                "the last message must be the user's (or a tool's result)", "messages"
            )
        max_tokens = request.requested_max_tokens() or settings.default_max_tokens
        if max_tokens > settings.max_tokens_limit:
            param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
            raise InvalidRequestError(
                f"{param} is {max_tokens}; the limit is {settings.max_tokens_limit}", param
            )
        params = SamplingParams(
            max_tokens=min(max_tokens, settings.max_tokens_limit),
            temperature=request.temperature,
            top_p=request.top_p,
            stop=tuple(request.stop_sequences),
            seed=request.seed,
            n=request.n or 1,
            logprobs=bool(request.logprobs),
            top_logprobs=request.top_logprobs or 0,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            logit_bias={int(token): bias for token, bias in (request.logit_bias or {}).items()},
        )
        return LLMCall(
            model=request.model,
            messages=request.engine_messages(),
            params=params,
            request_id=current_request_id(),
            output=output_format(request),
        )

    # -- streaming --------------------------------------------------------------------------
    async def _stream(self, call: LLMCall, request: ChatCompletionRequest) -> Response:
        events = self._llm.generate_stream(call)
        try:
            served: ServedModel = await anext(events)
        except Exception as exc:  # noqa: BLE001 - before the first byte: a normal error status
            await events.aclose()
            return error_response(exc)
        self._metrics.observe_route(served)
        return StreamingResponse(
            self._sse(
                request.model,
                served,
                events,
                call.params,
                request.include_usage(),
                tool_calls=isinstance(call.output, ToolFormat),
            ),
            media_type="text/event-stream",
            headers={**served_headers(served), "Cache-Control": "no-cache"},
        )

    async def _sse(
        self,
        requested: str,
        served: ServedModel,
        events: AsyncGenerator,
        params: SamplingParams,
        include_usage: bool,
        tool_calls: bool = False,
    ) -> AsyncIterator[str]:
        """The answer's chunks, choice by choice; with ``tool_calls`` each choice's text
        is read for a tool call (``ToolCallText``)."""
        chunk_id, created = completion_id(), now_s()
        tool_texts = [ToolCallText() for _ in range(params.n)] if tool_calls else []

        def chunk(choices: list[ChunkChoice], usage=None) -> str:
            return ChatCompletionChunk(
                id=chunk_id, created=created, model=served.label, choices=choices, usage=usage
            ).sse(include_usage)

        for index in range(params.n):
            yield chunk(
                [ChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""))]
            )
        finished: list[Finished] = []
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    logprobs = _logprobs(event.logprobs) if params.logprobs else None
                    deltas = (
                        tool_texts[event.index].feed(event.text)
                        if tool_calls
                        else [DeltaMessage(content=event.text)]
                    )
                    for delta in deltas:
                        choice = ChunkChoice(index=event.index, delta=delta, logprobs=logprobs)
                        yield chunk([choice])
                        logprobs = None  # a token's logprobs go out once
                elif isinstance(event, Finished):
                    finished.append(event)
                    finish_reason = event.finish_reason
                    if tool_calls:
                        deltas, finish_reason = tool_texts[event.index].finish(finish_reason)
                        for delta in deltas:
                            yield chunk([ChunkChoice(index=event.index, delta=delta)])
                    yield chunk(
                        [
                            ChunkChoice(
                                index=event.index,
                                delta=DeltaMessage(),
                                finish_reason=finish_reason,
                            )
                        ]
                    )
                    if len(finished) < params.n:
                        continue
                    self._count(requested, served, finished)
                    if include_usage:
                        yield chunk([], usage=_usage(finished))
        except Exception as exc:  # noqa: BLE001 - the status line is sent: report in-stream
            self._metrics.stream_errors.inc()
            yield stream_error_event(exc)
        finally:
            # A client gone mid-stream cancels this generator: closing the LLM server's
            # stream now aborts the engine rows and frees the adapter at once.
            await events.aclose()
        yield SSE_DONE

    def _count(self, requested: str, served: ServedModel, finished: list[Finished]) -> None:
        """One completion, however many choices: the prompt once, every choice's tokens."""
        metrics = self._metrics
        # One series for all personal versions: a label per scope would not scale.
        model = served.label if "/" not in served.label else PERSONAL_METRIC_LABEL
        if "/" in requested:
            requested = PERSONAL_METRIC_LABEL
        metrics.completions.labels(requested=requested, model=model).inc()
        usage = _usage(finished)
        metrics.prompt_tokens.labels(model=model).inc(usage.prompt_tokens)
        metrics.generated_tokens.labels(model=model).inc(usage.completion_tokens)
        first_token_s = min(choice.first_token_s for choice in finished)
        metrics.time_to_first_token.labels(model=model).observe(first_token_s)


def served_headers(served: ServedModel) -> dict[str, str]:
    """Who answered and why: the version, the route, and the similarity when one was found."""
    headers = {MODEL_VERSION_HEADER: served.label}
    if served.route is not None:
        headers[ROUTE_HEADER] = served.route
    if served.similarity is not None:
        headers[ROUTE_SIMILARITY_HEADER] = f"{served.similarity:.4f}"
    return headers


def _usage(finished: list[Finished]) -> Usage:
    """The prompt counted once (every choice shares it), and every choice's tokens."""
    return Usage.of(finished[0].prompt_tokens, sum(choice.completion_tokens for choice in finished))


LOGPROB_FLOOR = -9999.0
"""What a -inf logprob is reported as (JSON has no infinity; OpenAI and vLLM use this)."""


def _logprobs(positions: tuple[PositionLogprobs, ...]) -> ChoiceLogprobs:
    """The engine's logprobs in OpenAI's shape."""

    def top(entry: TokenLogprob) -> TopLogprob:
        return TopLogprob(
            token=entry.token,
            logprob=max(entry.logprob, LOGPROB_FLOOR),
            bytes=list(entry.token_bytes),
        )

    return ChoiceLogprobs(
        content=[
            ChatCompletionTokenLogprob(
                **top(position.chosen).model_dump(),
                top_logprobs=[top(entry) for entry in position.top],
            )
            for position in positions
        ]
    )
