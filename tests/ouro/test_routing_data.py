"""The router's calibration pairs and the evaluation corrections: shape, counts and disjointness."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
CALIBRATION = ROOT / "ouro" / "routing_calibration.jsonl"
EVALUATION = ROOT / "loadtests" / "fixtures" / "router_corrections.jsonl"

LABELS = {"paraphrase", "near_miss"}
KINDS = {"fact", "house_rule", "arithmetic", "persona"}
CORRECTION_FIELDS = ("id", "question", "correction", "key_fact", "paraphrase", "near_miss", "kind")


def load_jsonl(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        assert line.strip(), f"{path.name}:{number} is blank"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            pytest.fail(f"{path.name}:{number} is not valid JSON: {error}")
        assert isinstance(row, dict), f"{path.name}:{number} is not a JSON object"
        rows.append(row)
    return rows


def normalise(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    return load_jsonl(CALIBRATION)


@pytest.fixture(scope="module")
def corrections() -> list[dict]:
    return load_jsonl(EVALUATION)


def test_calibration_pairs_are_well_formed(pairs):
    for number, pair in enumerate(pairs, start=1):
        assert set(pair) == {"a", "b", "label"}, f"line {number}: fields {sorted(pair)}"
        assert pair["label"] in LABELS, f"line {number}: label {pair['label']!r}"
        for field in ("a", "b"):
            assert isinstance(pair[field], str) and pair[field].strip(), (
                f"line {number}: empty {field}"
            )
        assert normalise(pair["a"]) != normalise(pair["b"]), f"line {number}: a == b"


def test_calibration_has_enough_of_each_label(pairs):
    counts = Counter(pair["label"] for pair in pairs)
    assert counts["paraphrase"] >= 120, counts
    assert counts["near_miss"] >= 120, counts


def test_calibration_pairs_are_not_repeated(pairs):
    seen = Counter((normalise(pair["a"]), normalise(pair["b"])) for pair in pairs)
    assert [key for key, count in seen.items() if count > 1] == []


def test_corrections_are_well_formed(corrections):
    assert len(corrections) >= 36
    ids = [row.get("id") for row in corrections]
    assert len(set(ids)) == len(ids), "duplicate ids"
    for row in corrections:
        for field in CORRECTION_FIELDS:
            assert isinstance(row.get(field), str) and row[field].strip(), (
                f"{row.get('id')}: missing {field}"
            )
        assert row["kind"] in KINDS, f"{row['id']}: kind {row['kind']!r}"
        assert len(row["correction"].split()) <= 30, f"{row['id']}: correction too long"


def test_key_fact_is_in_the_correction(corrections):
    for row in corrections:
        assert row["key_fact"].lower() in row["correction"].lower(), row["id"]


def test_paraphrase_and_near_miss_differ_from_the_question(corrections):
    for row in corrections:
        texts = {normalise(row[field]) for field in ("question", "paraphrase", "near_miss")}
        assert len(texts) == 3, f"{row['id']}: question, paraphrase and near_miss must all differ"


def test_every_kind_is_covered(corrections):
    assert {row["kind"] for row in corrections} == KINDS


def test_evaluation_text_is_absent_from_calibration(pairs, corrections):
    calibration_texts = [normalise(pair[field]) for pair in pairs for field in ("a", "b")]
    leaks = []
    for row in corrections:
        for field in ("question", "paraphrase", "near_miss"):
            needle = normalise(row[field])
            if any(needle in text for text in calibration_texts):
                leaks.append(f"{row['id']}.{field}: {row[field]!r}")
    assert leaks == []
