"""Conversation filtering and deduplication by normalised text."""

from __future__ import annotations

import hashlib
import re

from data.records import Conversation

_NON_WORD = re.compile(r"[\W_]+")


def normalise_for_match(text: str) -> str:
    """Case-folded words only: the form under which two texts count as the same."""
    return _NON_WORD.sub(" ", text.casefold()).strip()


def conversation_key(messages: list[dict[str, str]]) -> str:
    """A hash of the whole conversation's normalised text, wherever its turns are cut.

    Turn boundaries are left out on purpose: DailyDialog holds some dialogues twice with
    their turns split differently ("Come on in. Let me show you the house. Isn't it
    something?" as one turn or three), and both copies are the same text to a model.
    """
    joined = " ".join(normalise_for_match(message["content"]) for message in messages)
    return hashlib.sha256(" ".join(joined.split()).encode("utf-8")).hexdigest()


def rejection_reason(messages: list[dict[str, str]]) -> str | None:
    """Why a conversation cannot be used ('empty', 'one_sided', 'not_alternating'), or None."""
    if not messages or any(not message["content"].strip() for message in messages):
        return "empty"
    roles = [message["role"] for message in messages if message["role"] != "system"]
    if "user" not in roles or "assistant" not in roles:
        return "one_sided"
    if any(role != ("user" if index % 2 == 0 else "assistant") for index, role in enumerate(roles)):
        return "not_alternating"
    return None


def deduplicate(conversations: list[Conversation]) -> tuple[list[Conversation], list[Conversation]]:
    """(kept, duplicates): the first conversation with a given key is kept, in input order."""
    seen: set[str] = set()
    kept, duplicates = [], []
    for conversation in conversations:
        key = conversation_key(conversation.messages)
        if key in seen:
            duplicates.append(conversation)
        else:
            seen.add(key)
            kept.append(conversation)
    return kept, duplicates
