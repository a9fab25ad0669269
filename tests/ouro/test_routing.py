"""The correction router: keys, the boundary, its calibration, the index (real embedder)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from ouro.embedding import SentenceEmbedder
from ouro.errors import OuroError
from ouro.routing import (
    FORCED,
    MATCH,
    NEAR_MISS,
    NO_INDEX,
    NO_MATCH,
    PARAPHRASE,
    CalibrationPair,
    CorrectionIndex,
    CorrectionIndexError,
    JoinedKey,
    RouteKey,
    Router,
    RoutingBoundary,
    calibrate,
    load_calibration_pairs,
    overlap,
    with_last_user_turn,
    words,
)

BOUNDARY = RoutingBoundary(base=0.6, slope=0.45, context_min=0.5)


@pytest.fixture(scope="module")
def embedder(sentence_embedder: SentenceEmbedder) -> SentenceEmbedder:
    return sentence_embedder


@pytest.fixture(scope="module")
def index(embedder) -> CorrectionIndex:
    return CorrectionIndex.build(
        embedder,
        [
            ("hours", RouteKey("What are your opening hours?")),
            ("times", RouteKey("What is 12 times 7?")),
            (
                "sunday",
                RouteKey("And on Sundays?", context="We are open from 9 am to 5 pm on weekdays."),
            ),
        ],
        BOUNDARY,
    )


def test_route_key_is_the_last_user_turn_and_the_answer_it_follows() -> None:
    assert RouteKey.of([{"role": "user", "content": " Hi? "}]) == RouteKey("Hi?")
    key = RouteKey.of(
        [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "When do you open?"},
            {"role": "assistant", "content": "At 9."},
            {"role": "user", "content": [{"type": "text", "text": "and on Sundays?"}]},
        ]
    )
    assert key == RouteKey("and on Sundays?", context="At 9.")
    assert RouteKey.of([{"role": "assistant", "content": "hello"}]) == RouteKey("")


def test_overlap_counts_shared_words() -> None:
    assert words("What's 12 times 7?") == {"what", "s", "12", "times", "7"}
    assert overlap(words("a b c"), words("a b d")) == pytest.approx(0.5)
    assert overlap(frozenset(), frozenset()) == 0.0


def test_the_boundary_asks_more_of_prompts_that_share_more_words() -> None:
    assert BOUNDARY.threshold(0.0) == pytest.approx(0.6)
    assert BOUNDARY.threshold(0.5) == pytest.approx(0.825)
    assert BOUNDARY.accepts(0.8, 0.2) and not BOUNDARY.accepts(0.8, 0.8)
    # The same words in another case or order need no more than the base.
    assert BOUNDARY.threshold(1.0) == pytest.approx(0.6)
    assert RoutingBoundary(0.9, 0.6).threshold(0.9) == pytest.approx(0.995)


def test_the_corrected_question_and_its_rewording_route(embedder, index) -> None:
    router = Router(embedder)
    exact = router.decide(index, [{"role": "user", "content": "What is 12 times 7?"}])
    assert exact.routed and exact.reason == MATCH and exact.correction_id == "times"
    assert exact.similarity == pytest.approx(1.0, abs=1e-4)
    casual = router.decide(index, [{"role": "user", "content": "what are your opening hours"}])
    assert casual.routed and casual.correction_id == "hours"


def test_unrelated_and_same_shaped_questions_pass_through(embedder, index) -> None:
    router = Router(embedder)
    for text in ("Do you like football?", "What is 12 times 8?", "What are your closing hours?"):
        decision = router.decide(index, [{"role": "user", "content": text}])
        assert not decision.routed and decision.reason == NO_MATCH, text
        assert decision.similarity is not None and decision.threshold is not None


def test_a_follow_up_correction_needs_its_context(embedder, index) -> None:
    router = Router(embedder)
    alone = router.decide(index, [{"role": "user", "content": "And on Sundays?"}])
    assert not alone.routed
    followed = router.decide(
        index,
        [
            {"role": "user", "content": "When are you open?"},
            {"role": "assistant", "content": "We open at 9 am and close at 5 pm on weekdays."},
            {"role": "user", "content": "And on Sundays?"},
        ],
    )
    assert followed.routed and followed.correction_id == "sunday"
    elsewhere = router.decide(
        index,
        [
            {"role": "user", "content": "Is there a football match this week?"},
            {"role": "assistant", "content": "Yes, the final is on Saturday evening."},
            {"role": "user", "content": "And on Sundays?"},
        ],
    )
    assert not elsewhere.routed


def test_with_last_user_turn_replaces_only_the_last_user_turn() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    assert [m["content"] for m in with_last_user_turn(messages, "z")] == ["a", "b", "z"]
    assert messages[2]["content"] == "c"


def test_a_match_is_answered_as_the_correction_it_matched(embedder, index) -> None:
    router = Router(embedder)
    conversation = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "what are your opening hours"},
    ]
    decision = router.decide(index, conversation)
    assert decision.routed and decision.question == "What are your opening hours?"
    prompt = decision.prompt(conversation)
    assert prompt[:3] == conversation[:3]
    assert prompt[3] == {"role": "user", "content": "What are your opening hours?"}
    assert conversation[3]["content"] == "what are your opening hours"
    # Anything else is answered as sent: no match, a forced route, no index.
    missed = router.decide(index, [{"role": "user", "content": "Do you like football?"}])
    assert missed.question is None
    _, forced = router.choose(
        [index], [{"role": "user", "content": "Do you like football?"}], forced=True
    )
    assert forced.reason == FORCED
    for decision in (missed, forced, router.decide(None, conversation)):
        assert decision.prompt(conversation) == conversation


def test_no_index_routes_everything_and_an_empty_one_nothing(embedder) -> None:
    router = Router(embedder)
    assert router.decide(None, [{"role": "user", "content": "x"}]).reason == NO_INDEX
    empty = CorrectionIndex.build(embedder, [], BOUNDARY)
    assert not router.decide(empty, [{"role": "user", "content": "hello"}]).routed
    assert {NO_INDEX, FORCED, MATCH, NO_MATCH} == {"no_index", "forced", "match", "no_match"}


def test_prefetched_keys_decide_as_keys_embedded_one_by_one(embedder, index) -> None:
    conversations = [
        [{"role": "user", "content": text}]
        for text in ("What is 12 times 7?", "Tell me a joke", "what are your opening hours?")
    ]
    batched = Router(embedder)
    batched.prefetch(conversations)
    one_by_one = Router(embedder, cache_size=0)
    assert [batched.decide(index, c).routed for c in conversations] == [
        one_by_one.decide(index, c).routed for c in conversations
    ]


def test_the_index_round_trips_beside_an_adapter(tmp_path, embedder, index) -> None:
    folder = index.save(tmp_path)
    assert folder.parent == tmp_path and (folder / "keys.npy").is_file()
    loaded = CorrectionIndex.load(tmp_path)
    assert loaded is not None and [e.id for e in loaded.entries] == ["hours", "times", "sunday"]
    assert np.allclose(loaded.keys, index.keys) and loaded.boundary == BOUNDARY
    assert CorrectionIndex.load(tmp_path / "elsewhere") is None


def test_forgetting_removes_the_key(embedder, index) -> None:
    smaller = index.without({"times"})
    assert [e.id for e in smaller.entries] == ["hours", "sunday"]
    decision = Router(embedder).decide(
        smaller, [{"role": "user", "content": "What is 12 times 7?"}]
    )
    assert not decision.routed


PERSONA = "What is your name?"
PERSONA_PARAPHRASE = "What should I call you?"


def joined_index(embedder) -> CorrectionIndex:
    """One correction with a key joined to it by a user's same correction, and a lesson."""
    lesson = CalibrationPair(PERSONA, PERSONA_PARAPHRASE, PARAPHRASE, 3.0, "c-call")
    return CorrectionIndex.build(
        embedder,
        [("c-name", RouteKey(PERSONA)), ("times", RouteKey("What is 12 times 7?"))],
        BOUNDARY,
        joined=[JoinedKey("c-name", RouteKey(PERSONA_PARAPHRASE), source="c-call")],
        lessons=[lesson],
    )


