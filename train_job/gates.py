"""Quality gates: is the new adapter good enough to register?

The new adapter and the baseline are loaded fresh from disk onto one freshly loaded base
model, the way Serve loads them (``ouro.models``, never Unsloth), into one
:class:`ouro.engine.GenerationEngine`; every answer is greedy. When the training process
has imported Unsloth, which patches transformers' model classes for the whole process,
the gates run in a fresh (spawned) process, so they measure the model Serve will run. The baseline is the current ``production`` version (downloaded from the
registry) or, when there is none, the base model with no adapter; it never contains the
new adapter.

Checks:

- fix rate: the share of trained corrections whose answer matches the correction, a
  match being a BERTScore F1 >= ``answer_f1_threshold``; must reach ``fix_rate_min``;
- generalisation: the same on the held-out corrections; reported, and a gate only when
  ``generalisation_min`` is set;
- perplexity: assistant-token perplexity on held-out general conversations may rise at
  most ``max_perplexity_rise_pct`` percent over the baseline's;
- probe similarity: the mean BERTScore F1 between the new and the baseline answers to the
  probe prompts must reach ``probe_f1_min``; the baseline being the production version,
  the reference is what users get today;
- degenerate answers: the new adapter's answers to the corrections and the probes that
  fell into a loop, a phrase repeated back to back (ouro.scoring.repeats_a_phrase), may
  outnumber the
  baseline's on the same prompts by at most ``max_degenerate_answers``.

Calibration of the default thresholds. The offline all-MiniLM-L6-v2 BERTScore has no
rescale baseline, so its raw F1 was measured on real pairs (ouro.scoring.BertScorer):

- ``answer_f1_threshold = 0.8``. Identical answers score 1.0; paraphrases of the
  corrections ("Spiders have 8 legs." for "A spider has eight legs.") 0.82-0.94, mean
  0.90; the tiny model's garbled near-misses ("A spider has eer free") 0.33-0.64; another
  chatterbot answer 0.03-0.29; 40 random characters 0.05-0.19; two unrelated answers of
  the bot 0.10-0.67. 0.8 sits above every wrong-looking answer measured and below every
  paraphrase. Answers that swap one fact word ("... is Sydney.") score 0.75-0.89:
  BERTScore cannot catch those, hence the reported ``exact_match_rate``.
- ``fix_rate_min = 0.8``: with the defaults the embedded model reproduces 20 of 20
  consistent corrections (every F1 1.0); random-character and contradictory corrections
  fail this gate.
- ``max_perplexity_rise_pct = 50`` and ``probe_f1_min = 0.6``, measured on the embedded
  model with the chatterbot corpus as regression and probe set (which it has memorised:
  perplexity 1.16): a replay-only adapter +14 % / 0.90, the default cycle +33 % / 0.76
  (+26 % / 0.94 for the small test model on what it knows), the default at twice the
  learning rate +79 % / 0.55, no replay at all +460 % / 0.17. Near a
  perplexity of 1 a small change in loss is a large percentage, hence 50 %; a larger
  model on held-out text warrants a tighter value (see configs/gpu-llama-3b.yaml).
- On smollm2-135m (the default base model) the thresholds are not re-calibrated yet.
  One measured cycle (``make demo``: 18 DailyDialog validation corrections, 4 replay
  rows) gave fix rate 0.11, probe similarity 0.595 (token F1: 1 of 16 probe answers
  unchanged), perplexity -7 % (4.58 -> 4.24 on held-out chatterbot conversations, which
  are not its own answers), 2 degenerate answers like the base model's: the gates
  rejected it, rightly. See docs/models.md, "Training a real model".
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ouro.embedded.minilm import load_embedder
from ouro.engine import BASE_ADAPTER, GenerationEngine, GenerationRequest, SamplingParams
from ouro.errors import OuroError
from ouro.routing import CorrectionIndex, Router
from ouro.scoring import BertScorer, assistant_loss, repeats_a_phrase, token_f1
from ouro.settings import OuroSettings
from train_job.config import TrainJobConfig
from train_job.corrections import Correction
from train_job.dataset import CycleDataset, Messages

logger = logging.getLogger(__name__)

CANDIDATE_ADAPTER = "new"
BASELINE_ADAPTER = "baseline"
PARENT_ADAPTER = "parent"
PATCHING_MODULES = ("unsloth",)
"""Modules that patch transformers process-wide when imported: gates never run beside them."""


class PatchedProcessError(OuroError):
    """The gates were asked to evaluate in a process whose model classes are patched."""


@dataclass
class GateCheck:
    """One check of the report."""

    name: str
    value: float | None
    """Measured value; None when there was nothing to measure."""
    threshold: float | None
    """None: reported only, not a gate."""
    comparison: str
    """How value is compared to threshold: '>=' or '<='."""
    passed: bool | None
    """None when the check is reported only or was skipped."""
    detail: str = ""

    @property
    def gating(self) -> bool:
        return self.threshold is not None and self.passed is not None


@dataclass
class AnswerResult:
    """One correction's outcome."""

    id: str
    split: str
    """'train' or 'held_out'."""
    question: str
    correction: str
    answer: str
    f1: float
    baseline_answer: str
    baseline_f1: float
    matched: bool


