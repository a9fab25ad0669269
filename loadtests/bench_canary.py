"""Canary rollout judged by users: is a bad version rolled back and a good one promoted?

    python -m loadtests.bench_canary [--runs 10] [--users 50] [--interval-s 5]
        [--max-tokens 24] [--base-model smollm2-135m] [--out DIR]

On the default model, through ``python -m serve`` on 127.0.0.1 (a fresh data dir, a local
MLflow store) and the real training job:

1. ``python -m train_job run --auto-promote`` on the first ``--per-cycle`` corrections of
   ``loadtests/fixtures/router_corrections.jsonl``: version 1, production.
2. The next ``--per-cycle`` corrections join the ledger, and a *bad candidate* is trained
   with the gates opened (``--no-routing``, every gate threshold off): an adapter that
   answers everything and changes unrelated answers. ``run --canary`` makes it the canary.
3. ``--runs`` runs, each with its own seed: the canary (re)starts at the first of
   ``--steps`` (10%, the chart's default share, then 25% and 50%), and ``--users`` simulated users, each with an API key of its own, ask prompts
   from a pool whose good answers are known (the corrected questions: their key fact; the
   unrelated chatterbot openers: the base model's own answer, token F1 >= 0.8), correct a
   wrong answer with probability ``--correct-p``, otherwise rate it with ``--rate-p``
   (thumbs down when wrong, up when right), and now and then ask a follow-up turn in the
   same conversation, sending the first answer's completion id back in
   ``x-ouro-conversation`` as the chat page does. A run ends when the coordinator's
   controller decides.
4. The bad candidate's rollback leaves its corrections pending, so ``run --canary`` trains
   a *good candidate* (routed, gates as shipped) on all of them, and step 3 runs again
   with it (production reset to version 1 before each run).

Reported per candidate: decisions, canary requests at the decision, the share of all
answers in the window that came from the canary wrong where production's answer to the
same prompt was right (the window: the 3,000 answers in which a 10% canary answers the 300
requests a rollback may take; also given over the answers while the canary ran), failed requests (every status but 200/201), conversations
answered by two versions, and the CPU of the coordinator (which runs the controller)
against the LLM server replica's (the coordinator also answers the replicas' long-polls,
so its CPU bounds the controller's from above). The users' own feedback goes to a ledger
apart from the training one, so both candidates train on the same fixture corrections.
Results: ``loadtests/results/canary.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from loadtests.bench_heal import FIXTURE, load_fixture, run_cycle, seed
from loadtests.bench_stack import cpu_seconds_by_process, prepare_base_model, serve_process
from ouro.corpus import load_chatterbot_conversations
from ouro.names import ALIAS_CANARY, ALIAS_PRODUCTION, version_label
from ouro.registry import AdapterRegistry
from ouro.rollout import CanaryPolicy, Rollout, assigned_version, rollout_record
from ouro.scoring import token_f1
from ouro.settings import DEFAULT_BASE_MODEL, OuroSettings

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "loadtests" / "results" / "canary.json"
MATCH_F1 = 0.8
WINDOW_CANARY_REQUESTS = 300
"""A bad canary must be rolled back within this many of its own requests."""
OPENED_GATES = [
    "--no-routing",
    "--fix-rate-min", "0",
    "--probe-f1-min", "0",
    "--max-perplexity-rise-pct", "1000000",
    "--locality-min", "0",
    "--max-degenerate-answers", "1000",
]  # fmt: skip
"""Every gate of the training job off: what a careless operator could register."""


@dataclass
class Prompt:
    text: str
    key_fact: str | None = None
    """The corrected questions' key fact; None: an unrelated prompt."""
    base_answer: str = ""
    production_right: bool = True

    @property
    def good_answer(self) -> str:
        """What a user who knows better writes as the correction."""
        if self.key_fact is not None:
            return f"The answer is: {self.key_fact}."
        return self.base_answer

    def right(self, answer: str) -> bool:
        if self.key_fact is not None:
            return self.key_fact.lower() in answer.lower()
        return token_f1(answer, self.base_answer) >= MATCH_F1


