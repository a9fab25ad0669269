"""``make demo`` (loadtests.bench_heal): its data, typed as a user would type it."""

from __future__ import annotations

from pathlib import Path

from loadtests.bench_heal import FIXTURE, dailydialog_openers, load_fixture, seed, share
from ouro.ledger import LedgerReader

DIALOGUES = [
    "Say , Jim , how about going for a few beers after dinner ? __eou__ "
    "You know that is tempting but is really not good for our fitness . __eou__",
    "Can you do push-ups ? __eou__ Of course I can . It's a piece of cake ! __eou__",
    "Hi ! __eou__ Hello . __eou__",  # too short to be a correction worth learning
    "I can ' t find my keys anywhere . __eou__ Did you look in the car ? __eou__",
]


def test_corrections_are_dailydialog_openings_without_its_tokenised_spacing(
    tmp_path: Path,
) -> None:
    source = tmp_path / "dialogues_validation.txt"
    source.write_text("\n".join(DIALOGUES) + "\n", encoding="utf-8")

    pairs = dailydialog_openers(source, count=10, seed=0)

    assert sorted(pairs) == sorted(
        [
            (
                "Say, Jim, how about going for a few beers after dinner?",
                "You know that is tempting but is really not good for our fitness.",
            ),
            ("Can you do push-ups?", "Of course I can. It's a piece of cake!"),
            ("I can't find my keys anywhere.", "Did you look in the car?"),
        ]
    )
    assert dailydialog_openers(source, count=2, seed=0) == pairs[:2]


def test_the_evaluation_fixture_has_what_the_benchmark_asks() -> None:
    items = load_fixture(FIXTURE)
    assert len(items) >= 30
    for item in items:
        assert {"question", "correction", "key_fact", "paraphrase", "near_miss"} <= set(item)


def test_seeded_corrections_are_in_the_ledger(tmp_path: Path) -> None:
    seed(tmp_path, [("Who made you?", "The Ouro team made me.")], "bench")
    records = list(LedgerReader(tmp_path).scan().records)
    assert [r.correction for r in records] == ["The Ouro team made me."]
    assert share([True, False, True, True]) == 0.75 and share([]) is None
