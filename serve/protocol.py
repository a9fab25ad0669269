"""OpenAI protocol models: chat completions, their stream chunks, models, feedback, errors.

Fields follow the order of OpenAI's API reference. Requests accept and ignore fields
this server does not know (``extra="allow"``; the router logs their names). OpenAI
parameters it knows but does not implement yet are declared, and a non-default value
is refused by name (``NOT_YET_SUPPORTED``, the one place to relax as each lands).
Limits that depend on settings (message count, max_tokens) are checked by the serving
code, which knows the settings; this module checks only what is always true,
including what would fail inside the engine (text that cannot be encoded, seeds the
generator refuses, sampling values too small to compute with).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ouro.engine import (
    LOGIT_BIAS_RANGE,
    MAX_CHOICES,
    MAX_TOP_LOGPROBS,
    MIN_TEMPERATURE,
    PENALTY_RANGE,
)
from serve.replica_report import ReplicaReport

# -- requests -------------------------------------------------------------------------

MIN_TOP_P = 1e-6
"""top_p values below this are raised to it (the engine takes top_p in (0, 1]). Both keep
only the most likely token for any vocabulary under a million tokens."""

SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
"""The range ``torch.Generator.manual_seed`` accepts."""


def check_encodable(text: str) -> str:
    """``text`` unchanged, or ValueError when it cannot be encoded (a lone surrogate such
    as "\\ud800" parses from JSON but no tokenizer or file can take it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (it holds a lone surrogate)") from None
    return text


Text = Annotated[str, AfterValidator(check_encodable)]
"""A string that can be encoded as UTF-8: the same rule the feedback ledger applies."""


class TextContentPart(BaseModel):
    """A text part of a message whose content is a list of parts."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text"] = Field(description="Only text parts are supported.")
    text: str = Field(description="The text.")


def _content_text(content: str | list[TextContentPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


class FunctionCall(BaseModel):
    """The function an assistant turn called."""

    model_config = ConfigDict(extra="allow")

    name: Text = Field(description="The function's name.")
    arguments: Text = Field(description="Its arguments: a JSON object, as a string.")

    @field_validator("arguments")
    @classmethod
    def _check_arguments(cls, value: str) -> str:
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ValueError("arguments must be a JSON object")
        return value


class ToolCall(BaseModel):
    """A tool call in an earlier assistant turn of the conversation."""

    model_config = ConfigDict(extra="allow")

    id: Text = Field(description="The call's id; the tool message answering it names it.")
    type: Literal["function"] = Field("function", description="Only functions are supported.")
    function: FunctionCall


ENGINE_ROLE = {"developer": "system"}
"""OpenAI's newer name for the system role, as chat templates know it."""


class ChatMessage(BaseModel):
    """One turn of the conversation."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"] = Field(
        description="Who speaks; 'developer' is treated as 'system'."
    )
    content: str | list[TextContentPart] | None = Field(
        None,
        description="The text, or a list of text parts (joined with no separator); "
        "null only in an assistant turn that has tool_calls.",
    )
    name: Text | None = Field(None, description="Accepted for compatibility; not used.")
    tool_calls: list[ToolCall] | None = Field(
        None, description="An assistant turn's tool calls (history only)."
    )
    tool_call_id: Text | None = Field(
        None, description="In a tool message: the id of the call it answers."
    )

    @field_validator("content", mode="wrap")
    @classmethod
    def _check_content(cls, value: object, handler, info: ValidationInfo):
        if value is None and info.data.get("role") != "assistant":
            raise ValueError("content must be a string or a list of text parts")
        # One clear error at "content" instead of one per member of the union.
        try:
            content = handler(value)
        except ValidationError:
            raise ValueError("content must be a string or a list of text parts") from None
        check_encodable(_content_text(content))
        return content

    @model_validator(mode="after")
    def _check_role_fields(self) -> ChatMessage:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant turns carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (it may be null only beside tool_calls)")
        return self

    def text(self) -> str:
        """The content as one string ("" for an assistant turn with only tool calls)."""
        return _content_text(self.content)

    def engine_message(self) -> dict:
        """The turn as chat templates take it (transformers' format: tool call arguments
        as a dict, the tool message's tool_call_id kept)."""
        message: dict[str, Any] = {
            "role": ENGINE_ROLE.get(self.role, self.role),
            "content": self.text(),
        }
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": call.type,
                    "function": {
                        "name": call.function.name,
                        "arguments": json.loads(call.function.arguments),
                    },
                }
                for call in self.tool_calls
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class StreamOptions(BaseModel):
    """Options of a streamed response."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool = Field(
        False, description="Send a last chunk with the token usage and no choices."
    )


class JsonSchemaFormat(BaseModel):
    """The schema a ``json_schema`` answer follows."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(min_length=1, max_length=64, description="The format's name.")
    description: str | None = Field(None, description="What the format is for.")
    schema_: dict[str, Any] = Field(
        default_factory=dict,
        alias="schema",
        description="The JSON schema (a JSON object); the answer always matches it.",
    )
    strict: bool | None = Field(
        None, description="Accepted for compatibility: answers always match the schema."
    )


class ResponseFormat(BaseModel):
    """The answer's format."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"] = Field(
        description="'json_object': a JSON object; 'json_schema': one matching json_schema."
    )
    json_schema: JsonSchemaFormat | None = Field(
        None, description="Required with type 'json_schema'."
    )

    @model_validator(mode="after")
    def _check_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema is required with type 'json_schema'")
        return self


class FunctionDefinition(BaseModel):
    """A function the model may call."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[a-zA-Z0-9_-]+$",
        description="The function's name (letters, digits, _ and -).",
    )
    description: Text | None = Field(None, description="What it does, for the model.")
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="The JSON schema of its arguments (an object); calls always match it.",
    )
    strict: bool | None = Field(
        None, description="Accepted for compatibility: calls always match the schema."
    )