@dataclass
class Run:
    """One canary, start to decision."""

    seed: int
    decision: str | None = None
    reason: str = ""
    wall_s: float = 0.0
    answers: int = 0
    canary_answers: int = 0
    canary_wrong_where_production_right: int = 0
    failed: int = 0
    conversations_two_versions: int = 0
    conversations_spanning_a_decision: int = 0
    feedback: dict[str, int] = field(default_factory=dict)

    def harm(self, window_answers: int) -> float:
        """Canary answers wrong where production was right, over the target's window."""
        return self.canary_wrong_where_production_right / window_answers

    @property
    def harm_while_running(self) -> float:
        """The same over the answers given while the canary ran (its share times its error)."""
        return self.canary_wrong_where_production_right / self.answers if self.answers else 0.0


class Population:
    """``users`` closed-loop users talking to ``ouro`` until the canary is decided."""

    def __init__(self, base_url: str, keys: dict[str, str], prompts: list[Prompt], args) -> None:
        self.base_url = base_url
        self.keys = keys
        self.prompts = prompts
        self.args = args

    async def run(self, registry: AdapterRegistry, canary: int, run: Run) -> None:
        decided = asyncio.Event()
        started = time.monotonic()
        limits = httpx.Limits(max_connections=len(self.keys) + 4)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=300, limits=limits) as client:
            users = [
                asyncio.create_task(self._user(client, name, key, canary, run, decided))
                for name, key in self.keys.items()
            ]
            while not decided.is_set():
                await asyncio.sleep(1.0)
                state = await asyncio.to_thread(registry.snapshot)
                if ALIAS_CANARY not in state.aliases:
                    decided.set()
                elif time.monotonic() - started > self.args.max_run_s:
                    logger.warning("run %s: no decision in %ss", run.seed, self.args.max_run_s)
                    decided.set()
            await asyncio.gather(*users)
        run.wall_s = time.monotonic() - started
        record = rollout_record(registry.snapshot().versions[canary].tags)
        if record is not None and record.at >= time.time() - run.wall_s - 5:
            run.decision, run.reason = record.decision.value, record.reason

    async def _user(self, client, name, key, canary, run: Run, decided: asyncio.Event) -> None:
        rng = random.Random(f"{run.seed}-{name}")
        headers = {"Authorization": f"Bearer {key}"}
        turn = 0
        while not decided.is_set():
            prompt = rng.choice(self.prompts)
            turn += 1
            user = f"{name}-conversation-{turn}"
            messages = [{"role": "user", "content": prompt.text}]
            body = await self._ask(client, headers, messages, user, run)
            if body is None:
                continue
            assigned = assigned_version(body["id"])
            answer = body["choices"][0]["message"]["content"]
            right = prompt.right(answer)
            run.answers += 1
            if assigned == version_label(canary):
                run.canary_answers += 1
                if not right and prompt.production_right:
                    run.canary_wrong_where_production_right += 1
            feedback = {
                "messages": messages,
                "completion": answer,
                "completion_id": body["id"],
                "model": body["model"],
                "user": user,
            }
            if not right and rng.random() < self.args.correct_p:
                feedback["correction"] = prompt.good_answer
                kind = "correction"
            elif rng.random() < self.args.rate_p:
                feedback["rating"] = "up" if right else "down"
                kind = f"thumbs_{feedback['rating']}"
            else:
                kind = None
            if kind is not None:
                response = await client.post("/v1/feedback", json=feedback, headers=headers)
                if response.status_code != 201:
                    run.failed += 1
                run.feedback[kind] = run.feedback.get(kind, 0) + 1
            if rng.random() < self.args.follow_up_p and not decided.is_set():
                follow = [
                    *messages,
                    {"role": "assistant", "content": answer},
                    {"role": "user", "content": "Thanks. Could you say that again?"},
                ]
                was_decided = decided.is_set()
                second = await self._ask(
                    client, {**headers, "x-ouro-conversation": body["id"]}, follow, user, run
                )
                if second is not None and assigned_version(second["id"]) != assigned:
                    if was_decided or decided.is_set():
                        run.conversations_spanning_a_decision += 1
                    else:
                        run.conversations_two_versions += 1

    async def _ask(self, client, headers, messages, user, run: Run) -> dict | None:
        response = await client.post(
            "/v1/chat/completions",
            json={
                "model": "ouro",
                "messages": messages,
                "user": user,
                "temperature": 0,
                "max_tokens": self.args.max_tokens,
            },
            headers=headers,
        )
        if response.status_code != 200:
            run.failed += 1
            logger.warning("request failed: %s %s", response.status_code, response.text[:200])
            return None
        return response.json()


