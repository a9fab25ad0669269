"""Intents JSON (``{"intents": [{"tag", "patterns", "responses"}]}``) as one-exchange chats.

Every pattern x response pair of an intent is a conversation (the original 661 pairs for the
mental-health file). All pairs of an intent share the group ``intents:<tag>``, so an intent
never spans two splits: its patterns and responses repeat across its pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

from data.errors import DatasetFormatError, DatasetNotFoundError
from data.records import Conversation
from data.sources import SourceData

SOURCE = "intents"


def intent_group(tag: str) -> str:
    """Group id of an intent tag."""
    return f"{SOURCE}:{tag}"


def read_intents(path: Path) -> SourceData:
    """Read an intents JSON file; a malformed intent raises DatasetFormatError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"intents file not found: {path}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DatasetFormatError(f"{path}: not JSON ({error})") from error
    intents = document.get("intents") if isinstance(document, dict) else None
    if not isinstance(intents, list):
        raise DatasetFormatError(f"{path}: expected an object with an 'intents' list")
    data = SourceData(name=SOURCE)
    for index, intent in enumerate(intents):
        tag, patterns, responses = _fields(intent, f"{path}: intent #{index}")
        data.counts["intents"] += 1
        data.counts["patterns"] += len(patterns)
        data.counts["responses"] += len(responses)
        for pattern in patterns:
            for response in responses:
                data.conversations.append(
                    Conversation(
                        messages=[
                            {"role": "user", "content": pattern},
                            {"role": "assistant", "content": response},
                        ],
                        source=SOURCE,
                        group=intent_group(tag),
                    )
                )
        if not patterns or not responses:
            data.counts["intents_without_pairs"] += 1
    data.counts["pairs"] = len(data.conversations)
    return data


def _fields(intent: object, where: str) -> tuple[str, list[str], list[str]]:
    if not isinstance(intent, dict) or not isinstance(intent.get("tag"), str):
        raise DatasetFormatError(f"{where}: expected an object with a string 'tag'")
    lists = []
    for key in ("patterns", "responses"):
        values = intent.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise DatasetFormatError(
                f"{where} ({intent['tag']}): '{key}' must be a list of strings"
            )
        lists.append(values)
    return intent["tag"], lists[0], lists[1]
