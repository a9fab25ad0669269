"""The training side of routed corrections (``ouro.routing``): what a routed adapter learns.

A routed adapter only answers requests the router matched to one of its corrections, and
it answers them as that correction's question (``RouteDecision.prompt``). So it learns the
corrected prompts themselves, each target ending with the end-of-turn token so the model
stops after the correction instead of running on; which rewordings reach a correction,
and which same-shaped questions do not, is the router's decision, fitted on labelled pairs
(``ouro.routing.calibrate``) and measured by the gates.

``RoutingPlan`` is worked out once per cycle: the fitted boundary (cached per calibration
file and pool) and the index of the corrections learned.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ouro.embedding import SentenceEmbedder
from ouro.routing import (
    CALIBRATION_FILE,
    Calibration,
    CorrectionIndex,
    RouteKey,
    RoutingBoundary,
    calibrate,
    load_calibration_pairs,
)
from train_job.config import TrainJobConfig
from train_job.corrections import Correction

logger = logging.getLogger(__name__)


@dataclass
class RoutingPlan:
    """What a routed cycle trains and stores, worked out before training."""

    index: CorrectionIndex
    calibration: Calibration
    pool: list[str] = field(default_factory=list)
    """The unrelated prompts (the replay source's first user turns)."""

    def report(self) -> dict:
        return {
            "corrections_indexed": len(self.index),
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
    """Fit (or reuse) the boundary for these corrections on the calibration pairs and
    ``pool``, and index ``corrections``."""
    keys = [(c.id, RouteKey.of(c.prompt())) for c in corrections]
    questions = sorted({key.text for _, key in keys})
    own = {q.lower() for q in questions}
    pool = [p for p in dict.fromkeys(p.strip() for p in pool) if p and p.lower() not in own]
    calibration = fitted_calibration(embedder, pool, questions, config, cache_dir)
    index = CorrectionIndex.build(embedder, keys, calibration.boundary, calibration.to_dict())
    logger.info("routing: %s corrections indexed; %s", len(index), calibration.boundary.source)
    return RoutingPlan(index, calibration, pool)


def fitted_calibration(
    embedder: SentenceEmbedder,
    pool: Sequence[str],
    questions: Sequence[str],
    config: TrainJobConfig,
    cache_dir: Path | None,
    calibration_file: Path = CALIBRATION_FILE,
) -> Calibration:
    """The boundary fitted on the calibration pairs, the pool and the corrections'
    ``questions`` (``ouro.routing.calibrate``), cached by their hash."""
    pairs = load_calibration_pairs(calibration_file)
    key = hashlib.sha256(
        json.dumps(
            [
                embedder.name,
                calibration_file.read_text(encoding="utf-8"),
                sorted(pool),
                sorted(questions),
                config.router_max_false_accept,
                config.router_max_near_miss_accept,
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
