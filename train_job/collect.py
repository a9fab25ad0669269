"""Collect: every accepted correction in the ledger, and how many are new.

A cycle trains on all corrections so far (deduplicated), not only the new ones: each
version starts from the base model. "New" is measured against the ledger watermark
recorded on the newest registered version, so the watermark only advances when a version
is registered; a cycle that failed or died leaves the next one the same work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ouro.ledger import FeedbackRecord, LedgerReader, Watermark
from ouro.registry import AdapterVersion, RegistrySnapshot
from train_job.dataset import Correction

logger = logging.getLogger(__name__)


@dataclass
class Collected:
    """What the ledger holds for this cycle."""

    corrections: list[Correction]
    """All accepted corrections, oldest first, without duplicates."""
    new: int
    """Corrections that arrived after ``since``."""
    watermark: Watermark
    """The end of the scan the corrections came from (recorded on the version)."""
    since: Watermark | None
    """The newest registered version's watermark; None when there is none."""
    since_version: int | None
    """That version's number."""
    bad_lines: int
    """Ledger lines that could not be read (torn or invalid), skipped."""
    skipped: int
    """Records that are no usable correction, or repeat one word for word."""


def last_trained(snapshot: RegistrySnapshot) -> AdapterVersion | None:
    """The newest version that records a ledger watermark (what was trained up to)."""
    for number in sorted(snapshot.versions, reverse=True):
        version = snapshot.versions[number]
        if version.watermark is not None:
            return version
    return None


def collect(ledger_dir: Path, snapshot: RegistrySnapshot) -> Collected:
    """Read the ledger: every usable correction, and the count that is new since the last version."""
    reader = LedgerReader(ledger_dir)
    scan = reader.scan()
    corrections, skipped = usable_corrections(scan.records)
    previous = last_trained(snapshot)
    since = previous.watermark if previous is not None else None
    if since is None:
        new = len(corrections)
    else:
        # Records appended between the two scans are not in ``corrections``: next cycle's.
        new_ids = {record.id for record in reader.scan(after=since).records}
        new = sum(1 for correction in corrections if correction.id in new_ids)
    logger.info(
        "ledger %s: %s corrections (%s new since %s), %s skipped, %s bad lines",
        ledger_dir,
        len(corrections),
        new,
        previous.label if previous else "the start",
        skipped,
        scan.bad_lines,
    )
    return Collected(
        corrections=corrections,
        new=new,
        watermark=scan.watermark,
        since=since,
        since_version=previous.version if previous else None,
        bad_lines=scan.bad_lines,
        skipped=skipped,
    )


def usable_corrections(records: list[FeedbackRecord]) -> tuple[list[Correction], int]:
    """Corrections that can be trained on, first occurrence of each (conversation, correction).

    Contradicting corrections of the same question are all kept: the gates are what
    decide whether the model can learn them.
    """
    seen: set[tuple] = set()
    corrections: list[Correction] = []
    skipped = 0
    for record in records:
        messages = tuple(record.message_dicts())
        if (
            record.kind != "correction"
            or not record.correction.strip()
            or not messages
            or messages[-1]["role"] != "user"
        ):
            skipped += 1
            continue
        key = (tuple((m["role"], m["content"]) for m in messages), record.correction.strip())
        if key in seen:
            skipped += 1
            continue
        seen.add(key)
        corrections.append(
            Correction(
                id=record.id,
                messages=messages,
                completion=record.completion,
                correction=record.correction,
                model=record.model,
            )
        )
    return corrections, skipped