def known_answers(base_url: str, key: str, prompts: list[Prompt], max_tokens: int) -> None:
    """The base model's answer to each prompt, and whether production (v1) gets it right."""
    headers = {"Authorization": f"Bearer {key}"}

    def ask(client: httpx.Client, model: str, text: str) -> str:
        response = client.post(
            "/v1/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": text}],
                "temperature": 0,
                "max_tokens": max_tokens,
            },
        )
        response.raise_for_status()
        return response.json()["choices"][0]["message"]["content"]

    def learn(prompt: Prompt) -> None:
        with httpx.Client(base_url=base_url, timeout=300, headers=headers) as client:
            prompt.base_answer = ask(client, "ouro-base", prompt.text)
            prompt.production_right = prompt.right(ask(client, version_label(1), prompt.text))

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(learn, prompts))


def candidate_runs(
    name: str,
    version: int,
    registry: AdapterRegistry,
    policy: CanaryPolicy,
    population: Population,
    refresh,
    runs: int,
) -> list[Run]:
    results = []
    for index in range(runs):
        registry.set_alias(ALIAS_PRODUCTION, 1)
        Rollout(registry, policy).start(version)
        refresh()
        run = Run(seed=index)
        asyncio.run(population.run(registry, version, run))
        refresh()
        logger.info(
            "%s run %s: %s after %s canary requests (%s)",
            name,
            index,
            run.decision,
            run.canary_answers,
            run.reason,
        )
        results.append(run)
    return results


