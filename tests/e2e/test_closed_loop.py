"""The whole loop, run as a user and an operator would.

``python -m serve`` and ``python -m train_job`` run as subprocesses against a real
``mlflow server`` on 127.0.0.1 and a fresh data dir. Users chat through the official
``openai`` client and correct answers through ``/v1/feedback``; a training cycle runs
while a background client keeps chatting; the corrected answers must come back from
the running server with no restart and no failed request, and a rollback must restore
the original answers the same way.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from openai import OpenAI, OpenAIError

from ouro.names import BASE_MODEL_NAME, SERVED_MODEL_NAME, version_label
from ouro.scoring import BertScorer
from tests.fixtures.serve_cli import LocalServe, start_local_serve
from tests.fixtures.train_job import CORRECTION_PAIRS, tiny_config

# Builds the small ouro-tiny on a fresh machine, then trains while serving: minutes, not seconds.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2700)]

CLIENT_KEY = "e2e-client-key"
ADMIN_KEY = "e2e-admin-key"
POLL_INTERVAL_S = 2.0
MAX_TOKENS = 48
SWAP_TIMEOUT_S = 180.0


@dataclass
class BackgroundChatter:
    """Chats with ``ouro`` without pause and keeps score, until stopped."""

    client: OpenAI
    question: str
    answers: int = 0
    failures: list[str] = field(default_factory=list)
    versions: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> BackgroundChatter:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=120)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                completion = self.client.chat.completions.create(
                    model=SERVED_MODEL_NAME,
                    messages=[{"role": "user", "content": self.question}],
                    max_tokens=16,
                    temperature=0,
                )
                self.versions.add(completion.model)
                self.answers += 1
            except OpenAIError as error:  # every failure counts against the swap
                self.failures.append(repr(error))


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    mlflow_server: str,
    ouro_tiny_small_dir: Path,
) -> Iterator[LocalServe]:
    env = {
        "OURO_BASE_MODEL": str(ouro_tiny_small_dir),
        "OURO_MLFLOW_TRACKING_URI": mlflow_server,
        "OURO_REGISTERED_MODEL_NAME": f"ouro-adapter-e2e-{random.randrange(1 << 30)}",
        "OURO_REGISTRY_POLL_INTERVAL_S": str(POLL_INTERVAL_S),
        "OURO_API_KEYS": CLIENT_KEY,
        "OURO_ADMIN_API_KEYS": ADMIN_KEY,
        "OURO_ADMIN_API_KEY": ADMIN_KEY,
    }
    with start_local_serve(tmp_path_factory.mktemp("closed-loop"), env) as local:
        yield local


def _known_questions(chat_jsonl: Path, count: int) -> list[str]:
    """Distinct first user turns of conversations the model was trained on."""
    questions: list[str] = []
    for line in chat_jsonl.read_text(encoding="utf-8").splitlines():
        question = json.loads(line)["messages"][0]["content"].strip()
        if question and question not in questions:
            questions.append(question)
    return random.Random(7).sample(questions, count)


def _ask_all(client: OpenAI, questions: list[str]) -> list[tuple[str, str]]:
    """(answer, version) for each question, greedy."""
    results = []
    for question in questions:
        completion = client.chat.completions.create(
            model=SERVED_MODEL_NAME,
            messages=[{"role": "user", "content": question}],
            max_tokens=MAX_TOKENS,
            temperature=0,
        )
        results.append((completion.choices[0].message.content, completion.model))
    return results


def _wait_for_version(stack: LocalServe, question: str, expected: str) -> float:
    """Poll with real requests until ``ouro`` answers as ``expected``; seconds waited."""
    client = stack.client(CLIENT_KEY)
    started = time.monotonic()
    while time.monotonic() - started < SWAP_TIMEOUT_S:
        completion = client.chat.completions.create(
            model=SERVED_MODEL_NAME,
            messages=[{"role": "user", "content": question}],
            max_tokens=4,
            temperature=0,
        )
        if completion.model == expected:
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"ouro still answers as {completion.model}, not {expected}")


def test_corrections_heal_the_running_bot_and_rollback_restores_it(
    stack: LocalServe, small_model_chat_jsonl: Path
) -> None:
    client = stack.client(CLIENT_KEY)
    gates = tiny_config()
    scorer = BertScorer()

    # Facts the bot does not know (it answers them wrongly), and questions it does know.
    questions = [question for question, _ in CORRECTION_PAIRS[:10]]
    corrections = [answer for _, answer in CORRECTION_PAIRS[:10]]
    unrelated = _known_questions(small_model_chat_jsonl, 8)
    before = _ask_all(client, questions)
    before_unrelated = _ask_all(client, unrelated)
    assert {version for _, version in before} == {BASE_MODEL_NAME}
    assert [answer for answer, _ in before] != corrections
    with httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=60
    ) as http:
        for question, (answer, version), correction in zip(
            questions, before, corrections, strict=True
        ):
            response = http.post(
                "/v1/feedback",
                json={
                    "messages": [{"role": "user", "content": question}],
                    "completion": answer,
                    "correction": correction,
                    "model": version,
                    "reason": "e2e correction",
                },
            )
            assert response.status_code == 201, response.text

    # Train while a client keeps chatting; the new version must arrive with no failure.
    with BackgroundChatter(stack.client(CLIENT_KEY), unrelated[0]) as chatter:
        # Replaying what the small build knows, so forgetting shows.
        trained = stack.train_tiny_cycle(small_model_chat_jsonl)
        assert trained.returncode == 0, trained.stdout + trained.stderr
        _wait_for_version(stack, questions[0], version_label(1))
        after = _ask_all(client, questions)
        after_unrelated = _ask_all(client, unrelated)
    assert chatter.failures == []
    assert chatter.answers > 0
    assert {version for _, version in after} == {version_label(1)}

    models = httpx.get(
        f"{stack.base_url}/v1/models", headers={"Authorization": f"Bearer {CLIENT_KEY}"}
    ).json()
    served = {entry["id"]: entry for entry in models["data"]}
    assert version_label(1) in served and SERVED_MODEL_NAME in served

    fixed = scorer.f1([answer for answer, _ in after], corrections)
    fix_rate = sum(score >= gates.answer_f1_threshold for score in fixed) / len(fixed)
    assert fix_rate >= gates.fix_rate_min, (fixed, after, corrections)

    kept = scorer.f1(
        [answer for answer, _ in after_unrelated], [answer for answer, _ in before_unrelated]
    )
    assert sum(kept) / len(kept) >= gates.probe_f1_min, (after_unrelated, before_unrelated)

    # The operator rolls back; the original answers return, again with no failure.
    with BackgroundChatter(stack.client(CLIENT_KEY), unrelated[0]) as chatter:
        rolled = stack.train_job("rollback", "--notify-url", stack.base_url)
        assert rolled.returncode == 0, rolled.stdout + rolled.stderr
        _wait_for_version(stack, questions[0], BASE_MODEL_NAME)
        restored = _ask_all(client, questions)
    assert chatter.failures == []
    assert restored == before