@dataclass
class GateReport:
    """All checks, with the answers behind them."""

    baseline: str
    checks: list[GateCheck]
    answers: list[AnswerResult] = field(default_factory=list)
    probes: list[dict] = field(default_factory=list)
    perplexity: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks if check.gating)

    def failures(self) -> list[GateCheck]:
        return [check for check in self.checks if check.gating and not check.passed]

    def summary(self) -> str:
        if self.passed:
            return "all gates passed"
        return "gates failed: " + "; ".join(
            f"{c.name} {_fmt(c.value)} (needs {c.comparison} {_fmt(c.threshold)})"
            for c in self.failures()
        )

    def checks_json(self) -> str:
        """The checks alone, compact: the registry's gate_results tag."""
        return json.dumps(
            [
                {
                    "name": c.name,
                    "value": _round(c.value),
                    "threshold": c.threshold,
                    "comparison": c.comparison,
                    "passed": c.passed,
                }
                for c in self.checks
            ],
            separators=(",", ":"),
        )

    def metrics(self) -> dict[str, float]:
        """Numeric results for the MLflow run."""
        values = {f"gate/{c.name}": c.value for c in self.checks if c.value is not None}
        values.update({f"gate/perplexity_{k}": v for k, v in self.perplexity.items()})
        values["gate/passed"] = float(self.passed)
        return values

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "summary": self.summary(),
            "baseline": self.baseline,
            "checks": [asdict(c) for c in self.checks],
            "perplexity": self.perplexity,
            "answers": [asdict(a) for a in self.answers],
            "probes": self.probes,
        }

    def to_markdown(self, *, answers: bool = True) -> str:
        """The report for people; ``answers=False`` keeps only the checks (short enough for
        an MLflow run description)."""
        lines = [
            f"# Gate report: {'PASSED' if self.passed else 'FAILED'}",
            "",
            f"Baseline: {self.baseline}. {self.summary()}.",
            "",
            "| check | value | threshold | result |",
            "|---|---|---|---|",
        ]
        for c in self.checks:
            result = "reported" if c.passed is None else ("pass" if c.passed else "FAIL")
            threshold = "-" if c.threshold is None else f"{c.comparison} {_fmt(c.threshold)}"
            lines.append(f"| {c.name} | {_fmt(c.value)} | {threshold} | {result} |")
        if answers and self.answers:
            lines += [
                "",
                "| split | question | correction | new answer | F1 | baseline F1 |",
                "|---|---|---|---|---|---|",
            ]
            for a in self.answers:
                lines.append(
                    f"| {a.split} | {_cell(a.question)} | {_cell(a.correction)} | "
                    f"{_cell(a.answer)} | {a.f1:.3f}{'' if a.matched else ' ✗'} | "
                    f"{a.baseline_f1:.3f} |"
                )
        return "\n".join(lines) + "\n"


