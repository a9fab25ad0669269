"""The training side of routed corrections (``ouro.routing``): what a routed adapter learns.

A routed adapter only answers requests near one of its corrections, so it has to be right
there and nowhere else:

- the corrected prompt, and the variants a user would type for it (``augment``: case,
  punctuation, fillers, short random prefixes as WISE trains its side memory), map to the
  correction; the chat template ends each target with the end-of-turn token, so the model
  stops after the correction instead of running on;
- hard negatives: prompts of the replay pool that the router would send to this adapter
  (``mine_hard_negatives``), with the base model's own answers, so near-misses that pass
  the router keep their answers. Prompts the router never sends here need no replay.

``RoutingPlan`` is worked out once per cycle: the fitted boundary (cached per calibration
file and pool), the index of the corrections learned, the hard negatives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ouro.routing import (
    CALIBRATION_FILE,
    Calibration,
    CorrectionIndex,
    RouteKey,
    Router,
    RoutingBoundary,
    SentenceEmbedder,
    calibrate,
    load_calibration_pairs,
)
from train_job.config import TrainJobConfig

if TYPE_CHECKING:  # the dataset module imports this one
    from train_job.dataset import Correction, Messages

logger = logging.getLogger(__name__)

FILLERS = ("please", "hey", "hi", "quick question:", "so", "um", "can you tell me", "ok")
"""Words users put around a question; prepended or appended by ``augment``."""
PREFIX_WORDS = (
    "today", "again", "sorry", "well", "thanks", "hello", "excuse me", "one more thing",
    "by the way", "i wonder", "honestly", "actually",
)  # fmt: skip
"""Short random prefixes (WISE-style), as a user opens a turn."""


def augment(question: str, count: int, rng: random.Random) -> list[str]:
    """Up to ``count`` distinct variants of ``question`` a user might type for the same thing.

    Surface changes only (case, punctuation, fillers, prefixes): rewordings are the router's
    job; these keep the adapter's answer stable over what the router lets through.
    """
    base = question.strip()
    stripped = base.rstrip("?!. ")
    candidates = [
        base.lower(),
        stripped,
        stripped.lower(),
        f"{stripped}??",
        f"{rng.choice(FILLERS)} {stripped.lower()}?",
        f"{rng.choice(PREFIX_WORDS).capitalize()}, {base[:1].lower()}{base[1:]}",
        f"{base} {rng.choice(('please', 'thanks', 'thank you'))}",
        f"{rng.choice(PREFIX_WORDS)} {rng.choice(FILLERS)} {stripped.lower()}",
    ]
    variants = [v for v in dict.fromkeys(candidates) if v and v != base]
    rng.shuffle(variants)
    return variants[:count]


def with_last_user_turn(messages: Sequence[dict], text: str) -> Messages:
    """The conversation with its last user turn's text replaced."""
    out = [dict(m) for m in messages]
    for message in reversed(out):
        if message.get("role") == "user":
            message["content"] = text
            break
    return out


@dataclass
class RoutingPlan:
    """What a routed cycle trains and stores, worked out before training."""

    index: CorrectionIndex
    calibration: Calibration
    hard_negatives: list[str] = field(default_factory=list)
    """Pool prompts the router sends to this adapter (trained with the base's answers)."""
    pool: list[str] = field(default_factory=list)
    """The unrelated prompts (the replay source's first user turns)."""

    def report(self) -> dict:
        return {
            "corrections_indexed": len(self.index),
            "hard_negatives": len(self.hard_negatives),
            "pool_prompts": len(self.pool),
            "calibration": self.calibration.to_dict(),
        }


def plan_routing(
    embedder: SentenceEmbedder,
    corrections: Sequence[Correction],
    pool: Sequence[str],
    config: TrainJobConfig,
    cache_dir: Path | None,
) -> RoutingPlan:
    """Fit (or reuse) the boundary, index ``corrections``, and mine the hard negatives."""
    questions = {c.question().strip().lower() for c in corrections}
    pool = [p for p in dict.fromkeys(p.strip() for p in pool) if p and p.lower() not in questions]
    calibration = fitted_calibration(embedder, pool, config, cache_dir)
    index = CorrectionIndex.build(
        embedder,
        [(c.id, RouteKey.of(c.prompt())) for c in corrections],
        calibration.boundary,
        calibration.to_dict(),
    )
    negatives = mine_hard_negatives(
        Router(embedder), index, pool, config.hard_negatives_per_correction
    )
    logger.info(
        "routing: %s corrections indexed, %s hard negatives from %s pool prompts; %s",
        len(index),
        len(negatives),
        len(pool),
        calibration.boundary.source,
    )
    return RoutingPlan(index, calibration, negatives, pool)


def mine_hard_negatives(
    router: Router, index: CorrectionIndex, pool: Sequence[str], per_correction: int
) -> list[str]:
    """Pool prompts the index routes, at most ``per_correction`` for each correction,
    the most similar first."""
    if per_correction <= 0 or not pool or not len(index):
        return []
    decisions = router.decide_many(index, [[{"role": "user", "content": p}] for p in pool])
    by_correction: dict[str, list[tuple[float, str]]] = {}
    for prompt, decision in zip(pool, decisions, strict=True):
        if decision.routed and decision.correction_id is not None:
            by_correction.setdefault(decision.correction_id, []).append(
                (decision.similarity or 0.0, prompt)
            )
    negatives = []
    for found in by_correction.values():
        negatives += [prompt for _, prompt in sorted(found, reverse=True)[:per_correction]]
    return negatives


def fitted_calibration(
    embedder: SentenceEmbedder,
    pool: Sequence[str],
    config: TrainJobConfig,
    cache_dir: Path | None,
    calibration_file: Path = CALIBRATION_FILE,
) -> Calibration:
    """The boundary fitted on the calibration pairs and the pool, cached by their hash."""
    pairs = load_calibration_pairs(calibration_file)
    key = hashlib.sha256(
        json.dumps(
            [
                embedder.name,
                calibration_file.read_text(encoding="utf-8"),
                sorted(pool),
                config.router_max_false_accept,
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
        embedder, pairs, pool, max_unrelated_false_accept=config.router_max_false_accept
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(calibration.to_dict()), encoding="utf-8")
    return calibration
