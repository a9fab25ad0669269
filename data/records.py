"""Chat records: one conversation per JSONL line, the format ``data build`` writes.

Each line is ``{"messages": [{"role", "content"}, ...], "source": ..., "group": ...}``; readers
that only know OpenAI-style chat data use ``messages`` and ignore the other keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from data.errors import DatasetFormatError, DatasetNotFoundError

ROLES = ("system", "user", "assistant")


@dataclass
class Conversation:
    """One conversation and where it came from."""

    messages: list[dict[str, str]] = field(
        metadata={"help": "OpenAI-style turns: {'role': 'user'|'assistant', 'content': str}."}
    )
    source: str = field(default="", metadata={"help": "Source name, e.g. 'dailydialog'."})
    group: str = field(
        default="",
        metadata={"help": "Split unit: a dialogue, an intent tag or a chat conversation id."},
    )

    def to_json(self) -> str:
        return json.dumps(
            {"messages": self.messages, "source": self.source, "group": self.group},
            ensure_ascii=False,
        )


def write_chat_jsonl(path: Path, conversations: Iterable[Conversation]) -> int:
    """Write one conversation per line; returns how many were written."""
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for conversation in conversations:
            handle.write(conversation.to_json() + "\n")
            count += 1
    return count


def read_chat_jsonl(path: Path) -> list[Conversation]:
    """Read a chat JSONL file; a malformed line raises DatasetFormatError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"chat JSONL file not found: {path}")
    conversations = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                conversations.append(_parse_line(line, path, number))
    return conversations


def load_chat_jsonl(path: Path) -> list[list[dict]]:
    """The conversations of a chat JSONL file as message lists (replay and regression sets)."""
    return [conversation.messages for conversation in read_chat_jsonl(path)]


def _parse_line(line: str, path: Path, number: int) -> Conversation:
    where = f"{path}:{number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DatasetFormatError(f"{where}: not JSON ({error.msg})") from error
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        raise DatasetFormatError(f"{where}: expected an object with a non-empty 'messages' list")
    for message in messages:
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise DatasetFormatError(
                f"{where}: each message needs a role in {ROLES} and a string content"
            )
    return Conversation(
        messages=[{"role": m["role"], "content": m["content"]} for m in messages],
        source=str(record.get("source", "")),
        group=str(record.get("group", "")),
    )
