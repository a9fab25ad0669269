"""A canary on a real Ray Serve app with two LLM server replicas and a real MLflow server.

Version 1 is production, version 2 starts as the canary at half of 'ouro' traffic. The
split is checked against ``ouro.rollout.serves_canary`` conversation by conversation
(whichever replica answers), follow-up turns stay with their version, and pinned names
are never split. Then a scripted user rates every canary answer down and corrects some,
and rates production's answers up: the coordinator's controller rolls the canary back on
its own, and no request failed on the way.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ouro.names import ALIAS_CANARY, ALIAS_PRODUCTION
from ouro.registry import AdapterRegistry
from ouro.rollout import (
    CanaryPolicy,
    Decision,
    Rollout,
    assigned_completion_id,
    assigned_version,
    rollout_record,
    serves_canary,
)
from tests.fixtures.serve import ServeStack, register_adapter_version

pytestmark = pytest.mark.integration

KEYS = {"alice": "sk-alice-canary", "bob": "sk-bob-canary"}
ADMIN_KEY = "sk-admin-canary"
SHARE = 50.0
CONVERSATIONS = 24
DECISION_DEADLINE_S = 120.0
"""Upper bound for the controller's decision (2 s interval); not a timing assertion."""


MODEL_NAME = f"ouro-adapter-canary-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def registry(mlflow_server: str, make_lora_adapter, tiny_random_model_dir: Path):
    registry = AdapterRegistry(mlflow_server, MODEL_NAME)
    for seed in (301, 302):
        register_adapter_version(registry, make_lora_adapter(tiny_random_model_dir, seed))
    registry.set_alias(ALIAS_PRODUCTION, 1)
    return registry


@pytest.fixture(scope="module")
def policy() -> CanaryPolicy:
    return CanaryPolicy(steps=(SHARE,), interval_s=2.0, min_requests=20, health_min_requests=10)


@pytest.fixture(scope="module")
def stack(serve_stack_factory, registry, policy, tiny_random_model_dir) -> ServeStack:
    Rollout(registry, policy).start(2)
    return serve_stack_factory(
        {
            "base_model": str(tiny_random_model_dir),
            "mlflow_tracking_uri": registry.tracking_uri,
            "registered_model_name": MODEL_NAME,
            "registry_poll_interval_s": 1.0,
            "api_keys": [f"{name}:{key}" for name, key in KEYS.items()],
            "admin_api_keys": [f"admin:{ADMIN_KEY}"],
            "llm_num_cpus": 0.5,
            "default_max_tokens": 3,
            "canary_steps": [SHARE],
            "canary_interval_s": policy.interval_s,
            "canary_min_requests": policy.min_requests,
            "canary_health_min_requests": policy.health_min_requests,
        },
        num_replicas=2,
    )


def conversation(i: int) -> tuple[str, str, list[dict]]:
    key_name = "alice" if i % 2 else "bob"
    return key_name, f"user-{i}", [{"role": "user", "content": f"Question number {i}?"}]


