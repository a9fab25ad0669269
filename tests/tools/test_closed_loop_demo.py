"""``make demo``'s corrections: DailyDialog openings, typed as a user would type them."""

from __future__ import annotations

from pathlib import Path

from tools.closed_loop_demo import correction_pairs

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

    pairs = correction_pairs(source, count=10, seed=0)

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
    assert correction_pairs(source, count=2, seed=0) == pairs[:2]
