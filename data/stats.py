"""The stats report of one dataset build (``stats.json``): what each source gave, what each
split holds, and what the splits share.

Its own module so that the build, which fills it in, and ``data.report``, which renders it
as Markdown, both depend on it and not on each other.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from data.leakage import LeakageCheck


class SourceStats(BaseModel):
    read: int = Field(description="Conversations the reader produced.")
    turns_read: int = Field(description="Turns in them.")
    turns_changed_by_cleaning: int = Field(description="Turns whose text cleaning changed.")
    dropped_empty: int = Field(description="Dropped: no turns, or a turn empty after cleaning.")
    dropped_one_sided: int = Field(description="Dropped: only the user or only the assistant.")
    dropped_not_alternating: int = Field(description="Dropped: roles out of order (expect 0).")
    duplicates: int = Field(description="Dropped: same normalised text as an earlier one.")
    kept: int = Field(description="Conversations written.")
    turns_kept: int = Field(description="Turns written.")
    reader: dict[str, int] = Field(description="Counts specific to the source's reader.")


class SplitStats(BaseModel):
    file: str = Field(description="File name inside the output folder.")
    conversations: int = Field(description="Conversations in the split.")
    turns: int = Field(description="Turns in the split.")
    assistant_turns: int = Field(description="Assistant turns (what evaluation scores).")
    groups: int = Field(description="Distinct groups (dialogues, intents, chats).")
    by_source: dict[str, int] = Field(description="Conversations per source.")


class BuildReport(BaseModel):
    """The stats report of one build."""

    inputs: dict[str, str] = Field(description="Source name -> the path it was read from.")
    seed: int = Field(description="Seed of the split hash.")
    fractions: dict[str, float] = Field(description="Share of groups per split.")
    sources: dict[str, SourceStats] = Field(description="Per-source counts.")
    splits: dict[str, SplitStats] = Field(description="Per-split counts.")
    leakage: LeakageCheck = Field(description="What the written splits share.")
    elapsed_s: float = Field(description="Wall time of the build, seconds.")