def test_a_joined_key_is_answered_as_the_correction_it_joined(embedder) -> None:
    index = joined_index(embedder)
    router = Router(embedder)
    # Too far from the question for any boundary; its own key reaches it.
    assert not router.decide(
        index.without({"c-call"}), [{"role": "user", "content": PERSONA_PARAPHRASE}]
    ).routed
    decision = router.decide(index, [{"role": "user", "content": PERSONA_PARAPHRASE}])
    assert decision.routed and decision.correction_id == "c-name"
    assert decision.key == PERSONA_PARAPHRASE and decision.question == PERSONA
    assert decision.prompt([{"role": "user", "content": PERSONA_PARAPHRASE}])[-1] == {
        "role": "user",
        "content": PERSONA,
    }
    assert index.correction_ids() == {"c-name", "times"} and len(index) == 3


def test_forgetting_a_correction_takes_its_joined_keys_and_lessons(embedder) -> None:
    index = joined_index(embedder)
    # Forgetting the one that showed the key: the key and its lesson go, the correction stays.
    shown = index.without({"c-call"})
    assert [e.text for e in shown.entries] == [PERSONA, "What is 12 times 7?"]
    assert shown.lessons == []
    # Forgetting the correction itself: every key answered as it goes.
    assert index.without({"c-name"}).correction_ids() == {"times"}
    assert len(index.without({"c-name"})) == 1


