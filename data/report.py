"""Markdown renderings of the build's stats report and of the evaluation report."""

from __future__ import annotations

from data.stats import BuildReport


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def build_report_markdown(report: BuildReport) -> str:
    sources = list(report.sources)
    source_rows = [
        [field, *(getattr(report.sources[name], field) for name in sources)]
        for field in (
            "read",
            "turns_read",
            "turns_changed_by_cleaning",
            "dropped_empty",
            "dropped_one_sided",
            "dropped_not_alternating",
            "duplicates",
            "kept",
            "turns_kept",
        )
    ]
    reader_rows = [
        [f"{name}: {key}", value]
        for name in sources
        for key, value in report.sources[name].reader.items()
    ]
    split_rows = [
        [
            name,
            split.file,
            split.conversations,
            split.turns,
            split.assistant_turns,
            split.groups,
            ", ".join(f"{source} {count}" for source, count in split.by_source.items()),
        ]
        for name, split in report.splits.items()
    ]
    leakage = report.leakage
    leak_rows = [
        [pair, leakage.shared_conversations[pair], leakage.shared_groups[pair],
         leakage.shared_intents[pair]]
        for pair in leakage.shared_conversations
    ]  # fmt: skip
    example_rows = [
        [kind, turn.text, ", ".join(turn.splits), turn.occurrences]
        for kind, turns in (
            ("short", leakage.short_turn_examples),
            ("long", leakage.long_turn_examples),
        )
        for turn in turns
    ]
    fractions = ", ".join(f"{name} {share:g}" for name, share in report.fractions.items())
    return (
        "\n\n".join(
            [
                "# Dataset build report",
                f"Seed {report.seed}; group fractions: {fractions}; built in {report.elapsed_s:.2f} s.",
                "## Sources",
                markdown_table(["count", *sources], source_rows),
                markdown_table(["reader count", "value"], reader_rows),
                "## Splits",
                markdown_table(
                    [
                        "split",
                        "file",
                        "conversations",
                        "turns",
                        "assistant turns",
                        "groups",
                        "by source",
                    ],
                    split_rows,
                ),
                "## Leakage check",
                f"**Leak free: {'yes' if leakage.leak_free else 'NO'}** (conversations by normalised "
                "text, groups and intents shared between two splits).",
                markdown_table(
                    ["splits", "shared conversations", "shared groups", "shared intents"], leak_rows
                ),
                f"Single turns found in more than one split (expected, not leaks): "
                f"{leakage.shared_turns_short} short (at most 4 words), "
                f"{leakage.shared_turns_long} longer. The most frequent:",
                markdown_table(["kind", "turn", "splits", "occurrences"], example_rows),
            ]
        )
        + "\n"
    )
