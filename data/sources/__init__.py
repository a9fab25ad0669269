"""Readers for the raw sources. Each returns a SourceData of uncleaned, role-assigned turns."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from data.records import Conversation


@dataclass
class SourceData:
    """What one reader got out of one raw source."""

    name: str = field(metadata={"help": "Source name written into each record's 'source'."})
    conversations: list[Conversation] = field(
        default_factory=list, metadata={"help": "Role-assigned, not yet cleaned conversations."}
    )
    counts: Counter[str] = field(
        default_factory=Counter,
        metadata={"help": "Reader-specific counts for the stats report (e.g. greeting splits)."},
    )


def alternate_roles(texts: list[str]) -> list[dict[str, str]]:
    """Turns of a two-person dialogue as messages, the first speaker being the user."""
    return [
        {"role": "user" if index % 2 == 0 else "assistant", "content": text}
        for index, text in enumerate(texts)
    ]
