"""Ledger records and their errors: what one JSONL line holds, and the control state
the control records make."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    model_validator,
)

from ouro.errors import OuroError
from ouro.scopes import covers

SCHEMA_VERSION = 1
"""Version of the record layout written by this code; readers skip other versions."""

WRITER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SEGMENT_NAME_PATTERN = re.compile(r"^(\d{4}-\d{2}-\d{2})\.jsonl$")
CONTROL_DIR = "_control"
"""Holds the control records; not a writer id (those start with a letter or digit)."""

FeedbackKind = Literal["correction", "rating", "retraction"]
"""``correction`` and ``rating`` are written; ``retraction`` is reserved for later use."""

Rating = Literal["up", "down"]
"""A rating's verdict on an answer: thumbs up or thumbs down."""

RATINGS: tuple[Rating, ...] = get_args(Rating)

ControlKind = Literal["forget", "share"]
"""``forget``: a tombstone for a scope; ``share``: a correction marked for the shared adapter."""

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- errors ---------------------------------------------------------------------------


class LedgerError(OuroError):
    """Base class for ledger errors."""


class LedgerUnavailableError(LedgerError):
    """The ledger directory cannot be created or written (raised at start-up), or a
    write failed at the operating-system level (disk full, I/O error)."""


class InvalidFeedbackError(LedgerError):
    """A feedback record is malformed; ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class FeedbackTooLargeError(InvalidFeedbackError):
    """A field or the whole record exceeds the configured limits."""


class InvalidWatermarkError(LedgerError):
    """A watermark string that this code cannot decode."""


# -- records --------------------------------------------------------------------------


class FeedbackMessage(BaseModel):
    """One turn of the conversation the model answered."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    role: Literal["system", "user", "assistant"] = Field(description="Who spoke.")
    content: str = Field(description="What was said, stored exactly as given.")


class FeedbackRecord(BaseModel):
    """One line of the ledger: a correction (``correction`` set, no ``rating``) or a rating
    (``rating`` set, no ``correction``); a line that mixes them is invalid."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(description="Unique record id, 'fb-' + 32 hex digits.")
    created_at: AwareDatetime = Field(description="When the record was written (UTC).")
    schema_version: StrictInt = Field(SCHEMA_VERSION, description="Record layout version.")
    kind: FeedbackKind = Field("correction", description="What the record is.")
    messages: list[FeedbackMessage] = Field(description="The conversation that was answered.")
    completion: str = Field(description="What the model answered.")
    correction: str | None = Field(
        None, description="What it should have answered; set on a correction, null on a rating."
    )
    rating: Rating | None = Field(
        None, description="'up' or 'down' on the answer; set on a rating, null on a correction."
    )
    model: str | None = Field(None, description="Version that answered, e.g. 'ouro@v7'.")
    completion_id: str | None = Field(None, description="Id of the chat completion, if known.")
    reason: str | None = Field(None, description="Why the answer was wrong, free text.")
    api_key_hash: str | None = Field(
        None, description="ouro.apikeys.hash_api_key of the key that sent it; None if open."
    )
    scope: str | None = Field(
        None,
        description="Personal scope of the author ('<key name>' or '<key name>/<user>'); "
        "None when the server was open or the record predates personal adapters.",
    )
    admin: bool = Field(False, description="Sent with an admin key: trains the shared adapter.")

    @model_validator(mode="after")
    def _fields_match_kind(self) -> FeedbackRecord:
        if self.kind == "correction" and (self.correction is None or self.rating is not None):
            raise ValueError("a correction carries a correction and no rating")
        if self.kind == "rating" and (self.rating is None or self.correction is not None):
            raise ValueError("a rating carries a rating and no correction")
        return self

    def message_dicts(self) -> list[dict[str, str]]:
        """The conversation as OpenAI-style ``{"role", "content"}`` dicts."""
        return [message.model_dump() for message in self.messages]

    def corrected_conversation(self) -> list[dict[str, str]]:
        """The conversation followed by the assistant turn it should have had (corrections only)."""
        if self.correction is None:
            raise ValueError(f"{self.id} is a {self.kind}, not a correction")
        return [*self.message_dicts(), {"role": "assistant", "content": self.correction}]


class ControlRecord(BaseModel):
    """One line of the control log: a tombstone or a share mark."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(description="Unique record id, 'ctl-' + 32 hex digits.")
    created_at: AwareDatetime = Field(description="When the record was written (UTC).")
    schema_version: StrictInt = Field(SCHEMA_VERSION, description="Record layout version.")
    kind: ControlKind = Field(description="'forget' or 'share'.")
    scope: str | None = Field(None, description="forget: the scope (and its user scopes).")
    record_id: str | None = Field(None, description="share: the correction's record id.")
    reason: str | None = Field(None, description="Why, free text (an operator's note).")
    api_key_hash: str | None = Field(None, description="Key hash of who asked; None if open.")


@dataclass(frozen=True)
class ControlState:
    """Every control record in the ledger, ready to apply."""

    tombstones: tuple[ControlRecord, ...] = ()
    shares: tuple[ControlRecord, ...] = ()
    bad_lines: int = 0

    @property
    def shared_ids(self) -> frozenset[str]:
        return frozenset(mark.record_id for mark in self.shares if mark.record_id)

    def forgets(self, record: FeedbackRecord) -> bool:
        """Whether a tombstone written after ``record`` covers its scope."""
        return any(
            covers(tomb.scope, record.scope) and record.created_at <= tomb.created_at
            for tomb in self.tombstones
            if tomb.scope
        )

    def changed_since(self, moment: dt.datetime) -> int:
        """Control records written after ``moment`` (they change what trains the shared adapter)."""
        return sum(1 for mark in (*self.tombstones, *self.shares) if mark.created_at > moment)
