"""DailyDialog in both formats: one message per utterance, roles alternating, user first."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.errors import DatasetFormatError, DatasetNotFoundError
from data.sources.dailydialog import parse_eou_line, parse_printed_list, read_dailydialog

DIALOGUES = [
    ["Say , Jim , how about going for a few beers after dinner ? ",
     " You know that is tempting but is really not good for our fitness . ",
     " What do you mean ? It will help us to relax . "],
    ["Can you do push-ups ? ", " Of course I can . It's a piece of cake ! ",
     ' He said "no" and it\'s fine . ', " Really ? ", " Yeah ! "],
    ["Are you all right ? ", " I will be all right soon . "],
]  # fmt: skip


def roles_alternate(messages: list[dict]) -> bool:
    return [m["role"] for m in messages] == [
        "user" if index % 2 == 0 else "assistant" for index in range(len(messages))
    ]


def write_eou(folder: Path, split: str, dialogues: list[list[str]], acts: list[int]) -> None:
    lines = [" __eou__ ".join(d).replace("  ", " ") + " __eou__" for d in dialogues]
    (folder / f"dialogues_{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    labels = [" ".join(["1"] * count) for count in acts]
    (folder / f"dialogues_act_{split}.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")


def test_eou_folder_keeps_one_message_per_utterance(tmp_path: Path) -> None:
    write_eou(tmp_path, "train", DIALOGUES, [len(d) for d in DIALOGUES])
    data = read_dailydialog(tmp_path)
    assert [len(c.messages) for c in data.conversations] == [len(d) for d in DIALOGUES]
    assert all(roles_alternate(c.messages) for c in data.conversations)
    assert data.conversations[1].messages[2]["content"] == 'He said "no" and it\'s fine .'
    assert data.counts["act_labels_checked"] == 3 and data.counts["act_label_mismatches"] == 0
    assert [c.group for c in data.conversations] == [f"dailydialog:train:{n}" for n in (1, 2, 3)]


def test_act_label_count_mismatch_is_counted_not_hidden(tmp_path: Path) -> None:
    write_eou(tmp_path, "train", DIALOGUES, [3, 4, 2])
    data = read_dailydialog(tmp_path / "dialogues_train.txt")
    assert data.counts["act_label_mismatches"] == 1
    assert len(data.conversations[1].messages) == 5  # kept as written, nothing merged


def test_parse_eou_line() -> None:
    assert parse_eou_line("A . __eou__ B ? __eou__ ") == ["A .", "B ?"]
    assert parse_eou_line("A . __eou__  __eou__ C __eou__") == ["A .", "", "C"]


def write_kaggle_csv(path: Path, dialogues: list[list[str]]) -> list[str]:
    """The Kaggle layout: numpy's printed arrays in quoted CSV cells (line-wrapped)."""
    cells = [str(np.array(dialogue)) for dialogue in dialogues]
    acts = [str(np.array([1] * len(dialogue))) for dialogue in dialogues]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dialog", "act", "emotion"])
        for cell, act in zip(cells, acts, strict=True):
            writer.writerow([cell, act, act])
    return cells


def test_kaggle_csv_parses_printed_lists_without_merging(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    cells = write_kaggle_csv(path, DIALOGUES)
    assert "\n" in cells[1], "the fixture must hold a line-wrapped cell"
    assert any(line.count("' '") or line.count("' \"") for line in cells[1].splitlines()), (
        "the fixture must have two utterances on one printed line"
    )
    data = read_dailydialog(path)
    assert [[m["content"] for m in c.messages] for c in data.conversations] == [
        [text.strip() for text in dialogue] for dialogue in DIALOGUES
    ]
    assert all(roles_alternate(c.messages) for c in data.conversations)
    assert data.counts["act_label_mismatches"] == 0
    assert data.conversations[0].group == "dailydialog:train:1"


def test_csv_in_a_folder_is_found(tmp_path: Path) -> None:
    write_kaggle_csv(tmp_path / "validation.csv", DIALOGUES[:1])
    assert len(read_dailydialog(tmp_path).conversations) == 1


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("['a .' 'b .']", ["a .", "b ."]),
        ("['a .', \"b's .\"]", ["a .", "b's ."]),
        ("['it\\'s \"x\" .'\n 'next']", ['it\'s "x" .', "next"]),
        ("[\"He said 'hi' .\"\n\n  'OK' ]", ["He said 'hi' .", "OK"]),
        ("['line\\nbreak' 'back\\\\slash']", ["line\nbreak", "back\\slash"]),
        ("[]", []),
    ],
)
def test_parse_printed_list(cell: str, expected: list[str]) -> None:
    assert parse_printed_list(cell) == expected


@pytest.mark.parametrize("cell", ["'a' 'b'", "['a' b]", "['a''b']", "['unterminated]", "[1 2]"])
def test_parse_printed_list_rejects_malformed_cells(cell: str) -> None:
    with pytest.raises(DatasetFormatError):
        parse_printed_list(cell)


def test_malformed_csv_row_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    pd.DataFrame({"dialog": ["['fine .' 'ok .']", "not a list"]}).to_csv(path, index=False)
    with pytest.raises(DatasetFormatError, match="row 2"):
        read_dailydialog(path)


def test_csv_without_dialog_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    pd.DataFrame({"text": ["hello"]}).to_csv(path, index=False)
    with pytest.raises(DatasetFormatError, match="'dialog'"):
        read_dailydialog(path)


def test_missing_input_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError):
        read_dailydialog(tmp_path / "nope")
    with pytest.raises(DatasetNotFoundError):
        read_dailydialog(tmp_path)  # a folder without dialogue files


def test_real_dailydialog_turns_equal_utterances(real_datasets: Path) -> None:
    folder = real_datasets / "dailydialog"
    data = read_dailydialog(folder)
    expected = []
    for split in ("train", "validation"):
        lines = (folder / f"dialogues_{split}.txt").read_text(encoding="utf-8").splitlines()
        expected += [line.count("__eou__") for line in lines if line.strip()]
    assert len(data.conversations) == len(expected) == 12118  # 11,118 + 1,000 (README)
    assert [len(c.messages) for c in data.conversations] == expected
    assert all(roles_alternate(c.messages) for c in data.conversations)
    assert data.counts["act_labels_checked"] == 12118
