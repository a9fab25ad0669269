"""The leakage check of a set of splits: what, if anything, two splits share.

Leaks (must be 0): the same conversation (by normalised text), the same group, or the same
intent in two splits. Shared single turns are expected (``OK.``, ``Thank you.``) and are
reported, short and long apart, without counting as leaks.
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations

from pydantic import BaseModel, Field

from data.dedup import conversation_key, normalise_for_match
from data.records import Conversation
from data.sources.intents import SOURCE as INTENTS_SOURCE

SHORT_TURN_WORDS = 4


class SharedTurn(BaseModel):
    text: str = Field(description="The turn's text as first seen.")
    splits: list[str] = Field(description="Splits that contain it.")
    occurrences: int = Field(description="How often it occurs over all splits.")


class LeakageCheck(BaseModel):
    """What the splits share, pair by pair ('train&validation': count)."""

    shared_conversations: dict[str, int] = Field(
        description="Conversations (normalised text) found in both splits: leaks."
    )
    shared_groups: dict[str, int] = Field(description="Group ids found in both splits: leaks.")
    shared_intents: dict[str, int] = Field(description="Intent tags found in both splits: leaks.")
    shared_turns_short: int = Field(
        description=f"Distinct turns of at most {SHORT_TURN_WORDS} words found in two or more "
        "splits (expected, not leaks)."
    )
    shared_turns_long: int = Field(
        description="Distinct longer turns found in two or more splits (reported, not leaks)."
    )
    short_turn_examples: list[SharedTurn] = Field(
        description="The most frequent shared short turns."
    )
    long_turn_examples: list[SharedTurn] = Field(
        description="The most frequent shared longer turns."
    )
    leak_free: bool = Field(description="True when no conversation, group or intent is shared.")


def check_leakage(splits: dict[str, list[Conversation]], examples: int = 10) -> LeakageCheck:
    """Compare every pair of splits."""
    conversations = {
        name: {conversation_key(c.messages) for c in items} for name, items in splits.items()
    }
    groups = {name: {c.group for c in items} for name, items in splits.items()}
    intents = {
        name: {c.group for c in items if c.source == INTENTS_SOURCE}
        for name, items in splits.items()
    }
    shared = {
        "conversations": _pairwise(conversations),
        "groups": _pairwise(groups),
        "intents": _pairwise(intents),
    }
    short, long = _shared_turns(splits, examples)
    return LeakageCheck(
        shared_conversations=shared["conversations"],
        shared_groups=shared["groups"],
        shared_intents=shared["intents"],
        shared_turns_short=short[0],
        shared_turns_long=long[0],
        short_turn_examples=short[1],
        long_turn_examples=long[1],
        leak_free=not any(sum(counts.values()) for counts in shared.values()),
    )


def _pairwise(sets: dict[str, set[str]]) -> dict[str, int]:
    return {f"{a}&{b}": len(sets[a] & sets[b]) for a, b in combinations(sets, 2)}


def _shared_turns(
    splits: dict[str, list[Conversation]], examples: int
) -> tuple[tuple[int, list[SharedTurn]], tuple[int, list[SharedTurn]]]:
    """(count, most frequent examples) of shared short turns, then of shared long turns."""
    where: dict[str, set[str]] = {}
    counts: Counter[str] = Counter()
    first_text: dict[str, str] = {}
    for name, items in splits.items():
        for conversation in items:
            for message in conversation.messages:
                key = normalise_for_match(message["content"])
                where.setdefault(key, set()).add(name)
                counts[key] += 1
                first_text.setdefault(key, message["content"])
    order = {name: index for index, name in enumerate(splits)}

    def summary(keys: list[str]) -> tuple[int, list[SharedTurn]]:
        top = sorted(keys, key=lambda key: (-counts[key], key))[:examples]
        return len(keys), [
            SharedTurn(
                text=first_text[key],
                splits=sorted(where[key], key=order.__getitem__),
                occurrences=counts[key],
            )
            for key in top
        ]

    shared = [key for key, names in where.items() if len(names) > 1]
    return (
        summary([key for key in shared if len(key.split()) <= SHORT_TURN_WORDS]),
        summary([key for key in shared if len(key.split()) > SHORT_TURN_WORDS]),
    )
