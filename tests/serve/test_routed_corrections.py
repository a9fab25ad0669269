"""Routed corrections through Serve: a version's adapter answers only the requests its
corrections are about, and the answer says who answered and why.

One real Serve app (personal adapters on) following the session's ``mlflow server``. Shared
v1 is production and carries a correction index built with the real embedder from two
questions; v2 has no index (an adapter trained unrouted: it answers everything); alice's personal v1 has an
index of one question of her own. Adapters are random LoRAs, so an answer's text shows
whether an adapter or the base model wrote it.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest

from ouro.embedding import SentenceEmbedder
from ouro.names import ALIAS_PRODUCTION
from ouro.registry import AdapterRegistry, PersonalRegistries
from ouro.routing import CorrectionIndex, RouteKey, RoutingBoundary
from tests.fixtures.serve import ServeStack, register_adapter_version

pytestmark = pytest.mark.integration

KEYS = {"alice": "sk-alice-route-0123456789", "bob": "sk-bob-route-0123456789"}
ADMIN = "sk-admin-route-0123456789"
BOUNDARY = RoutingBoundary(base=0.6, slope=0.3)
LIBRARY = "What time does the library open on Sundays?"
LIBRARY_REWORDED = "When does the library open on Sunday?"
PASSWORD = "How do I reset my password?"
COLOUR = "Which colour is the best?"
UNRELATED = "What is the capital of France?"
DEADLINE_S = 60.0


def indexed_adapter(
    embedder: SentenceEmbedder, adapter: Path, target: Path, questions: list[str]
) -> Path:
    """A copy of ``adapter`` carrying the correction index of ``questions``."""
    shutil.copytree(adapter, target)
    items = [(f"c-{i}", RouteKey(q)) for i, q in enumerate(questions)]
    CorrectionIndex.build(embedder, items, BOUNDARY).save(target)
    return target


@pytest.fixture(scope="module")
def stack(
    serve_stack_factory,
    mlflow_server: str,
    make_lora_adapter,
    tiny_random_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    sentence_embedder: SentenceEmbedder,
) -> ServeStack:
    model_name = f"ouro-adapter-route-{uuid.uuid4().hex[:8]}"
    work = tmp_path_factory.mktemp("routed-adapters")
    shared = AdapterRegistry(mlflow_server, model_name)
    routed = indexed_adapter(
        sentence_embedder,
        make_lora_adapter(tiny_random_model_dir, 301),
        work / "v1",
        [LIBRARY, PASSWORD],
    )
    shared.set_alias(ALIAS_PRODUCTION, register_adapter_version(shared, routed))
    assert register_adapter_version(shared, make_lora_adapter(tiny_random_model_dir, 302)) == 2
    alice = PersonalRegistries(mlflow_server, model_name).for_scope("alice")
    own = indexed_adapter(
        sentence_embedder, make_lora_adapter(tiny_random_model_dir, 303), work / "alice", [COLOUR]
    )
    alice.set_alias(ALIAS_PRODUCTION, register_adapter_version(alice, own))
    return serve_stack_factory(
        {
            "base_model": str(tiny_random_model_dir),
            "mlflow_tracking_uri": mlflow_server,
            "registered_model_name": model_name,
            "registry_poll_interval_s": 1.0,
            "personal_adapters": True,
            "api_keys": [f"{name}:{key}" for name, key in KEYS.items()],
            "admin_api_keys": [f"ops:{ADMIN}"],
        }
    )


def chat(
    stack: ServeStack, key: str, question: str, model: str = "ouro", **headers: str
) -> tuple[int, dict, dict]:
    """(status, headers, body) of one greedy non-streamed answer."""
    with stack.http(key) as http:
        response = http.post(
            "/v1/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 8,
                "temperature": 0,
            },
            headers=headers,
        )
    return response.status_code, dict(response.headers), response.json()


def route(stack: ServeStack, key: str, question: str, model: str = "ouro", **headers):
    """(model that answered, x-ouro-route, similarity or None, text) of an answer."""
    status, headers_, body = chat(stack, key, question, model, **headers)
    assert status == 200, body
    assert body["model"] == headers_["x-ouro-model-version"]
    similarity = headers_.get("x-ouro-route-similarity")
    if similarity is not None:
        assert re.fullmatch(r"-?\d\.\d{4}", similarity), similarity
    return (
        body["model"],
        headers_["x-ouro-route"],
        float(similarity) if similarity is not None else None,
        body["choices"][0]["message"]["content"],
    )


def test_corrected_questions_reach_the_version_and_others_the_base_model(stack) -> None:
    bob = KEYS["bob"]
    answers = {}
    for question in (LIBRARY, LIBRARY_REWORDED, PASSWORD):
        model, reason, similarity, answers[question] = route(stack, bob, question)
        assert (model, reason) == ("ouro@v1", "match"), question
        assert similarity > BOUNDARY.base
    # A rewording is answered as the correction it matched: the same greedy answer.
    assert answers[LIBRARY_REWORDED] == answers[LIBRARY]
    model, reason, similarity, text = route(stack, bob, UNRELATED)
    assert (model, reason) == ("ouro-base", "no_match")
    assert similarity is not None and similarity < BOUNDARY.base
    base = route(stack, bob, UNRELATED, model="ouro-base")
    assert base[:3] == ("ouro-base", "base", None)
    assert text == base[3]  # the base model's own answer, word for word
    # A pinned name routes the same way.
    assert route(stack, bob, LIBRARY_REWORDED, model="ouro@v1")[:2] == ("ouro@v1", "match")
    assert route(stack, bob, UNRELATED, model="ouro@v1")[:2] == ("ouro-base", "no_match")


def test_streamed_answers_carry_the_route_before_the_first_byte(stack) -> None:
    body = {
        "model": "ouro",
        "messages": [{"role": "user", "content": LIBRARY_REWORDED}],
        "max_tokens": 4,
        "stream": True,
    }
    with (
        stack.http(KEYS["bob"]) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["x-ouro-model-version"] == "ouro@v1"
        assert response.headers["x-ouro-route"] == "match"
        assert float(response.headers["x-ouro-route-similarity"]) > BOUNDARY.base
        first = next(line for line in response.iter_lines() if line.startswith("data: "))
    assert '"model":"ouro@v1"' in first.replace(" ", "")


def test_an_admin_can_force_the_adapter_unrouted_and_nobody_else(stack) -> None:
    model, reason, similarity, text = route(stack, ADMIN, UNRELATED, **{"x-ouro-unrouted": "true"})
    assert (model, reason) == ("ouro@v1", "forced")
    assert similarity is not None  # what the router would have said, for debugging
    assert text != route(stack, ADMIN, UNRELATED, model="ouro-base")[3]
    status, _, body = chat(stack, KEYS["bob"], UNRELATED, **{"x-ouro-unrouted": "true"})
    assert status == 403
    assert body["error"]["type"] == "permission_error"
    assert body["error"]["param"] == "x-ouro-unrouted"
    # 'false' is the default: no admin needed to say it.
    assert route(stack, KEYS["bob"], UNRELATED, **{"x-ouro-unrouted": "false"})[0] == "ouro-base"


def test_an_adapter_without_an_index_answers_everything_as_before(stack) -> None:
    for question in (LIBRARY, UNRELATED):
        assert route(stack, KEYS["bob"], question, model="ouro@v2")[:3] == (
            "ouro@v2",
            "no_index",
            None,
        )


def test_a_personal_version_falls_back_to_shared_production_then_the_base(stack) -> None:
    alice = KEYS["alice"]
    deadline = time.monotonic() + DEADLINE_S
    while route(stack, alice, COLOUR)[0] != "ouro@alice/v1":  # her names are read per poll
        assert time.monotonic() < deadline, "alice's production never answered"
        time.sleep(0.5)
    assert route(stack, alice, COLOUR)[:2] == ("ouro@alice/v1", "match")
    assert route(stack, alice, PASSWORD)[:2] == ("ouro@v1", "match")
    assert route(stack, alice, UNRELATED)[:2] == ("ouro-base", "no_match")
    assert route(stack, alice, PASSWORD, model="ouro@alice/v1")[:2] == ("ouro@v1", "match")


def test_metrics_count_the_routes(stack) -> None:
    def counts() -> dict[str, float]:
        text = httpx.get(
            f"{stack.base_url}/metrics",
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=30,
        ).text
        found = re.findall(
            r'^ouro_router_requests_total\{replica="[^"]+",route="(\w+)"\} (\S+)$', text, re.M
        )
        assert "ouro_router_similarity_bucket" in text
        assert "ouro_router_cpu_seconds_count" in text
        totals: dict[str, float] = {}
        for name, value in found:  # summed over the replicas
            totals[name] = totals.get(name, 0.0) + float(value)
        return totals

    before = counts()
    assert set(before) == {"match", "no_match", "no_index", "forced"}
    route(stack, KEYS["bob"], LIBRARY)
    route(stack, KEYS["bob"], UNRELATED)
    route(stack, KEYS["bob"], UNRELATED, model="ouro@v2")
    route(stack, KEYS["bob"], UNRELATED, model="ouro-base")  # not routed: not counted
    after = counts()
    assert {name: after[name] - before[name] for name in after} == {
        "match": 1,
        "no_match": 1,
        "no_index": 1,
        "forced": 0,
    }
