"""Reading the ledger: every writer's segments merged, deduplicated, control records applied."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import (
    BaseModel,
    ValidationError,
)

from ouro.ledger.records import (
    CONTROL_DIR,
    RATINGS,
    SCHEMA_VERSION,
    SEGMENT_NAME_PATTERN,
    WRITER_ID_PATTERN,
    Clock,
    ControlRecord,
    ControlState,
    FeedbackRecord,
    utc_now,
)
from ouro.ledger.watermark import SegmentPosition, Watermark
from ouro.scopes import InvalidScopeError, validate_scope

logger = logging.getLogger(__name__)


# -- reading --------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerScan:
    """What one scan found."""

    records: list[FeedbackRecord] = field(metadata={"help": "Unique records, oldest first."})
    bad_lines: int = field(
        metadata={"help": "Lines skipped: torn, not JSON, unknown schema, or invalid."}
    )
    duplicates: int = field(metadata={"help": "Records skipped because their id was seen."})
    watermark: Watermark = field(metadata={"help": "The end of this scan."})
    forgotten: int = field(default=0, metadata={"help": "Records left out by a tombstone."})
    control: ControlState = field(
        default_factory=ControlState, metadata={"help": "Tombstones and share marks applied."}
    )

    @property
    def corrections(self) -> list[FeedbackRecord]:
        """The corrections among ``records``, oldest first: what training reads."""
        return [record for record in self.records if record.kind == "correction"]

    @property
    def ratings(self) -> list[FeedbackRecord]:
        """The ratings among ``records``, oldest first: signals, never training rows."""
        return [record for record in self.records if record.kind == "rating"]


@dataclass(frozen=True)
class FeedbackStats:
    """The body of ``GET /v1/feedback/stats``: corrections, then ratings, counted apart."""

    total: int = field(metadata={"help": "Unique corrections in the ledger."})
    by_model: dict[str, int] = field(metadata={"help": "Corrections per answering version."})
    since_last_training: int = field(metadata={"help": "Corrections after the given watermark."})
    bad_lines: int = field(metadata={"help": "Lines readers skip."})
    ratings: dict[str, int] = field(
        default_factory=dict, metadata={"help": "Ratings by verdict: 'up' and 'down'."}
    )
    ratings_by_model: dict[str, dict[str, int]] = field(
        default_factory=dict,
        metadata={"help": "Ratings per answering version, by verdict."},
    )


UNKNOWN_MODEL = "unknown"
"""``by_model`` key for records that did not say which version answered."""


@dataclass
class _SegmentRead:
    records: list
    bad_lines: int
    end_offset: int


class LedgerReader:
    """Reads a ledger directory; needs no write access. A missing directory is empty."""

    def __init__(self, directory: Path, *, clock: Clock = utc_now) -> None:
        self.directory = Path(directory)
        self._clock = clock

    def segments(self) -> dict[str, list[tuple[dt.date, Path]]]:
        """Each writer's segments, oldest day first. Other files are ignored."""
        found: dict[str, list[tuple[dt.date, Path]]] = {}
        if not self.directory.is_dir():
            return found
        for writer_dir in sorted(self.directory.iterdir()):
            if not writer_dir.is_dir() or not WRITER_ID_PATTERN.match(writer_dir.name):
                continue
            days = []
            for path in writer_dir.iterdir():
                match = SEGMENT_NAME_PATTERN.match(path.name)
                if not match or not path.is_file():
                    continue
                try:
                    days.append((dt.date.fromisoformat(match.group(1)), path))
                except ValueError:  # e.g. 2025-02-30.jsonl: not one of ours
                    logger.warning("ignoring %s: not a dated ledger segment", path)
            if days:
                found[writer_dir.name] = sorted(days)
        return found

    def control(self) -> ControlState:
        """Every tombstone and share mark, oldest first (bad lines skipped and counted)."""
        root = self.directory / CONTROL_DIR
        records: dict[str, ControlRecord] = {}
        bad = 0
        for _writer_id, days in LedgerReader(root, clock=self._clock).segments().items():
            for _day, path in days:
                read = _read_segment(path, 0, _parse_control_line)
                bad += read.bad_lines
                for record in read.records:
                    records.setdefault(record.id, record)
        ordered = sorted(records.values(), key=lambda r: (r.created_at, r.id))
        return ControlState(
            tombstones=tuple(r for r in ordered if r.kind == "forget"),
            shares=tuple(r for r in ordered if r.kind == "share"),
            bad_lines=bad,
        )

    def scan(self, after: Watermark | None = None) -> LedgerScan:
        """All records, or only those after ``after``; never fails on bad lines.

        Records a tombstone covers are left out (counted in ``forgotten``), whether the
        tombstone came before or after ``after``.
        """
        control = self.control()
        floor = self._clock().astimezone(dt.UTC).date() - dt.timedelta(days=1)
        if after is not None:
            floor = max(floor, after.floor)
        unique: dict[str, FeedbackRecord] = {}
        bad_lines = duplicates = 0
        positions: list[tuple[str, SegmentPosition]] = []
        for writer_id, days in self.segments().items():
            previous = after.position(writer_id) if after is not None else None
            last: SegmentPosition | None = previous
            for day, path in days:
                start = _start_offset(day, after, previous)
                if start is None:
                    continue
                read = _read_segment(path, start)
                bad_lines += read.bad_lines
                for record in read.records:
                    if record.id in unique:
                        duplicates += 1
                    else:
                        unique[record.id] = record
                last = SegmentPosition(day, read.end_offset)
            if last is not None and last.day >= floor:
                positions.append((writer_id, last))
        kept = [record for record in unique.values() if not control.forgets(record)]
        records = sorted(kept, key=lambda r: (r.created_at, r.id))
        return LedgerScan(
            records=records,
            bad_lines=bad_lines + control.bad_lines,
            duplicates=duplicates,
            watermark=Watermark(floor=floor, positions=tuple(positions)),
            forgotten=len(unique) - len(kept),
            control=control,
        )

    def count_since(self, since: Watermark | None) -> int:
        """Corrections after ``since`` (the newest training's watermark; None: every one);
        ratings are not counted. Reads only what was written after it."""
        return len(self.scan(after=since).corrections)

    def stats(self, since: Watermark | None = None) -> FeedbackStats:
        """Counts for the stats endpoint; ``since`` is the newest training's watermark."""
        everything = self.scan()
        corrections = everything.corrections
        by_model = Counter(record.model or UNKNOWN_MODEL for record in corrections)
        since_count = len(corrections) if since is None else self.count_since(since)
        ratings_by_model: dict[str, dict[str, int]] = {}
        for record in everything.ratings:
            verdicts = ratings_by_model.setdefault(
                record.model or UNKNOWN_MODEL, dict.fromkeys(RATINGS, 0)
            )
            verdicts[record.rating] += 1
        return FeedbackStats(
            total=len(corrections),
            by_model=dict(sorted(by_model.items())),
            since_last_training=since_count,
            bad_lines=everything.bad_lines,
            ratings={
                verdict: sum(counts[verdict] for counts in ratings_by_model.values())
                for verdict in RATINGS
            },
            ratings_by_model=dict(sorted(ratings_by_model.items())),
        )