def evaluate_gates(
    config: TrainJobConfig,
    settings: OuroSettings,
    dataset: CycleDataset,
    candidate_dir: Path,
    baseline_dir: Path | None,
    baseline_label: str,
    scorer: BertScorer | None = None,
    parent_dir: Path | None = None,
) -> GateReport:
    """Answer, score and measure; returns the report (``report.passed`` decides).

    ``parent_dir``: for a personal adapter, shared production's adapter, which answers
    (routed the same way) what the personal one does not route. Runs here, or in a fresh
    process when this one has imported Unsloth (``scorer`` is then built there).
    """
    inputs = (config, settings, dataset, candidate_dir, baseline_dir, baseline_label)
    patched = patching_modules()
    if not patched:
        return _evaluate(*inputs, scorer, parent_dir)
    logger.info("%s is imported here: evaluating the gates in a fresh process", patched[0])
    spawn = multiprocessing.get_context("spawn")  # a fork would inherit the patches
    with ProcessPoolExecutor(
        max_workers=1,
        mp_context=spawn,
        initializer=_log_like_parent,
        initargs=(logging.getLogger().getEffectiveLevel(),),
    ) as pool:
        future = pool.submit(_evaluate, *inputs, None, parent_dir)
        return future.result()


def _log_like_parent(level: int) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def patching_modules() -> list[str]:
    """The process-wide patchers imported in this process."""
    return [name for name in PATCHING_MODULES if name in sys.modules]


def _evaluate(
    config: TrainJobConfig,
    settings: OuroSettings,
    dataset: CycleDataset,
    candidate_dir: Path,
    baseline_dir: Path | None,
    baseline_label: str,
    scorer: BertScorer | None = None,
    parent_dir: Path | None = None,
) -> GateReport:
    if patching_modules():
        raise PatchedProcessError(
            f"{', '.join(patching_modules())} patched this process's model classes: the gates "
            "would not measure what Serve runs"
        )
    # Built as Serve builds its engine (same model loading, system prompt, context and
    # KV-cache limits), so the gates answer as Serve would.
    engine = GenerationEngine.from_settings(settings)
    router = Router(load_embedder(settings.model_cache_dir)) if config.routing else None
    candidate = [Tier(CANDIDATE_ADAPTER, engine, candidate_dir)]
    baseline: list[Tier] = []
    parent: list[Tier] = []
    if parent_dir is not None:
        parent = [Tier(PARENT_ADAPTER, engine, parent_dir)]
    if baseline_dir is not None and baseline_dir != parent_dir:
        baseline = [Tier(BASELINE_ADAPTER, engine, baseline_dir)]
    # Each side answered exactly as Serve would route it: its own adapter where its index
    # routes, else the parent's where that routes, else the base model.
    new_side = Side(candidate + parent, router)
    old_side = Side((baseline + parent) if baseline else parent, router)
    scorer = scorer or BertScorer()
    answers, new_answers, old_answers = _answer_corrections(
        engine, new_side, old_side, dataset, scorer, config, settings
    )
    checks = _correction_checks(answers, config)
    perplexity, check = _perplexity_check(engine, new_side, old_side, dataset, settings, config)
    checks.append(check)
    probes, new_probe, old_probe, probe_checks = _locality_checks(
        engine, new_side, old_side, dataset, scorer, config
    )
    checks += probe_checks
    if router is not None and new_side.tiers[0].index is not None:
        checks += _router_checks(new_side, dataset)
    checks.append(_degenerate_check(new_answers + new_probe, old_answers + old_probe, config))

    report = GateReport(
        baseline=baseline_label,
        checks=checks,
        answers=answers,
        probes=probes,
        perplexity=perplexity,
    )
    logger.info("gates (baseline %s): %s", baseline_label, report.summary())
    return report


def _answer_corrections(
    engine: GenerationEngine,
    new_side: Side,
    old_side: Side,
    dataset: CycleDataset,
    scorer: BertScorer,
    config: TrainJobConfig,
    settings: OuroSettings,
) -> tuple[list[AnswerResult], list[str], list[str]]:
    """Both sides' answers to every correction's prompt (trained and held out), scored
    against the correction."""
    corrections = [*dataset.train, *dataset.held_out]
    limits = [_answer_budget(engine, c, config, settings) for c in corrections]
    prompts = [c.prompt() for c in corrections]
    new_answers, _ = new_side.answers(engine, prompts, limits)
    old_answers, _ = old_side.answers(engine, prompts, limits)
    references = [c.correction for c in corrections]
    new_f1 = scorer.f1(new_answers, references)
    old_f1 = scorer.f1(old_answers, references)
    answers = [
        AnswerResult(
            id=c.id,
            split="train" if index < len(dataset.train) else "held_out",
            question=c.question(),
            correction=c.correction,
            answer=new_answers[index],
            f1=new_f1[index],
            baseline_answer=old_answers[index],
            baseline_f1=old_f1[index],
            matched=new_f1[index] >= config.answer_f1_threshold,
        )
        for index, c in enumerate(corrections)
    ]
    return answers, new_answers, old_answers


