"""Export the corrections for other tools (issue 4): OpenAI fine-tuning and preference JSONL.

- ``sft``: one ``{"messages": [...conversation, {"role": "assistant", "content": correction}]}``
  per line, OpenAI's chat fine-tuning format;
- ``dpo``: one ``{"input": {"messages": [...]}, "preferred_output": [{"role": "assistant",
  "content": correction}], "non_preferred_output": [{"role": "assistant", "content":
  completion}]}`` per line, OpenAI's preference fine-tuning format: the bad answer is the
  rejected one.

The same corrections a training cycle would use (see ``collect.usable_corrections``); the
file is written to a temporary name and renamed, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from ouro.ledger import LedgerReader
from train_job.collect import usable_corrections
from train_job.corrections import Correction

logger = logging.getLogger(__name__)

ExportFormat = Literal["sft", "dpo"]
FORMATS: tuple[ExportFormat, ...] = ("sft", "dpo")


def sft_record(correction: Correction) -> dict:
    return {
        "messages": [
            *correction.prompt(),
            {"role": "assistant", "content": correction.correction},
        ]
    }


def dpo_record(correction: Correction) -> dict:
    return {
        "input": {"messages": correction.prompt()},
        "preferred_output": [{"role": "assistant", "content": correction.correction}],
        "non_preferred_output": [{"role": "assistant", "content": correction.completion}],
    }


def export_records(corrections: Iterable[Correction], fmt: ExportFormat) -> list[dict]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    make = sft_record if fmt == "sft" else dpo_record
    return [make(correction) for correction in corrections]


def export_ledger(ledger_dir: Path, fmt: ExportFormat, out: str) -> int:
    """Write the ledger's corrections to ``out`` ('-' for stdout); returns how many."""
    corrections, skipped = usable_corrections(LedgerReader(ledger_dir).scan().corrections)
    records = export_records(corrections, fmt)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if out == "-":
        sys.stdout.write(lines)
    else:
        _write_atomically(Path(out), lines)
    logger.info("exported %s corrections as %s to %s (%s skipped)", len(records), fmt, out, skipped)
    return len(records)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
