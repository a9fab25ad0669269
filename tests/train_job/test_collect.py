"""Collecting corrections: dedup, unusable records skipped, "new" measured from the watermark,
ratings never trained on."""

from __future__ import annotations

from pathlib import Path

from ouro.ledger import FeedbackLedger, LedgerReader
from ouro.registry import TAG_WATERMARK, AdapterVersion, RegistrySnapshot
from tests.fixtures.train_job import CORRECTION_PAIRS, seed_ledger, seed_ratings
from train_job.collect import collect, usable_corrections


def snapshot_with(versions: dict[int, dict[str, str]]) -> RegistrySnapshot:
    return RegistrySnapshot(
        "ouro-adapter",
        {},
        {n: AdapterVersion(version=n, source=f"s{n}", tags=tags) for n, tags in versions.items()},
    )


def test_everything_is_new_without_a_registered_version(tmp_path: Path) -> None:
    records = seed_ledger(tmp_path, CORRECTION_PAIRS[:5])
    collected = collect(tmp_path, snapshot_with({}))
    assert [c.id for c in collected.corrections] == [r.id for r in records]
    assert collected.new == 5
    assert collected.since is None and collected.since_version is None
    assert collected.corrections[0].correction == CORRECTION_PAIRS[0][1]
    assert collected.corrections[0].messages == (
        {"role": "user", "content": CORRECTION_PAIRS[0][0]},
    )


def test_new_counts_only_what_came_after_the_newest_trained_version(tmp_path: Path) -> None:
    seed_ledger(tmp_path, CORRECTION_PAIRS[:5])
    watermark = LedgerReader(tmp_path).scan().watermark.encode()
    seed_ledger(tmp_path, CORRECTION_PAIRS[5:8], writer_id="other-writer")
    snapshot = snapshot_with(
        {1: {TAG_WATERMARK: "1;20000101"}, 2: {TAG_WATERMARK: watermark}, 3: {}}
    )

    assert snapshot.last_trained().version == 2  # v3 has no watermark: its cycle did not finish
    collected = collect(tmp_path, snapshot)
    assert len(collected.corrections) == 8  # trains on everything
    assert collected.new == 3
    assert collected.since_version == 2


def test_nothing_new_after_the_watermark(tmp_path: Path) -> None:
    seed_ledger(tmp_path, CORRECTION_PAIRS[:3])
    watermark = LedgerReader(tmp_path).scan().watermark.encode()
    collected = collect(tmp_path, snapshot_with({4: {TAG_WATERMARK: watermark}}))
    assert collected.new == 0 and len(collected.corrections) == 3


def test_duplicates_and_unusable_records_are_skipped(tmp_path: Path) -> None:
    question = [{"role": "user", "content": "What is 2+2?"}]
    ledger = FeedbackLedger(tmp_path, "w", max_record_bytes=100_000, max_field_chars=10_000)
    ledger.append(messages=question, completion="5", correction="4")
    ledger.append(messages=question, completion="five", correction="4")  # same lesson again
    ledger.append(messages=question, completion="4", correction="Four.")  # contradicts: kept
    ledger.append(messages=question, completion="x", rating="down", kind="rating")
    ledger.close()
    (tmp_path / "w" / "2000-01-01.jsonl").write_text("{torn", encoding="utf-8")

    scan = LedgerReader(tmp_path).scan()
    corrections, skipped = usable_corrections(scan.records)
    assert [c.correction for c in corrections] == ["4", "Four."]
    assert skipped == 2  # the repeat, and the rating (not a correction)
    collected = collect(tmp_path, snapshot_with({}))
    assert collected.bad_lines == 1
    assert collected.skipped == 1  # collect reads corrections only: the repeat


def test_ratings_never_train_nor_count_as_new(tmp_path: Path) -> None:
    seed_ledger(tmp_path, CORRECTION_PAIRS[:3])
    seed_ratings(tmp_path, CORRECTION_PAIRS[3:6], rating="down")
    watermark = LedgerReader(tmp_path).scan().watermark.encode()
    seed_ratings(tmp_path, CORRECTION_PAIRS[:4], rating="up", writer_id="later-rater")

    everything = collect(tmp_path, snapshot_with({}))
    assert [c.correction for c in everything.corrections] == [a for _, a in CORRECTION_PAIRS[:3]]
    assert everything.new == 3 and everything.skipped == 0
    after = collect(tmp_path, snapshot_with({1: {TAG_WATERMARK: watermark}}))
    assert len(after.corrections) == 3 and after.new == 0 and after.new_ids == frozenset()


def test_a_missing_ledger_is_empty(tmp_path: Path) -> None:
    collected = collect(tmp_path / "nothing-here", snapshot_with({}))
    assert collected.corrections == [] and collected.new == 0
