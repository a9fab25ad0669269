"""From corrections to the cycle's data: training rows, held-out split, regression and probe sets.

Each correction becomes one training example with its full context: the conversation
the model answered (``messages``, the system prompt in front as at serving time) as the
prompt, and the corrected assistant turn as the completion. TRL computes the loss on the
completion only, so the model learns assistant tokens and nothing else. A replay sample of
general conversations is mixed in so the adapter does not make the bot forget how to chat:
with ``replay_answers="self"`` the replayed answers are the base model's own (see
train_job.replay), otherwise the source's (one example per assistant turn, so every
assistant turn carries loss).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from data import load_chat_jsonl
from ouro.chat import with_system_prompt
from ouro.configuration import ConfigError
from ouro.corpus import load_chatterbot_conversations
from train_job.config import CHATTERBOT_SOURCE, SELF_REPLAY, TrainJobConfig
from train_job.corrections import Correction

if TYPE_CHECKING:
    from train_job.routed import RoutingPlan

logger = logging.getLogger(__name__)

Messages = list[dict]

ReplayAnswerer = Callable[[Sequence[Messages]], list[str | None]]
"""Answers prompts (each ending with a user turn); None where no complete answer came."""

RoutingPlanner = Callable[[Sequence[Correction], Sequence[str]], "RoutingPlan"]
"""Plans a routed cycle from the corrections it trains and the pool of unrelated prompts
(``train_job.routed.plan_routing`` with its embedder bound)."""


@dataclass
class CycleDataset:
    """Everything one cycle trains and measures on."""

    train: list[Correction]
    held_out: list[Correction]
    replay: list[Messages]
    regression: list[Messages]
    """Held-out general conversations for the perplexity gate (never in the replay sample)."""
    probes: list[Messages]
    """Prompts (ending with a user turn) whose answers must stay close to the baseline's."""
    rows: list[dict] = field(default_factory=list)
    """SFT rows ``{"prompt": [...], "completion": [...]}`` (conversational prompt-completion)."""
    sha256: str = ""
    routing: RoutingPlan | None = None
    """The routed cycle's boundary and index (None: an unrouted adapter)."""
    held_out_cycle: int = 0
    """The cycle number the held-out split was made for (see ``split_held_out``)."""

    def manifest(self, *, watermark: str | None, replay_source: str) -> dict:
        """What the cycle trained on, by reference (ids and counts, not user text)."""
        return {
            "dataset_sha256": self.sha256,
            "ledger_watermark": watermark,
            "train_correction_ids": [c.id for c in self.train],
            "held_out_correction_ids": [c.id for c in self.held_out],
            "held_out_cycle": self.held_out_cycle,
            "replay_source": replay_source,
            "replay_conversations": len(self.replay),
            "regression_conversations": len(self.regression),
            "probe_prompts": len(self.probes),
            "rows": len(self.rows),
            **({"routing": self.routing.report()} if self.routing is not None else {}),
        }


def build_dataset(
    corrections: Sequence[Correction],
    config: TrainJobConfig,
    system_prompt: str,
    answerer: ReplayAnswerer | None = None,
    planner: RoutingPlanner | None = None,
    *,
    cycle: int = 0,
) -> CycleDataset:
    """Split the corrections, sample replay/regression/probe sets and build the SFT rows.

    ``answerer`` gives the base model's own answers; it is needed when
    ``config.replay_answers`` is "self". With a ``planner`` (routed cycles) the trained
    corrections are indexed, the replay source's first user turns serving as the pool of
    unrelated prompts the routing boundary is fitted against. ``cycle`` picks the held-out
    share's turn in its rotation (``split_held_out``; 0 for the first cycle).
    """
    train, held_out = split_held_out(corrections, config.held_out_share, config.seed, cycle=cycle)
    questions = {c.question().strip().lower() for c in corrections}
    regression_pool = _distinct_questions(load_conversations(config.regression_source), questions)
    # A fixed, seeded regression set so successive cycles are measured on the same texts.
    random.Random(config.seed).shuffle(regression_pool)
    regression = regression_pool[: config.regression_size]

    if config.replay_source == config.regression_source:
        replay_pool = regression_pool[config.regression_size :]
    else:
        replay_pool = load_conversations(config.replay_source)
    replay = random.Random(config.seed + 1).sample(
        replay_pool, min(config.replay_size, len(replay_pool))
    )

    if config.replay_answers == SELF_REPLAY and replay:
        if answerer is None:
            raise ValueError("replay_answers='self' needs the base model's answerer")
        replay = self_distilled(replay, answerer)
    probes = load_probes(config, regression, questions)

    plan = planner(train, [_first_user(c) for c in replay_pool]) if planner is not None else None
    replay_rows = [
        row for conversation in replay for row in conversation_rows(conversation, system_prompt)
    ]
    # A correction joined to another as its key is answered as that one: not trained.
    learned = plan.trained(train) if plan is not None else train
    repeats = correction_repeats(len(learned), len(replay_rows), config.correction_share)
    rows = [correction_row(c, system_prompt) for c in learned for _ in range(repeats)]
    rows += replay_rows
    dataset = CycleDataset(
        train=train,
        held_out=held_out,
        replay=replay,
        regression=regression,
        probes=probes,
        rows=rows,
        sha256=dataset_sha256(rows),
        routing=plan,
        held_out_cycle=cycle,
    )
    logger.info(
        "dataset: %s corrections to train (x%s), %s held out (cycle %s), %s replay "
        "conversations, %s rows, %s regression conversations, %s probes, sha256 %s",
        len(train),
        repeats,
        len(held_out),
        cycle,
        len(replay),
        len(rows),
        len(regression),
        len(probes),
        dataset.sha256[:12],
    )
    return dataset