def _start_offset(
    day: dt.date, after: Watermark | None, previous: SegmentPosition | None
) -> int | None:
    """Byte offset to read a segment from, or None when the watermark covers all of it."""
    if after is None:
        return 0
    if previous is None:
        return None if day < after.floor else 0
    if day < previous.day:
        return None
    return previous.offset if day == previous.day else 0


def _read_segment(
    path: Path, start: int, parse: Callable[[bytes], BaseModel | None] | None = None
) -> _SegmentRead:
    parse = parse or _parse_line
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if start > size:
                logger.warning("%s is shorter than its watermark offset; reading it whole", path)
                start = 0
            handle.seek(start)
            data = handle.read()
    except OSError as exc:
        logger.warning("cannot read ledger segment %s: %s", path, exc)
        return _SegmentRead([], 0, start)
    complete = data.rfind(b"\n") + 1
    records: list = []
    bad = 0
    line_start = 0
    for line in data[:complete].split(b"\n")[:-1]:
        if line.strip():
            record = parse(line)
            if record is None:
                bad += 1
                logger.warning("skipping bad ledger line at %s:%d", path, start + line_start)
            else:
                records.append(record)
        line_start += len(line) + 1
    if complete < len(data):
        # A torn last line (a crashed writer) or one being written right now: skip it and
        # stop the watermark before it, so a line that completes later is read next time.
        bad += 1
        logger.warning("skipping incomplete last line of %s at byte %d", path, start + complete)
    return _SegmentRead(records, bad, start + complete)


def _parse_line(line: bytes) -> FeedbackRecord | None:
    return _parse_as(line, FeedbackRecord)


def _parse_control_line(line: bytes) -> ControlRecord | None:
    record = _parse_as(line, ControlRecord)
    if record is None:
        return None
    wellformed = (
        record.kind == "forget" and record.scope is not None and _valid_scope(record.scope)
    ) or (record.kind == "share" and bool(record.record_id))
    return record if wellformed else None


def _valid_scope(scope: str) -> bool:
    try:
        validate_scope(scope)
    except InvalidScopeError:
        return False
    return True


def _parse_as(line: bytes, model: type[BaseModel]):
    try:
        obj = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    if not isinstance(obj, dict):
        return None
    version = obj.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        return None
    try:
        return model.model_validate(obj)
    except ValidationError:
        return None