class Tool(BaseModel):
    """A tool the model may call."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"] = Field(description="Only functions are supported.")
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(description="The function to call.")


class NamedToolChoice(BaseModel):
    """Call this function."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: NamedFunction


NOT_YET = "Not supported yet: a value other than the default is refused (400)."

TokenId = Annotated[str, Field(pattern=r"^[0-9]{1,10}$")]
"""A token id as a JSON object key (a decimal string)."""


class ChatCompletionRequest(BaseModel):
    """Body of ``POST /v1/chat/completions``."""

    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage] = Field(
        min_length=1,
        description="The conversation; the last turn is the user's (or a tool's result).",
    )
    model: str = Field(
        min_length=1,
        description="'ouro', 'ouro@<alias>', 'ouro@v<N>' or 'ouro-base'.",
    )
    audio: dict | None = Field(None, description=NOT_YET)
    frequency_penalty: float | None = Field(
        None,
        ge=PENALTY_RANGE[0],
        le=PENALTY_RANGE[1],
        description="Lowers a token's logit by this much per time it was already generated.",
    )
    function_call: str | dict | None = Field(
        None, description="Legacy function calling: use tools and tool_choice. " + NOT_YET
    )
    functions: list[dict] | None = Field(
        None, description="Legacy function calling: use tools. " + NOT_YET
    )
    logit_bias: (
        dict[TokenId, Annotated[float, Field(ge=LOGIT_BIAS_RANGE[0], le=LOGIT_BIAS_RANGE[1])]]
        | None
    ) = Field(
        None,
        description="Token id -> bias added to its logit at every step (-100 bans the token, "
        "+100 forces it); an id outside the vocabulary is a 400.",
    )
    logprobs: bool | None = Field(
        None,
        description="Return each generated token's log probability: the model's own "
        "distribution at that position, before logit_bias, penalties and temperature.",
    )
    max_completion_tokens: int | None = Field(
        None, ge=1, description="Most tokens to generate (wins over max_tokens)."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Most tokens to generate (OpenAI's older name)."
    )
    modalities: list[str] | None = Field(None, description="Only ['text']. " + NOT_YET)
    n: int | None = Field(
        None,
        ge=1,
        le=MAX_CHOICES,
        description=f"Number of choices (at most {MAX_CHOICES}); with a seed, choice i is "
        "seeded seed+i.",
    )
    presence_penalty: float | None = Field(
        None,
        ge=PENALTY_RANGE[0],
        le=PENALTY_RANGE[1],
        description="Lowers the logit of every token already generated by this much.",
    )
    parallel_tool_calls: bool | None = Field(
        None, description="Accepted; an answer makes at most one tool call."
    )
    prediction: dict | None = Field(None, description=NOT_YET)
    response_format: ResponseFormat | None = Field(
        None,
        description="'json_object' or 'json_schema': the answer is JSON (400 for a bad schema).",
    )
    seed: int | None = Field(
        None,
        ge=SEED_MIN,
        le=SEED_MAX,
        description="Seeds sampling, for repeatable answers (a 64-bit integer).",
    )
    stop: str | Annotated[list[str], Field(max_length=4)] | None = Field(
        None, description="Up to 4 strings that end the answer (not included in it)."
    )
    stream: bool = Field(False, description="Send the answer as server-sent events.")
    stream_options: StreamOptions | None = Field(
        None, description="Options of a streamed response; only with stream=true."
    )
    temperature: float = Field(
        0.0,
        ge=0.0,
        le=2.0,
        description=f"0 is greedy (deterministic); higher samples. Values between 0 and "
        f"{MIN_TEMPERATURE} act as {MIN_TEMPERATURE}.",
    )
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None,
        description="'none', 'auto' (the default with tools: text or one call), 'required' "
        "(one call), or a named function.",
    )
    tools: list[Tool] | None = Field(
        None, max_length=128, description="Functions the model may call (one per answer)."
    )
    top_logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="With logprobs: also this many most likely tokens at each position.",
    )
    top_p: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description=f"Nucleus sampling mass. Values below {MIN_TOP_P} act as {MIN_TOP_P}.",
    )
    user: Text | None = Field(
        None,
        description="End-user id; with personal adapters it narrows the key's scope "
        "('<key name>/<user>').",
    )
    web_search_options: dict | None = Field(None, description=NOT_YET)

    @field_validator("stop", mode="wrap")
    @classmethod
    def _check_stop(cls, value: object, handler) -> list[str]:
        try:
            value = handler(value)
        except ValidationError:  # one error at "stop", not one per member of the union
            raise ValueError("stop must be a string or a list of at most 4 strings") from None
        if value is None:
            return []
        stops = [value] if isinstance(value, str) else value
        for stop in stops:
            check_encodable(stop)
        if any(not stop for stop in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @field_validator("top_p")
    @classmethod
    def _floor_top_p(cls, value: float) -> float:
        return max(value, MIN_TOP_P)

    @property
    def stop_sequences(self) -> list[str]:
        return list(self.stop or [])

    def requested_max_tokens(self) -> int | None:
        """max_completion_tokens, else max_tokens, else None (the server's default)."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def unsupported_parameter(self) -> str | None:
        """The first parameter set to a value this server cannot honour yet, if any."""
        for name, is_default in NOT_YET_SUPPORTED.items():
            if not is_default(getattr(self, name)):
                return name
        return None

    def engine_messages(self) -> list[dict]:
        return [message.engine_message() for message in self.messages]


NOT_YET_SUPPORTED: dict[str, Callable[[Any], bool]] = {
    # parameter -> "this value asks for nothing beyond what the server does today".
    # Remove a parameter's entry when it is implemented.
    # Legacy function calling (superseded by tools) and modalities this server lacks.
    "functions": lambda value: not value,
    "function_call": lambda value: value in (None, "none", "auto"),
    "modalities": lambda value: value in (None, ["text"]),
    "audio": lambda value: value is None,
    "prediction": lambda value: value is None,
    "web_search_options": lambda value: value is None,
}
"""OpenAI parameters the engine does not implement yet, with what counts as unset."""


class FeedbackMessage(BaseModel):
    """One turn of the conversation that was answered."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant"] = Field(description="Who spoke.")
    content: str | list[TextContentPart] = Field(
        description="What was said: a string, or a list of text parts as in chat."
    )

    @field_validator("content", mode="wrap")
    @classmethod
    def _join_parts(cls, value: object, handler) -> str:
        # The ledger stores plain text: parts are joined here, as chat joins them.
        try:
            return _content_text(handler(value))
        except ValidationError:
            raise ValueError("content must be a string or a list of text parts") from None


