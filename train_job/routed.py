"""The training side of routed corrections (``ouro.routing``): what a routed adapter learns.

A routed adapter only answers requests the router matched to one of its corrections, and
it answers them as that correction's question (``RouteDecision.prompt``). So it learns the
corrected prompts themselves, each target ending with the end-of-turn token so the model
stops after the correction instead of running on; which rewordings reach a correction,
and which same-shaped questions do not, is the router's decision, fitted on labelled pairs
(``ouro.routing.calibrate``) and measured by the gates.

The router also learns from the corrections of its own decisions (``learn``). Every
correction names the version that answered it, and the router is deterministic, so each
cycle replays that version's decision on the corrected conversation (an answer by the base
model is replayed on the production version the cycle builds on: the router that let it
through):

- a false accept: the answer came from a match, and the correction differs from the
  matched correction's. (matched key, request) becomes a ``NEAR_MISS`` pair, and the request
  keeps a key of its own with its own correction.
- a false reject: the correction agrees with an earlier correction (token F1 at least the
  gates' ``answer_f1_threshold``: the same text, or near it) that the router did not send
  it to. (that correction's question, request) becomes a ``PARAPHRASE`` pair, and the
  request another key of that correction (``ouro.routing.JoinedKey``) instead of a
  correction trained on its own.

The pairs join the calibration pairs, ``router_lesson_weight`` times heavier, and are saved
in the version's index. They are worked out from the ledger each cycle, so a forgotten
correction's pairs and keys go with it, and a personal scope learns from its own ledger.

``RoutingPlan`` is worked out once per cycle: the lessons, the fitted boundary (cached per
calibration file, pool, corrections and lessons) and the index of the corrections learned.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ouro.embedding import SentenceEmbedder
from ouro.routing import (
    CALIBRATION_FILE,
    MATCH,
    NEAR_MISS,
    PARAPHRASE,
    Calibration,
    CalibrationPair,
    CorrectionIndex,
    JoinedKey,
    RouteKey,
    Router,
    RoutingBoundary,
    calibrate,
    load_calibration_pairs,
)
from ouro.scoring import token_f1
from train_job.config import TrainJobConfig
from train_job.corrections import Correction

logger = logging.getLogger(__name__)

AnsweredBy = Callable[[Correction], CorrectionIndex | None]
"""The correction index whose decision a correction corrects (see ``learn``); None when
that version has none (it answered everything) or cannot be had."""


@dataclass
class Lessons:
    """What users' corrections of the router's decisions taught it (``learn``)."""

    pairs: list[CalibrationPair] = field(default_factory=list)
    joined: list[JoinedKey] = field(default_factory=list)
    false_accepts: int = 0
    false_rejects: int = 0
    taught: list[tuple[Correction, str, bool]] = field(default_factory=list)
    """What each lesson asks of the next index: (corrected conversation, a correction id,
    whether it must now route there (a false reject) or no longer (a false accept))."""

    def joined_ids(self) -> set[str]:
        """Corrections that became keys of another (not trained on their own)."""
        return {j.source for j in self.joined}

    def report(self) -> dict:
        return {
            "false_accepts": self.false_accepts,
            "false_rejects": self.false_rejects,
            "joined_keys": len(self.joined),
            "pairs": len(self.pairs),
        }


def learn(
    corrections: Sequence[Correction],
    router: Router,
    answered_by: AnsweredBy,
    config: TrainJobConfig,
) -> Lessons:
    """Replay each correction's routing decision and learn from what its author said
    (module docstring). ``corrections`` in ledger order: a correction can only join an
    earlier one."""
    lessons = Lessons()
    by_id = {c.id: c for c in corrections}
    owners: list[Correction] = []  # corrections with a key of their own, so far

    def agree(a: Correction, b: Correction) -> bool:
        return token_f1(a.correction, b.correction) >= config.answer_f1_threshold

    def pair(key: str, c: Correction, label: str) -> None:
        if key.strip().lower() != c.question().strip().lower():  # same words: nothing to learn
            lessons.pairs.append(
                CalibrationPair(key, c.question(), label, config.router_lesson_weight, c.id)
            )

    for c in corrections:
        index = answered_by(c)
        decision = router.decide(index, c.prompt()) if index is not None else None
        matched = None
        if decision is not None and decision.reason == MATCH:
            matched = by_id.get(decision.correction_id or "")
        if matched is not None and matched.id != c.id and not agree(c, matched):
            lessons.false_accepts += 1
            lessons.taught.append((c, matched.id, False))
            pair(decision.key or matched.question(), c, NEAR_MISS)
        same = next(
            (o for o in owners if agree(c, o) and o.question().strip() != c.question().strip()),
            None,
        )
        if same is None:
            owners.append(c)
            continue
        lessons.joined.append(JoinedKey(same.id, RouteKey.of(c.prompt()), c.id))
        if matched is None or matched.id != same.id:  # the router did not send it there
            if index is not None and same.id in index.correction_ids():
                lessons.false_rejects += 1
                lessons.taught.append((c, same.id, True))
            pair(same.question(), c, PARAPHRASE)
    return lessons


@dataclass
class RoutingPlan:
    """What a routed cycle trains and stores, worked out before training."""

    index: CorrectionIndex
    calibration: Calibration
    lessons: Lessons = field(default_factory=Lessons)
    pool: list[str] = field(default_factory=list)
    """The unrelated prompts (the replay source's first user turns)."""

    def trained(self, corrections: Sequence[Correction]) -> list[Correction]:
        """The corrections the adapter learns: all but those joined to another as keys."""
        joined = self.lessons.joined_ids()
        return [c for c in corrections if c.id not in joined]

    def lessons_applied(self, router: Router) -> int:
        """How many of the lessons the new index decides as its users taught: a false
        accept no longer sent to the correction it matched, a false reject sent to the
        correction it repeats."""
        applied = 0
        for correction, target, routed_there in self.lessons.taught:
            decision = router.decide(self.index, correction.prompt())
            applied += (decision.routed and decision.correction_id == target) == routed_there
        return applied

    def report(self) -> dict:
        return {
            "corrections_indexed": len(self.index.correction_ids()),
            "keys": len(self.index),
            "lessons": self.lessons.report(),
            "pool_prompts": len(self.pool),
            "calibration": self.calibration.to_dict(),
        }


def plan_routing(
    embedder: SentenceEmbedder,
    corrections: Sequence[Correction],
    pool: Sequence[str],
    config: TrainJobConfig,
    cache_dir: Path | None,
    answered_by: AnsweredBy = lambda correction: None,
) -> RoutingPlan:
    """Learn from the corrections of past decisions (``learn``), fit (or reuse) the
    boundary on the calibration pairs, those lessons and ``pool``, and index
    ``corrections``: each with a key of its own, or joined to the one it repeats."""
    lessons = learn(corrections, Router(embedder), answered_by, config)
    joined = lessons.joined_ids()
    keys = [(c.id, RouteKey.of(c.prompt())) for c in corrections if c.id not in joined]
    questions = sorted({key.text for _, key in keys} | {j.key.text for j in lessons.joined})
    own = {q.lower() for q in questions}
    pool = [p for p in dict.fromkeys(p.strip() for p in pool) if p and p.lower() not in own]
    calibration = fitted_calibration(embedder, pool, questions, config, cache_dir, lessons.pairs)
    index = CorrectionIndex.build(
        embedder,
        keys,
        calibration.boundary,
        calibration.to_dict(),
        joined=lessons.joined,
        lessons=lessons.pairs,
    )
    logger.info(
        "routing: %s corrections indexed by %s keys; learned %s; %s",
        len(keys),
        len(index),
        lessons.report(),
        calibration.boundary.source,
    )
    return RoutingPlan(index, calibration, lessons, pool)


def fitted_calibration(
    embedder: SentenceEmbedder,
    pool: Sequence[str],
    questions: Sequence[str],
    config: TrainJobConfig,
    cache_dir: Path | None,
    lessons: Sequence[CalibrationPair] = (),
    calibration_file: Path = CALIBRATION_FILE,
) -> Calibration:
    """The boundary fitted on the calibration pairs and ``lessons``, the pool and the
    corrections' ``questions`` (``ouro.routing.calibrate``), cached by their hash."""
    pairs = [*load_calibration_pairs(calibration_file), *lessons]
    key = hashlib.sha256(
        json.dumps(
            [
                embedder.name,
                calibration_file.read_text(encoding="utf-8"),
                sorted(pool),
                sorted(questions),
                config.router_max_false_accept,
                config.router_max_near_miss_accept,
                [asdict(pair) for pair in lessons],
            ]
        ).encode()
    ).hexdigest()[:16]
    path = cache_dir / f"boundary-{key}.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            return Calibration(boundary=RoutingBoundary(**cached.pop("boundary")), **cached)
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("ignoring unreadable boundary cache %s: %s", path, exc)
    calibration = calibrate(
        embedder,
        pairs,
        pool,
        questions=questions,
        max_unrelated_false_accept=config.router_max_false_accept,
        max_near_miss_accept=config.router_max_near_miss_accept,
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(calibration.to_dict()), encoding="utf-8")
    return calibration
