"""The feedback ledger: corrections and ratings kept durably in append-only JSONL segments.

Layout (the directory is a ReadWriteMany volume in a cluster)::

    <ledger>/<writer-id>/<YYYY-MM-DD>.jsonl     one segment per writer per UTC day

Each writer (a Serve replica) appends only to its own segments, one JSON object per
line; no file is ever rewritten. ``append`` returns after the line is written and
fsync'd, so a crash leaves at most one torn last line, which readers skip and count
(the writer ends it with a newline before its next append, so nothing merges into it).
Readers merge all segments, deduplicate by id, and skip bad lines without failing.

Two kinds of record are written: a ``correction`` (what the answer should have been: the
training data) and a ``rating`` (thumbs ``up`` or ``down`` on an answer, no correction: a
signal for rollout, never a training row). :attr:`LedgerScan.corrections` is what training
and "corrections pending" read; :attr:`LedgerScan.ratings` is what rollout reads. Both are
schema version 1: a rating has a correction's layout with ``rating`` set and ``correction``
null, so every line written before ratings existed still parses. (A reader older than
ratings skips a rating line as a bad line.)

Control records (``<ledger>/_control/<writer-id>/<YYYY-MM-DD>.jsonl``, same append-only
rules): ``forget`` tombstones and ``share`` marks. Every scan reads them whole (they are
few) and applies them: a record whose ``scope`` a tombstone covers (``ouro.scopes.covers``)
and that was written before the tombstone is left out of every scan, count and export,
though its line stays on disk untouched. ``share`` marks name corrections an operator
sent to the shared adapter.

Reading "what came after the last training" is cheap: a :class:`Watermark` records,
per recently active writer, the segment and byte offset where a scan stopped; a later
``scan(after=...)`` seeks there instead of re-parsing everything. Writer ids must be
unique per live process; segments are chosen by the UTC date of each record, so clocks
are assumed right to within a day.

The parts: :mod:`ouro.ledger.records` (the records, their errors and constants),
:mod:`ouro.ledger.watermark`, :mod:`ouro.ledger.reader` and :mod:`ouro.ledger.writer`.
"""

from ouro.ledger.reader import FeedbackStats, LedgerReader, LedgerScan
from ouro.ledger.records import (
    CONTROL_DIR,
    RATINGS,
    SCHEMA_VERSION,
    ControlKind,
    ControlRecord,
    ControlState,
    FeedbackKind,
    FeedbackMessage,
    FeedbackRecord,
    FeedbackTooLargeError,
    InvalidFeedbackError,
    InvalidWatermarkError,
    LedgerError,
    LedgerUnavailableError,
    Rating,
)
from ouro.ledger.watermark import SegmentPosition, Watermark
from ouro.ledger.writer import FeedbackLedger

__all__ = [
    "CONTROL_DIR",
    "RATINGS",
    "SCHEMA_VERSION",
    "ControlKind",
    "ControlRecord",
    "ControlState",
    "FeedbackKind",
    "FeedbackLedger",
    "FeedbackMessage",
    "FeedbackRecord",
    "FeedbackStats",
    "FeedbackTooLargeError",
    "InvalidFeedbackError",
    "InvalidWatermarkError",
    "LedgerError",
    "LedgerReader",
    "LedgerScan",
    "LedgerUnavailableError",
    "Rating",
    "SegmentPosition",
    "Watermark",
]
