"""The feedback ledger on real files: durability, concurrency, crashes, bad data, watermarks."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from ouro.ledger import (
    SCHEMA_VERSION,
    FeedbackLedger,
    FeedbackTooLargeError,
    InvalidFeedbackError,
    InvalidWatermarkError,
    LedgerReader,
    LedgerUnavailableError,
    SegmentPosition,
    Watermark,
)
from ouro.settings import OuroSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
LIMITS = {"max_record_bytes": 64_000, "max_field_chars": 4_000}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


class FakeClock:
    """A settable UTC clock, so tests can move to another day."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def make_ledger(directory: Path, writer_id: str = "writer-a", **kwargs) -> FeedbackLedger:
    return FeedbackLedger(directory, writer_id, **{**LIMITS, **kwargs})


def add(ledger: FeedbackLedger, n: int = 0, **fields):
    values = {
        "messages": QUESTION,
        "completion": "Berlin.",
        "correction": f"Paris. ({n})",
        "model": "ouro@v1",
        **fields,
    }
    return ledger.append(**values)


def rate(ledger: FeedbackLedger, verdict: str = "down", **fields):
    values = {
        "messages": QUESTION,
        "completion": "Berlin.",
        "rating": verdict,
        "kind": "rating",
        "model": "ouro@v1",
        **fields,
    }
    return ledger.append(**values)


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


# -- writing and reading back ------------------------------------------------------------


def test_append_is_readable_with_every_field_and_utf8_kept_as_given(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path / "feedback")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Café? <script>alert(1)</script> 日本"},
    ]
    written = ledger.append(
        messages=messages,
        completion="No.",
        correction="Oui, un café ☕",
        model="ouro@v3",
        completion_id="chatcmpl-123",
        reason="wrong language",
        api_key_hash="sha256:abc",
    )

    scan = ledger.scan()
    assert scan.records == [written]
    assert scan.bad_lines == 0
    record = scan.records[0]
    assert record.id.startswith("fb-") and record.schema_version == SCHEMA_VERSION
    assert record.kind == "correction"
    assert record.created_at.utcoffset() == dt.timedelta(0)
    assert record.message_dicts() == messages
    assert record.corrected_conversation()[-1] == {
        "role": "assistant",
        "content": "Oui, un café ☕",
    }
    assert (record.completion_id, record.reason, record.api_key_hash) == (
        "chatcmpl-123",
        "wrong language",
        "sha256:abc",
    )

    segment = tmp_path / "feedback" / "writer-a" / f"{record.created_at.date()}.jsonl"
    raw = segment.read_bytes()
    assert raw.count(b"\n") == 1 and raw.endswith(b"\n")
    assert "Oui, un café ☕".encode() in raw  # stored as UTF-8 text, not escaped
    assert b"<script>alert(1)</script>" in raw  # stored as given, nothing rendered
    assert json.loads(raw)["id"] == record.id


