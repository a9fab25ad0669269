"""`make demo` without DailyDialog: where to get it, before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests import bench_heal


def test_a_missing_dailydialog_says_where_to_get_it_and_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the demo went on without its dataset")

    monkeypatch.setattr(bench_heal, "load_fixture", must_not_run)
    monkeypatch.setattr(bench_heal, "Answerer", must_not_run)
    missing = tmp_path / "dialogues_validation.txt"

    assert bench_heal.main(["--dailydialog", str(missing)]) == 2

    message = capsys.readouterr().err
    assert f"DailyDialog not found at {missing}" in message
    assert bench_heal.DAILYDIALOG_ZIP in message and "CC BY-NC-SA 4.0" in message
    assert "make demo DAILYDIALOG=" in message


def test_a_given_file_is_used_wherever_it_is(tmp_path: Path) -> None:
    given = tmp_path / "elsewhere" / "dialogues_validation.txt"
    given.parent.mkdir()
    given.write_text("Can you do push-ups ? __eou__ Of course I can . __eou__\n")

    assert bench_heal.dailydialog_missing(given) is None
    assert bench_heal.dailydialog_openers(given, count=5, seed=0) == [
        ("Can you do push-ups?", "Of course I can.")
    ]