class FeedbackRequest(BaseModel):
    """Body of ``POST /v1/feedback``: a correction of one answer, or a rating of it.

    Exactly one of ``correction`` (what the answer should have been: it trains the next
    version) and ``rating`` (thumbs up or down: a signal for rollout, never a training
    row); both or neither is a 400. The ledger checks the rest (the conversation ends with
    the user turn that was answered; a correction is non-empty and differs from the
    completion; the text can be encoded; sizes).
    """

    model_config = ConfigDict(extra="allow")

    messages: list[FeedbackMessage] = Field(
        min_length=1, description="The conversation the model answered."
    )
    completion: str = Field(description="What the model answered (the answer corrected or rated).")
    correction: str | None = Field(
        None, description="What it should have answered. Sent without ``rating``."
    )
    rating: Literal["up", "down"] | None = Field(
        None,
        description="Thumbs 'up' or 'down' on the answer, sent without ``correction``: a "
        "signal for rollout, never a training row.",
    )
    completion_id: str | None = Field(None, description="The chat completion's id.")
    model: str | None = Field(None, description="The version that answered, e.g. 'ouro@v7'.")
    reason: str | None = Field(None, description="Why the answer was wrong (or right), free text.")
    user: str | None = Field(
        None, description="End-user id; with personal adapters it narrows the key's scope."
    )


