"""Does a correction heal where it applies, and nowhere else? (``make demo``)

Measures routed corrections (``ouro.routing``) on the default model, the way a user meets
them: corrections go into a fresh feedback ledger, ``python -m train_job run
--auto-promote --json`` runs as a subprocess (process start included in its time), and
the production version is then asked, through the router exactly as Serve routes, greedy,
natural stop, at most 64 new tokens:

- reliability: the corrected question, answer token F1 >= 0.8 against the correction;
- generality: a paraphrase of it, the correction's key fact in the answer;
- locality: a same-shaped near-miss question, and unrelated DailyDialog openers, answer
  token F1 >= 0.8 against the base model's answer before any cycle;
- accumulation: cycles of ``--per-cycle`` corrections one after another (each trains from
  the base on all so far); after the last, the share of the first cycle's fixes that hold.

The corrections come from ``loadtests/fixtures/router_corrections.jsonl`` (written for this
benchmark, topics disjoint from the router's calibration pairs). ``--dailydialog-pairs N``
adds a second scenario on data nobody tuned on: N DailyDialog validation openings (a line
and its reply) as corrections, their reliability and the locality of other openers.

``--teach N`` adds a phase where simulated users teach the router (``teach_scenario``): N
corrections of ``loadtests/fixtures/router_generality.jsonl`` (three paraphrases and two
near-misses each, written before any tuning), a cycle, users correcting what the router got
wrong on paraphrase 1 and near-miss 1, a second cycle; measured on paraphrases 2-3 and
near-miss 2, which nobody corrected (``teach``: ``generality``, ``locality_near_miss``,
``locality_unrelated`` after each cycle, and the share of taught requests now decided as
their users said, ``applied``).

Results go to ``loadtests/results/heal.json``, keys ``reliability``, ``generality``,
``locality_unrelated``, ``locality_near_miss``, ``first_cycle_retained``,
``cycle_wall_s`` (per cycle), ``router_cpu_ms_p50``, and ``router_ceiling``: the best any
boundary of the calibration grid could do on these very items (``router_ceiling``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from data.cleaning import clean_text
from data.sources.dailydialog import read_dailydialog
from ouro.embedded.minilm import load_embedder
from ouro.embedding import SentenceEmbedder
from ouro.engine import GenerationEngine
from ouro.ledger import FeedbackLedger
from ouro.names import BASE_MODEL_NAME, SERVED_MODEL_NAME, version_label
from ouro.registry import AdapterRegistry
from ouro.routing import Candidates, CorrectionIndex, RouteDecision, Router, boundary_grid
from ouro.scoring import token_f1
from ouro.settings import DEFAULT_BASE_MODEL, OuroSettings
from train_job.gates import Side, Tier, greedy_answers

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE = REPO_ROOT / "loadtests" / "fixtures" / "router_corrections.jsonl"
TEACH_FIXTURE = REPO_ROOT / "loadtests" / "fixtures" / "router_generality.jsonl"
DAILYDIALOG = REPO_ROOT.parent / "shared" / "datasets" / "dailydialog" / "dialogues_validation.txt"
DAILYDIALOG_ZIP = "http://yanran.li/files/ijcnlp_dailydialog.zip"
"""DailyDialog's original distribution (http://yanran.li/dailydialog)."""
RESULTS = REPO_ROOT / "loadtests" / "results" / "heal.json"
MATCH_F1 = 0.8
MAX_NEW_TOKENS = 64


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def load_fixture(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def dailydialog_missing(path: Path) -> str | None:
    """Where DailyDialog comes from and how to get it, when ``path`` does not exist; else None.

    The dataset is not part of the repository (its licence is not the project's), so a
    clone has no copy until its user fetches one.
    """
    if path.exists():
        return None
    extracted = "ijcnlp_dailydialog/validation/dialogues_validation.txt"
    return (
        f"DailyDialog not found at {path}.\n"
        "The demo asks DailyDialog's validation openings as unrelated questions (and, with\n"
        "--dailydialog-pairs, uses some as corrections). DailyDialog (Li et al., 2017,\n"
        "https://arxiv.org/abs/1710.03957; licence CC BY-NC-SA 4.0) is not shipped with Ouro.\n"
        "Get it from http://yanran.li/dailydialog:\n"
        f"  curl -LO {DAILYDIALOG_ZIP}\n"
        "  unzip ijcnlp_dailydialog.zip && unzip ijcnlp_dailydialog/validation.zip -d ijcnlp_dailydialog\n"
        "then give the file (the __eou__ text; the Kaggle CSV is read too):\n"
        f"  make demo DAILYDIALOG={extracted}\n"
        f"  python -m loadtests.bench_heal --dailydialog {extracted} ..."
    )


def dailydialog_openers(path: Path, count: int, seed: int) -> list[tuple[str, str]]:
    """(line, reply) openings of DailyDialog dialogues, cleaned as a user would type them."""
    pairs = []
    for conversation in read_dailydialog(path).conversations:
        texts = [clean_text(m["content"]) for m in conversation.messages[:2]]
        if len(texts) == 2 and all(3 <= len(t.split()) <= 25 for t in texts):
            pairs.append((texts[0], texts[1]))
    random.Random(seed).shuffle(pairs)
    return pairs[:count]


def seed(
    ledger_dir: Path,
    corrections: list[tuple[str, str]],
    writer: str,
    models: list[str] | None = None,
) -> None:
    """Append corrections to the ledger as ``POST /v1/feedback`` does; ``models``: the
    version that answered each (default: ``ouro``, whatever production was)."""
    ledger = FeedbackLedger(ledger_dir, writer, max_record_bytes=256_000, max_field_chars=32_000)
    try:
        for k, (question, correction) in enumerate(corrections):
            ledger.append(
                messages=user(question),
                completion="(the model's answer)",
                correction=correction,
                model=models[k] if models is not None else SERVED_MODEL_NAME,
            )
    finally:
        ledger.close()


def run_cycle(
    data_dir: Path, base_model: str, extra: list[str], *, auto_promote: bool = True
) -> tuple[dict, float]:
    """``python -m train_job run --json`` (with ``--auto-promote`` unless told otherwise)."""
    env = {**os.environ, "OURO_DATA_DIR": str(data_dir), "OURO_BASE_MODEL": base_model}
    promote = ["--auto-promote"] if auto_promote else []
    command = [sys.executable, "-m", "train_job", "run", *promote, "--json", *extra]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if done.returncode not in (0, 3):
        raise SystemExit(f"train_job run failed with exit code {done.returncode}")
    return json.loads(done.stdout), wall


class Answerer:
    """The base model, and the production version through its router, as Serve answers."""

    def __init__(self, settings: OuroSettings) -> None:
        self.settings = settings
        self.engine = GenerationEngine.from_settings(settings)
        self.router = Router(load_embedder(settings.model_cache_dir))
        self.registry = AdapterRegistry(settings.tracking_uri, settings.registered_model_name)
        self.loaded: set[int] = set()

    def base(self, prompts: list[str]) -> list[str]:
        conversations = [user(p) for p in prompts]
        return greedy_answers(
            self.engine, conversations, [None] * len(prompts), self._limits(prompts)
        )

    def production(self, prompts: list[str]) -> tuple[list[str], list[str | None]]:
        """Answers as Serve gives them (routed, a match read as its correction's question),
        and the model name each answer carries (``ouro@vN``, or ``ouro-base``)."""
        version = self.registry.snapshot().production
        if version is None:
            return self.base(prompts), [BASE_MODEL_NAME] * len(prompts)
        side = Side([Tier(version_label(version), self.engine, self._path(version))], self.router)
        answers, tiers = side.answers(
            self.engine, [user(p) for p in prompts], self._limits(prompts)
        )
        return answers, [tier or BASE_MODEL_NAME for tier in tiers]

    def decisions(self, prompts: list[str]) -> list[RouteDecision]:
        """The production index's decision for each prompt."""
        index = CorrectionIndex.load(self._path(self.registry.snapshot().production))
        return [self.router.decide(index, user(p)) for p in prompts]

    def _path(self, version: int) -> Path:
        return self.registry.download(version, self.settings.adapter_cache_dir)

    @staticmethod
    def _limits(prompts: list[str]) -> list[int]:
        return [MAX_NEW_TOKENS] * len(prompts)

    def router_cpu_ms(self, prompts: list[str]) -> float:
        """p50 thread CPU of one routing decision against the production index (each
        prompt embedded afresh: no cache)."""
        index = CorrectionIndex.load(self._path(self.registry.snapshot().production))
        router = Router(self.router.embedder, cache_size=0)
        costs = []
        for prompt in prompts:
            start = time.thread_time()
            router.decide(index, user(prompt))
            costs.append((time.thread_time() - start) * 1000)
        return float(np.median(costs))


def share(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 3) if flags else None


def unchanged(answers: list[str], questions: list[str], before: dict) -> float | None:
    """Share of ``answers`` that match the base model's answer ``before`` to their question."""
    return share(
        [token_f1(a, before[q]) >= MATCH_F1 for a, q in zip(answers, questions, strict=True)]
    )


def routed(models: list[str]) -> int:
    """How many answers came from an adapter (not the base model)."""
    return sum(model != BASE_MODEL_NAME for model in models)


def has_fact(answer: str, fact: str) -> bool:
    return fact.lower() in answer.lower()


def measure(answerer: Answerer, items: list[dict], unrelated: list[str], before: dict) -> dict:
    """The four rates for the corrections in ``items`` against the answers ``before``."""
    questions = [i["question"] for i in items]
    paraphrases = [i["paraphrase"] for i in items]
    near = [i["near_miss"] for i in items]
    answers, routes = answerer.production(questions + paraphrases + near + unrelated)
    n = len(items)
    fixed = [
        token_f1(a, i["correction"]) >= MATCH_F1 for a, i in zip(answers[:n], items, strict=True)
    ]
    general = [has_fact(a, i["key_fact"]) for a, i in zip(answers[n : 2 * n], items, strict=True)]
    return {
        "reliability": share(fixed),
        "generality": share(general),
        "locality_near_miss": unchanged(answers[2 * n : 3 * n], near, before),
        "locality_unrelated": unchanged(answers[3 * n :], unrelated, before),
        "routed": {
            "questions": routed(routes[:n]),
            "paraphrases": routed(routes[n : 2 * n]),
            "near_misses": routed(routes[2 * n : 3 * n]),
            "unrelated": routed(routes[3 * n :]),
        },
        "answers": [
            {
                "question": i["question"],
                "answer": answers[k],
                "fixed": fixed[k],
                "paraphrase": i["paraphrase"],
                "paraphrase_answer": answers[n + k],
                "near_miss": i["near_miss"],
                "near_miss_before": before[i["near_miss"]],
                "near_miss_answer": answers[2 * n + k],
            }
            for k, i in enumerate(items)
        ],
        "_fixed": fixed,
    }


NEAR_MISS_BUDGETS = (0.10, 0.20, 0.30)
UNRELATED_BUDGET = 0.01


def router_ceiling(embedder: SentenceEmbedder, items: list[dict], unrelated: list[str]) -> dict:
    """The best any boundary of the calibration grid does on these very items: for each
    near-miss budget, the most paraphrases routed to their own correction with at most that
    share of the near-misses routed anywhere and at most 1% of ``unrelated``, all decided
    against the index of every item's question. Tuned on the evaluation itself, so an
    upper bound for the router (the embedder and the boundary's form), not a result."""
    questions = [i["question"] for i in items]
    paraphrases = Candidates.of(embedder, [i["paraphrase"] for i in items], questions)
    near_misses = Candidates.of(embedder, [i["near_miss"] for i in items], questions)
    others = Candidates.of(embedder, unrelated, questions)
    own = np.arange(len(items))
    rates = [
        (paraphrases.share_routed(b, to=own), near_misses.share_routed(b), b)
        for b in boundary_grid()
        if others.share_routed(b) <= UNRELATED_BUDGET
    ]
    ceiling = {}
    for budget in NEAR_MISS_BUDGETS:
        within = [r for r in rates if r[1] <= budget]
        if within:
            recall, near, b = max(within, key=lambda r: (r[0], -r[1]))
            ceiling[f"near_miss_{budget:.2f}"] = {
                "paraphrases_routed": round(recall, 3),
                "near_misses_routed": round(near, 3),
                "boundary": [b.base, b.slope],
            }
    return ceiling


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default=DEFAULT_BASE_MODEL)
    parser.add_argument("--fixture", type=Path, default=FIXTURE)
    parser.add_argument("--dailydialog", type=Path, default=DAILYDIALOG)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--per-cycle", type=int, default=10)
    parser.add_argument("--unrelated", type=int, default=50, help="DailyDialog openers")
    parser.add_argument("--dailydialog-pairs", type=int, default=0)
    parser.add_argument(
        "--teach", type=int, default=0, help="corrections of --teach-fixture users teach with"
    )
    parser.add_argument("--teach-fixture", type=Path, default=TEACH_FIXTURE)
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / ".cache" / "heal")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("train_args", nargs="*", help="extra `train_job run` flags (after --)")
    args = parser.parse_args(argv)
    # Before any model loads: every run asks DailyDialog openers (--unrelated).
    missing = dailydialog_missing(args.dailydialog)
    if missing:
        print(missing, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    items = load_fixture(args.fixture)[: args.cycles * args.per_cycle]
    openers = dailydialog_openers(args.dailydialog, args.unrelated + args.dailydialog_pairs, 1)
    unrelated = [q for q, _ in openers[: args.unrelated]]
    data_dir = args.work_dir / "data"
    for fresh in ("feedback", "mlflow", "adapters"):
        shutil.rmtree(data_dir / fresh, ignore_errors=True)
    settings = OuroSettings(data_dir=data_dir, base_model=args.base_model)
    answerer = Answerer(settings)
    asked = [i[k] for i in items for k in ("near_miss",)] + unrelated
    before = dict(zip(asked, answerer.base(asked), strict=True))

    cycles = []
    first: list[dict] = []
    for number in range(args.cycles):
        batch = items[number * args.per_cycle : (number + 1) * args.per_cycle]
        first = first or batch
        seed(data_dir / "feedback", [(i["question"], i["correction"]) for i in batch], f"c{number}")
        result, wall = run_cycle(data_dir, args.base_model, args.train_args)
        so_far = items[: (number + 1) * args.per_cycle]
        rates = measure(answerer, so_far, unrelated, before)
        fixed = rates.pop("_fixed")
        cycles.append(
            {
                "cycle": number + 1,
                "corrections": len(so_far),
                "outcome": result["outcome"],
                "version": result["version"],
                "wall_s": round(wall, 1),
                "stage_s": result["timings_s"],
                "gates": {g["name"]: g["value"] for g in result.get("gates") or []},
                **rates,
                "first_cycle_fixed": share(fixed[: len(first)]),
            }
        )
        logger.info("cycle %s: %s", number + 1, {k: cycles[-1][k] for k in list(cycles[-1])[:12]})

    summary: dict = {
        "base_model": args.base_model,
        "command": "python -m loadtests.bench_heal " + " ".join(argv or sys.argv[1:]),
    }
    if cycles:
        last = cycles[-1]
        summary |= {
            "corrections": len(items),
            "reliability": last["reliability"],
            "generality": last["generality"],
            "locality_unrelated": last["locality_unrelated"],
            "locality_near_miss": last["locality_near_miss"],
            "first_cycle_retained": last["first_cycle_fixed"],
            "cycle_wall_s": [c["wall_s"] for c in cycles],
            "router_cpu_ms_p50": round(answerer.router_cpu_ms(unrelated), 2),
            "router_ceiling": router_ceiling(answerer.router.embedder, items, unrelated),
        }
    if args.dailydialog_pairs:
        summary["dailydialog"] = dailydialog_scenario(
            args, openers[args.unrelated :], unrelated, before
        )
    if args.teach:
        summary["teach"] = teach_scenario(args, unrelated, before)
    summary["machine"] = f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**summary, "cycles": cycles}, indent=2), encoding="utf-8")
    print(json.dumps(summary, indent=2))
    return 0


