"""``data build``: raw sources -> cleaned, deduplicated, group-split chat JSONL + stats report.

Steps: read each source (role-assigned turns) -> clean every turn -> drop and count empty,
one-sided and non-alternating conversations -> drop duplicates (whole conversations, by
normalised text, first one kept, across sources) -> split by group (seeded hash) -> write
``train.jsonl`` / ``validation.jsonl`` / ``test.jsonl`` -> read them back and check them for
leaks -> ``stats.json`` and ``stats.md``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from data.cleaning import clean_text
from data.dedup import deduplicate, rejection_reason
from data.errors import DataError
from data.leakage import check_leakage
from data.records import Conversation, read_chat_jsonl, write_chat_jsonl
from data.report import build_report_markdown
from data.sources import SourceData
from data.sources.dailydialog import read_dailydialog
from data.sources.human_chat import read_human_chat
from data.sources.intents import read_intents
from data.splitting import SPLITS, SplitFractions, split_conversations
from data.stats import BuildReport, SourceStats, SplitStats

logger = logging.getLogger(__name__)

STATS_JSON = "stats.json"
STATS_MARKDOWN = "stats.md"


@dataclass
class BuildConfig:
    """Inputs and options of one build; at least one source is required."""

    out_dir: Path = field(metadata={"help": "Folder the split files and the report go to."})
    dailydialog: Path | None = field(
        default=None, metadata={"help": "DailyDialog folder, __eou__ text file or Kaggle CSV."}
    )
    intents: Path | None = field(default=None, metadata={"help": "Intents JSON file."})
    human_chat: Path | None = field(default=None, metadata={"help": "Human 1/2 chat log."})
    fractions: SplitFractions = field(
        default_factory=SplitFractions, metadata={"help": "Share of groups per split."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the group hash that splits."})


def build_dataset(config: BuildConfig) -> BuildReport:
    """Run the build and write its files; returns the report (also written as JSON/Markdown)."""
    started = time.perf_counter()
    readers = {
        "dailydialog": (config.dailydialog, read_dailydialog),
        "intents": (config.intents, read_intents),
        "human_chat": (config.human_chat, read_human_chat),
    }
    chosen = {name: (path, read) for name, (path, read) in readers.items() if path is not None}
    if not chosen:
        raise DataError("give at least one source (--dailydialog, --intents, --human-chat)")
    sources: dict[str, SourceData] = {name: read(path) for name, (path, read) in chosen.items()}

    usable: list[Conversation] = []
    tallies: dict[str, Counter[str]] = {name: Counter() for name in sources}
    for name, data in sources.items():
        for conversation in data.conversations:
            tally = tallies[name]
            tally["turns_read"] += len(conversation.messages)
            cleaned = [
                {"role": message["role"], "content": clean_text(message["content"])}
                for message in conversation.messages
            ]
            tally["turns_changed_by_cleaning"] += sum(
                before["content"] != after["content"]
                for before, after in zip(conversation.messages, cleaned, strict=True)
            )
            reason = rejection_reason(cleaned)
            if reason is not None:
                tally[f"dropped_{reason}"] += 1
                continue
            usable.append(Conversation(cleaned, conversation.source, conversation.group))
    kept, duplicates = deduplicate(usable)
    for conversation in duplicates:
        tallies[conversation.source]["duplicates"] += 1

    config.out_dir.mkdir(parents=True, exist_ok=True)
    splits = split_conversations(kept, config.fractions, config.seed)
    written: dict[str, list[Conversation]] = {}
    for split in SPLITS:
        path = config.out_dir / f"{split}.jsonl"
        write_chat_jsonl(path, splits[split])
        written[split] = read_chat_jsonl(path)  # the check runs on what was written

    report = BuildReport(
        inputs={name: str(path) for name, (path, _read) in chosen.items()},
        seed=config.seed,
        fractions=config.fractions.as_dict(),
        sources={name: _source_stats(data, tallies[name], kept) for name, data in sources.items()},
        splits={split: _split_stats(f"{split}.jsonl", items) for split, items in written.items()},
        leakage=check_leakage(written),
        elapsed_s=round(time.perf_counter() - started, 2),
    )
    (config.out_dir / STATS_JSON).write_text(report.model_dump_json(indent=2) + "\n", "utf-8")
    (config.out_dir / STATS_MARKDOWN).write_text(build_report_markdown(report), "utf-8")
    logger.info(
        "built %s conversations into %s in %.1f s (leak free: %s)",
        len(kept),
        config.out_dir,
        report.elapsed_s,
        report.leakage.leak_free,
    )
    return report


def _source_stats(data: SourceData, tally: Counter[str], kept: list[Conversation]) -> SourceStats:
    mine = [conversation for conversation in kept if conversation.source == data.name]
    return SourceStats(
        read=len(data.conversations),
        turns_read=tally["turns_read"],
        turns_changed_by_cleaning=tally["turns_changed_by_cleaning"],
        dropped_empty=tally["dropped_empty"],
        dropped_one_sided=tally["dropped_one_sided"],
        dropped_not_alternating=tally["dropped_not_alternating"],
        duplicates=tally["duplicates"],
        kept=len(mine),
        turns_kept=sum(len(conversation.messages) for conversation in mine),
        reader=dict(sorted(data.counts.items())),
    )


def _split_stats(file: str, conversations: list[Conversation]) -> SplitStats:
    return SplitStats(
        file=file,
        conversations=len(conversations),
        turns=sum(len(c.messages) for c in conversations),
        assistant_turns=sum(m["role"] == "assistant" for c in conversations for m in c.messages),
        groups=len({c.group for c in conversations}),
        by_source=dict(sorted(Counter(c.source for c in conversations).items())),
    )
