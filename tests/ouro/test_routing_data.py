"""The router's calibration pairs and the evaluation sets: shape, counts and disjointness."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
CALIBRATION = ROOT / "ouro" / "routing_calibration.jsonl"
EVALUATION = ROOT / "loadtests" / "fixtures" / "router_corrections.jsonl"
GENERALITY = ROOT / "loadtests" / "fixtures" / "router_generality.jsonl"

LABELS = {"paraphrase", "near_miss"}
KINDS = {"fact", "house_rule", "arithmetic", "persona"}
CORRECTION_FIELDS = ("id", "question", "correction", "key_fact", "paraphrase", "near_miss", "kind")
GENERALITY_KINDS = KINDS | {"procedure"}
GENERALITY_FIELDS = {
    "id",
    "question",
    "correction",
    "key_fact",
    "paraphrases",
    "near_misses",
    "kind",
}
NEAR_MISS_FIELDS = {"question", "answer", "key_fact"}


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


@pytest.fixture(scope="module")
def generality() -> list[dict]:
    return load_jsonl(GENERALITY)


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


def asked_texts(row: dict) -> dict[str, str]:
    """Every prompt of a generality item, by where it sits: question, paraphrases, near misses."""
    texts = {"question": row["question"]}
    texts.update({f"paraphrases[{i}]": text for i, text in enumerate(row["paraphrases"])})
    texts.update({f"near_misses[{i}]": nm["question"] for i, nm in enumerate(row["near_misses"])})
    return texts


def is_non_empty_text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def test_generality_items_are_well_formed(generality):
    assert len(generality) >= 40
    ids = [row.get("id") for row in generality]
    assert ids == [f"g{n:02d}" for n in range(1, len(generality) + 1)], "ids must run g01, g02, ..."
    for row in generality:
        assert set(row) == GENERALITY_FIELDS, f"{row['id']}: fields {sorted(row)}"
        for field in ("question", "correction", "key_fact"):
            assert is_non_empty_text(row[field]), f"{row['id']}: empty {field}"
        assert row["kind"] in GENERALITY_KINDS, f"{row['id']}: kind {row['kind']!r}"
        assert len(row["correction"].split()) <= 30, f"{row['id']}: correction too long"
        paraphrases = row["paraphrases"]
        assert isinstance(paraphrases, list) and len(paraphrases) == 3, (
            f"{row['id']}: 3 paraphrases"
        )
        assert all(is_non_empty_text(text) for text in paraphrases), (
            f"{row['id']}: empty paraphrase"
        )
        near_misses = row["near_misses"]
        assert isinstance(near_misses, list) and len(near_misses) == 2, (
            f"{row['id']}: 2 near misses"
        )
        for near_miss in near_misses:
            assert isinstance(near_miss, dict) and set(near_miss) == NEAR_MISS_FIELDS, row["id"]
            for field in NEAR_MISS_FIELDS:
                assert is_non_empty_text(near_miss[field]), (
                    f"{row['id']}: near miss without {field}"
                )
            assert len(near_miss["answer"].split()) <= 30, f"{row['id']}: near-miss answer too long"


def test_generality_key_facts_are_in_their_answers(generality):
    for row in generality:
        assert row["key_fact"].lower() in row["correction"].lower(), row["id"]
        for near_miss in row["near_misses"]:
            assert near_miss["key_fact"].lower() in near_miss["answer"].lower(), (
                f"{row['id']}: {near_miss['question']!r}"
            )


def test_generality_key_facts_are_specific(generality):
    """A key fact an unrelated answer would hold by chance (a bare small number) proves nothing."""
    for row in generality:
        for key_fact in [row["key_fact"], *(nm["key_fact"] for nm in row["near_misses"])]:
            assert len(key_fact.strip()) >= 3, f"{row['id']}: key fact {key_fact!r} too short"
            if re.fullmatch(r"[\d.,\s]+", key_fact):
                digits = re.sub(r"\D", "", key_fact)
                assert len(digits) >= 3, (
                    f"{row['id']}: key fact {key_fact!r} is a bare small number"
                )


def test_generality_near_miss_answers_differ_from_the_correction(generality):
    """A near miss keeps its own answer: neither side's key fact is in the other's answer."""
    for row in generality:
        for near_miss in row["near_misses"]:
            assert row["key_fact"].lower() not in near_miss["answer"].lower(), (
                f"{row['id']}: correction's key fact in the answer to {near_miss['question']!r}"
            )
            assert near_miss["key_fact"].lower() not in row["correction"].lower(), (
                f"{row['id']}: key fact of {near_miss['question']!r} in the correction"
            )
        first, second = row["near_misses"]
        assert first["key_fact"].lower() not in second["answer"].lower(), row["id"]
        assert second["key_fact"].lower() not in first["answer"].lower(), row["id"]


def test_generality_prompts_are_all_different(generality):
    seen: dict[str, str] = {}
    for row in generality:
        for where, text in asked_texts(row).items():
            key = normalise(text)
            assert key not in seen, f"{row['id']}.{where}: {text!r} repeats {seen[key]}"
            seen[key] = f"{row['id']}.{where}"


def test_generality_covers_every_kind(generality):
    assert {row["kind"] for row in generality} == GENERALITY_KINDS


def test_generality_text_is_absent_from_calibration_and_evaluation(pairs, corrections, generality):
    """Nobody tuned on it: no prompt of the generality set is in the calibration pairs or the
    evaluation corrections."""
    known = [normalise(pair[field]) for pair in pairs for field in ("a", "b")]
    known += [
        normalise(row[field])
        for row in corrections
        for field in ("question", "paraphrase", "near_miss")
    ]
    leaks = []
    for row in generality:
        for where, text in asked_texts(row).items():
            needle = normalise(text)
            if any(needle in text_known for text_known in known):
                leaks.append(f"{row['id']}.{where}: {text!r}")
    assert leaks == []
