"""Ledger control records on real files: tombstones every reader honours, share marks."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest

from ouro.ledger import CONTROL_DIR, FeedbackLedger, InvalidFeedbackError, LedgerReader
from tests.ouro.test_ledger import FakeClock, add, make_ledger

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def digests(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*.jsonl"))
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> FeedbackLedger:
    return make_ledger(tmp_path / "ledger", clock=clock)


def test_records_carry_scope_and_admin(ledger: FeedbackLedger) -> None:
    add(ledger, 1, scope="alice/u1")
    add(ledger, 2, admin=True)
    records = LedgerReader(ledger.directory).scan().records
    # Written in the same instant: compare without relying on the order they are read in.
    assert sorted((r.scope or "", r.admin) for r in records) == [("", True), ("alice/u1", False)]
    with pytest.raises(InvalidFeedbackError) as raised:
        add(ledger, 3, scope="alice/../bob")
    assert raised.value.param == "scope"


def test_tombstone_hides_the_scope_and_its_users_from_every_read_without_rewriting(
    ledger: FeedbackLedger, clock: FakeClock
) -> None:
    add(ledger, 1, scope="alice")
    add(ledger, 2, scope="alice/u1")
    add(ledger, 3, scope="alice2")
    add(ledger, 4, scope="bob")
    watermark = LedgerReader(ledger.directory).scan().watermark
    clock.now = T0 + dt.timedelta(seconds=1)
    add(ledger, 5, scope="alice/u2")  # after the watermark, before the tombstone
    files_before = digests(ledger.directory)

    clock.now = T0 + dt.timedelta(seconds=2)
    tomb = ledger.append_control("forget", scope="alice", reason="user asked")
    assert tomb.id.startswith("ctl-")

    # Segments already written are byte-for-byte the same: the tombstone is a new line elsewhere.
    after = digests(ledger.directory)
    assert {k: v for k, v in after.items() if not k.startswith(CONTROL_DIR)} == files_before
    assert any(k.startswith(CONTROL_DIR) for k in after)

    reader = LedgerReader(ledger.directory)
    whole = reader.scan()
    assert sorted(r.scope for r in whole.records) == ["alice2", "bob"]
    assert whole.forgotten == 3
    assert [r.scope for r in reader.scan(after=watermark).records] == []  # incremental too
    assert reader.stats().total == 2

    # New corrections after the tombstone are new data of the scope, not forgotten ones.
    clock.now = T0 + dt.timedelta(seconds=3)
    add(ledger, 6, scope="alice")
    assert sorted(r.scope for r in reader.scan().records) == ["alice", "alice2", "bob"]


def test_tombstone_of_a_user_scope_leaves_the_key_scope(ledger: FeedbackLedger, clock) -> None:
    add(ledger, 1, scope="alice")
    add(ledger, 2, scope="alice/u1")
    clock.now = T0 + dt.timedelta(seconds=1)
    ledger.append_control("forget", scope="alice/u1")
    assert [r.scope for r in LedgerReader(ledger.directory).scan().records] == ["alice"]


def test_other_writers_and_readers_see_the_tombstone(tmp_path: Path, clock) -> None:
    directory = tmp_path / "ledger"
    replica = make_ledger(directory, "replica-a", clock=clock)
    add(replica, 1, scope="alice")
    clock.now = T0 + dt.timedelta(seconds=1)
    make_ledger(directory, "forget-cli", clock=clock).append_control("forget", scope="alice")
    assert replica.scan().records == []
    assert LedgerReader(directory).scan().records == []


def test_bad_control_lines_are_skipped_and_counted(ledger: FeedbackLedger, clock) -> None:
    add(ledger, 1, scope="alice")
    clock.now = T0 + dt.timedelta(seconds=1)
    ledger.append_control("forget", scope="alice")
    segment = next((ledger.directory / CONTROL_DIR).rglob("*.jsonl"))
    with segment.open("ab") as handle:
        handle.write(b'{"not": "a record"}\n{"id": "ctl-x", "kind": "forget", "sch')
    scan = LedgerReader(ledger.directory).scan()
    assert scan.records == [] and scan.bad_lines == 2


def test_share_marks_and_their_checks(ledger: FeedbackLedger) -> None:
    record = add(ledger, 1, scope="alice")
    ledger.append_control("share", record_id=record.id)
    assert ledger.control().shared_ids == {record.id}
    with pytest.raises(InvalidFeedbackError):
        ledger.append_control("share", record_id="../etc")
    with pytest.raises(InvalidFeedbackError):
        ledger.append_control("forget", scope=None)
    with pytest.raises(InvalidFeedbackError):
        ledger.append_control("forget", scope="alice/../x")
