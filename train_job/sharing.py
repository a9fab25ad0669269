"""Which corrections train which adapter, with personal adapters on.

The shared adapter learns from:
- corrections sent with an admin key;
- corrections an operator marked shared (``python -m train_job share ID``, or the admin
  endpoint): a ``share`` record in the ledger's control log;
- corrections on which at least K distinct scopes agree (``OURO_CONSENSUS_SCOPES``);
- corrections with no scope (an open server, or sent before personal adapters were on),
  which trained the shared adapter before and keep doing so.

"Agree": the same question (the last user turn, compared case- and punctuation-blind,
``data.dedup.normalise_for_match``) and corrections whose ROUGE-L F-measure
(``ouro.scoring.rouge_l``, stemmed) is at least ``OURO_CONSENSUS_SIMILARITY``. Each scope
counts once however often it repeats itself, so one key cannot reach K alone.

A scope's personal adapter learns from its own corrections plus the shared ones, except
shared corrections of a question the scope corrected itself: its own answer wins.
Tombstones are already applied by the ledger reader, so forgotten corrections reach no
set, the shared one included.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from data.dedup import normalise_for_match
from ouro.ledger import LedgerScan
from ouro.scoring import rouge_l
from ouro.settings import OuroSettings
from train_job.collect import distinct
from train_job.corrections import Correction

logger = logging.getLogger(__name__)

Selector = Callable[[list[Correction], LedgerScan], list[Correction]]


@dataclass(frozen=True)
class SharingPolicy:
    """What makes a correction shared (see the module docstring)."""

    consensus_scopes: int = 3
    similarity: float = 0.8

    @classmethod
    def from_settings(cls, settings: OuroSettings) -> SharingPolicy:
        return cls(settings.consensus_scopes, settings.consensus_similarity)

    def agreed(self, corrections: list[Correction]) -> set[str]:
        """Ids of scoped corrections that at least K distinct scopes agree with (their own included)."""
        by_question: dict[str, list[Correction]] = defaultdict(list)
        for correction in corrections:
            if correction.scope is not None:
                by_question[question_key(correction)].append(correction)
        agreed: set[str] = set()
        for group in by_question.values():
            if len({c.scope for c in group}) < self.consensus_scopes:
                continue  # too few scopes asked at all: no comparison needed
            for correction in group:
                scopes = {
                    other.scope
                    for other in group
                    if other is correction
                    or rouge_l(other.correction, correction.correction) >= self.similarity
                }
                if len(scopes) >= self.consensus_scopes:
                    agreed.add(correction.id)
        return agreed

    def shared(self, corrections: list[Correction], scan: LedgerScan) -> list[Correction]:
        """The shared adapter's training set."""
        marked = scan.control.shared_ids
        agreed = self.agreed(corrections)
        chosen = [
            c for c in corrections if c.scope is None or c.admin or c.id in marked or c.id in agreed
        ]
        logger.info(
            "shared set: %d of %d corrections (%d by consensus, %d marked shared)",
            len(chosen),
            len(corrections),
            len(agreed),
            sum(1 for c in corrections if c.id in marked),
        )
        return distinct(chosen)

    def personal(self, scope: str, shared: list[Correction]) -> Selector:
        """The selector of ``scope``'s training set: its own corrections, then ``shared``
        (the shared set, worked out once per cycle) less the questions it answered itself."""

        def select(corrections: list[Correction], scan: LedgerScan) -> list[Correction]:
            own = [c for c in corrections if c.scope == scope]
            own_questions = {question_key(c) for c in own}
            others = [c for c in shared if question_key(c) not in own_questions]
            return distinct(own + others)

        return select


def question_key(correction: Correction) -> str:
    """The question a correction answers, as compared for agreement and conflicts."""
    return normalise_for_match(correction.question())


def scopes_with_corrections(corrections: list[Correction]) -> list[str]:
    """Every scope that sent a usable correction, sorted."""
    return sorted({c.scope for c in corrections if c.scope is not None})
