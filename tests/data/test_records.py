"""Chat JSONL reading and writing, the format the training job reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from data import Conversation, load_chat_jsonl, read_chat_jsonl, write_chat_jsonl
from data.errors import DatasetFormatError, DatasetNotFoundError


def test_round_trip(tmp_path: Path) -> None:
    conversations = [
        Conversation(
            [{"role": "user", "content": "Café?"}, {"role": "assistant", "content": "Oui."}],
            "intents",
            "intents:cafe",
        )
    ]
    path = tmp_path / "train.jsonl"
    assert write_chat_jsonl(path, conversations) == 1
    assert read_chat_jsonl(path) == conversations
    assert load_chat_jsonl(path) == [conversations[0].messages]
    assert "Café" in path.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "line",
    ["{not json", '{"messages": []}', '{"messages": [{"role": "bot", "content": "x"}]}',
     '{"messages": [{"role": "user", "content": 3}]}', "[1, 2]"],
)  # fmt: skip
def test_bad_lines_are_refused_with_their_line_number(tmp_path: Path, line: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "ok"}]}\n' + line + "\n")
    with pytest.raises(DatasetFormatError, match="bad.jsonl:2"):
        read_chat_jsonl(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError):
        load_chat_jsonl(tmp_path / "none.jsonl")
