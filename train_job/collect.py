"""Collect: every accepted correction in the ledger, and how many are new.

Only corrections train (``LedgerScan.corrections``); ratings are signals for rollout and
never become training rows.

A cycle trains on all corrections so far (deduplicated), not only the new ones: each
version starts from the base model. "New" is measured against the ledger watermark
recorded on the newest registered version (``RegistrySnapshot.last_trained``: one whose
canary was rolled back does not count), so the watermark only advances when a version is
registered; a cycle that failed or died leaves the next one the same work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ouro.ledger import FeedbackRecord, LedgerReader, LedgerScan, Watermark
from ouro.registry import RegistrySnapshot
from train_job.corrections import Correction

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
    new_ids: frozenset[str] = frozenset()
    """Ids of the new corrections among ``corrections``."""


def collect(
    ledger_dir: Path,
    snapshot: RegistrySnapshot,
    select: Callable[[list[Correction], LedgerScan], list[Correction]] | None = None,
    *,
    control_counts: bool = False,
    scan: LedgerScan | None = None,
) -> Collected:
    """Read the ledger: every usable correction, and the count that is new since the last version.

    ``select`` narrows the corrections to one adapter's training set (``train_job.sharing``:
    the shared one with personal adapters on, or one scope's); by default every
    correction counts once, whoever sent it. ``control_counts``: a share mark or a
    tombstone written since the last version counts as new (they change the shared set).
    ``scan``: a whole-ledger scan to reuse (one cycle collects for many scopes).
    """
    reader = LedgerReader(ledger_dir)
    scan = scan if scan is not None else reader.scan()
    corrections, skipped = usable_corrections(scan.corrections)
    corrections = select(corrections, scan) if select is not None else distinct(corrections)
    previous = snapshot.last_trained()
    since = previous.watermark if previous is not None else None
    if since is None:
        new_ids = frozenset(correction.id for correction in corrections)
        new = len(corrections)
    else:
        # Records appended between the two scans are not in ``corrections``: next cycle's.
        after = {record.id for record in reader.scan(after=since).corrections}
        new_ids = frozenset(c.id for c in corrections if c.id in after)
        new = len(new_ids)
        if control_counts and previous.created_at is not None:
            new += scan.control.changed_since(previous.created_at)
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
        new_ids=new_ids,
    )


def usable_corrections(records: list[FeedbackRecord]) -> tuple[list[Correction], int]:
    """Corrections that can be trained on, first occurrence of each (conversation, correction).

    Records of any other kind (ratings) are skipped and counted: pass
    ``LedgerScan.corrections`` for a count of skipped corrections alone. Contradicting corrections of the same question are all kept: the gates are what
    decide whether the model can learn them.
    """
    seen: set[tuple] = set()  # per scope: K scopes sending the same text is agreement
    corrections: list[Correction] = []
    skipped = 0
    for record in records:
        messages = tuple(record.message_dicts())
        if (
            record.kind != "correction"
            or record.correction is None
            or not record.correction.strip()
            or not messages
            or messages[-1]["role"] != "user"
        ):
            skipped += 1
            continue
        key = (
            record.scope,
            tuple((m["role"], m["content"]) for m in messages),
            record.correction.strip(),
        )
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
                scope=record.scope,
                admin=record.admin,
            )
        )
    return corrections, skipped


def distinct(corrections: list[Correction]) -> list[Correction]:
    """The first of each (conversation, correction), whatever scope sent it."""
    seen: set[tuple] = set()
    kept = []
    for correction in corrections:
        key = (
            tuple((m["role"], m["content"]) for m in correction.messages),
            correction.correction.strip(),
        )
        if key not in seen:
            seen.add(key)
            kept.append(correction)
    return kept
