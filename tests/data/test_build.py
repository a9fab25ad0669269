"""The whole build: cleaning, dropping, dedup, group splits and the leakage check."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from data import load_chat_jsonl, read_chat_jsonl
from data.build import STATS_JSON, STATS_MARKDOWN, BuildConfig, build_dataset
from data.dedup import conversation_key
from data.errors import DataError
from data.leakage import check_leakage
from data.records import Conversation
from data.splitting import SPLITS, SplitFractions, split_of
from data.stats import BuildReport

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_sources(folder: Path) -> dict[str, Path]:
    """Small raw inputs with a duplicate, an empty turn and a one-sided dialogue."""
    dialogues = [
        "Say , Jim , how about a walk ? __eou__ Sounds great . __eou__",
        "SAY, jim, how about a walk?? __eou__ sounds great! __eou__",  # duplicate after normalising
        "Only one utterance here . __eou__",  # one-sided
        "Do you like tea ? __eou__ Yes , I do n't mind it . __eou__ OK . __eou__",
    ] + [f"Question number {n} ? __eou__ Answer number {n} . __eou__" for n in range(40)]
    dailydialog = folder / "dialogues_train.txt"
    dailydialog.write_text("\n".join(dialogues) + "\n", encoding="utf-8")
    intents = folder / "intents.json"
    intents.write_text(
        json.dumps(
            {
                "intents": [
                    {"tag": f"tag{n}", "patterns": [f"pattern {n}a", f"pattern {n}b", "OK."],
                     "responses": [f"response {n}x", f"response {n}y"]}
                    for n in range(20)
                ]
                + [{"tag": "no-response", "patterns": [""], "responses": ["Please go on."]}]
            }
        ),
        encoding="utf-8",
    )  # fmt: skip
    chat = folder / "chat.txt"
    chat.write_text(
        "Human 1: Hi!\nHuman 2: Hey, what's up?\nHuman 1: history homework\n"
        "Human 1: Hello\nHuman 2: Hi, how are you?\nHuman 1: fine\n",
        encoding="utf-8",
    )
    return {"dailydialog": dailydialog, "intents": intents, "human_chat": chat}


@pytest.fixture
def small_build(tmp_path: Path) -> tuple[Path, BuildReport]:
    sources = write_sources(tmp_path)
    out = tmp_path / "out"
    report = build_dataset(BuildConfig(out_dir=out, seed=7, **sources))
    return out, report


def all_records(out: Path) -> dict[str, list[Conversation]]:
    return {split: read_chat_jsonl(out / f"{split}.jsonl") for split in SPLITS}


def test_small_build_counts_drops_and_duplicates(small_build: tuple[Path, BuildReport]) -> None:
    out, report = small_build
    dailydialog = report.sources["dailydialog"]
    assert dailydialog.read == 44
    assert dailydialog.duplicates == 1
    assert dailydialog.dropped_one_sided == 1
    assert dailydialog.kept == 42
    assert report.sources["intents"].dropped_empty == 1  # the empty pattern
    assert report.sources["intents"].kept == 20 * 3 * 2
    assert report.sources["human_chat"].kept == 2
    records = [c for items in all_records(out).values() for c in items]
    assert len(records) == sum(source.kept for source in report.sources.values())
    assert sum(split.conversations for split in report.splits.values()) == len(records)
    texts = {m["content"] for c in records for m in c.messages}
    assert "Yes, I don't mind it." in texts  # cleaned on the way
    assert len({conversation_key(c.messages) for c in records}) == len(records)  # no duplicates


def test_every_record_alternates_user_first(small_build: tuple[Path, BuildReport]) -> None:
    out, _report = small_build
    for items in all_records(out).values():
        for conversation in items:
            roles = [m["role"] for m in conversation.messages]
            assert roles == ["user" if i % 2 == 0 else "assistant" for i in range(len(roles))]
            assert conversation.source and conversation.group


def test_no_group_or_intent_in_two_splits(small_build: tuple[Path, BuildReport]) -> None:
    out, report = small_build
    splits_of_group: dict[str, set[str]] = defaultdict(set)
    for split, items in all_records(out).items():
        for conversation in items:
            splits_of_group[conversation.group].add(split)
    assert all(len(splits) == 1 for splits in splits_of_group.values())
    intent_groups = [group for group in splits_of_group if group.startswith("intents:")]
    assert len(intent_groups) == 20
    assert len({next(iter(splits_of_group[g])) for g in intent_groups}) > 1  # spread over splits
    leakage = report.leakage
    assert leakage.leak_free
    assert set(leakage.shared_conversations.values()) == {0}
    assert set(leakage.shared_intents.values()) == {0}
    assert set(leakage.shared_groups.values()) == {0}
    # "OK." is a pattern of every intent: shared between splits, reported, not a leak
    assert any(turn.text == "OK." for turn in leakage.short_turn_examples)
    assert leakage.shared_turns_short >= 1


def test_leakage_check_catches_a_shared_conversation() -> None:
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello"}]
    splits = {
        "train": [Conversation(messages, "dailydialog", "dailydialog:train:1"),
                  Conversation(messages[:1] + [{"role": "assistant", "content": "x"}],
                               "intents", "intents:greet")],
        "validation": [Conversation([{"role": "user", "content": "hi, THERE!"}, messages[1]],
                                    "dailydialog", "dailydialog:train:2"),
                       Conversation(messages, "intents", "intents:greet")],
        "test": [],
    }  # fmt: skip
    check = check_leakage(splits)
    assert not check.leak_free
    assert check.shared_conversations["train&validation"] == 1
    assert check.shared_intents["train&validation"] == 1
    assert check.shared_groups["train&validation"] == 1
    assert check.shared_conversations["train&test"] == 0


# DailyDialog's own train file holds this dialogue twice, its turns cut differently.
HOUSE_TOUR = [
    "Come on in.Let me show you the house.Isn ' t it something ? Spacious , bright and "
    "clean.And the walls were newly painted.Have you ever seen such a nice house ? __eou__ "
    "Not really . __eou__ This is the kitchen.Every - thing's new . __eou__ It's great ! __eou__",
    "Come on in.Let me show you the house.Isn ' t it something ? __eou__ Spacious , bright "
    "and clean.And the walls were newly painted . __eou__ Have you ever seen such a nice house "
    "? __eou__ Not really . __eou__ This is the kitchen.Every - thing's new . __eou__ It's "
    "great ! __eou__",
]


def test_a_dialogue_cut_into_turns_differently_is_kept_once(tmp_path: Path) -> None:
    raw = tmp_path / "dialogues_train.txt"
    others = [f"Question number {n} ? __eou__ Answer number {n} . __eou__" for n in range(30)]
    raw.write_text("\n".join([HOUSE_TOUR[0], *others, HOUSE_TOUR[1]]) + "\n", encoding="utf-8")
    report = build_dataset(BuildConfig(out_dir=tmp_path / "out", dailydialog=raw))
    assert report.sources["dailydialog"].duplicates == 1
    houses = [
        (split, conversation)
        for split, items in all_records(tmp_path / "out").items()
        for conversation in items
        if "show you the house" in conversation.messages[0]["content"]
    ]
    assert len(houses) == 1
    ((_split, kept),) = houses
    assert len(kept.messages) == 4  # the first copy, with its own turns
    assert report.leakage.leak_free


def test_build_is_deterministic_and_seeded(tmp_path: Path) -> None:
    sources = write_sources(tmp_path)
    outputs = []
    for seed, name in ((1, "a"), (1, "b"), (2, "c")):
        build_dataset(BuildConfig(out_dir=tmp_path / name, seed=seed, **sources))
        outputs.append([(tmp_path / name / f"{s}.jsonl").read_bytes() for s in SPLITS])
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_split_of_follows_the_fractions() -> None:
    groups = [f"group-{n}" for n in range(4000)]
    fractions = SplitFractions(train=0.5, validation=0.3, test=0.2)
    counts = {split: 0 for split in SPLITS}
    for group in groups:
        counts[split_of(group, fractions, seed=0)] += 1
    assert abs(counts["train"] / 4000 - 0.5) < 0.03
    assert abs(counts["validation"] / 4000 - 0.3) < 0.03
    assert all(split_of(g, SplitFractions(1.0, 0.0, 0.0), 3) == "train" for g in groups[:50])


@pytest.mark.parametrize("values", [(0.5, 0.5, 0.5), (1.2, -0.1, -0.1), (0.8, 0.1, 0.0)])
def test_bad_fractions_are_refused(values: tuple[float, float, float]) -> None:
    with pytest.raises(DataError):
        SplitFractions(*values)


def test_build_needs_a_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="at least one source"):
        build_dataset(BuildConfig(out_dir=tmp_path))


def test_report_files_are_written(small_build: tuple[Path, BuildReport]) -> None:
    out, report = small_build
    assert BuildReport.model_validate_json((out / STATS_JSON).read_text()) == report
    markdown = (out / STATS_MARKDOWN).read_text()
    assert "Leak free: yes" in markdown and "| train&validation | 0 | 0 | 0 |" in markdown


def test_command_line_build(tmp_path: Path) -> None:
    sources = write_sources(tmp_path)
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "data", "build", "--dailydialog", str(sources["dailydialog"]),
         "--intents", str(sources["intents"]), "--human-chat", str(sources["human_chat"]),
         "--out", str(out), "--validation-fraction", "0.2", "--test-fraction", "0.2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Leak free: yes" in result.stdout
    report = BuildReport.model_validate_json((out / STATS_JSON).read_text())
    assert report.fractions == {"train": 0.6, "validation": 0.2, "test": 0.2}
    assert all(load_chat_jsonl(out / f"{split}.jsonl") for split in SPLITS)


def test_command_line_refuses_bad_input(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "data", "build", "--intents", str(tmp_path / "missing.json"),
         "--out", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "intents file not found" in result.stderr


def test_real_build_is_leak_free_and_complete(real_build: tuple[Path, BuildReport]) -> None:
    out, report = real_build
    records = all_records(out)
    assert report.leakage.leak_free
    for counts in (report.leakage.shared_conversations, report.leakage.shared_intents):
        assert set(counts.values()) == {0}
    # independent re-check on the files: no conversation text and no group in two splits
    keys = {
        split: {conversation_key(c.messages) for c in items} for split, items in records.items()
    }
    groups = {split: {c.group for c in items} for split, items in records.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not keys[a] & keys[b]
        assert not groups[a] & groups[b]
    intents = {split: {g for g in groups[split] if g.startswith("intents:")} for split in SPLITS}
    assert sum(len(tags) for tags in intents.values()) == len(set().union(*intents.values()))
    for name, source in report.sources.items():
        dropped = source.dropped_empty + source.dropped_one_sided + source.dropped_not_alternating
        assert source.kept == source.read - dropped - source.duplicates, name
        assert source.dropped_not_alternating == 0
    house = [
        split
        for split, items in records.items()
        for c in items
        if "Let me show you the house" in c.messages[0]["content"]
    ]
    assert len(house) == 1, house  # two copies in DailyDialog, cut differently: kept once
    assert report.sources["intents"].read == 661
    assert report.sources["dailydialog"].reader["dialogues"] == 12118
    assert all(report.splits[split].conversations > 0 for split in SPLITS)


def test_real_build_keeps_dailydialog_turn_counts(
    real_build: tuple[Path, BuildReport], real_datasets: Path
) -> None:
    out, _report = real_build
    raw = {
        split: (real_datasets / "dailydialog" / f"dialogues_{split}.txt")
        .read_text(encoding="utf-8")
        .splitlines()
        for split in ("train", "validation")
    }
    checked = 0
    for items in all_records(out).values():
        for conversation in items:
            if conversation.source != "dailydialog":
                continue
            _source, split, line = conversation.group.split(":")
            assert len(conversation.messages) == raw[split][int(line) - 1].count("__eou__")
            roles = [m["role"] for m in conversation.messages]
            assert roles == ["user" if i % 2 == 0 else "assistant" for i in range(len(roles))]
            checked += 1
    assert checked == _report.sources["dailydialog"].kept