def test_joined_keys_and_lessons_round_trip_and_an_older_index_still_loads(
    tmp_path, embedder, index
) -> None:
    joined = joined_index(embedder)
    joined.save(tmp_path / "new")
    loaded = CorrectionIndex.load(tmp_path / "new")
    assert loaded is not None
    assert loaded.entries == joined.entries and loaded.lessons == joined.lessons
    # Format 1 (before joined keys and lessons): its entries had no question or source.
    folder = index.save(tmp_path / "old")
    meta = json.loads((folder / "index.json").read_text())
    meta["format"] = 1
    meta.pop("lessons")
    for entry in meta["entries"]:
        entry.pop("question"), entry.pop("source")
    (folder / "index.json").write_text(json.dumps(meta))
    old = CorrectionIndex.load(tmp_path / "old")
    assert old is not None and old.entries == index.entries and old.lessons == []


def test_a_damaged_index_is_a_clear_error(tmp_path, index) -> None:
    folder = index.save(tmp_path)
    (folder / "index.json").write_text(json.dumps({"format": 99}), encoding="utf-8")
    with pytest.raises(CorrectionIndexError, match="format"):
        CorrectionIndex.load(tmp_path)
    (folder / "index.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CorrectionIndexError):
        CorrectionIndex.load(tmp_path)


def test_calibration_separates_paraphrases_from_near_misses(embedder) -> None:
    pairs = [
        CalibrationPair("How many legs does a spider have?", "A spider has how many legs?", PARAPHRASE),
        CalibrationPair("When does the library open?", "What time does the library open its doors?", PARAPHRASE),
        CalibrationPair("Who wrote Hamlet?", "Who is the author of Hamlet?", PARAPHRASE),
        CalibrationPair("Who wrote Hamlet?", "Who wrote Macbeth?", NEAR_MISS),
        CalibrationPair("When does the library open?", "When does the library close?", NEAR_MISS),
        CalibrationPair("How many legs does a spider have?", "How many legs does an ant have?", NEAR_MISS),
    ]  # fmt: skip
    unrelated = ["Do you like jazz?", "My car broke down again.", "Shall we eat out tonight?"]
    fitted = calibrate(embedder, pairs, unrelated)
    assert fitted.paraphrase_recall + fitted.near_miss_rejection >= 1.5
    assert fitted.unrelated_false_accept == 0.0
    assert "fitted on 3 paraphrase and 3 near-miss pairs" in fitted.boundary.source
    with pytest.raises(OuroError, match="both"):
        calibrate(embedder, [p for p in pairs if p.label == PARAPHRASE])


def test_calibration_spends_the_near_miss_budget_on_paraphrase_recall(embedder) -> None:
    pairs = load_calibration_pairs()
    strict = calibrate(embedder, pairs, max_near_miss_accept=0.0)
    budget = calibrate(embedder, pairs, max_near_miss_accept=0.2)
    assert 1.0 - budget.near_miss_rejection <= 0.2 + 1e-9
    assert budget.paraphrase_recall > strict.paraphrase_recall
    # No boundary of the grid rejects every near-miss: the one accepting the fewest wins.
    assert strict.near_miss_rejection >= budget.near_miss_rejection


def test_a_small_index_is_fitted_on_its_own_false_accepts(embedder) -> None:
    pairs = load_calibration_pairs()
    unrelated = [
        "Do you like jazz?", "My car broke down again.", "Shall we eat out tonight?",
        "I failed my driving test.", "What a lovely day!", "Can you lend me a pen?",
    ]  # fmt: skip
    for_all = calibrate(embedder, pairs, unrelated)
    own = calibrate(embedder, pairs, unrelated, questions=["What are your opening hours?"])
    # One question lets less through than the 500 of the calibration: the same unrelated
    # budget buys a looser boundary and more paraphrases, within the near-miss budget.
    assert own.paraphrase_recall >= for_all.paraphrase_recall
    assert own.boundary.base <= for_all.boundary.base
    assert own.unrelated_false_accept <= 0.01 and 1.0 - own.near_miss_rejection <= 0.1 + 1e-9
    # The calibration questions joined the unrelated prompts.
    assert f"{len(unrelated)} unrelated prompts" in for_all.boundary.source
    assert f"{len(unrelated)} unrelated prompts" not in own.boundary.source


def test_a_weighted_pair_counts_as_many(embedder) -> None:
    pairs = load_calibration_pairs()
    plain = calibrate(embedder, pairs)

    def accepted(pair: CalibrationPair, boundary: RoutingBoundary) -> bool:
        a, b = embedder.embed([pair.a, pair.b])
        return boundary.accepts(float(a @ b), overlap(words(pair.a), words(pair.b)))

    # A near-miss the fit lets through (within its 10% budget), taught by users as a
    # lesson that counts for 100 pairs: the budget no longer has room for it.
    let_through = next(p for p in pairs if p.label == NEAR_MISS and accepted(p, plain.boundary))
    lesson = replace(let_through, weight=100.0, source="c-lesson")
    taught = calibrate(embedder, [*pairs, lesson])
    assert not accepted(lesson, taught.boundary)
    assert taught.boundary != plain.boundary


def test_the_shipped_calibration_pairs_load() -> None:
    pairs = load_calibration_pairs()
    assert {p.label for p in pairs} == {PARAPHRASE, NEAR_MISS}


def test_a_question_asked_again_is_not_embedded_again(embedder, index) -> None:
    calls: list[int] = []

    class Counting:
        name, dimension = embedder.name, embedder.dimension

        def embed(self, texts):
            calls.append(len(texts))
            return embedder.embed(texts)

    router = Router(Counting(), cache_size=2)
    conversation = [{"role": "user", "content": "What is 12 times 7?"}]
    first = router.decide(index, conversation)
    assert router.decide(index, conversation) == first and calls == [1]
    router.prefetch([[{"role": "user", "content": t}] for t in ("a?", "b?", "What is 12 times 7?")])
    assert calls == [1, 2]  # only the two new texts, in one batch
    router.decide(index, [{"role": "user", "content": "a?"}])  # still cached
    assert calls == [1, 2]
    router.decide(index, conversation)  # the oldest, evicted: the cache holds 2
    assert calls == [1, 2, 1]