def self_distilled(conversations: Sequence[Messages], answerer: ReplayAnswerer) -> list[Messages]:
    """Each conversation's first user turn with the base model's own answer to it.

    Prompts the model left unfinished are dropped.
    """
    prompts = [[{"role": "user", "content": _first_user(c)}] for c in conversations]
    prompts = [prompt for prompt in prompts if prompt[0]["content"].strip()]
    return [
        [*prompt, {"role": "assistant", "content": answer}]
        for prompt, answer in zip(prompts, answerer(prompts), strict=True)
        if answer
    ]


def correction_repeats(corrections: int, replay_rows: int, share: float) -> int:
    """How often each correction row appears so corrections make up ``share`` of the rows."""
    if corrections == 0 or replay_rows == 0:
        return 1
    return max(1, round(share * replay_rows / ((1.0 - share) * corrections)))


def split_held_out(
    corrections: Sequence[Correction], share: float, seed: int, *, cycle: int = 0
) -> tuple[list[Correction], list[Correction]]:
    """Hold out ``floor(share * n)`` corrections in ``cycle``, a different half each cycle.

    Each correction has a fixed side, even or odd (a hash of its id alone). Cycle ``c`` may
    hold out only corrections on side ``c % 2``; of those, it holds out the ones with the
    smallest hash of (seed, cycle, id). ``cycle`` is the number of versions already
    registered (``train_job.cycle``), so a cycle retried after failing the gates makes the
    same split, and each registered version moves the rotation on by one.

    Guarantee: a correction held out in cycle ``c`` is trained in cycle ``c + 1`` (if it is
    still among the corrections), whatever changed in between: corrections arriving or
    forgotten, the share, the seed. So every correction is trained in at least one of any two
    consecutive cycles. (A split made from the set alone that always held out exactly
    ``floor(share * n)`` could not promise that while the set grows: hence the sides.) The
    count is ``floor(share * n)``, fewer only when fewer corrections are on the cycle's side
    (about half are): with a share of 0.1, about 1 cycle in 1,000 at 10 corrections, rarer
    with more; a share above one half holds out about half at most. At least one
    correction is always trained.
    """
    count = min(int(share * len(corrections)), len(corrections) - 1)  # always train one
    side = [c for c in corrections if _side(c.id) == cycle % 2]
    ranked = sorted(
        side, key=lambda c: hashlib.sha256(f"{seed}:{cycle}:{c.id}".encode()).hexdigest()
    )
    held_ids = {c.id for c in ranked[: max(count, 0)]}
    train = [c for c in corrections if c.id not in held_ids]
    held_out = [c for c in corrections if c.id in held_ids]
    return train, held_out


def _side(correction_id: str) -> int:
    """0 or 1, fixed per id: unseeded, so the rotation survives a change of seed."""
    return hashlib.sha256(correction_id.encode()).digest()[0] & 1


def correction_row(correction: Correction, system_prompt: str) -> dict:
    """The correction as a prompt-completion row."""
    return {
        "prompt": _plain(with_system_prompt(correction.prompt(), system_prompt)),
        "completion": [{"role": "assistant", "content": correction.correction}],
    }


def _plain(messages: Messages) -> Messages:
    """Role and content only: every row of a dataset has the same message fields."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def conversation_rows(conversation: Messages, system_prompt: str) -> list[dict]:
    """One prompt-completion row per assistant turn, so each assistant turn carries loss."""
    conversation = _plain(with_system_prompt(conversation, system_prompt))
    return [
        {"prompt": conversation[:index], "completion": [message]}
        for index, message in enumerate(conversation)
        if message["role"] == "assistant" and index > 0
    ]


def dataset_sha256(rows: list[dict]) -> str:
    canonical = json.dumps(rows, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def load_conversations(source: str) -> list[Messages]:
    """Conversations from ``chatterbot`` (the packaged corpus) or a chat JSONL file."""
    if source == CHATTERBOT_SOURCE:
        return load_chatterbot_conversations()
    path = Path(source)
    if not path.is_file():
        raise ConfigError(
            f"conversation source {source!r} is neither {CHATTERBOT_SOURCE!r} nor a file"
        )
    return load_chat_jsonl(path)


def load_probes(
    config: TrainJobConfig, regression: list[Messages], questions: set[str]
) -> list[Messages]:
    """Probe prompts: from ``probe_source`` or the regression set's first user turns.

    Probes that repeat a corrected question are dropped: their answers are meant to move.
    """
    if config.probe_source is None:
        texts = [_first_user(conversation) for conversation in regression]
    elif config.probe_source.endswith(".jsonl"):
        texts = [_first_user(c) for c in load_conversations(config.probe_source)]
    else:
        path = Path(config.probe_source)
        try:
            texts = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read probe file {path}: {exc}") from exc
    unique: list[str] = []
    for text in (t.strip() for t in texts):
        if text and text.lower() not in questions and text not in unique:
            unique.append(text)
    return [[{"role": "user", "content": text}] for text in unique[: config.probe_size]]


def _distinct_questions(conversations: list[Messages], exclude: set[str]) -> list[Messages]:
    """One conversation per opening question (corpora repeat some), none about ``exclude``.

    So a regression conversation's question never also appears in the replay sample.
    """
    seen = set(exclude)
    distinct = []
    for conversation in conversations:
        key = _first_user(conversation).strip().lower()
        if key not in seen:
            seen.add(key)
            distinct.append(conversation)
    return distinct


def _first_user(conversation: Messages) -> str:
    return next((m["content"] for m in conversation if m.get("role") == "user"), "")