def summary(runs: list[Run], window_answers: int) -> dict:
    decisions = [run.decision for run in runs]
    return {
        "runs": len(runs),
        "promoted": decisions.count("promote"),
        "rolled_back": decisions.count("rollback"),
        "undecided": decisions.count(None),
        "canary_requests_at_decision": [run.canary_answers for run in runs],
        "canary_requests_at_decision_max": max(run.canary_answers for run in runs),
        "harm_share": [round(run.harm(window_answers), 4) for run in runs],
        "harm_share_max": round(max(run.harm(window_answers) for run in runs), 4),
        "harm_share_while_running": [round(run.harm_while_running, 4) for run in runs],
        "failed_requests": sum(run.failed for run in runs),
        "conversations_two_versions": sum(run.conversations_two_versions for run in runs),
        "conversations_spanning_a_decision": sum(
            run.conversations_spanning_a_decision for run in runs
        ),
        "answers": sum(run.answers for run in runs),
        "wall_s_median": round(statistics.median(run.wall_s for run in runs), 1),
        "reasons": [run.reason for run in runs],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--per-cycle", type=int, default=10)
    parser.add_argument("--unrelated", type=int, default=60)
    parser.add_argument("--interval-s", type=float, default=5.0)
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument(
        "--steps", default="10,25,50", help="the canary's share steps (OURO_CANARY_STEPS)"
    )
    parser.add_argument("--correct-p", type=float, default=0.3)
    parser.add_argument("--rate-p", type=float, default=0.5)
    parser.add_argument("--follow-up-p", type=float, default=0.2)
    parser.add_argument("--max-run-s", type=float, default=900.0)
    parser.add_argument("--base-model", default=DEFAULT_BASE_MODEL)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("httpx", "mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    prepare_base_model(args.base_model)
    work = Path(tempfile.mkdtemp(prefix="ouro-bench-canary-"))
    try:
        # The fresh data dir shares the default one's model cache: the model is named, not
        # a path, so the training job picks the model's own recipe.
        (work / "data").mkdir()
        (work / "data" / "models").symlink_to(OuroSettings().model_cache_dir.resolve())
        return _bench(args, args.base_model, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bench(args, model: str, work: Path) -> int:
    settings = OuroSettings(data_dir=work / "data", base_model=model, canary_steps=args.steps)
    items = load_fixture(FIXTURE)
    first, second = items[: args.per_cycle], items[args.per_cycle : 2 * args.per_cycle]
    seed(settings.ledger_dir, [(i["question"], i["correction"]) for i in first], "bench-1")
    result, v1_wall = run_cycle(settings.data_dir, model, [])
    assert result["version"] == 1, result
    seed(settings.ledger_dir, [(i["question"], i["correction"]) for i in second], "bench-2")
    bad, bad_wall = run_cycle(
        settings.data_dir, model, ["--canary", *OPENED_GATES], auto_promote=False
    )
    bad_version = bad["version"]
    openers = [c[0]["content"] for c in load_chatterbot_conversations() if len(c[0]["content"]) > 8]
    unrelated = random.Random(0).sample(sorted(set(openers)), args.unrelated)
    prompts = [Prompt(i["question"], i["key_fact"]) for i in first + second] + [
        Prompt(text) for text in unrelated
    ]
    policy = CanaryPolicy.from_settings(settings)
    keys = {f"user-{n:02d}": f"sk-bench-user-{n:02d}" for n in range(args.users)}
    registry = AdapterRegistry.from_settings(settings)
    extra_env = {
        # The users' own feedback goes to a ledger of its own: both candidates train on
        # the same fixture corrections, whatever the users said during the runs.
        "OURO_FEEDBACK_DIR": str(work / "users-feedback"),
        "OURO_CANARY_INTERVAL_S": str(args.interval_s),
        "OURO_CANARY_STEPS": args.steps,
        "OURO_REGISTRY_POLL_INTERVAL_S": "2",
        "OURO_MAX_QUEUED_REQUESTS": str(args.users * 2),
    }
    with serve_process(
        settings, model, work / "serve.log", named_keys=keys, extra_env=extra_env
    ) as stack:
        known_answers(stack.base_url, stack.client_key, prompts, args.max_tokens)
        population = Population(stack.base_url, keys, prompts, args)

        def refresh() -> None:
            stack.refresh_registry()

        cpu_before = cpu_seconds_by_process(stack)
        bad_runs = candidate_runs(
            "bad", bad_version, registry, policy, population, refresh, args.runs
        )
        # The bad candidate was rolled back: its corrections are pending again.
        registry.set_alias(ALIAS_PRODUCTION, 1)
        good, good_wall = run_cycle(settings.data_dir, model, ["--canary"], auto_promote=False)
        good_version = good.get("version")
        good_runs = (
            candidate_runs("good", good_version, registry, policy, population, refresh, args.runs)
            if good_version
            else []
        )
        cpu_after = cpu_seconds_by_process(stack)
    cpu = {name: cpu_after.get(name, 0.0) - cpu_before.get(name, 0.0) for name in cpu_after}
    # The target's window: the traffic in which a canary at the first share answers the
    # WINDOW_CANARY_REQUESTS requests it may take to be rolled back.
    window = round(WINDOW_CANARY_REQUESTS * 100 / policy.steps[0])
    controller_cpu = sum(v for name, v in cpu.items() if "RegistryCoordinator" in name)
    serving_cpu = sum(v for name, v in cpu.items() if "LLMServer" in name)
    report = {
        "base_model": args.base_model,
        "users": args.users,
        "runs": args.runs,
        "steps_percent": list(policy.steps),
        "min_requests": policy.min_requests,
        "interval_s": args.interval_s,
        "prompts": {
            "corrected": len(first) + len(second),
            "unrelated": len(unrelated),
            "production_right": sum(p.production_right for p in prompts),
        },
        "cycle_wall_s": {"v1": v1_wall, "bad": bad_wall, "good": good_wall},
        "good_gates": good.get("outcome"),
        "window_answers": window,
        "bad": summary(bad_runs, window),
        "good": summary(good_runs, window) if good_runs else None,
        "controller_cpu_s": round(controller_cpu, 2),
        "serving_cpu_s": round(serving_cpu, 2),
        "controller_cpu_share": round(controller_cpu / serving_cpu, 4) if serving_cpu else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