# -- responses ------------------------------------------------------------------------


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now_s() -> int:
    return int(time.time())


class FunctionCallOut(BaseModel):
    name: str
    arguments: str = Field(description="The arguments: a JSON object, as a string.")


class ToolCallOut(BaseModel):
    """A tool call the answer makes."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = Field(description="The text; null when the answer only calls a tool.")
    tool_calls: list[ToolCallOut] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class TopLogprob(BaseModel):
    """A token and its log probability."""

    token: str = Field(description="The token's text.")
    logprob: float = Field(description="Its log probability (at least -9999.0).")
    bytes: list[int] | None = Field(
        description="The token's UTF-8 bytes (a token may hold part of a character)."
    )


class ChatCompletionTokenLogprob(TopLogprob):
    """A generated token's log probability, with the most likely tokens at its position."""

    top_logprobs: list[TopLogprob] = Field(description="Most likely first (top_logprobs long).")


class ChoiceLogprobs(BaseModel):
    """Log probabilities of a choice's tokens (of the tokens a chunk's delta covers)."""

    content: list[ChatCompletionTokenLogprob] | None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class ChatCompletionResponse(BaseModel):
    """A whole answer."""

    id: str = Field(default_factory=completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now_s)
    model: str = Field(description="The exact version that answered, e.g. 'ouro@v7'.")
    choices: list[Choice]
    usage: Usage


class FunctionCallDelta(BaseModel):
    name: str | None = Field(None, description="In the call's first chunk only.")
    arguments: str = Field(description="The next fragment of the arguments' JSON text.")


