"""Human chat logs: cut into conversations at whole-word greetings of Human 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from data.errors import DatasetFormatError
from data.sources.human_chat import is_greeting, read_human_chat

LOG = """\
Human 1: Hi!
Human 2: What is your favorite holiday?
Human 1: history is my favourite subject, not a holiday
Human 2: Ha, hiking then?
Human 1: Hey, so long as you get outside, it's all good!
Human 1: Hello there
Human 2: hey there
Human 1: hey anything new?
Human 2: not much
Human 2: just work
Human 1: Hi, can you recommend a show?
Human 2: Try a documentary.
Human 1: thanks
Human 2: Hi! How are you doing today?
Human 1: great, you?
"""


@pytest.mark.parametrize(
    ("text", "greets"),
    [("Hi!", True), ("hi", True), ("Hello, nice to meet you", True), ("hey anything new?", True),
     ("Good morning!", True), ("history is fun", False), ("hiking?", False), ("Hey", True),
     ("Heyyy", False), ("I said hi", False), ("Helloooo!", False), ("This is hi-fi", False)],
)  # fmt: skip
def test_greetings_match_whole_words_at_the_start(text: str, greets: bool) -> None:
    assert is_greeting(text) is greets


def test_log_is_cut_at_greetings_only(tmp_path: Path) -> None:
    path = tmp_path / "chat.txt"
    path.write_text(LOG, encoding="utf-8")
    data = read_human_chat(path)
    contents = [[m["content"] for m in c.messages] for c in data.conversations]
    assert contents == [
        # "history" and "hiking" do not cut; the one-sided "Hey, so long..." piece is rejoined
        ["Hi!", "What is your favorite holiday?",
         "history is my favourite subject, not a holiday", "Ha, hiking then?",
         "Hey, so long as you get outside, it's all good!"],
        # the opening exchange of greetings stays together; one speaker's lines are one turn
        ["Hello there", "hey there", "hey anything new?", "not much\njust work"],
        ["Hi, can you recommend a show?", "Try a documentary.", "thanks"],
        # opened by Human 2, who is then the user
        ["Hi! How are you doing today?", "great, you?"],
    ]  # fmt: skip
    for conversation in data.conversations:
        roles = [m["role"] for m in conversation.messages]
        assert roles == ["user" if i % 2 == 0 else "assistant" for i in range(len(roles))]
    assert [c.group for c in data.conversations] == [
        "human_chat:L1", "human_chat:L6", "human_chat:L11", "human_chat:L14",
    ]  # fmt: skip
    assert data.counts["one_sided_pieces_rejoined"] == 1
    assert data.counts["opened_by_human_2"] == 1
    assert data.counts["same_speaker_lines_joined"] == 1


def test_unlabelled_first_line_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "chat.txt"
    path.write_text("hello\nHuman 1: Hi\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=":1:"):
        read_human_chat(path)


def test_real_log_conversations_open_with_a_greeting(real_datasets: Path) -> None:
    path = real_datasets / "human_chat" / "human_chat.txt"
    data = read_human_chat(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    greeting_lines = [
        line for line in lines if line.startswith("Human 1: ") and is_greeting(line[9:])
    ]
    assert all(is_greeting(c.messages[0]["content"]) for c in data.conversations)
    assert len(data.conversations) >= len(greeting_lines) * 0.9
    turns = sum(len(c.messages) for c in data.conversations)
    joined = data.counts["same_speaker_lines_joined"]
    assert turns + joined == data.counts["lines"] - data.counts["blank_lines"]  # no line lost
