"""DailyDialog (Li et al., 2017): the original ``__eou__`` text files or the Kaggle CSV.

Speakers alternate by utterance, the first speaker being the user, so a dialogue of N
utterances becomes exactly N messages: nothing is merged. The CSV form holds numpy's printed
list of utterances in a ``dialog`` cell (``['Hi .' "It's me ."\\n 'Oh .']``); it is parsed as
a sequence of Python string literals, never split on newlines (numpy wraps several
utterances per line). Where act labels are at hand (``dialogues_act_<split>.txt`` beside the
text file, or an ``act`` column) their count per dialogue is checked against the utterances.
"""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

import pandas as pd

from data.errors import DatasetFormatError, DatasetNotFoundError
from data.records import Conversation
from data.sources import SourceData, alternate_roles

logger = logging.getLogger(__name__)

SOURCE = "dailydialog"
EOU = "__eou__"
_LABEL_FILES = ("dialogues_act_", "dialogues_emotion_")
# One Python string literal, either quote, with backslash escapes; DOTALL for escaped newlines.
_STRING_LITERAL = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\"""", re.DOTALL)
_SEPARATOR = re.compile(r"\s*,?\s*")


def read_dailydialog(path: Path) -> SourceData:
    """Read a DailyDialog folder (``dialogues_<split>.txt``, else ``*.csv``), text file or CSV."""
    path = Path(path)
    data = SourceData(name=SOURCE)
    for file in _input_files(path):
        if file.suffix.lower() == ".csv":
            _read_csv(file, data)
        else:
            _read_eou_file(file, data)
    return data


def parse_eou_line(line: str) -> list[str]:
    """Utterances of one ``__eou__``-separated dialogue line (inner empty ones kept as '')."""
    pieces = [piece.strip() for piece in line.split(EOU)]
    if pieces and not pieces[-1]:
        pieces.pop()  # the line ends with __eou__
    return pieces


def parse_printed_list(cell: str) -> list[str]:
    """Strings of a printed numpy array or Python list of strings.

    Accepts both quote kinds, backslash escapes, comma or whitespace separators and line
    wraps anywhere between items; anything else raises DatasetFormatError.
    """
    text = cell.strip()
    if not (text.startswith("[") and text.endswith("]")):
        raise DatasetFormatError(f"not a printed list: {text[:60]!r}")
    position, end, items = 1, len(text) - 1, []
    while True:
        position = _SEPARATOR.match(text, position, end).end()
        if position >= end:
            return items
        literal = _STRING_LITERAL.match(text, position, end)
        if literal is None:
            raise DatasetFormatError(
                f"expected a quoted string at {text[position : position + 30]!r}"
            )
        try:
            items.append(ast.literal_eval(literal.group(0)))
        except (SyntaxError, ValueError) as error:
            raise DatasetFormatError(f"bad string literal {literal.group(0)[:60]!r}") from error
        position = literal.end()
        if position < end and not (text[position].isspace() or text[position] == ","):
            raise DatasetFormatError(f"no separator after {literal.group(0)[:60]!r}")


def _input_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetNotFoundError(f"DailyDialog input not found: {path}")
    texts = sorted(
        file for file in path.glob("dialogues_*.txt") if not file.name.startswith(_LABEL_FILES)
    )
    files = texts or sorted(path.glob("*.csv"))
    if not files:
        raise DatasetNotFoundError(f"no dialogues_<split>.txt or *.csv files in {path}")
    return files


def _split_name(file: Path) -> str:
    return file.stem.removeprefix("dialogues_")


def _read_eou_file(file: Path, data: SourceData) -> None:
    split = _split_name(file)
    lines = file.read_text(encoding="utf-8").splitlines()
    act_file = file.with_name(f"dialogues_act_{split}.txt")
    acts = act_file.read_text(encoding="utf-8").splitlines() if act_file.is_file() else None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        utterances = parse_eou_line(line)
        group = f"{SOURCE}:{split}:{number}"
        if acts is not None:
            labels = acts[number - 1].split() if number <= len(acts) else []
            _check_labels(group, len(utterances), len(labels), data)
        _add(data, utterances, group)


def _read_csv(file: Path, data: SourceData) -> None:
    frame = pd.read_csv(file, dtype=str, keep_default_na=False)
    columns = {name.lower(): name for name in frame.columns}
    if "dialog" not in columns:
        raise DatasetFormatError(f"{file}: no 'dialog' column (columns: {list(frame.columns)})")
    act_column = columns.get("act")
    for row, cell in enumerate(frame[columns["dialog"]]):
        group = f"{SOURCE}:{file.stem}:{row + 1}"
        try:
            utterances = [text.strip() for text in parse_printed_list(cell)]
        except DatasetFormatError as error:
            raise DatasetFormatError(f"{file}, row {row + 1}: {error}") from error
        if act_column is not None:
            labels = re.findall(r"-?\d+", frame[act_column].iloc[row])
            _check_labels(group, len(utterances), len(labels), data)
        _add(data, utterances, group)


def _check_labels(group: str, utterances: int, labels: int, data: SourceData) -> None:
    data.counts["act_labels_checked"] += 1
    if utterances != labels:
        data.counts["act_label_mismatches"] += 1
        logger.warning(
            "%s: %s utterances but %s act labels (kept as written)", group, utterances, labels
        )


def _add(data: SourceData, utterances: list[str], group: str) -> None:
    data.counts["dialogues"] += 1
    data.counts["utterances"] += len(utterances)
    data.conversations.append(
        Conversation(messages=alternate_roles(utterances), source=SOURCE, group=group)
    )
