"""Export: OpenAI fine-tuning (sft) and preference (dpo) JSONL from the ledger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.train_job import CORRECTION_PAIRS, seed_ledger, seed_ratings
from train_job.cli import main


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_sft_export(tmp_path: Path) -> None:
    seed_ledger(tmp_path / "feedback", CORRECTION_PAIRS[:3], completion="Wrong answer.")
    seed_ratings(tmp_path / "feedback", CORRECTION_PAIRS[3:5], rating="up")  # never exported
    out = tmp_path / "out" / "sft.jsonl"

    assert main(["export", "--format", "sft", "--out", str(out), "--data-dir", str(tmp_path)]) == 0

    assert read_jsonl(out) == [
        {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        }
        for question, answer in CORRECTION_PAIRS[:3]
    ]


def test_dpo_export_makes_the_bad_answer_the_rejected_one(tmp_path: Path) -> None:
    seed_ledger(tmp_path / "feedback", CORRECTION_PAIRS[:2], completion="Wrong answer.")
    seed_ratings(tmp_path / "feedback", CORRECTION_PAIRS[2:4], rating="down")  # never exported
    out = tmp_path / "dpo.jsonl"

    assert main(["export", "--format", "dpo", "--out", str(out), "--data-dir", str(tmp_path)]) == 0

    (question, answer) = CORRECTION_PAIRS[0]
    first = read_jsonl(out)[0]
    assert first == {
        "input": {"messages": [{"role": "user", "content": question}]},
        "preferred_output": [{"role": "assistant", "content": answer}],
        "non_preferred_output": [{"role": "assistant", "content": "Wrong answer."}],
    }
    assert len(read_jsonl(out)) == 2


def test_export_to_stdout_keeps_unicode(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    seed_ledger(tmp_path / "feedback", [("Où est la gare ?", "La gare est à droite. 🚉")])
    assert main(["export", "--format", "sft", "--out", "-", "--data-dir", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip()
    assert json.loads(line)["messages"][1]["content"] == "La gare est à droite. 🚉"
    assert "à droite" in line  # written as UTF-8, not escaped


def test_empty_ledger_exports_an_empty_file(tmp_path: Path) -> None:
    out = tmp_path / "empty.jsonl"
    assert main(["export", "--format", "dpo", "--out", str(out), "--data-dir", str(tmp_path)]) == 0
    assert out.read_text(encoding="utf-8") == ""


def test_unknown_format_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--format", "csv", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
