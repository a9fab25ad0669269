"""``make demo`` (loadtests.bench_heal): its data, typed as a user would type it."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.bench_heal import (
    FIXTURE,
    dailydialog_openers,
    load_fixture,
    router_ceiling,
    seed,
    share,
)
from ouro.embedding import SentenceEmbedder
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


def test_the_router_ceiling_is_the_best_boundary_on_the_items_themselves(
    sentence_embedder: SentenceEmbedder,
) -> None:
    items = [
        {"question": "What is 12 times 7?", "paraphrase": "How much is 12 multiplied by 7?",
         "near_miss": "What is 12 times 8?"},
        {"question": "When does the library open?", "paraphrase": "What time does the library "
         "open its doors?", "near_miss": "When does the library close?"},
    ]  # fmt: skip
    ceiling = router_ceiling(sentence_embedder, items, ["Do you like jazz?", "Nice weather!"])
    assert set(ceiling) == {"near_miss_0.10", "near_miss_0.20", "near_miss_0.30"}
    strict = ceiling["near_miss_0.10"]
    # Two items: a tenth of the near-misses means none.
    assert strict["near_misses_routed"] == 0.0
    assert strict["paraphrases_routed"] == pytest.approx(1.0)
    assert len(strict["boundary"]) == 2