def teach_scenario(args: argparse.Namespace, unrelated: list[str], before_unrelated: dict) -> dict:
    """Users teach the router, on ``--teach-fixture`` (corrections with three paraphrases
    and two near-misses each, their own answers and key facts; nobody tuned on them).

    Cycle 1 learns the corrections. Then users ask paraphrase 1 and near-miss 1 of each and
    correct every wrong answer as Serve's users do, naming the version that answered: a
    paraphrase without the key fact with its correction, a near-miss answered by the
    adapter (a match) without its own key fact with its own answer. Cycle 2 learns from
    them (``train_job.routed.learn``). Measured after each cycle on what nobody corrected:
    paraphrases 2-3 (generality: the key fact in the answer) and near-miss 2 (unchanged
    against the base model), plus the taught requests themselves.
    """
    data_dir = args.work_dir / "teach"
    for fresh in ("feedback", "mlflow", "adapters"):
        shutil.rmtree(data_dir / fresh, ignore_errors=True)
    items = load_fixture(args.teach_fixture)[: args.teach]
    answerer = Answerer(OuroSettings(data_dir=data_dir, base_model=args.base_model))
    near = [i["near_misses"][k]["question"] for i in items for k in (0, 1)]
    before = dict(zip(near, answerer.base(near), strict=True)) | before_unrelated

    def held_out(label: str) -> dict:
        paraphrases = [i["paraphrases"][k] for i in items for k in (1, 2)]
        second = [i["near_misses"][1]["question"] for i in items]
        answers, models = answerer.production(paraphrases + second + unrelated)
        n, m = len(paraphrases), len(second)
        facts = [i["key_fact"] for i in items for _ in (1, 2)]
        return {
            "after": label,
            "generality": share([has_fact(a, f) for a, f in zip(answers[:n], facts, strict=True)]),
            "locality_near_miss": unchanged(answers[n : n + m], second, before),
            "locality_unrelated": unchanged(answers[n + m :], unrelated, before),
            "routed": {
                "paraphrases": routed(models[:n]),
                "near_misses": routed(models[n : n + m]),
                "unrelated": routed(models[n + m :]),
            },
        }

    seed(
        data_dir / "feedback",
        [(i["question"], i["correction"]) for i in items],
        "t1",
        [BASE_MODEL_NAME] * len(items),
    )
    first, first_wall = run_cycle(data_dir, args.base_model, args.train_args)
    cycles = [held_out("cycle 1") | {"wall_s": round(first_wall, 1), "outcome": first["outcome"]}]

    # The users' turn: paraphrase 1 and near-miss 1 of each correction, corrected if wrong.
    asked = [
        (i["paraphrases"][0], i["correction"], i["key_fact"], i["question"], True) for i in items
    ]
    asked += [
        (
            i["near_misses"][0]["question"],
            i["near_misses"][0]["answer"],
            i["near_misses"][0]["key_fact"],
            i["question"],
            False,
        )
        for i in items
    ]
    answers, models = answerer.production([text for text, *_ in asked])
    taught = [
        (text, correction, model, question, paraphrase)
        for (text, correction, fact, question, paraphrase), answer, model in zip(
            asked, answers, models, strict=True
        )
        if not has_fact(answer, fact) and (paraphrase or model != BASE_MODEL_NAME)
    ]
    seed(data_dir / "feedback", [(t[0], t[1]) for t in taught], "t2", [t[2] for t in taught])
    second, second_wall = run_cycle(data_dir, args.base_model, args.train_args)
    cycles.append(
        held_out("users taught it")
        | {"wall_s": round(second_wall, 1), "outcome": second["outcome"]}
    )

    # Every taught request decided as its user said: a paraphrase now reaches its
    # correction (answered as its question), a near-miss no longer does.
    decisions = answerer.decisions([t[0] for t in taught])
    applied = [
        (decision.routed and decision.question == question) == paraphrase
        for (_, _, _, question, paraphrase), decision in zip(taught, decisions, strict=True)
    ]
    gates = {g["name"]: g["value"] for g in second.get("gates") or []}
    return {
        "corrections": len(items),
        "taught": {
            "paraphrases": sum(t[4] for t in taught),
            "near_misses": sum(not t[4] for t in taught),
            "applied": share(applied),
            "gates": {
                name: value
                for name, value in gates.items()
                if "lesson" in name or "learned" in name
            },
        },
        "cycles": cycles,
    }


def dailydialog_scenario(
    args: argparse.Namespace, pairs: list[tuple[str, str]], unrelated: list[str], before: dict
) -> dict:
    """One cycle on DailyDialog openings (nobody tuned on these): reliability and locality."""
    data_dir = args.work_dir / "dailydialog"
    for fresh in ("feedback", "mlflow", "adapters"):
        shutil.rmtree(data_dir / fresh, ignore_errors=True)
    seed(data_dir / "feedback", pairs, "dd")
    result, wall = run_cycle(data_dir, args.base_model, args.train_args)
    answerer = Answerer(OuroSettings(data_dir=data_dir, base_model=args.base_model))
    questions = [q for q, _ in pairs]
    answers, _ = answerer.production(questions + unrelated)
    n = len(pairs)
    return {
        "corrections": n,
        "outcome": result["outcome"],
        "wall_s": round(wall, 1),
        "reliability": share(
            [token_f1(a, c) >= MATCH_F1 for a, (_, c) in zip(answers[:n], pairs, strict=True)]
        ),
        "locality_unrelated": unchanged(answers[n:], unrelated, before),
    }


if __name__ == "__main__":
    sys.exit(main())
