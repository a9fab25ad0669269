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
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import json
import logging
import os
import re
import tempfile
import threading
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    model_validator,
)

from ouro.errors import OuroError
from ouro.scopes import InvalidScopeError, covers, validate_scope
from ouro.settings import OuroSettings

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Version of the record layout written by this code; readers skip other versions."""

WRITER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SEGMENT_NAME_PATTERN = re.compile(r"^(\d{4}-\d{2}-\d{2})\.jsonl$")
CONTROL_DIR = "_control"
"""Holds the control records; not a writer id (those start with a letter or digit)."""

FeedbackKind = Literal["correction", "rating", "retraction"]
"""``correction`` and ``rating`` are written; ``retraction`` is reserved for later use."""

Rating = Literal["up", "down"]
"""A rating's verdict on an answer: thumbs up or thumbs down."""

RATINGS: tuple[Rating, ...] = get_args(Rating)

ControlKind = Literal["forget", "share"]
"""``forget``: a tombstone for a scope; ``share``: a correction marked for the shared adapter."""

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- errors ---------------------------------------------------------------------------


class LedgerError(OuroError):
    """Base class for ledger errors."""


class LedgerUnavailableError(LedgerError):
    """The ledger directory cannot be created or written (raised at start-up), or a
    write failed at the operating-system level (disk full, I/O error)."""


class InvalidFeedbackError(LedgerError):
    """A feedback record is malformed; ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class FeedbackTooLargeError(InvalidFeedbackError):
    """A field or the whole record exceeds the configured limits."""


class InvalidWatermarkError(LedgerError):
    """A watermark string that this code cannot decode."""


# -- records --------------------------------------------------------------------------


class FeedbackMessage(BaseModel):
    """One turn of the conversation the model answered."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    role: Literal["system", "user", "assistant"] = Field(description="Who spoke.")
    content: str = Field(description="What was said, stored exactly as given.")


class FeedbackRecord(BaseModel):
    """One line of the ledger: a correction (``correction`` set, no ``rating``) or a rating
    (``rating`` set, no ``correction``); a line that mixes them is invalid."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(description="Unique record id, 'fb-' + 32 hex digits.")
    created_at: AwareDatetime = Field(description="When the record was written (UTC).")
    schema_version: StrictInt = Field(SCHEMA_VERSION, description="Record layout version.")
    kind: FeedbackKind = Field("correction", description="What the record is.")
    messages: list[FeedbackMessage] = Field(description="The conversation that was answered.")
    completion: str = Field(description="What the model answered.")
    correction: str | None = Field(
        None, description="What it should have answered; set on a correction, null on a rating."
    )
    rating: Rating | None = Field(
        None, description="'up' or 'down' on the answer; set on a rating, null on a correction."
    )
    model: str | None = Field(None, description="Version that answered, e.g. 'ouro@v7'.")
    completion_id: str | None = Field(None, description="Id of the chat completion, if known.")
    reason: str | None = Field(None, description="Why the answer was wrong, free text.")
    api_key_hash: str | None = Field(
        None, description="ouro.apikeys.hash_api_key of the key that sent it; None if open."
    )
    scope: str | None = Field(
        None,
        description="Personal scope of the author ('<key name>' or '<key name>/<user>'); "
        "None when the server was open or the record predates personal adapters.",
    )
    admin: bool = Field(False, description="Sent with an admin key: trains the shared adapter.")

    @model_validator(mode="after")
    def _fields_match_kind(self) -> FeedbackRecord:
        if self.kind == "correction" and (self.correction is None or self.rating is not None):
            raise ValueError("a correction carries a correction and no rating")
        if self.kind == "rating" and (self.rating is None or self.correction is not None):
            raise ValueError("a rating carries a rating and no correction")
        return self

    def message_dicts(self) -> list[dict[str, str]]:
        """The conversation as OpenAI-style ``{"role", "content"}`` dicts."""
        return [message.model_dump() for message in self.messages]

    def corrected_conversation(self) -> list[dict[str, str]]:
        """The conversation followed by the assistant turn it should have had (corrections only)."""
        if self.correction is None:
            raise ValueError(f"{self.id} is a {self.kind}, not a correction")
        return [*self.message_dicts(), {"role": "assistant", "content": self.correction}]


class ControlRecord(BaseModel):
    """One line of the control log: a tombstone or a share mark."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(description="Unique record id, 'ctl-' + 32 hex digits.")
    created_at: AwareDatetime = Field(description="When the record was written (UTC).")
    schema_version: StrictInt = Field(SCHEMA_VERSION, description="Record layout version.")
    kind: ControlKind = Field(description="'forget' or 'share'.")
    scope: str | None = Field(None, description="forget: the scope (and its user scopes).")
    record_id: str | None = Field(None, description="share: the correction's record id.")
    reason: str | None = Field(None, description="Why, free text (an operator's note).")
    api_key_hash: str | None = Field(None, description="Key hash of who asked; None if open.")


