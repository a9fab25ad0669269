"""The configuration page's table of every setting, generated from the settings classes.

Each row is one field of :class:`ouro.settings.OuroSettings` or
:class:`train_job.config.TrainJobConfig`: its config-file key, environment variable,
command-line flags, default and description, all read from the field itself (see
:mod:`ouro.configuration`), so the table cannot drift from the code.

    python -m tools.settings_table           # rewrite the table in docs/configuration.md
    python -m tools.settings_table --check   # exit 1 when the page's table is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic_settings import BaseSettings

from ouro.configuration import default_of, env_name, flag_names
from ouro.settings import OuroSettings
from tools.paths import REPO_ROOT
from train_job.config import TrainJobConfig

PAGE = REPO_ROOT / "docs" / "configuration.md"
START_MARKER = "<!-- settings-table:start -->"
END_MARKER = "<!-- settings-table:end -->"
SECTIONS: tuple[tuple[str, type[BaseSettings]], ...] = (
    ("Serve and the training job (`OuroSettings`)", OuroSettings),
    ("The training job's recipe (`TrainJobConfig`, `python -m train_job run`)", TrainJobConfig),
)


def markdown() -> str:
    """The tables, one per settings class."""
    parts = []
    for title, model in SECTIONS:
        rows = [
            f"**{title}**",
            "",
            "| key | environment | flag | default | description |",
            "|---|---|---|---|---|",
        ]
        for name, field in model.model_fields.items():
            default = default_of(field)
            if isinstance(default, list):
                default = ",".join(map(str, default)) or "(none)"
            shown = "(unset)" if default is None else f"`{default}`"
            flags = " ".join(f"`{flag}`" for flag in flag_names(model, name))
            description = (field.description or "").replace("|", "\\|")
            rows.append(
                f"| `{name}` | `{env_name(model, name)}` | {flags} | {shown} | {description} |"
            )
        parts.append("\n".join(rows))
    return "\n\n".join(parts)


def rendered(page_text: str) -> str:
    """The page with its table section replaced by the current tables."""
    start, end = page_text.index(START_MARKER), page_text.index(END_MARKER)
    return f"{page_text[: start + len(START_MARKER)]}\n{markdown()}\n{page_text[end:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.settings_table")
    parser.add_argument("--check", action="store_true", help="fail when the table is stale")
    parser.add_argument("--page", type=Path, default=PAGE)
    args = parser.parse_args(argv)
    text = args.page.read_text(encoding="utf-8")
    if args.check:
        if rendered(text) != text:
            print(f"{args.page} is stale: run `python -m tools.settings_table`", file=sys.stderr)
            return 1
        return 0
    args.page.write_text(rendered(text), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