def ask(
    client: httpx.Client,
    key_name: str,
    user: str,
    messages: list[dict],
    model="ouro",
    conversation: str | None = None,
):
    headers = {"Authorization": f"Bearer {KEYS[key_name]}"}
    if conversation is not None:
        headers["x-ouro-conversation"] = conversation
    response = client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": messages, "user": user},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_the_split_is_sticky_and_a_worse_canary_is_rolled_back(
    stack: ServeStack, registry: AdapterRegistry
) -> None:
    state = Rollout(registry).state()
    assert state is not None and state.version == 2
    answered_by: dict[int, str] = {}
    with httpx.Client(base_url=stack.base_url, timeout=120) as client:
        for i in range(CONVERSATIONS):
            key_name, user, messages = conversation(i)
            body = ask(client, key_name, user, messages)
            expected = (
                "ouro@v2"
                if serves_canary(state, key_name, user, messages[0]["content"])
                else "ouro@v1"
            )
            assert assigned_version(body["id"]) == expected
            assert body["model"] == expected  # random adapters have no index: they answer all
            answered_by[i] = expected
            # A follow-up turn of the same conversation stays with its version.
            follow_up = [
                *messages,
                {"role": "assistant", "content": body["choices"][0]["message"]["content"]},
                {"role": "user", "content": "And then?"},
            ]
            assert ask(client, key_name, user, follow_up)["model"] == expected
            # Echoing the earlier answer's id keeps the side even where the hash would
            # not (as after a step up): an id assigned to the other side wins.
            other = "ouro@v1" if expected == "ouro@v2" else "ouro@v2"
            echoed = assigned_completion_id(body["id"].rpartition(".")[0], other)
            assert ask(client, key_name, user, follow_up, conversation=echoed)["model"] == other
        assert {"ouro@v1", "ouro@v2"} == set(answered_by.values())
        refused = client.post(
            "/v1/chat/completions",
            json={"model": "ouro", "messages": conversation(0)[2]},
            headers={"Authorization": f"Bearer {KEYS['alice']}", "x-ouro-conversation": "fb-1"},
        )
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "x-ouro-conversation"
        # Pinned names are never split.
        for i in range(4):
            key_name, user, messages = conversation(i)
            assert ask(client, key_name, user, messages, model="ouro@v1")["model"] == "ouro@v1"
            assert ask(client, key_name, user, messages, model="ouro@canary")["model"] == "ouro@v2"

        # The scripted user: thumbs down on the canary (and a correction now and then),
        # thumbs up on production, until the controller decides.
        deadline = time.monotonic() + DECISION_DEADLINE_S
        i = CONVERSATIONS
        failures = 0
        while Rollout(registry).state() is not None and time.monotonic() < deadline:
            key_name, user, messages = conversation(i)
            response = client.post(
                "/v1/chat/completions",
                json={"model": "ouro", "messages": messages, "user": user},
                headers={"Authorization": f"Bearer {KEYS[key_name]}"},
            )
            if response.status_code != 200:
                failures += 1
                continue
            body = response.json()
            on_canary = assigned_version(body["id"]) == "ouro@v2"
            feedback = {
                "messages": messages,
                "completion": body["choices"][0]["message"]["content"],
                "completion_id": body["id"],
                "model": body["model"],
                "user": user,
            }
            if on_canary and i % 3 == 0:
                feedback["correction"] = f"The right answer to question {i}."
            else:
                feedback["rating"] = "down" if on_canary else "up"
            sent = client.post(
                "/v1/feedback", json=feedback, headers={"Authorization": f"Bearer {KEYS[key_name]}"}
            )
            assert sent.status_code == 201, sent.text
            i += 1
        assert failures == 0

        snapshot = registry.snapshot()
        assert ALIAS_CANARY not in snapshot.aliases, "the controller did not decide in time"
        assert snapshot.production == 1
        record = rollout_record(snapshot.versions[2].tags)
        assert record.decision is Decision.ROLLBACK and record.by == "controller"
        assert record.canary.thumbs_down + record.canary.corrections >= 1
        assert record.production.thumbs_up >= 1 and record.production.bad == 0

        # Every replica follows: 'ouro' is production again for everyone.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            models = {ask(client, *conversation(j))["model"] for j in range(CONVERSATIONS)}
            if models == {"ouro@v1"}:
                break
        assert models == {"ouro@v1"}

        # /metrics has both sides' signals, by the version they were assigned to.
        text = client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    signals = {
        (s.labels["version"], s.labels["signal"])
        for s in samples
        if s.name == "ouro_rollout_feedback_total" and s.value > 0
    }
    assert ("ouro@v2", "thumbs_down") in signals and ("ouro@v1", "thumbs_up") in signals
    replicas = {s.labels["replica"] for s in samples if s.name == "ouro_rollout_requests_total"}
    assert len(replicas) == 2