@dataclass(frozen=True)
class ControlState:
    """Every control record in the ledger, ready to apply."""

    tombstones: tuple[ControlRecord, ...] = ()
    shares: tuple[ControlRecord, ...] = ()
    bad_lines: int = 0

    @property
    def shared_ids(self) -> frozenset[str]:
        return frozenset(mark.record_id for mark in self.shares if mark.record_id)

    def forgets(self, record: FeedbackRecord) -> bool:
        """Whether a tombstone written after ``record`` covers its scope."""
        return any(
            covers(tomb.scope, record.scope) and record.created_at <= tomb.created_at
            for tomb in self.tombstones
            if tomb.scope
        )

    def changed_since(self, moment: dt.datetime) -> int:
        """Control records written after ``moment`` (they change what trains the shared adapter)."""
        return sum(1 for mark in (*self.tombstones, *self.shares) if mark.created_at > moment)


# -- watermarks -----------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentPosition:
    """Where a scan stopped in one writer's segments: its segment ``day`` up to ``offset``
    bytes (the end of the last complete line); the writer's earlier days were read whole."""

    day: dt.date
    offset: int


@dataclass(frozen=True)
class Watermark:
    """The end of a scan: everything before it has been read.

    ``floor``: every segment dated before it was read whole. ``positions``: for writers
    with a segment dated ``floor`` or later, where reading stopped. Writers not listed
    wrote nothing from ``floor`` on, so all of their later segments are new.

    Text form (:meth:`encode`), e.g. ``1;20250130;replica-a=20250131:5120;replica-b=20250130:88``:
    format version, floor date, then ``writer=date:offset`` per listed writer. Only writers
    active since the day before the scan are listed, so the string stays short however many
    writers the ledger has seen; past 512 characters it is stored zlib-compressed as
    ``1z;<base64url>``.
    """

    floor: dt.date
    positions: tuple[tuple[str, SegmentPosition], ...] = ()

    FORMAT = "1"
    COMPRESSED_FORMAT = "1z"
    COMPRESS_OVER_CHARS = 512

    def position(self, writer_id: str) -> SegmentPosition | None:
        return dict(self.positions).get(writer_id)

    def encode(self) -> str:
        parts = [self.FORMAT, _compact_date(self.floor)]
        parts += [f"{w}={_compact_date(p.day)}:{p.offset}" for w, p in self.positions]
        text = ";".join(parts)
        if len(text) <= self.COMPRESS_OVER_CHARS:
            return text
        packed = base64.urlsafe_b64encode(zlib.compress(text.encode("ascii"), 9))
        return f"{self.COMPRESSED_FORMAT};{packed.decode('ascii')}"

    @classmethod
    def decode(cls, text: str) -> Watermark:
        try:
            if text.startswith(cls.COMPRESSED_FORMAT + ";"):
                packed = text.split(";", 1)[1].encode("ascii")
                text = zlib.decompress(base64.urlsafe_b64decode(packed)).decode("ascii")
            fmt, floor, *entries = text.split(";")
            if fmt != cls.FORMAT:
                raise ValueError(f"unknown format {fmt!r}")
            positions = []
            for entry in entries:
                writer, _, rest = entry.partition("=")
                day, _, offset = rest.partition(":")
                if not WRITER_ID_PATTERN.match(writer) or not offset.isdigit():
                    raise ValueError(f"bad entry {entry!r}")
                positions.append((writer, SegmentPosition(_parse_compact(day), int(offset))))
            floor_day = _parse_compact(floor)
        except (ValueError, zlib.error) as exc:
            raise InvalidWatermarkError(f"not a ledger watermark: {text[:80]!r} ({exc})") from exc
        positions.sort(key=lambda item: item[0])
        return cls(floor=floor_day, positions=tuple(positions))


