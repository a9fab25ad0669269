"""Personal adapters end to end, run as users and an operator would.

``python -m serve`` with ``OURO_PERSONAL_ADAPTERS=true`` and three named client keys
(alice, bob, carol) against a real ``mlflow server``; ``python -m train_job`` as a
subprocess with ouro-tiny's recipe. alice and bob correct the same question
differently, one cycle trains a personal adapter for each, and then:

- each gets their own answer, carol gets shared production's, and a name of another's
  personal model is the very 404 of a name that does not exist; ``/v1/models`` lists
  only the caller's own personal names;
- rolling alice back leaves bob as he was;
- forgetting bob takes his adapter out of serving (he falls back to shared) and his
  corrections out of the next cycle.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from ouro.names import BASE_MODEL_NAME, SERVED_MODEL_NAME, SHARED_MODEL_NAME, version_label
from ouro.scoring import rouge_l
from tests.fixtures.serve_cli import LocalServe, start_local_serve
from tests.fixtures.train_job import CORRECTION_PAIRS

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2700)]

KEYS = {"alice": "sk-e2e-alice", "bob": "sk-e2e-bob", "carol": "sk-e2e-carol"}
ADMIN_KEY = "sk-e2e-ops"
POLL_INTERVAL_S = 2.0
SWAP_TIMEOUT_S = 180.0
MAX_TOKENS = 32

QUESTION = "What is the best colour?"
ANSWERS = {"alice": "The best colour is green.", "bob": "The best colour is orange."}
# Each scope also corrects facts of its own, as in the training job's personal-cycle test.
OWN_PAIRS = {"alice": CORRECTION_PAIRS[:8], "bob": CORRECTION_PAIRS[8:16]}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, ouro_tiny_small_dir: Path
) -> Iterator[LocalServe]:
    env = {
        "OURO_PERSONAL_ADAPTERS": "true",
        "OURO_BASE_MODEL": str(ouro_tiny_small_dir),
        "OURO_MLFLOW_TRACKING_URI": mlflow_server,
        "OURO_REGISTERED_MODEL_NAME": f"ouro-adapter-personal-e2e-{random.randrange(1 << 30)}",
        "OURO_REGISTRY_POLL_INTERVAL_S": str(POLL_INTERVAL_S),
        "OURO_API_KEYS": ",".join(f"{name}:{key}" for name, key in KEYS.items()),
        "OURO_ADMIN_API_KEYS": f"ops:{ADMIN_KEY}",
        "OURO_ADMIN_API_KEY": ADMIN_KEY,  # what train_job --notify-url sends
    }
    with start_local_serve(tmp_path_factory.mktemp("personal-loop"), env) as local:
        yield local


def ask(client: OpenAI, question: str = QUESTION, model: str = SERVED_MODEL_NAME):
    """(answer, the version that answered), greedy."""
    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    return completion.choices[0].message.content, completion.model


def wait_for_version(client: OpenAI, expected: str) -> None:
    """Poll with real requests until ``ouro`` answers this caller as ``expected``."""
    deadline = time.monotonic() + SWAP_TIMEOUT_S
    while time.monotonic() < deadline:
        _, version = ask(client)
        if version == expected:
            return
        time.sleep(0.5)
    raise AssertionError(f"ouro still answers as {version}, not {expected}")


def post_correction(stack: LocalServe, scope: str, question: str, correction: str) -> str:
    with stack.http(KEYS[scope]) as http:
        response = http.post(
            "/v1/feedback",
            json={
                "messages": [{"role": "user", "content": question}],
                "completion": "I do not know.",
                "correction": correction,
            },
        )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def model_ids(stack: LocalServe, scope: str) -> set[str]:
    with stack.http(KEYS[scope]) as http:
        response = http.get("/v1/models")
    assert response.status_code == 200, response.text
    return {entry["id"] for entry in response.json()["data"]}


def chat_status(stack: LocalServe, scope: str, model: str):
    with stack.http(KEYS[scope]) as http:
        return http.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": QUESTION}]},
        )


def train(stack: LocalServe, small_model_chat_jsonl: Path) -> dict:
    """One cycle with ouro-tiny's recipe on the small build Serve runs (flags win over
    the file's full ouro-tiny and corpus), as the CronJob runs it."""
    result = stack.train_tiny_cycle(small_model_chat_jsonl, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def trained_ids(stack: LocalServe, run_id: str) -> set[str]:
    """The correction ids a cycle's dataset took (trained and held out)."""
    manifest = stack.dataset_manifest(run_id)
    return set(manifest["train_correction_ids"]) | set(manifest["held_out_correction_ids"])


def test_personal_adapters_isolate_roll_back_and_forget_per_scope(
    stack: LocalServe, small_model_chat_jsonl: Path
) -> None:
    alice, bob, carol = (stack.client(KEYS[name]) for name in ("alice", "bob", "carol"))
    shared_before = ask(carol)
    assert shared_before[1] == BASE_MODEL_NAME  # no version anywhere yet
    assert ask(alice) == ask(bob) == shared_before

    # 1. alice and bob correct the same question differently; one cycle trains both.
    ids = {
        scope: [
            post_correction(stack, scope, question, answer)
            for question, answer in [*OWN_PAIRS[scope], (QUESTION, ANSWERS[scope])]
        ]
        for scope in ("alice", "bob")
    }
    first = train(stack, small_model_chat_jsonl)
    by_scope = {result["scope"]: result for result in first["personal"]}
    assert first["outcome"] == "nothing_to_do"  # nothing is shared: no shared adapter
    assert {scope: r["outcome"] for scope, r in by_scope.items()} == {
        "alice": "registered",
        "bob": "registered",
    }, first
    assert trained_ids(stack, by_scope["alice"]["run_id"]) <= set(ids["alice"])
    assert trained_ids(stack, by_scope["bob"]["run_id"]) <= set(ids["bob"])

    # 2. Each key gets its own answer; carol gets shared production's.
    wait_for_version(alice, version_label(1, "alice"))
    wait_for_version(bob, version_label(1, "bob"))
    answers = {"alice": ask(alice), "bob": ask(bob)}
    assert answers["alice"][1] == version_label(1, "alice")
    assert answers["bob"][1] == version_label(1, "bob")
    for scope, other in (("alice", "bob"), ("bob", "alice")):
        text = answers[scope][0]
        assert rouge_l(text, ANSWERS[scope]) > rouge_l(text, ANSWERS[other]), answers
    assert ask(carol) == shared_before
    assert ask(alice, model=SHARED_MODEL_NAME) == shared_before

    # Another's personal model is the 404 of a name that does not exist, body and all.
    taken = chat_status(stack, "carol", "ouro@alice/v1")
    missing = chat_status(stack, "carol", "ouro@nobody/v1")
    assert taken.status_code == missing.status_code == 404
    assert taken.json() == json.loads(missing.text.replace("ouro@nobody/v1", "ouro@alice/v1"))
    assert chat_status(stack, "bob", "ouro@alice/production").status_code == 404
    assert chat_status(stack, "alice", "ouro@alice/v1").status_code == 200

    # /v1/models: the shared names and the caller's own personal names, nobody else's.
    listed = {scope: model_ids(stack, scope) for scope in KEYS}
    assert {SERVED_MODEL_NAME, SHARED_MODEL_NAME} <= listed["carol"]
    assert not any("@alice/" in name or "@bob/" in name for name in listed["carol"])
    assert version_label(1, "alice") in listed["alice"]
    assert not any("@bob/" in name for name in listed["alice"])
    assert version_label(1, "bob") in listed["bob"]
    assert not any("@alice/" in name for name in listed["bob"])

    # 3. Rolling alice back leaves bob (and carol) as they were.
    rolled = stack.train_job("rollback", "--scope", "alice", "--notify-url", stack.base_url)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    wait_for_version(alice, BASE_MODEL_NAME)
    assert ask(alice) == shared_before
    assert ask(bob) == answers["bob"]
    assert ask(carol) == shared_before

    # 4. Forgetting bob: his adapter leaves serving, he falls back to shared production.
    forgot = stack.train_job("forget", "bob", "--reason", "e2e", "--notify-url", stack.base_url)
    assert forgot.returncode == 0, forgot.stdout + forgot.stderr
    wait_for_version(bob, BASE_MODEL_NAME)
    assert ask(bob) == shared_before
    assert chat_status(stack, "bob", "ouro@bob/v1").status_code == 404
    assert not any("@bob/" in name for name in model_ids(stack, "bob"))
    assert ask(alice, model="ouro@alice/v1") == answers["alice"]  # alice's v1 is untouched

    # ... and his corrections from the next cycle: carol's new correction trains her
    # adapter alone; bob, whose corrections are all newer than any version he has now,
    # trains nothing, and no set holds any of his.
    carol_id = post_correction(stack, "carol", *CORRECTION_PAIRS[16])
    second = train(stack, small_model_chat_jsonl)
    assert second["outcome"] == "nothing_to_do"
    assert [result["scope"] for result in second["personal"]] == ["carol"], second
    carol_trained = trained_ids(stack, second["personal"][0]["run_id"])
    assert carol_trained == {carol_id}
    assert not carol_trained & set(ids["bob"])