def _correction_checks(answers: list[AnswerResult], config: TrainJobConfig) -> list[GateCheck]:
    """Fix rate, generalisation, exact matches, and the baseline's fix rate beside them."""
    checks = [
        _rate_check("fix_rate", answers, "train", config.fix_rate_min, config),
        _rate_check("generalisation", answers, "held_out", config.generalisation_min, config),
    ]
    exact = _share(
        [_normalise(a.answer) == _normalise(a.correction) for a in answers if a.split == "train"]
    )
    checks.append(
        GateCheck(
            "exact_match_rate",
            exact,
            None,
            ">=",
            None,
            "trained answers equal to their correction (case and spaces "
            "ignored); BERTScore cannot tell a one-word factual slip",
        )
    )
    baseline_fix = _share(
        [a.baseline_f1 >= config.answer_f1_threshold for a in answers if a.split == "train"]
    )
    checks.append(
        GateCheck(
            "baseline_fix_rate",
            baseline_fix,
            None,
            ">=",
            None,
            "the baseline's fix rate on the same corrections, for comparison",
        )
    )
    return checks


def _perplexity_check(
    engine: GenerationEngine,
    new_side: Side,
    old_side: Side,
    dataset: CycleDataset,
    settings: OuroSettings,
    config: TrainJobConfig,
) -> tuple[dict[str, float], GateCheck]:
    """Both sides' perplexity on the regression conversations, each routed as Serve would."""
    if not dataset.regression:
        return {}, GateCheck(
            "perplexity_rise_pct",
            None,
            config.max_perplexity_rise_pct,
            "<=",
            None,
            "skipped: no regression set",
        )
    # Routed on the opening user turn, as the conversation's first request was.
    openings = [_opening(c) for c in dataset.regression]
    perplexity = {
        side_name: _routed_perplexity(
            engine, dataset.regression, side.route(openings)[1], settings, config
        )
        for side_name, side in (("new", new_side), ("baseline", old_side))
    }
    rise = (perplexity["new"] / perplexity["baseline"] - 1.0) * 100.0
    return perplexity, GateCheck(
        "perplexity_rise_pct",
        rise,
        config.max_perplexity_rise_pct,
        "<=",
        rise <= config.max_perplexity_rise_pct,
        f"{perplexity['baseline']:.3f} -> {perplexity['new']:.3f} on "
        f"{len(dataset.regression)} held-out conversations",
    )


def _locality_checks(
    engine: GenerationEngine,
    new_side: Side,
    old_side: Side,
    dataset: CycleDataset,
    scorer: BertScorer,
    config: TrainJobConfig,
) -> tuple[list[dict], list[str], list[str], list[GateCheck]]:
    """Both sides' answers to the probes (prompts the corrections are not about): the
    share unchanged, and their similarity."""
    locality_prompts = dataset.probes
    if not locality_prompts:
        skipped = GateCheck(
            "probe_similarity", None, config.probe_f1_min, ">=", None, "skipped: no probe prompts"
        )
        return [], [], [], [skipped]
    checks = []
    limit = [config.gate_max_new_tokens] * len(locality_prompts)
    new_prompts, new_routes = new_side.route(locality_prompts)
    old_prompts, old_routes = old_side.route(locality_prompts)
    # Where both sides route a prompt to the base model its answer is the same by
    # construction: only prompts routed differently, or to an adapter, are generated.
    differ = [i for i, (n, o) in enumerate(zip(new_routes, old_routes, strict=True)) if n or o]
    new_asked = greedy_answers(
        engine,
        [new_prompts[i] for i in differ],
        [new_routes[i] for i in differ],
        limit[: len(differ)],
    )
    old_asked = greedy_answers(
        engine,
        [old_prompts[i] for i in differ],
        [old_routes[i] for i in differ],
        limit[: len(differ)],
    )
    new_probe, old_probe = [""] * len(locality_prompts), [""] * len(locality_prompts)
    for slot, i in enumerate(differ):
        new_probe[i], old_probe[i] = new_asked[slot], old_asked[slot]
    generated = set(differ)
    same = [i not in generated for i in range(len(locality_prompts))]
    similarity = scorer.f1(new_probe, old_probe)
    unchanged = [
        s or token_f1(n, o) >= config.locality_f1_threshold
        for s, n, o in zip(same, new_probe, old_probe, strict=True)
    ]
    probes = [
        {
            "prompt": p[-1]["content"],
            "route": new_routes[i] or "base",
            "baseline_route": old_routes[i] or "base",
            "answer": n,
            "baseline_answer": o,
            "f1": f,
            "unchanged": u,
        }
        for i, (p, n, o, f, u) in enumerate(
            zip(locality_prompts, new_probe, old_probe, similarity, unchanged, strict=True)
        )
    ]
    share = sum(unchanged) / len(unchanged)
    checks.append(
        GateCheck(
            "locality",
            share,
            config.locality_min,
            ">=",
            None if config.locality_min is None else share >= config.locality_min,
            f"{sum(unchanged)}/{len(unchanged)} answers to probes unchanged through the "
            f"router (token F1 >= {config.locality_f1_threshold}); {len(differ)} reached "
            "an adapter",
        )
    )
    if similarity:
        mean = sum(similarity) / len(similarity)
        checks.append(
            GateCheck(
                "probe_similarity",
                mean,
                config.probe_f1_min,
                ">=",
                mean >= config.probe_f1_min,
                f"mean F1 new vs baseline over {len(similarity)} probe prompts",
            )
        )
    return probes, new_probe, old_probe, checks