class ToolCallDelta(BaseModel):
    """Part of a streamed tool call: the first carries id, type and name."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed answer."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None

    def sse(self, include_usage_field: bool) -> str:
        """The event's text, as OpenAI sends it: deltas carry only the fields they set, and
        ``usage`` is present (null until the last chunk) only when it was asked for."""
        body = self.model_dump(exclude={"usage"} if not include_usage_field else None)
        for choice, model in zip(body["choices"], self.choices, strict=True):
            choice["delta"] = model.delta.model_dump(exclude_none=True)
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


class ContentFrames:
    """The events of one streamed answer's plain text deltas, pre-encoded: everything but
    the text is serialised once per choice, so a delta costs one string encoding instead
    of building and dumping a chunk. Each frame is exactly what ``ChatCompletionChunk.sse``
    gives for the same delta."""

    _MARK = "\x00ouro-content\x00"

    def __init__(self, chunk_id: str, created: int, model: str, include_usage: bool) -> None:
        self._fixed = {"id": chunk_id, "created": created, "model": model}
        self._include_usage = include_usage
        self._frames: dict[int, tuple[str, str]] = {}

    def content(self, index: int, text: str) -> str:
        frame = self._frames.get(index)
        if frame is None:
            delta = ChunkChoice(index=index, delta=DeltaMessage(content=self._MARK))
            event = ChatCompletionChunk(**self._fixed, choices=[delta]).sse(self._include_usage)
            before, _, after = event.partition(json.dumps(self._MARK, ensure_ascii=False))
            frame = self._frames[index] = (before, after)
        return f"{frame[0]}{json.dumps(text, ensure_ascii=False)}{frame[1]}"


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models``."""

    id: str = Field(description="The name to put in a request's 'model'.")
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now_s)
    owned_by: str = "ouro"
    root: str = Field(description="What answers: 'ouro@v<N>', or the base model's name.")
    parent: str | None = Field(description="The base model an adapter version sits on.")
    # -- Ouro's own fields ------------------------------------------------------------
    version: int | None = Field(description="Registry version number; None for the base.")
    aliases: list[str] = Field(description="Registry aliases pointing at this version now.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

    def get(self, model_id: str) -> ModelCard | None:
        """The entry named ``model_id``, if listed."""
        return next((card for card in self.data if card.id == model_id), None)


class FeedbackCreated(BaseModel):
    """Answer of ``POST /v1/feedback`` once the record is durable."""

    id: str
    object: Literal["feedback"] = "feedback"
    created_at: str = Field(description="When the record was written (UTC, ISO 8601).")


class FeedbackStats(BaseModel):
    """Answer of ``GET /v1/feedback/stats``: corrections, and ratings counted apart."""

    object: Literal["feedback.stats"] = "feedback.stats"
    total: int = Field(description="Corrections in the ledger (ratings are not counted).")
    by_model: dict[str, int] = Field(description="Corrections per version that answered.")
    since_last_training: int = Field(
        description="Corrections newer than the newest registered version's training data."
    )
    bad_lines: int = Field(description="Ledger lines that could not be read.")
    ratings: dict[str, int] = Field(description="Ratings by verdict: 'up' and 'down'.")
    ratings_by_model: dict[str, dict[str, int]] = Field(
        description="Ratings per version that answered, by verdict."
    )


class RegistryState(BaseModel):
    """What the replica knows of the model registry."""

    reachable: bool
    stale: bool = Field(description="True when the last poll failed (names may be old).")
    last_success_age_s: float | None = Field(description="Seconds since the last good poll.")
    error: str | None
    production_version: int | None


_QUEUE = ("running_requests", "waiting_requests")
"""``ReplicaStatus`` fields read from the replica's engine figures, not its report."""


class ReplicaStatus(BaseModel):
    """One LLM server replica, as ``/readyz`` and the registry refresh report it."""

    replica_id: str = Field(description="Serve's replica id.")
    reported_at: float = Field(description="Unix time of the replica's report.")
    production_version: int | None = Field(
        description="Version 'ouro' answers with on this replica; null: the base model."
    )
    production_known: bool = Field(
        description="Whether the replica has read the registry and loaded production."
    )
    refresh_generation: int = Field(
        description="Newest admin refresh request this replica has acted on."
    )
    adapters_loaded: list[str] = Field(description="Adapters in the replica's engine.")
    adapter_loads: int = Field(description="Adapter loads since the replica started.")
    adapter_evictions: int = Field(description="Adapter removals since the replica started.")
    adapter_load_failures: int = Field(description="Failed adapter loads since it started.")
    registry_reachable: bool = Field(description="Whether the replica's last registry poll worked.")
    registry_error: str | None = Field(description="The last poll's error, if it failed.")
    warm_error: str | None = Field(
        description="Why the newest production version could not be loaded, if so."
    )
    running_requests: int | None = Field(description="Requests being answered; null: unknown.")
    waiting_requests: int | None = Field(description="Requests waiting for a place.")
    stale: bool = Field(description="The replica did not answer in time: its last report.")

    @classmethod
    def of(cls, report: ReplicaReport) -> ReplicaStatus:
        """The report's fields of the same names, and the engine's two queue figures."""
        engine = report.engine
        return cls.model_validate(
            {
                **{name: getattr(report, name) for name in cls.model_fields if name not in _QUEUE},
                **{name: getattr(engine, name, None) for name in _QUEUE},
            }
        )


class Readiness(BaseModel):
    """Answer of ``GET /readyz`` (200 when ready, 503 with the same body when not)."""

    status: Literal["ready", "not_ready"]
    model_loaded: bool = Field(description="Whether any LLM server replica answered.")
    registry: RegistryState
    serving: dict[str, list[str]] = Field(description="What each served name answers with.")
    replicas: list[ReplicaStatus]
    reason: str | None = Field(None, description="Why it is not ready.")


class RegistryRefresh(BaseModel):
    """Answer of ``POST /admin/registry/refresh``."""

    object: Literal["registry.refresh"] = "registry.refresh"
    generation: int = Field(description="The refresh request's number.")
    registry_reachable: bool
    error: str | None
    aliases: dict[str, int]
    versions: list[int]
    replicas_synced: bool = Field(description="Every LLM replica acted on this refresh.")
    replicas: list[ReplicaStatus]


class Liveness(BaseModel):
    """Answer of ``GET /healthz``."""

    status: Literal["ok"] = "ok"


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope."""

    error: ErrorInfo
