"""Files the repository keeps but code writes (the dashboard, the chart's README, the settings
table, the kustomize base): one way to write them, and one way to say they are stale.

Each generator's ``main`` is ``generate_or_check``: without ``--check`` it writes its files;
either way it reports every file that differs from what the code builds (with a diff when
checking), plus the generator's own checks, and exits 1 when there is any problem.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from tools.paths import REPO_ROOT

DIFF_LINES = 60
"""Lines of a stale file's diff shown by ``--check`` (enough to see what changed)."""


def stale(files: Mapping[Path, str], command: str, root: Path = REPO_ROOT) -> list[str]:
    """A problem per file that is missing or not ``files``' text, naming ``command``."""
    problems = []
    for path, text in files.items():
        name = path.relative_to(root) if path.is_relative_to(root) else path
        if not path.exists():
            problems.append(f"{name} missing: run `{command}`")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{name} is stale: run `{command}`")
    return problems


def _diff(path: Path, text: str) -> list[str]:
    committed = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = difflib.unified_diff(
        committed.splitlines(keepends=True),
        text.splitlines(keepends=True),
        fromfile=f"{path} (committed)",
        tofile=f"{path} (generated)",
    )
    return list(lines)[:DIFF_LINES]


def generate_or_check(
    argv: list[str] | None,
    *,
    description: str | None,
    files: Callable[[argparse.Namespace], Mapping[Path, str]],
    command: str,
    root: Path = REPO_ROOT,
    checks: Callable[[argparse.Namespace], list[str]] | None = None,
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """A generator's command line: ``files(args)`` maps each path to the text it must hold;
    ``checks(args)``: the generator's other problems; ``arguments``: its own options."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only check; write nothing")
    if arguments is not None:
        arguments(parser)
    args = parser.parse_args(argv)
    generated = files(args)
    if args.check:
        for path, text in generated.items():
            sys.stderr.writelines(_diff(path, text))
    else:
        for path, text in generated.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    problems = stale(generated, command, root) + (checks(args) if checks is not None else [])
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0