def _degenerate_check(
    new_answers: list[str], old_answers: list[str], config: TrainJobConfig
) -> GateCheck:
    """Answers that repeat a phrase back to back, against the baseline's."""
    new_degenerate = sum(map(repeats_a_phrase, new_answers))
    old_degenerate = sum(map(repeats_a_phrase, old_answers))
    return GateCheck(
        "degenerate_answers",
        float(new_degenerate - old_degenerate),
        float(config.max_degenerate_answers),
        "<=",
        new_degenerate - old_degenerate <= config.max_degenerate_answers,
        f"{new_degenerate} new answers repeat a phrase back to back, the baseline's "
        f"{old_degenerate}",
    )


def _rate_check(
    name: str,
    answers: list[AnswerResult],
    split: str,
    minimum: float | None,
    config: TrainJobConfig,
) -> GateCheck:
    matched = [a.matched for a in answers if a.split == split]
    if not matched:
        return GateCheck(name, None, minimum, ">=", None, f"skipped: no {split} corrections")
    rate = _share(matched)
    detail = (
        f"{sum(matched)}/{len(matched)} {split} answers with BERTScore F1 >= "
        f"{config.answer_f1_threshold}"
    )
    passed = None if minimum is None else rate >= minimum
    return GateCheck(name, rate, minimum, ">=", passed, detail)


def _answer_budget(
    engine: GenerationEngine,
    correction: Correction,
    config: TrainJobConfig,
    settings: OuroSettings,
) -> int:
    """Room for the correction plus a margin: enough to reproduce it, no more."""
    tokens = len(engine.tokenizer(correction.correction, add_special_tokens=False)["input_ids"])
    return max(1, min(max(config.gate_max_new_tokens, tokens + 8), settings.max_tokens_limit))


def greedy_answers(
    engine: GenerationEngine,
    prompts: Sequence[Messages],
    adapters: Sequence[str | None],
    limits: Sequence[int],
) -> list[str]:
    """Greedy answers, each prompt with its own adapter (None: the base model); the engine
    batches them within its own limits."""
    if not prompts:
        return []
    requests = [
        GenerationRequest(messages=list(p), params=SamplingParams(max_tokens=n), adapter=a)
        for p, a, n in zip(prompts, adapters, limits, strict=True)
    ]
    return [output.text.strip() for output in engine.generate(requests)]


class Tier:
    """One adapter loaded for the gates, with the correction index saved beside it."""

    def __init__(self, adapter: str, engine: GenerationEngine, adapter_dir: Path) -> None:
        engine.add_adapter(adapter, adapter_dir)
        self.adapter = adapter
        self.index: CorrectionIndex | None = CorrectionIndex.load(adapter_dir)


