"""Deterministic, group-aware splits: every conversation of a group lands in one split.

A group's split comes from a seeded hash of its id, so it does not depend on the order or
the number of the other groups, and a rebuild with the same seed gives the same files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from data.errors import DataError
from data.records import Conversation

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitFractions:
    """Share of groups (not conversations) that each split receives."""

    train: float = field(default=0.8, metadata={"help": "Share of groups for training."})
    validation: float = field(default=0.1, metadata={"help": "Share for validation."})
    test: float = field(default=0.1, metadata={"help": "Share for the final test."})

    def __post_init__(self) -> None:
        values = self.as_dict().values()
        if any(value < 0 for value in values) or abs(sum(values) - 1.0) > 1e-6:
            raise DataError(f"split fractions must be >= 0 and sum to 1, got {self.as_dict()}")

    @classmethod
    def from_held_out(cls, validation: float, test: float) -> SplitFractions:
        return cls(train=round(1.0 - validation - test, 10), validation=validation, test=test)

    def as_dict(self) -> dict[str, float]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


def split_of(group: str, fractions: SplitFractions, seed: int) -> str:
    """The split of a group: a uniform number from sha256(seed, group) against the fractions."""
    digest = hashlib.sha256(f"{seed}\x00{group}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    upper = 0.0
    for name, share in fractions.as_dict().items():
        upper += share
        if point < upper:
            return name
    return SPLITS[-1]  # rounding left a sliver above the last bound


def split_conversations(
    conversations: list[Conversation], fractions: SplitFractions, seed: int
) -> dict[str, list[Conversation]]:
    """Conversations by split, each keeping its input order."""
    splits: dict[str, list[Conversation]] = {name: [] for name in SPLITS}
    for conversation in conversations:
        splits[split_of(conversation.group, fractions, seed)].append(conversation)
    return splits
