"""OpenAI protocol models: chat completions, their stream chunks, models, feedback, errors.

Fields follow the order of OpenAI's API reference. Requests accept and ignore fields
this server does not implement (``extra="allow"``; the router logs their names).
Limits that depend on settings (message count, max_tokens) are checked by the serving
code, which knows the settings; this module checks only what is always true.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# -- requests -------------------------------------------------------------------------


class TextContentPart(BaseModel):
    """A text part of a message whose content is a list of parts."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text"] = Field(description="Only text parts are supported.")
    text: str = Field(description="The text.")


class ChatMessage(BaseModel):
    """One turn of the conversation."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant"] = Field(description="Who speaks.")
    content: str | list[TextContentPart] = Field(
        description="The text, or a list of text parts (joined with no separator)."
    )
    name: str | None = Field(None, description="Accepted for compatibility; not used.")

    @field_validator("content", mode="wrap")
    @classmethod
    def _check_content(cls, value: object, handler):
        # One clear error at "content" instead of one per member of the union.
        try:
            return handler(value)
        except ValidationError:
            raise ValueError("content must be a string or a list of text parts") from None

    def text(self) -> str:
        """The content as one string."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    """Options of a streamed response."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool = Field(
        False, description="Send a last chunk with the token usage and no choices."
    )


class ChatCompletionRequest(BaseModel):
    """Body of ``POST /v1/chat/completions``."""

    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage] = Field(
        min_length=1, description="The conversation; the last turn is the user's."
    )
    model: str = Field(
        min_length=1,
        description="'ouro', 'ouro@<alias>', 'ouro@v<N>' or 'ouro-base'.",
    )
    max_completion_tokens: int | None = Field(
        None, ge=1, description="Most tokens to generate (wins over max_tokens)."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Most tokens to generate (OpenAI's older name)."
    )
    n: int = Field(1, description="Number of choices; only 1 is supported.")
    seed: int | None = Field(None, description="Seeds sampling, for repeatable answers.")
    stop: str | list[str] | None = Field(
        None, description="Up to 4 strings that end the answer (not included in it)."
    )
    stream: bool = Field(False, description="Send the answer as server-sent events.")
    stream_options: StreamOptions | None = Field(
        None, description="Options of a streamed response; only with stream=true."
    )
    temperature: float = Field(
        0.0, ge=0.0, le=2.0, description="0 is greedy (deterministic); higher samples."
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    user: str | None = Field(
        None,
        description="End-user id; with personal adapters it narrows the key's scope "
        "('<key name>/<user>').",
    )

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> list[str]:
        if value is None:
            return []
        stops = [value] if isinstance(value, str) else value
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(not stop for stop in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

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


class FeedbackMessage(BaseModel):
    """One turn of the conversation that was answered."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant"] = Field(description="Who spoke.")
    content: str = Field(description="What was said.")


class FeedbackRequest(BaseModel):
    """Body of ``POST /v1/feedback``: a correction of one answer.

    The ledger checks the rest (the conversation ends with the user turn that was
    answered; the correction is non-empty and differs from the completion; sizes).
    """

    model_config = ConfigDict(extra="allow")

    messages: list[FeedbackMessage] = Field(
        min_length=1, description="The conversation the model answered."
    )
    completion: str = Field(description="What the model answered.")
    correction: str = Field(description="What it should have answered.")
    completion_id: str | None = Field(None, description="The chat completion's id.")
    model: str | None = Field(None, description="The version that answered, e.g. 'ouro@v7'.")
    reason: str | None = Field(None, description="Why the answer was wrong, free text.")
    user: str | None = Field(
        None, description="End-user id; with personal adapters it narrows the key's scope."
    )


# -- responses ------------------------------------------------------------------------


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now_s() -> int:
    return int(time.time())


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


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


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


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
        for choice in body["choices"]:
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


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


class FeedbackCreated(BaseModel):
    """Answer of ``POST /v1/feedback`` once the record is durable."""

    id: str
    object: Literal["feedback"] = "feedback"
    created_at: str = Field(description="When the record was written (UTC, ISO 8601).")


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope."""

    error: ErrorInfo
