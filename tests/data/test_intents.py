"""Intents JSON: one conversation per pattern x response, grouped by intent tag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.errors import DatasetFormatError
from data.sources.intents import read_intents


def test_pairs_grouped_by_tag(tmp_path: Path) -> None:
    path = tmp_path / "intents.json"
    path.write_text(
        json.dumps(
            {
                "intents": [
                    {"tag": "greeting", "patterns": ["Hi", "Hello"], "responses": ["Hey!", "Hi."]},
                    {"tag": "empty", "patterns": [], "responses": ["Nothing"]},
                ]
            }
        ),
        encoding="utf-8",
    )
    data = read_intents(path)
    assert [(c.messages[0]["content"], c.messages[1]["content"]) for c in data.conversations] == [
        ("Hi", "Hey!"), ("Hi", "Hi."), ("Hello", "Hey!"), ("Hello", "Hi."),
    ]  # fmt: skip
    assert {c.group for c in data.conversations} == {"intents:greeting"}
    assert data.counts["intents_without_pairs"] == 1 and data.counts["pairs"] == 4


@pytest.mark.parametrize(
    "document",
    ["not json", '{"intents": {}}', '{"intents": [{"patterns": []}]}',
     '{"intents": [{"tag": "t", "patterns": "Hi", "responses": []}]}'],
)  # fmt: skip
def test_malformed_intents_are_refused(tmp_path: Path, document: str) -> None:
    path = tmp_path / "intents.json"
    path.write_text(document, encoding="utf-8")
    with pytest.raises(DatasetFormatError):
        read_intents(path)


def test_real_intents_give_the_original_661_pairs(real_datasets: Path) -> None:
    data = read_intents(real_datasets / "mental_health" / "intents.json")
    assert data.counts["pairs"] == len(data.conversations) == 661
    assert data.counts["intents"] == 80 and data.counts["patterns"] == 232
    assert len({c.group for c in data.conversations}) == 80