def _compact_date(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


def _parse_compact(text: str) -> dt.date:
    return dt.datetime.strptime(text, "%Y%m%d").date()


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


# -- writing --------------------------------------------------------------------------


class FeedbackLedger:
    """One writer's handle on the ledger; thread-safe, appends are durable on return.

    Construction checks that the directory can be created and written, so a bad volume
    is reported at start-up (LedgerUnavailableError) rather than on every request.
    """

    def __init__(
        self,
        directory: Path,
        writer_id: str,
        *,
        max_record_bytes: int,
        max_field_chars: int,
        clock: Clock = utc_now,
    ) -> None:
        if not WRITER_ID_PATTERN.match(writer_id):
            raise ValueError(
                f"writer id {writer_id!r} must match {WRITER_ID_PATTERN.pattern} "
                "(it names a directory)"
            )
        self.directory = Path(directory)
        self.writer_id = writer_id
        self.max_record_bytes = max_record_bytes
        self.max_field_chars = max_field_chars
        self._clock = clock
        self._reader = LedgerReader(self.directory, clock=clock)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._fd_path: Path | None = None
        self._writer_dir = self.directory / writer_id
        self._check_writable()

    @classmethod
    def from_settings(cls, settings: OuroSettings, writer_id: str) -> FeedbackLedger:
        return cls(
            settings.ledger_dir,
            writer_id,
            max_record_bytes=settings.max_feedback_bytes,
            max_field_chars=settings.max_feedback_field_chars,
        )

    def _check_writable(self) -> None:
        try:
            _make_dir_durably(self.directory)
            _make_dir_durably(self._writer_dir)
            fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=self._writer_dir)
            try:
                os.write(fd, b"probe\n")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            raise LedgerUnavailableError(
                f"feedback ledger directory {self.directory} cannot be written: {exc}"
            ) from exc

    # -- append ---------------------------------------------------------------------

    def append(
        self,
        *,
        messages: Sequence[Mapping[str, Any] | FeedbackMessage],
        completion: str,
        correction: str | None = None,
        rating: Rating | None = None,
        model: str | None = None,
        completion_id: str | None = None,
        reason: str | None = None,
        api_key_hash: str | None = None,
        kind: FeedbackKind = "correction",
        scope: str | None = None,
        admin: bool = False,
    ) -> FeedbackRecord:
        """Validate, write and fsync one record; returns it once it is durable.

        ``kind="correction"`` needs ``correction`` (non-empty, not the completion) and no
        ``rating``; ``kind="rating"`` needs ``rating`` ('up' or 'down') and no ``correction``.
        Raises InvalidFeedbackError / FeedbackTooLargeError (with ``param``) for bad
        input, LedgerUnavailableError when the disk refuses the write.
        """
        record = self._build_record(
            messages=messages,
            completion=completion,
            correction=correction,
            rating=rating,
            model=model,
            completion_id=completion_id,
            reason=reason,
            api_key_hash=api_key_hash,
            kind=kind,
            scope=scope,
            admin=admin,
        )
        line = record.model_dump_json().encode("utf-8") + b"\n"
        if len(line) > self.max_record_bytes:
            raise FeedbackTooLargeError(
                f"feedback record is {len(line)} bytes; the limit is {self.max_record_bytes}"
            )
        segment = self._writer_dir / f"{record.created_at.astimezone(dt.UTC).date()}.jsonl"
        with self._lock:
            try:
                self._write_line(segment, line)
            except OSError as exc:
                raise LedgerUnavailableError(f"could not write to {segment}: {exc}") from exc
        return record

    def _build_record(
        self,
        *,
        messages: Sequence[Mapping[str, Any] | FeedbackMessage],
        completion: str,
        correction: str | None,
        rating: Rating | None,
        model: str | None,
        completion_id: str | None,
        reason: str | None,
        api_key_hash: str | None,
        kind: FeedbackKind,
        scope: str | None,
        admin: bool,
    ) -> FeedbackRecord:
        if scope is not None:
            try:
                validate_scope(scope)
            except InvalidScopeError as exc:
                raise InvalidFeedbackError(str(exc), "scope") from exc
        if not isinstance(completion, str):
            raise InvalidFeedbackError("completion must be a string", "completion")
        _check_kind(kind, completion, correction, rating)
        if not messages:
            raise InvalidFeedbackError("messages must not be empty", "messages")
        try:
            turns = [FeedbackMessage.model_validate(message) for message in messages]
        except ValidationError as exc:
            raise InvalidFeedbackError(f"invalid messages: {exc}", "messages") from exc
        if turns[-1].role != "user":
            raise InvalidFeedbackError(
                "the conversation must end with the user turn that was answered", "messages"
            )
        texts: list[tuple[str, str | None]] = [
            *((f"messages[{i}].content", turn.content) for i, turn in enumerate(turns)),
            ("completion", completion),
            ("correction", correction),
            ("model", model),
            ("completion_id", completion_id),
            ("reason", reason),
            ("api_key_hash", api_key_hash),
        ]
        self._check_texts(texts)
        try:
            return FeedbackRecord(
                id=f"fb-{uuid.uuid4().hex}",
                created_at=self._clock().astimezone(dt.UTC),
                kind=kind,
                messages=turns,
                completion=completion,
                correction=correction,
                rating=rating,
                model=model,
                completion_id=completion_id,
                reason=reason,
                api_key_hash=api_key_hash,
                scope=scope,
                admin=admin,
            )
        except ValidationError as exc:
            raise InvalidFeedbackError(f"invalid feedback: {exc}") from exc

    def append_control(
        self,
        kind: ControlKind,
        *,
        scope: str | None = None,
        record_id: str | None = None,
        reason: str | None = None,
        api_key_hash: str | None = None,
    ) -> ControlRecord:
        """Write and fsync a tombstone (``forget``, needs ``scope``) or a share mark
        (``share``, needs ``record_id``); returns it once durable. Nothing is rewritten."""
        if kind == "forget":
            if scope is None:
                raise InvalidFeedbackError("forget needs a scope", "scope")
            try:
                validate_scope(scope)
            except InvalidScopeError as exc:
                raise InvalidFeedbackError(str(exc), "scope") from exc
        elif not record_id or not re.fullmatch(r"fb-[0-9a-f]{32}", record_id):
            raise InvalidFeedbackError("share needs a feedback record id (fb-...)", "record_id")
        self._check_texts([("reason", reason), ("api_key_hash", api_key_hash)])
        record = ControlRecord(
            id=f"ctl-{uuid.uuid4().hex}",
            created_at=self._clock().astimezone(dt.UTC),
            kind=kind,
            scope=scope,
            record_id=record_id,
            reason=reason,
            api_key_hash=api_key_hash,
        )
        day = record.created_at.astimezone(dt.UTC).date()
        segment = self.directory / CONTROL_DIR / self.writer_id / f"{day}.jsonl"
        with self._lock:
            try:
                self._write_line(segment, record.model_dump_json().encode("utf-8") + b"\n")
            except OSError as exc:
                raise LedgerUnavailableError(f"could not write to {segment}: {exc}") from exc
        logger.info("ledger control record %s: %s %s", record.id, kind, scope or record_id)
        return record

    def _check_texts(self, texts: Iterable[tuple[str, str | None]]) -> None:
        for name, text in texts:
            if text is None:
                continue
            if not isinstance(text, str):
                raise InvalidFeedbackError(f"{name} must be a string", name)
            if len(text) > self.max_field_chars:
                raise FeedbackTooLargeError(
                    f"{name} has {len(text)} characters; the limit is {self.max_field_chars}",
                    name,
                )
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidFeedbackError(f"{name} is not valid Unicode text", name) from exc

    def _write_line(self, segment: Path, line: bytes) -> None:
        fd = self._segment_fd(segment)
        # flock as well as the thread lock: two processes given the same writer id
        # (a misconfiguration) still never interleave within a line.
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # A previous process died mid-line: end that torn line so ours stays whole.
                line = b"\n" + line
            _write_all(fd, line)
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _segment_fd(self, segment: Path) -> int:
        if self._fd is not None and (self._fd_path != segment or os.fstat(self._fd).st_nlink == 0):
            # A new day, or the open segment was deleted under us: reopen by name.
            os.close(self._fd)
            self._fd = None
        if self._fd is None:
            _make_dir_durably(segment.parent)
            try:
                fd = os.open(segment, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
                created = True
            except FileExistsError:
                fd = os.open(segment, os.O_RDWR | os.O_APPEND)
                created = False
            if created:
                _fsync_dir(segment.parent)
            self._fd, self._fd_path = fd, segment
        return self._fd

    # -- reading --------------------------------------------------------------------

    def scan(self, after: Watermark | None = None) -> LedgerScan:
        """All writers' records (see LedgerReader.scan)."""
        return self._reader.scan(after)

    def control(self) -> ControlState:
        return self._reader.control()

    def count_since(self, since: Watermark | None) -> int:
        return self._reader.count_since(since)

    def stats(self, since: Watermark | None = None) -> FeedbackStats:
        return self._reader.stats(since)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> FeedbackLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_kind(
    kind: FeedbackKind, completion: str, correction: str | None, rating: Rating | None
) -> None:
    """A correction carries a correction that changes the answer and no rating; a rating
    carries a verdict and no correction (InvalidFeedbackError naming the field if not)."""
    if kind == "rating":
        if correction is not None:
            raise InvalidFeedbackError("a rating carries no correction", "correction")
        if rating not in RATINGS:
            raise InvalidFeedbackError("rating must be 'up' or 'down'", "rating")
        return
    if kind != "correction":
        raise InvalidFeedbackError(f"{kind!r} records are not written", "kind")
    if rating is not None:
        raise InvalidFeedbackError("a correction carries no rating", "rating")
    if not isinstance(correction, str):
        raise InvalidFeedbackError("correction must be a string", "correction")
    if not correction.strip():
        raise InvalidFeedbackError("correction must not be empty", "correction")
    if correction.strip() == completion.strip():
        raise InvalidFeedbackError(
            "correction must differ from the completion it corrects", "correction"
        )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _make_dir_durably(path: Path) -> None:
    """mkdir -p, fsyncing each parent whose entry list changed."""
    if path.is_dir():
        return
    if path.parent != path:
        _make_dir_durably(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        if not path.is_dir():
            raise  # a file is in the way: the OSError says which
        return
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