def test_a_rating_is_kept_apart_from_the_corrections(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    correction = add(ledger, 1)
    rating = rate(
        ledger,
        "down",
        completion_id="chatcmpl-9",
        reason="wrong city",
        api_key_hash="sha256:abc",
        scope="alice/u1",
    )
    up = rate(ledger, "up", model="ouro@v2")

    scan = ledger.scan()
    assert [r.id for r in scan.records] == [correction.id, rating.id, up.id]
    assert scan.corrections == [correction]
    assert scan.ratings == [rating, up]
    assert scan.bad_lines == 0
    read = scan.ratings[0]
    assert (read.kind, read.rating, read.correction) == ("rating", "down", None)
    assert (read.completion, read.model, read.completion_id, read.reason, read.scope) == (
        "Berlin.",
        "ouro@v1",
        "chatcmpl-9",
        "wrong city",
        "alice/u1",
    )
    assert read.message_dicts() == QUESTION
    with pytest.raises(ValueError, match="not a correction"):
        read.corrected_conversation()

    line = json.loads(next(tmp_path.glob("writer-a/*.jsonl")).read_bytes().splitlines()[1])
    assert (line["schema_version"], line["kind"], line["rating"], line["correction"]) == (
        SCHEMA_VERSION,
        "rating",
        "down",
        None,
    )


def test_ledger_from_settings_uses_the_configured_directory_and_limits(tmp_path: Path) -> None:
    settings = OuroSettings(data_dir=tmp_path, max_feedback_field_chars=10)
    ledger = FeedbackLedger.from_settings(settings, "replica-1")
    assert ledger.directory == tmp_path / "feedback"
    with pytest.raises(FeedbackTooLargeError):
        add(ledger, correction="x" * 11)


def test_a_thousand_appends_from_many_threads_give_exactly_a_thousand_whole_records(
    tmp_path: Path,
) -> None:
    ledger = make_ledger(tmp_path)
    with ThreadPoolExecutor(max_workers=16) as pool:
        written = list(pool.map(lambda n: add(ledger, n, reason="r" * (n % 97)), range(1000)))

    scan = ledger.scan()
    assert len(scan.records) == 1000
    assert {r.id for r in scan.records} == {r.id for r in written}
    assert len({r.id for r in written}) == 1000
    assert scan.bad_lines == 0 and scan.duplicates == 0
    # Nothing interleaved: every physical line is one whole JSON record.
    lines = [
        line
        for segment in (tmp_path / "writer-a").glob("*.jsonl")
        for line in segment.read_bytes().splitlines()
    ]
    assert len(lines) == 1000
    assert sorted(json.loads(line)["correction"] for line in lines) == sorted(
        f"Paris. ({n})" for n in range(1000)
    )


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from ouro.ledger import FeedbackLedger

    directory, writer_id, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    ledger = FeedbackLedger(directory, writer_id, max_record_bytes=64000, max_field_chars=4000)
    n = 0
    while count < 0 or n < count:
        record = ledger.append(
            messages=[{"role": "user", "content": "question " + str(n)}],
            completion="wrong",
            correction=writer_id + " answer " + str(n),
        )
        print(record.id, flush=True)  # acknowledged: append returned, the line is durable
        n += 1
    """
)


def test_writers_in_parallel_processes_each_keep_every_record(tmp_path: Path) -> None:
    # Three writers with their own ids, and two processes wrongly sharing one id:
    # the file lock still keeps their lines whole.
    writer_ids = ["replica-a", "replica-b", "replica-c", "shared", "shared"]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, str(tmp_path), writer_id, "60"],
            stdout=subprocess.PIPE,
            env=subprocess_env(),
            text=True,
        )
        for writer_id in writer_ids
    ]
    acknowledged = set()
    for process in processes:
        out, _ = process.communicate(timeout=240)
        assert process.returncode == 0
        acknowledged |= set(out.split())

    scan = LedgerReader(tmp_path).scan()
    assert len(acknowledged) == 300
    assert {r.id for r in scan.records} == acknowledged
    assert scan.bad_lines == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "replica-a",
        "replica-b",
        "replica-c",
        "shared",
    ]


def test_sigkill_mid_stream_loses_no_acknowledged_record_and_skips_the_torn_line(
    tmp_path: Path,
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(tmp_path), "crashy", "-1"],
        stdout=subprocess.PIPE,
        env=subprocess_env(),
        text=True,
    )
    assert child.stdout is not None
    acknowledged = [child.stdout.readline().strip() for _ in range(150)]
    child.send_signal(signal.SIGKILL)  # mid-stream: it is appending as fast as it can
    child.wait(timeout=30)
    acknowledged += child.stdout.read().split()  # ids it printed before it died

    segment = next((tmp_path / "crashy").glob("*.jsonl"))
    data = segment.read_bytes()
    if data.endswith(b"\n"):
        # The kill fell between two writes. Leave what a kill inside write() leaves: the
        # first part of a record, no newline (one os.write per line makes this rare).
        last_line = data.splitlines()[-1]
        with segment.open("ab") as handle:
            handle.write(last_line[: len(last_line) // 2])

    scan = LedgerReader(tmp_path).scan()
    ids = {r.id for r in scan.records}
    assert set(acknowledged) <= ids
    assert len(ids - set(acknowledged)) <= 1  # at most the one it wrote but never printed
    assert scan.bad_lines == 1

    # The restarted writer (same id) ends the torn line first, so its record stays whole.
    restarted = make_ledger(tmp_path, "crashy")
    after_restart = add(restarted, 1)
    rescan = LedgerReader(tmp_path).scan()
    assert after_restart.id in {r.id for r in rescan.records}
    assert set(acknowledged) <= {r.id for r in rescan.records}
    assert rescan.bad_lines == 1


# -- bad data ----------------------------------------------------------------------------


def valid_line(record_id: str, **overrides) -> bytes:
    obj = {
        "id": record_id,
        "created_at": "2025-03-01T10:00:00Z",
        "schema_version": 1,
        "kind": "correction",
        "messages": QUESTION,
        "completion": "Berlin.",
        "correction": "Paris.",
        "model": "ouro@v2",
        **overrides,
    }
    return json.dumps(obj).encode() + b"\n"


def test_reader_skips_and_counts_bad_lines_without_failing(tmp_path: Path) -> None:
    segment = tmp_path / "w1" / "2025-03-01.jsonl"
    segment.parent.mkdir(parents=True)
    bad = [
        b"not json at all\n",
        b"[1, 2, 3]\n",
        valid_line("fb-future", schema_version=2),
        valid_line("fb-bool-version", schema_version=True),
        valid_line("fb-string-version", schema_version="1"),
        b'{"id": "fb-no-version", "completion": "x"}\n',
        valid_line("fb-missing-fields", messages="not a list"),
        valid_line("fb-bad-kind", kind="praise"),
        valid_line("fb-correction-with-rating", rating="up"),
        valid_line("fb-correction-without-correction", correction=None),
        valid_line("fb-rating-with-correction", kind="rating", rating="down"),
        valid_line("fb-rating-without-verdict", kind="rating", correction=None),
        valid_line("fb-rating-bad-verdict", kind="rating", correction=None, rating="meh"),
        b"\xff\xfe invalid utf-8 \xff\n",
    ]
    segment.write_bytes(
        valid_line("fb-good-1")
        + b"".join(bad)
        + b"\n"  # a blank line is not a record and not an error
        + valid_line("fb-good-2")
        + valid_line("fb-rating", kind="rating", correction=None, rating="up")
        + valid_line("fb-torn")[:40]  # the torn last line of a crashed writer
    )

    scan = LedgerReader(tmp_path).scan()
    assert [r.id for r in scan.records] == ["fb-good-1", "fb-good-2", "fb-rating"]
    assert [r.id for r in scan.corrections] == ["fb-good-1", "fb-good-2"]
    assert scan.bad_lines == len(bad) + 1


def test_empty_segments_stray_files_and_a_missing_directory_read_as_empty(
    tmp_path: Path,
) -> None:
    assert LedgerReader(tmp_path / "never-created").scan().records == []
    (tmp_path / "w1").mkdir()
    (tmp_path / "w1" / "2025-03-01.jsonl").touch()
    (tmp_path / "w2").mkdir()
    (tmp_path / "README.txt").write_text("not a writer")
    (tmp_path / "w1" / "notes.txt").write_text("not a segment")
    (tmp_path / "w1" / "2025-02-30.jsonl").write_bytes(valid_line("fb-impossible-date"))
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "2025-03-01.jsonl").write_bytes(valid_line("fb-hidden"))

    scan = LedgerReader(tmp_path).scan()
    assert scan.records == [] and scan.bad_lines == 0 and scan.duplicates == 0


def test_records_are_deduplicated_by_id_across_segments(tmp_path: Path) -> None:
    for writer in ("w1", "w2"):
        (tmp_path / writer).mkdir()
        (tmp_path / writer / "2025-03-01.jsonl").write_bytes(
            valid_line("fb-copied") + valid_line(f"fb-own-{writer}")
        )
    scan = LedgerReader(tmp_path).scan()
    assert sorted(r.id for r in scan.records) == ["fb-copied", "fb-own-w1", "fb-own-w2"]
    assert scan.duplicates == 1


# -- the directory -----------------------------------------------------------------------


def test_a_missing_directory_is_created(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "feedback"
    add(make_ledger(target))
    assert (target / "writer-a").is_dir()
    assert not list((target / "writer-a").glob(".write-probe*"))


def test_a_directory_that_cannot_be_created_fails_at_construction(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    with pytest.raises(LedgerUnavailableError, match="cannot be written"):
        make_ledger(blocker / "feedback")
    with pytest.raises(LedgerUnavailableError):
        make_ledger(blocker)  # the "directory" is itself a regular file


def _can_create_in(directory: Path) -> bool:
    probe = directory / "probe"
    try:
        probe.touch()
    except PermissionError:
        return False
    probe.unlink()
    return True


@contextmanager
def read_only_directory(directory: Path) -> Iterator[None]:
    """Make ``directory`` refuse new entries, even to root.

    Mode 0555 is enough for other users; root (CAP_DAC_OVERRIDE) ignores it, so there the
    immutable attribute (chattr +i, ext4 and similar) is used instead; skip where neither works.
    """
    directory.chmod(0o555)
    immutable = False
    try:
        if _can_create_in(directory):
            chattr = shutil.which("chattr")
            if chattr is None:
                pytest.skip("root ignores mode 0555 and chattr is not installed")
            immutable = subprocess.run([chattr, "+i", str(directory)]).returncode == 0
            if not immutable or _can_create_in(directory):
                pytest.skip("root ignores mode 0555 and this file system has no immutable flag")
        yield
    finally:
        if immutable:
            subprocess.run([shutil.which("chattr") or "chattr", "-i", str(directory)], check=True)
        directory.chmod(0o755)


@pytest.mark.parametrize("frozen", ["ledger root", "writer directory"])
def test_a_read_only_directory_fails_at_construction(tmp_path: Path, frozen: str) -> None:
    root = tmp_path / "feedback"
    (root / "writer-a").mkdir(parents=True)
    if frozen == "ledger root":
        with read_only_directory(root):
            with pytest.raises(LedgerUnavailableError, match="cannot be written"):
                make_ledger(root, "writer-new")  # its folder cannot be made
            add(make_ledger(root, "writer-a"))  # a writer whose folder exists still can write
    else:
        with read_only_directory(root / "writer-a"):
            with pytest.raises(LedgerUnavailableError, match="cannot be written"):
                make_ledger(root, "writer-a")


def test_invalid_writer_ids_are_refused(tmp_path: Path) -> None:
    for writer_id in ("", "../escape", "a/b", ".hidden", "x" * 200):
        with pytest.raises(ValueError, match="writer id"):
            make_ledger(tmp_path, writer_id)


# -- validation and limits ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "error", "param"),
    [
        ({"messages": []}, InvalidFeedbackError, "messages"),
        ({"messages": [{"role": "user"}]}, InvalidFeedbackError, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, InvalidFeedbackError, "messages"),
        (
            {"messages": [*QUESTION, {"role": "assistant", "content": "Berlin."}]},
            InvalidFeedbackError,
            "messages",
        ),
        ({"correction": ""}, InvalidFeedbackError, "correction"),
        ({"correction": "  \n "}, InvalidFeedbackError, "correction"),
        ({"correction": " Berlin. "}, InvalidFeedbackError, "correction"),
        ({"correction": None}, InvalidFeedbackError, "correction"),
        ({"completion": 42}, InvalidFeedbackError, "completion"),
        ({"reason": "bad \ud800 surrogate"}, InvalidFeedbackError, "reason"),
        ({"correction": "x" * 4001}, FeedbackTooLargeError, "correction"),
        ({"completion": "y" * 4001}, FeedbackTooLargeError, "completion"),
        ({"reason": "z" * 4001}, FeedbackTooLargeError, "reason"),
        (
            {"messages": [{"role": "user", "content": "q" * 4001}]},
            FeedbackTooLargeError,
            "messages[0].content",
        ),
        (
            {"messages": [{"role": "user", "content": "q" * 3000}] * 30},
            FeedbackTooLargeError,
            None,
        ),
    ],
)
def test_bad_feedback_is_refused_with_a_typed_error_and_nothing_written(
    tmp_path: Path, fields: dict, error: type[Exception], param: str | None
) -> None:
    ledger = make_ledger(tmp_path)
    with pytest.raises(error) as raised:
        add(ledger, **fields)
    assert raised.value.param == param
    assert ledger.scan().records == []


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"correction": "Paris."}, "correction"),
        ({"correction": ""}, "correction"),
        ({"rating": None}, "rating"),
        ({"rating": "meh"}, "rating"),
        ({"rating": ["up"]}, "rating"),
        ({"kind": "correction"}, "rating"),  # a correction with a verdict and no text
        ({"kind": "retraction"}, "kind"),
        ({"messages": [*QUESTION, {"role": "assistant", "content": "Berlin."}]}, "messages"),
        ({"completion": None}, "completion"),
    ],
)
def test_bad_ratings_are_refused_with_a_typed_error_and_nothing_written(
    tmp_path: Path, fields: dict, param: str
) -> None:
    ledger = make_ledger(tmp_path)
    with pytest.raises(InvalidFeedbackError) as raised:
        rate(ledger, **fields)
    assert raised.value.param == param
    assert ledger.scan().records == []


def test_a_record_at_the_size_limit_is_accepted(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path, max_record_bytes=2_000)
    record = add(ledger, correction="é" * 200)  # characters, not bytes, count for fields
    assert ledger.scan().records == [record]


# -- watermarks ---------------------------------------------------------------------------


def test_watermark_round_trips_through_its_text_form() -> None:
    mark = Watermark(
        floor=dt.date(2025, 3, 1),
        positions=(
            ("replica-a", SegmentPosition(dt.date(2025, 3, 2), 5120)),
            ("replica.b_1", SegmentPosition(dt.date(2025, 3, 1), 0)),
        ),
    )
    text = mark.encode()
    assert text == "1;20250301;replica-a=20250302:5120;replica.b_1=20250301:0"
    assert Watermark.decode(text) == mark


def test_watermark_with_many_writers_is_compressed_and_round_trips() -> None:
    mark = Watermark(
        floor=dt.date(2025, 3, 1),
        positions=tuple(
            (f"ouro-llmserver-replica-{n:04d}", SegmentPosition(dt.date(2025, 3, 2), 10_000 + n))
            for n in range(200)
        ),
    )
    text = mark.encode()
    assert text.startswith("1z;")
    assert len(text) < 2_000  # well inside an MLflow tag, for 200 active writers
    assert Watermark.decode(text) == mark


@pytest.mark.parametrize(
    "text", ["", "garbage", "2;20250301", "1;2025-03-01", "1;20250301;w=20250301", "1z;!!!"]
)
def test_malformed_watermarks_raise_a_typed_error(text: str) -> None:
    with pytest.raises(InvalidWatermarkError):
        Watermark.decode(text)


def test_scan_after_a_watermark_returns_exactly_what_came_later(tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime(2025, 3, 10, 23, 0, tzinfo=dt.UTC))
    first = make_ledger(tmp_path, "replica-a", clock=clock)
    before = [add(first, n) for n in range(5)]

    mark = Watermark.decode(first.scan().watermark.encode())
    assert first.scan(after=mark).records == []

    later = [add(first, n) for n in range(5, 8)]  # same segment, after the offset
    second = make_ledger(tmp_path, "replica-b", clock=clock)
    later.append(add(second, 100))  # a writer the watermark has never seen
    clock.now += dt.timedelta(hours=2)  # the next UTC day: new segments
    later.append(add(first, 8))
    later.append(add(second, 101))

    after = first.scan(after=mark)
    assert sorted(r.id for r in after.records) == sorted(r.id for r in later)
    assert first.scan(after=after.watermark).records == []
    assert len(first.scan().records) == len(before) + len(later)


def test_watermark_lists_only_recent_writers_and_still_skips_the_old_ones(
    tmp_path: Path,
) -> None:
    clock = FakeClock(dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC))
    for n in range(20):  # writers that came and went (e.g. replaced replicas)
        add(make_ledger(tmp_path, f"old-replica-{n}", clock=clock), n)
    clock.now = dt.datetime(2025, 3, 20, 12, 0, tzinfo=dt.UTC)
    active = make_ledger(tmp_path, "replica-now", clock=clock)
    add(active, 1)

    mark = active.scan().watermark
    assert [writer for writer, _ in mark.positions] == ["replica-now"]
    assert mark.floor == dt.date(2025, 3, 19)
    add(active, 2)
    assert [r.correction for r in active.scan(after=mark).records] == ["Paris. (2)"]


def test_a_torn_line_before_the_watermark_is_read_once_it_is_complete(tmp_path: Path) -> None:
    segment = tmp_path / "w1" / "2025-03-01.jsonl"
    segment.parent.mkdir()
    whole = valid_line("fb-late")
    segment.write_bytes(valid_line("fb-early") + whole[:30])
    reader = LedgerReader(tmp_path, clock=FakeClock(dt.datetime(2025, 3, 1, tzinfo=dt.UTC)))
    first = reader.scan()
    assert [r.id for r in first.records] == ["fb-early"] and first.bad_lines == 1

    with segment.open("ab") as handle:  # the writer finishes the line it was writing
        handle.write(whole[30:])
    assert [r.id for r in reader.scan(after=first.watermark).records] == ["fb-late"]


def test_stats_count_totals_models_news_and_bad_lines(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    add(ledger, 1, model="ouro@v1")
    add(ledger, 2, model="ouro@v1")
    add(ledger, 3, model=None)
    mark = ledger.scan().watermark
    add(ledger, 4, model="ouro-base")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "2025-01-01.jsonl").write_bytes(b"{torn")

    rate(ledger, "down", model="ouro@v1")
    rate(ledger, "down", model="ouro@v1")
    rate(ledger, "up", model=None)

    stats = ledger.stats(since=mark)
    assert stats.total == 4  # corrections: the ratings are counted apart
    assert stats.by_model == {"ouro-base": 1, "ouro@v1": 2, "unknown": 1}
    assert stats.since_last_training == 1
    assert stats.bad_lines == 1
    assert stats.ratings == {"up": 1, "down": 2}
    assert stats.ratings_by_model == {
        "ouro@v1": {"up": 0, "down": 2},
        "unknown": {"up": 1, "down": 0},
    }
    assert ledger.stats().since_last_training == 4
    assert ledger.count_since(mark) == 1 and ledger.count_since(None) == 4
