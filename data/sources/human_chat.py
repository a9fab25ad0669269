"""Human-to-human chat logs (``Human 1: ...`` / ``Human 2: ...`` lines, not delimited).

Conversations are cut where a ``Human 1`` line opens with a greeting word matched as a whole
word (``Hi!``, ``hello there``, ``Hey,``; not ``history`` or ``hiking``), except while the
current conversation is still its opening exchange of greetings (``Hi!`` / ``hey there`` /
``hey anything new?``). A ``Human 2`` greeting that answers no greeting opens a conversation
too (one such in the real log). A cut-off piece in which only one person speaks (``Hey, so
long as you get to the bottom...`` followed by the next ``Hi!``) was an interjection, not an
opening, and goes back to the conversation it came from.

Roles: whoever opens a conversation is the user (``Human 1`` nearly always), so every
conversation starts with the user and no line is dropped. Consecutive lines of one speaker
are one chat turn (a person sending two messages) and are joined with a newline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from data.errors import DatasetFormatError, DatasetNotFoundError
from data.records import Conversation
from data.sources import SourceData

SOURCE = "human_chat"
OPENING_SPEAKER = "1"  # Human 1 greets first in the logs
_LINE = re.compile(r"^Human ([12]):[ \t]?(.*)$")
GREETING = re.compile(
    r"^\W*(?:hi|hello|hey|heya|hiya|howdy|hola|greetings|yo|"
    r"good (?:morning|afternoon|evening|day))\b",
    re.IGNORECASE,
)


@dataclass
class ChatLine:
    number: int
    speaker: str
    text: str


def is_greeting(text: str) -> bool:
    """Whether a chat line opens with a greeting word (whole word, any case)."""
    return GREETING.match(text) is not None


def read_human_chat(path: Path) -> SourceData:
    """Read a chat log into conversations; an unlabelled first line raises DatasetFormatError."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"human chat file not found: {path}")
    data = SourceData(name=SOURCE)
    lines = _parse_lines(path, data)
    for segment in split_conversations(lines, data):
        messages = _to_messages(segment, data)
        data.conversations.append(
            Conversation(messages=messages, source=SOURCE, group=f"{SOURCE}:L{segment[0].number}")
        )
    return data


def split_conversations(lines: list[ChatLine], data: SourceData) -> list[list[ChatLine]]:
    """Cut the log at opening greetings of Human 1 (see the module docstring)."""
    segments: list[list[ChatLine]] = []
    previous: ChatLine | None = None
    for line in lines:
        current = segments[-1] if segments else None
        if current is None:
            segments.append([line])
        elif _opens(line, previous):
            if _one_sided(current) and len(segments) > 1:
                segments[-2].extend(segments.pop())  # an interjection, not an opening
                data.counts["one_sided_pieces_rejoined"] += 1
                segments.append([line])
            elif all(is_greeting(seen.text) for seen in current):
                current.append(line)  # still the opening exchange of greetings
            else:
                segments.append([line])
        else:
            current.append(line)
        previous = line
    if len(segments) > 1 and _one_sided(segments[-1]):
        segments[-2].extend(segments.pop())
        data.counts["one_sided_pieces_rejoined"] += 1
    data.counts["conversations"] = len(segments)
    return segments


def _opens(line: ChatLine, previous: ChatLine | None) -> bool:
    if not is_greeting(line.text):
        return False
    return line.speaker == OPENING_SPEAKER or previous is None or not is_greeting(previous.text)


def _one_sided(segment: list[ChatLine]) -> bool:
    return len({line.speaker for line in segment}) == 1


def _parse_lines(path: Path, data: SourceData) -> list[ChatLine]:
    lines: list[ChatLine] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        data.counts["lines"] += 1
        match = _LINE.match(raw)
        if match and match.group(2).strip():
            lines.append(ChatLine(number, match.group(1), match.group(2).strip()))
        elif match:
            data.counts["empty_lines"] += 1  # "Human 2:" with nothing said
        elif not raw.strip():
            data.counts["blank_lines"] += 1
        elif lines:
            lines[-1].text += "\n" + raw.strip()  # a message that spans lines
            data.counts["continuation_lines"] += 1
        else:
            raise DatasetFormatError(f"{path}:{number}: expected 'Human 1:' or 'Human 2:'")
    return lines


def _to_messages(segment: list[ChatLine], data: SourceData) -> list[dict[str, str]]:
    user = segment[0].speaker  # the opener is the user
    if user != OPENING_SPEAKER:
        data.counts["opened_by_human_2"] += 1
    messages: list[dict[str, str]] = []
    for line in segment:
        role = "user" if line.speaker == user else "assistant"
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n" + line.text
            data.counts["same_speaker_lines_joined"] += 1
        else:
            messages.append({"role": role, "content": line.text})
    return messages
