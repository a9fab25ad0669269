"""tools.generated: how every generator writes its files and reports stale ones."""

from __future__ import annotations

from pathlib import Path

from tools.generated import generate_or_check, stale


def run(argv: list[str], target: Path, text: str) -> int:
    return generate_or_check(
        argv,
        description=None,
        files=lambda args: {target: text},
        command="python -m tools.example",
        root=target.parent,
    )


def test_missing_and_stale_files_name_the_command(tmp_path: Path) -> None:
    missing, edited, current = tmp_path / "a.md", tmp_path / "b.md", tmp_path / "c.md"
    edited.write_text("old\n", encoding="utf-8")
    current.write_text("new\n", encoding="utf-8")
    files = {missing: "new\n", edited: "new\n", current: "new\n"}
    assert stale(files, "make it", root=tmp_path) == [
        "a.md missing: run `make it`",
        "b.md is stale: run `make it`",
    ]


def test_check_writes_nothing_and_shows_the_diff_then_a_run_fixes_it(
    tmp_path: Path, capsys
) -> None:
    target = tmp_path / "out" / "page.md"
    assert run(["--check"], target, "fresh\n") == 1
    assert not target.exists()
    target.parent.mkdir()
    target.write_text("old\n", encoding="utf-8")
    assert run(["--check"], target, "fresh\n") == 1
    err = capsys.readouterr().err
    assert "-old" in err and "+fresh" in err and "python -m tools.example" in err
    assert run([], target, "fresh\n") == 0
    assert target.read_text(encoding="utf-8") == "fresh\n"
    assert run(["--check"], target, "fresh\n") == 0