@dataclass
class Side:
    """What answers on one side of the comparison: the first tier whose router routes a
    prompt, else the base model; without a router (unrouted recipe) the first tier."""

    tiers: list[Tier]
    router: Router | None

    def route(self, prompts: Sequence[Messages]) -> tuple[list[Messages], list[str | None]]:
        """Each prompt as its answerer reads it (``RouteDecision.prompt``), and the adapter
        that answers it (None: the base model), exactly as Serve routes."""
        if self.router is None:
            first = self.tiers[0].adapter if self.tiers else None
            return [list(p) for p in prompts], [first] * len(prompts)
        indexes = [tier.index for tier in self.tiers]
        self.router.prefetch(prompts)
        routed, adapters = [], []
        for prompt in prompts:
            position, decision = self.router.choose(indexes, prompt)
            routed.append(decision.prompt(prompt) if position < len(self.tiers) else list(prompt))
            adapters.append(self.tiers[position].adapter if position < len(self.tiers) else None)
        return routed, adapters

    def answers(
        self, engine: GenerationEngine, prompts: Sequence[Messages], limits: Sequence[int]
    ) -> tuple[list[str], list[str | None]]:
        """Greedy answers to ``prompts`` as routed, and the adapter behind each."""
        routed, adapters = self.route(prompts)
        return greedy_answers(engine, routed, adapters, limits), adapters


def _router_checks(side: Side, dataset: CycleDataset) -> list[GateCheck]:
    """The router's error rates, reported: false accepts on the unrelated pool, false
    rejects on the calibration paraphrases, and the lessons its users' corrections taught
    (``train_job.routed.learn``)."""
    plan = dataset.routing
    if plan is None or side.router is None:
        return []
    lessons = plan.lessons
    _, routed = side.route([[{"role": "user", "content": p}] for p in plan.pool])
    false_accept = sum(a is not None for a in routed) / len(routed) if routed else 0.0
    return [
        GateCheck(
            "router_false_accept",
            false_accept,
            None,
            "<=",
            None,
            f"{sum(a is not None for a in routed)}/{len(routed)} unrelated pool prompts the "
            "router sends to the new adapter (each is answered as the correction it matched)",
        ),
        GateCheck(
            "router_false_reject",
            1.0 - plan.calibration.paraphrase_recall,
            None,
            "<=",
            None,
            "calibration paraphrases the boundary rejects; " + plan.calibration.boundary.source,
        ),
        GateCheck(
            "router_learned_false_accepts",
            float(lessons.false_accepts),
            None,
            ">=",
            None,
            "corrected answers of a match with another correction: their requests got keys "
            "of their own, and near_miss pairs joined the calibration",
        ),
        GateCheck(
            "router_learned_false_rejects",
            float(lessons.false_rejects),
            None,
            ">=",
            None,
            f"corrections repeating one the router did not send them to: joined to it as "
            f"keys ({len(lessons.joined)} keys joined in all), paraphrase pairs in the "
            "calibration",
        ),
        GateCheck(
            "router_lessons_applied",
            plan.lessons_applied(side.router) / len(lessons.taught) if lessons.taught else None,
            None,
            ">=",
            None,
            "share of those the new index decides as their users said (a false accept no "
            "longer sent where it was, a false reject sent to the correction it repeats)",
        ),
    ]


def _opening(conversation: Messages) -> Messages:
    """The conversation up to its first user turn (what its first request was)."""
    for index, message in enumerate(conversation):
        if message.get("role") == "user":
            return list(conversation[: index + 1])
    return list(conversation)


def _routed_perplexity(
    engine: GenerationEngine,
    conversations: Sequence[Messages],
    adapters: Sequence[str | None],
    settings: OuroSettings,
    config: TrainJobConfig,
) -> float:
    """Assistant-token perplexity, each conversation scored with the adapter it is routed to."""
    nll, tokens = 0.0, 0
    for adapter in dict.fromkeys(adapters):
        group = [c for c, a in zip(conversations, adapters, strict=True) if a == adapter]
        loss = assistant_loss(
            engine.model,
            engine.tokenizer,
            group,
            settings.system_prompt,
            adapter_name=adapter or BASE_ADAPTER,
            max_length=config.max_length,
        )
        nll, tokens = nll + loss.nll_sum, tokens + loss.tokens
    return math.exp(nll / tokens) if tokens else float("nan")


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _cell(text: str, limit: int = 60) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"
