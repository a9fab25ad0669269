"""The configuration page's table of every setting, generated from the settings classes.

Each row is one field of :class:`ouro.settings.OuroSettings` or
:class:`train_job.config.TrainJobConfig`: its config-file key, environment variable,
command-line flags, default and description, all read from the field itself (see
:mod:`ouro.configuration`), so the table cannot drift from the code.

    python -m tools.settings_table           # rewrite the table in docs/configuration.md
    python -m tools.settings_table --check   # exit 1 when the page's table is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic_settings import BaseSettings

from ouro.configuration import default_of, env_name, flag_names
from ouro.settings import OuroSettings
from tools.generated import generate_or_check
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
    return generate_or_check(
        argv,
        description=__doc__,
        files=lambda args: {args.page: rendered(args.page.read_text(encoding="utf-8"))},
        command="python -m tools.settings_table",
        arguments=lambda parser: parser.add_argument("--page", type=Path, default=PAGE),
    )


if __name__ == "__main__":
    sys.exit(main())
