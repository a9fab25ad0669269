"""The chart's README, generated from the ``# --`` comments in values.yaml (helm-docs style).

helm-docs is not packaged for Python, so this small generator does the part we need:
every value carries a ``# --`` comment (a commented mapping documents its whole
subtree), the README's values table is built from them, and ``--check`` fails when a
value is undocumented, never read by a template, or the README is stale.

    python -m tools.chart_docs           # rewrite charts/ouro/README.md
    python -m tools.chart_docs --check   # exit 1 when something is missing or stale
"""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tools.generated import generate_or_check, stale
from tools.paths import CHART_DIR

COMMAND = "python -m tools.chart_docs"

logger = logging.getLogger(__name__)

TABLE_MARKER = "<!-- values-table -->"
README_TEMPLATE = "README.md.tmpl"
_KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z0-9_.\-]+):(?:\s|$)")
_DOC_START = re.compile(r"^\s*# -- ?(?P<text>.*)$")
_DOC_MORE = re.compile(r"^\s*# ?(?P<text>.*)$")
_MISSING = object()


@dataclass(frozen=True)
class DocumentedValue:
    """One row of the values table."""

    path: tuple[str, ...]
    default: Any
    description: str

    @property
    def key(self) -> str:
        return ".".join(self.path)

    @property
    def type_name(self) -> str:
        value = self.default
        if isinstance(value, bool):
            return "bool"
        if isinstance(value, int):
            return "int"
        if isinstance(value, float):
            return "float"
        if isinstance(value, str):
            return "string"
        if isinstance(value, list):
            return "list"
        return "object"


def _lookup(values: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(values, dict) or key not in values:
            return _MISSING
        values = values[key]
    return values


def parse_documented_values(values_file: Path) -> list[DocumentedValue]:
    """The values that carry a ``# --`` comment, in file order."""
    text = values_file.read_text(encoding="utf-8")
    values = yaml.safe_load(text) or {}
    documented: list[DocumentedValue] = []
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        start = _DOC_START.match(line)
        if start:
            pending = [start.group("text").strip()]
            continue
        if pending is not None and line.lstrip().startswith("#"):
            more = _DOC_MORE.match(line)
            pending.append(more.group("text").strip() if more else "")
            continue
        match = _KEY_LINE.match(line)
        if not match:
            continue
        indent = len(match.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (*(key for _, key in stack), match.group("key"))
        default = _lookup(values, path)
        if default is _MISSING:  # a key inside a list item (e.g. a toleration's fields)
            continue
        stack.append((indent, match.group("key")))
        if pending is not None:
            documented.append(DocumentedValue(path, default, " ".join(pending).strip()))
            pending = None
    return documented


def _leaf_paths(values: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(values, dict) and values:
        return [
            path for key, child in values.items() for path in _leaf_paths(child, (*prefix, key))
        ]
    return [prefix]


def undocumented_values(values_file: Path) -> list[str]:
    """Leaf values with no ``# --`` comment on themselves or on an enclosing mapping."""
    documented = {value.path for value in parse_documented_values(values_file)}
    values = yaml.safe_load(values_file.read_text(encoding="utf-8")) or {}
    return [
        ".".join(path)
        for path in _leaf_paths(values)
        if not any(path[:depth] in documented for depth in range(1, len(path) + 1))
    ]


def unread_values(chart_dir: Path = CHART_DIR) -> list[str]:
    """Documented values that no template reads (a value templates ignore misleads users).

    A value counts as read when a template names ``.Values.<path>``, names it through a
    variable bound to one of its parents (``$serve := .Values.serve`` then
    ``$serve.workers.gpus``), or hands a parent mapping to a helper that reads the field.
    """
    text = "\n".join(
        path.read_text(encoding="utf-8")
        for path in sorted((chart_dir / "templates").rglob("*"))
        if path.is_file()
    )
    aliases: dict[str, str] = {}
    for name, source in re.findall(r"\$(\w+) :?= \.Values\.([\w.]+)", text):
        aliases[name] = source
    for name, parent, rest in re.findall(r"\$(\w+) :?= \$(\w+)\.([\w.]+)", text):
        if parent in aliases:
            aliases[name] = f"{aliases[parent]}.{rest}"

    def referenced(dotted: str) -> bool:
        if re.search(rf"\.Values\.{re.escape(dotted)}(?!\w)", text):
            return True
        for alias, source in aliases.items():
            if dotted == source or dotted.startswith(f"{source}."):
                rest = dotted[len(source) :]
                if re.search(rf"\${alias}{re.escape(rest)}(?!\w)", text):
                    return True
        return False

    unread = []
    for value in parse_documented_values(chart_dir / "values.yaml"):
        dotted = value.key
        if referenced(dotted):
            continue
        parents = [".".join(value.path[:depth]) for depth in range(1, len(value.path))]
        field_read = re.search(rf"\.{re.escape(value.path[-1])}(?!\w)", text)
        if field_read and any(referenced(parent) for parent in parents):
            continue
        unread.append(dotted)
    return unread


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def values_table(values: list[DocumentedValue]) -> str:
    rows = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for value in values:
        default = json.dumps(value.default, separators=(",", ":"))
        rows.append(
            f"| {value.key} | {value.type_name} | `{_cell(default)}` | {_cell(value.description)} |"
        )
    return "\n".join(rows)


def render_readme(chart_dir: Path = CHART_DIR) -> str:
    template = (chart_dir / README_TEMPLATE).read_text(encoding="utf-8")
    if TABLE_MARKER not in template:
        raise ValueError(f"{README_TEMPLATE} has no {TABLE_MARKER} marker")
    table = values_table(parse_documented_values(chart_dir / "values.yaml"))
    return template.replace(TABLE_MARKER, table)


def check(chart_dir: Path = CHART_DIR) -> list[str]:
    """Problems with the chart's documentation; empty when all is well."""
    return _value_problems(chart_dir) + stale(_readme(chart_dir), COMMAND, root=chart_dir)


def _value_problems(chart_dir: Path) -> list[str]:
    """Values without a ``# --`` comment, and values no template reads."""
    problems = [
        f"values.yaml: {key} has no '# --' comment"
        for key in undocumented_values(chart_dir / "values.yaml")
    ]
    return problems + [f"values.yaml: no template reads {key}" for key in unread_values(chart_dir)]


def _readme(chart_dir: Path) -> dict[Path, str]:
    return {chart_dir / "README.md": render_readme(chart_dir)}


def main(argv: list[str] | None = None) -> int:
    return generate_or_check(
        argv,
        description=__doc__,
        files=lambda args: _readme(args.chart),
        command=COMMAND,
        checks=lambda args: _value_problems(args.chart),
        arguments=lambda parser: parser.add_argument(
            "--chart", type=Path, default=CHART_DIR, help="chart directory"
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
