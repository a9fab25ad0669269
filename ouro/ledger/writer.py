"""Writing the ledger: one writer's durable appends (fsync'd before ``append`` returns)."""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from ouro.ledger.reader import FeedbackStats, LedgerReader, LedgerScan
from ouro.ledger.records import (
    CONTROL_DIR,
    RATINGS,
    WRITER_ID_PATTERN,
    Clock,
    ControlKind,
    ControlRecord,
    ControlState,
    FeedbackKind,
    FeedbackMessage,
    FeedbackRecord,
    FeedbackTooLargeError,
    InvalidFeedbackError,
    LedgerUnavailableError,
    Rating,
    utc_now,
)
from ouro.ledger.watermark import Watermark
from ouro.scopes import InvalidScopeError, validate_scope
from ouro.settings import OuroSettings

logger = logging.getLogger(__name__)


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
