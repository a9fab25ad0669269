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
from ouro.names import SERVED_MODEL_NAME, version_label
from ouro.rollout import (
    assigned_completion_id,
    echoed_assignment,
    first_user_turn,
    serves_canary,
)
from ouro.settings import OuroSettings
from ouro.structured import ToolFormat
from serve.auth import Caller
from serve.errors import error_response, stream_error_event
from serve.exceptions import InvalidRequestError, PermissionDeniedError
from serve.llm_calls import (
    Finished,
    LLMBackend,
    LLMCall,
    LLMEvent,
    LLMResult,
    ServedModel,
    TextDelta,
)
from serve.logs import current_request_id
from serve.metrics import ServeMetrics
from serve.model_names import ModelNames, served_model
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
    ContentFrames,
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
CONVERSATION_HEADER = "x-ouro-conversation"
PERSONAL_METRIC_LABEL = "ouro@personal"


class ChatCompletions:
    """The logic behind ``POST /v1/chat/completions``."""

    def __init__(
        self,
        settings: OuroSettings,
        llm_server: LLMBackend,
        metrics: ServeMetrics,
        personal: PersonalNames | None = None,
        names: ModelNames | None = None,
    ) -> None:
        """``names``: the replica's model names, whose snapshot says whether a canary runs
        (without them nothing is split)."""
        self._settings = settings
        self._llm = llm_server
        self._metrics = metrics
        self._personal = personal
        self._names = names

    async def create(
        self,
        request: ChatCompletionRequest,
        caller: Caller | None = None,
        unrouted: bool = False,
        conversation: str | None = None,
    ) -> Response:
        """``unrouted``: the request's ``x-ouro-unrouted`` (admin keys only);
        ``conversation``: its ``x-ouro-conversation`` (an earlier answer's completion id)."""
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
            call, assigned = self._assign(call, caller, request.user, conversation)
        except Exception as exc:  # noqa: BLE001 - every failure becomes its envelope
            return error_response(exc)
        if request.stream:
            return await self._stream(call, request, assigned)
        try:
            result: LLMResult = await self._llm.generate(call)
        except Exception as exc:  # noqa: BLE001 - mapped by serve.errors (logged there if unexpected)
            return self._failed(exc, assigned)
        finished = [choice.finished for choice in result.choices]
        self._metrics.observe_route(result.served)
        self._count(request.model, result.served, finished)
        if assigned is not None:
            self._metrics.count_rollout(assigned, result.served, _first_token_s(finished), ok=True)
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
            id=_answer_id(assigned),
            model=result.served.label,
            choices=choices,
            usage=_usage(finished),
        )
        return JSONResponse(body.model_dump(), headers=served_headers(result.served))

    # -- canary rollout (ouro.rollout) ----------------------------------------------------
    def _assign(
        self, call: LLMCall, caller: Caller | None, user: str | None, conversation: str | None
    ) -> tuple[LLMCall, str | None]:
        """The call as the rollout assigns it, and the version label assigned (None: the
        call does not ask for 'ouro', so it is not part of the rollout). While a canary
        runs, a sticky share of conversations is sent to it pinned; a conversation that
        names an earlier answer stays with that answer's side."""
        earlier = None
        if conversation is not None:
            try:
                earlier = echoed_assignment(conversation)
            except ValueError as exc:
                raise InvalidRequestError(str(exc), CONVERSATION_HEADER) from None
        if call.model != SERVED_MODEL_NAME or self._names is None:
            return call, None
        canary = self._names.canary
        key_name = caller.key_name if caller is not None else None
        if canary is not None and serves_canary(
            canary, key_name, user, first_user_turn(call.messages), earlier
        ):
            label = version_label(canary.version)
            return replace(call, model=label), label
        return call, served_model(self._names.production).label

    def _failed(self, exc: Exception, assigned: str | None) -> Response:
        """The error response; a server-side failure counts against the assigned version."""
        response = error_response(exc)
        if assigned is not None and response.status_code >= 500:
            self._metrics.count_rollout(assigned, None, None, ok=False)
        return response

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
    async def _stream(
        self, call: LLMCall, request: ChatCompletionRequest, assigned: str | None
    ) -> Response:
        events = self._llm.generate_stream(call)
        try:
            served: ServedModel = await anext(events)
        except Exception as exc:  # noqa: BLE001 - before the first byte: a normal error status
            await events.aclose()
            return self._failed(exc, assigned)
        self._metrics.observe_route(served)
        return StreamingResponse(
            self._sse(
                request.model,
                served,
                events,
                call.params,
                request.include_usage(),
                tool_calls=isinstance(call.output, ToolFormat),
                assigned=assigned,
            ),
            media_type="text/event-stream",
            headers={**served_headers(served), "Cache-Control": "no-cache"},
        )

    async def _sse(
        self,
        requested: str,
        served: ServedModel,
        events: AsyncGenerator[LLMEvent, None],
        params: SamplingParams,
        include_usage: bool,
        tool_calls: bool = False,
        assigned: str | None = None,
    ) -> AsyncIterator[str]:
        """The answer's chunks, choice by choice; with ``tool_calls`` each choice's text
        is read for a tool call (``ToolCallText``); ``assigned``: the rollout's version."""
        chunk_id, created = _answer_id(assigned), now_s()
        tool_texts = [ToolCallText() for _ in range(params.n)] if tool_calls else []

        def chunk(choices: list[ChunkChoice], usage=None) -> str:
            return ChatCompletionChunk(
                id=chunk_id, created=created, model=served.label, choices=choices, usage=usage
            ).sse(include_usage)

        frames = ContentFrames(chunk_id, created, served.label, include_usage)

        for index in range(params.n):
            yield chunk(
                [ChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""))]
            )
        finished: list[Finished] = []
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    if not tool_calls and not params.logprobs:
                        yield frames.content(event.index, event.text)
                        continue
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
                    if assigned is not None:
                        first_token_s = _first_token_s(finished)
                        self._metrics.count_rollout(assigned, served, first_token_s, ok=True)
                    if include_usage:
                        yield chunk([], usage=_usage(finished))
        except Exception as exc:  # noqa: BLE001 - the status line is sent: report in-stream
            self._metrics.stream_errors.inc()
            if assigned is not None:
                self._metrics.count_rollout(assigned, None, None, ok=False)
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
        metrics.time_to_first_token.labels(model=model).observe(_first_token_s(finished))


def _first_token_s(finished: list[Finished]) -> float:
    return min(choice.first_token_s for choice in finished)


def _answer_id(assigned: str | None) -> str:
    """A new completion id; one the rollout assigned carries its version (feedback citing
    it counts for that version)."""
    base = completion_id()
    return base if assigned is None else assigned_completion_id(base, assigned)


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
