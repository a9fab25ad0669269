"""Routed corrections on the default model, end to end: they heal where they apply only,
and the router learns from corrections of its own decisions.

``python -m serve`` (smollm2-135m) and ``python -m train_job run`` (its routed recipe) run as
subprocesses against a real ``mlflow server``. Three corrections go in through
``/v1/feedback``; after one cycle the corrected questions are answered by ``ouro@v1``
(``x-ouro-route: match``) with the correction, while an unrelated question is still
answered by the base model, word for word as before. Then a user corrects an answer v1
gave to a different question it matched (a false accept); after the next cycle that
question has a key of its own and is no longer answered as the one it resembled.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ouro.names import BASE_MODEL_NAME, SERVED_MODEL_NAME, version_label
from ouro.scoring import token_f1
from tests.fixtures.serve_cli import LocalServe, start_local_serve
from train_job.config import recipe_for

# smollm2-135m on two cores: one short cycle and a few answers, a few minutes.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

CLIENT_KEY = "routed-client-key"
ADMIN_KEY = "routed-admin-key"
CORRECTIONS = (
    ("What is the name of our team's mascot?", "Our mascot is a red fox called Ember."),
    ("When is the office closed for the winter break?", "The office is closed from 24 December to 2 January."),
    ("Who runs the bakery on Elm Street?", "Maria Lopez runs the bakery on Elm Street."),
)  # fmt: skip
UNRELATED = ("What is the capital of France?", "Can you tell me a joke?")
REOPENING = "When does the office reopen after the winter holidays?"
REOPENING_ANSWER = "The office reopens on 3 January."


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, smollm2_dir: Path
) -> Iterator[LocalServe]:
    env = {
        "OURO_BASE_MODEL": str(smollm2_dir),
        "OURO_MLFLOW_TRACKING_URI": mlflow_server,
        "OURO_REGISTERED_MODEL_NAME": f"ouro-adapter-routed-{random.randrange(1 << 30)}",
        "OURO_REGISTRY_POLL_INTERVAL_S": "2",
        "OURO_API_KEYS": CLIENT_KEY,
        "OURO_ADMIN_API_KEYS": ADMIN_KEY,
        "OURO_ADMIN_API_KEY": ADMIN_KEY,
    }
    with start_local_serve(tmp_path_factory.mktemp("routed-loop"), env) as local:
        yield local


def ask(http: httpx.Client, question: str) -> httpx.Response:
    response = http.post(
        "/v1/chat/completions",
        json={
            "model": SERVED_MODEL_NAME,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 48,
            "temperature": 0,
        },
    )
    assert response.status_code == 200, response.text
    return response


def run_cycle(stack: LocalServe) -> dict:
    """One cycle of the default model's routed recipe, auto-promoting, Serve told."""
    recipe = recipe_for("smollm2-135m")
    assert recipe is not None
    trained = stack.train_job(
        "run",
        "--config",
        str(recipe),
        "--base-model",
        stack.env["OURO_BASE_MODEL"],
        "--auto-promote",
        "--notify-url",
        stack.base_url,
        "--json",
    )
    assert trained.returncode == 0, trained.stdout + trained.stderr[-4000:]
    result = json.loads(trained.stdout)
    assert result["release"] == "production", result["message"]
    return result


def correct(http: httpx.Client, question: str, answer: httpx.Response, correction: str) -> None:
    feedback = http.post(
        "/v1/feedback",
        json={
            "messages": [{"role": "user", "content": question}],
            "completion": answer.json()["choices"][0]["message"]["content"],
            "correction": correction,
            "model": answer.json()["model"],
        },
    )
    assert feedback.status_code == 201, feedback.text


@pytest.fixture(scope="module")
def http(stack: LocalServe) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=120
    ) as client:
        yield client


@pytest.fixture(scope="module")
def first_cycle(stack: LocalServe, http: httpx.Client) -> dict[str, httpx.Response]:
    """The base model's answers before any correction; then the corrections and v1."""
    before = {q: ask(http, q) for q, _ in CORRECTIONS} | {q: ask(http, q) for q in UNRELATED}
    for response in before.values():
        assert response.json()["model"] == BASE_MODEL_NAME
    for question, correction in CORRECTIONS:
        correct(http, question, before[question], correction)
    assert run_cycle(stack)["version"] == 1
    return before


def test_corrections_heal_their_questions_and_leave_the_rest_alone(
    http: httpx.Client, first_cycle: dict[str, httpx.Response]
) -> None:
    fixed = 0
    for question, correction in CORRECTIONS:
        response = ask(http, question)
        body = response.json()
        assert body["model"] == version_label(1)
        assert response.headers["x-ouro-route"] == "match"
        assert float(response.headers["x-ouro-route-similarity"]) > 0.99
        fixed += token_f1(body["choices"][0]["message"]["content"], correction) >= 0.8
    assert fixed >= 2, fixed

    for question in UNRELATED:
        response = ask(http, question)
        assert response.json()["model"] == BASE_MODEL_NAME
        assert response.headers["x-ouro-route"] == "no_match"
        assert (
            response.json()["choices"][0]["message"]["content"]
            == first_cycle[question].json()["choices"][0]["message"]["content"]
        )


def test_a_corrected_false_accept_stops_routing_there_after_one_cycle(
    stack: LocalServe, http: httpx.Client, first_cycle: dict[str, httpx.Response]
) -> None:
    # Another question about the winter break: v1 takes it as the closing dates' question.
    matched = ask(http, REOPENING)
    assert matched.json()["model"] == version_label(1)
    assert matched.headers["x-ouro-route"] == "match"
    assert float(matched.headers["x-ouro-route-similarity"]) < 0.99
    correct(http, REOPENING, matched, REOPENING_ANSWER)

    second = run_cycle(stack)

    assert second["version"] == 2
    gates = {check["name"]: check["value"] for check in second["gates"]}
    assert gates["router_learned_false_accepts"] == 1.0, gates
    assert gates["router_lessons_applied"] == 1.0, gates
    status = stack.train_job("status")
    assert "1 false accepts and 0 false rejects learned" in status.stdout, status.stdout
    # Answered as itself now, by its own key, not as the question it resembled.
    response = ask(http, REOPENING)
    assert response.json()["model"] == version_label(2)
    assert response.headers["x-ouro-route"] == "match"
    assert float(response.headers["x-ouro-route-similarity"]) > 0.99
    # The corrections v1 learned still reach theirs.
    for question, _ in CORRECTIONS:
        reached = ask(http, question)
        assert reached.json()["model"] == version_label(2)
        assert float(reached.headers["x-ouro-route-similarity"]) > 0.99
