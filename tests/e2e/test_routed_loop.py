"""Routed corrections on the default model, end to end: they heal where they apply only.

``python -m serve`` (smollm2-135m) and ``python -m train_job run`` (its routed recipe) run as
subprocesses against a real ``mlflow server``. Three corrections go in through
``/v1/feedback``; after one cycle the corrected questions are answered by ``ouro@v1``
(``x-ouro-route: match``) with the correction, while an unrelated question is still
answered by the base model, word for word as before.
"""

from __future__ import annotations

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


def test_corrections_heal_their_questions_and_leave_the_rest_alone(stack: LocalServe) -> None:
    http = httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=120
    )
    with http:
        before = {q: ask(http, q) for q, _ in CORRECTIONS} | {q: ask(http, q) for q in UNRELATED}
        for response in before.values():
            assert response.json()["model"] == BASE_MODEL_NAME
        for question, correction in CORRECTIONS:
            feedback = http.post(
                "/v1/feedback",
                json={
                    "messages": [{"role": "user", "content": question}],
                    "completion": before[question].json()["choices"][0]["message"]["content"],
                    "correction": correction,
                    "model": BASE_MODEL_NAME,
                },
            )
            assert feedback.status_code == 201, feedback.text

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
        )
        assert trained.returncode == 0, trained.stdout + trained.stderr[-4000:]

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
                == before[question].json()["choices"][0]["message"]["content"]
            )
