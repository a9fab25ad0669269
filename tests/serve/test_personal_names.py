"""Personal adapters through Serve: identity from the key, names per scope, 404 for others,
and each caller answered by their own adapter.

One real Serve app (``OURO_PERSONAL_ADAPTERS=true``) following a real ``mlflow server``,
with named keys for alice, bob and carol and an admin key. Personal versions are random
LoRAs registered in each scope's own registered model, as the training job does. Checked:
names, listings, 404s, generation with each caller's adapter (equal to the engine's own
text with that adapter, also when the callers' requests share a batch), the scope of
feedback records (corrections and ratings), and the admin forget/share routes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from ouro.engine import GenerationEngine, GenerationRequest, SamplingParams
from ouro.ledger import LedgerReader
from ouro.names import ALIAS_PRODUCTION
from ouro.registry import AdapterRegistry, PersonalRegistries
from tests.fixtures.mlflow import MlflowServer, start_mlflow_server
from tests.fixtures.serve import ServeStack, register_adapter_version

pytestmark = pytest.mark.integration

KEYS = {"alice": "sk-alice-0123456789", "bob": "sk-bob-0123456789", "carol": "sk-carol-0123"}
ADMIN = "sk-admin-0123456789"
QUESTION = [{"role": "user", "content": "What is the best colour?"}]
DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with start_mlflow_server(tmp_path_factory.mktemp("personal-mlflow")) as server:
        yield server


@pytest.fixture(scope="module")
def personal(mlflow: MlflowServer) -> PersonalRegistries:
    return PersonalRegistries(mlflow.uri, "ouro-adapter")


@pytest.fixture(scope="module")
def stack(
    serve_stack_factory, mlflow, personal, make_lora_adapter, tiny_random_model_dir: Path
) -> ServeStack:
    shared = AdapterRegistry(mlflow.uri, "ouro-adapter")
    shared.set_alias(
        ALIAS_PRODUCTION,
        register_adapter_version(shared, make_lora_adapter(tiny_random_model_dir, 201)),
    )
    for seed, scope in ((202, "alice"), (203, "bob")):
        registry = personal.for_scope(scope)
        version = register_adapter_version(registry, make_lora_adapter(tiny_random_model_dir, seed))
        registry.set_alias(ALIAS_PRODUCTION, version)
    return serve_stack_factory(
        {
            "base_model": str(tiny_random_model_dir),
            "mlflow_tracking_uri": mlflow.uri,
            "registered_model_name": "ouro-adapter",
            "registry_poll_interval_s": 1.0,
            "personal_adapters": True,
            "api_keys": [f"{name}:{key}" for name, key in KEYS.items()],
            "admin_api_keys": [f"ops:{ADMIN}"],
        }
    )


def model_ids(stack: ServeStack, key: str, user: str | None = None) -> list[str]:
    with stack.http(KEYS.get(key, key)) as http:
        response = http.get("/v1/models", params={"user": user} if user else None)
    assert response.status_code == 200, response.text
    return [card["id"] for card in response.json()["data"]]


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not in {DEADLINE_S} s: {what}")
        time.sleep(0.5)


def test_models_list_the_callers_own_names_and_nobody_elses(stack: ServeStack) -> None:
    wait_for(lambda: "ouro@alice/v1" in model_ids(stack, "alice"), "alice's names listed")
    alice = model_ids(stack, "alice")
    assert {"ouro", "ouro-shared", "ouro-base", "ouro@v1"} <= set(alice)
    assert {"ouro@alice/v1", "ouro@alice/production"} <= set(alice)
    assert not [name for name in alice if "bob" in name]
    bob = model_ids(stack, "bob")
    assert "ouro@bob/v1" in bob and not [name for name in bob if "alice" in name]
    carol = model_ids(stack, "carol")
    assert not [name for name in carol if "/" in name] and "ouro-shared" in carol
    # 'ouro' names what answers the caller: alice's own production, carol's shared one.
    with stack.http(KEYS["alice"]) as http:
        cards = {c["id"]: c for c in http.get("/v1/models").json()["data"]}
    assert cards["ouro"]["root"] == "ouro@alice/v1"
    assert cards["ouro-shared"]["root"] == "ouro@v1"


def test_the_user_field_narrows_a_key_and_cannot_reach_another(stack: ServeStack) -> None:
    # alice/u1 is a scope of its own: alice's adapter is not its adapter.
    narrowed = model_ids(stack, "alice", user="u1")
    assert not [name for name in narrowed if "/" in name]
    # A user value shaped like another scope is refused, never interpreted.
    with stack.http(KEYS["alice"]) as http:
        for user in ("../bob", "bob/x", "x" * 65):
            response = http.get("/v1/models", params={"user": user})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == "user"
    client = stack.openai(KEYS["alice"])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="ouro-shared", messages=QUESTION, user="../bob")


def test_another_scopes_adapter_is_a_404_exactly_like_an_unknown_name(stack: ServeStack) -> None:
    def error(key: str, model: str, user: str | None = None) -> tuple[int, dict]:
        with stack.http(KEYS[key]) as http:
            body = {"model": model, "messages": QUESTION, "max_tokens": 4}
            if user:
                body["user"] = user
            response = http.post("/v1/chat/completions", json=body)
        return response.status_code, response.json()

    wait_for(lambda: "ouro@alice/v1" in model_ids(stack, "alice"), "alice's names listed")
    status, body = error("alice", "ouro@bob/v1")
    assert status == 404
    assert body["error"]["code"] == "model_not_found"
    for key, model, user in (
        ("alice", "ouro@nobody/v1", None),  # no such scope
        ("bob", "ouro@bob/v9", None),  # own scope, no such version
        ("carol", "ouro@bob/production", None),
        ("alice", "ouro@alice/v1", "u1"),  # alice/u1 is not alice
    ):
        other_status, other_body = error(key, model, user)
        assert other_status == 404
        assert other_body["error"]["message"] == f"the model {model!r} does not exist"
    assert body["error"]["message"] == "the model 'ouro@bob/v1' does not exist"
    with pytest.raises(openai.NotFoundError):
        stack.openai(KEYS["carol"]).chat.completions.create(
            model="ouro@alice/v1", messages=QUESTION
        )


def test_each_caller_is_answered_by_their_own_adapter_in_one_batch(
    stack: ServeStack, make_lora_adapter, tiny_random_model_dir: Path
) -> None:
    engine = GenerationEngine.from_settings(stack.settings)
    for name, seed in (("alice", 202), ("bob", 203), ("shared", 201)):
        engine.add_adapter(name, make_lora_adapter(tiny_random_model_dir, seed))
    params = SamplingParams(max_tokens=12)
    expected = {
        key: engine.generate([GenerationRequest(QUESTION, params, adapter=adapter)])[0].text
        for key, adapter in (("alice", "alice"), ("bob", "bob"), ("carol", "shared"))
    }
    assert len(set(expected.values())) == 3, "the adapters must answer differently"
    wait_for(lambda: "ouro@alice/v1" in model_ids(stack, "alice"), "alice's names listed")

    def ask(key: str) -> tuple[str, str, str]:
        response = stack.openai(KEYS[key]).chat.completions.with_raw_response.create(
            model="ouro", messages=QUESTION, max_tokens=12, temperature=0
        )
        answer = response.parse()
        return (
            answer.model,
            response.headers["x-ouro-model-version"],
            answer.choices[0].message.content,
        )

    keys = ["alice", "bob", "carol"] * 3
    with ThreadPoolExecutor(max_workers=len(keys)) as pool:
        answers = list(pool.map(ask, keys))
    labels = {"alice": "ouro@alice/v1", "bob": "ouro@bob/v1", "carol": "ouro@v1"}
    for key, (model, header, text) in zip(keys, answers, strict=True):
        assert model == header == labels[key]
        assert text == expected[key]


def test_shared_production_answers_whoever_asks_for_ouro_shared(stack: ServeStack) -> None:
    for key in ("alice", "carol"):
        response = stack.openai(KEYS[key]).chat.completions.with_raw_response.create(
            model="ouro-shared", messages=QUESTION, max_tokens=4
        )
        assert response.headers["x-ouro-model-version"] == "ouro@v1"
        assert response.parse().model == "ouro@v1"
    # carol has no personal adapter: 'ouro' is shared production for her.
    answer = stack.openai(KEYS["carol"]).chat.completions.create(
        model="ouro", messages=QUESTION, max_tokens=4
    )
    assert answer.model == "ouro@v1"


@pytest.mark.parametrize(
    "feedback",
    [{"correction": "Green, obviously."}, {"rating": "down"}],
    ids=["correction", "rating"],
)
def test_feedback_records_the_scope_from_the_key(stack: ServeStack, feedback: dict) -> None:
    bodies = (
        (KEYS["alice"], {"user": "u1"}),
        (KEYS["carol"], {}),
        (ADMIN, {}),
    )
    ids = []
    for key, extra in bodies:
        with stack.http(key) as http:
            response = http.post(
                "/v1/feedback",
                json={"messages": QUESTION, "completion": "Grey.", **feedback, **extra},
            )
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    records = {r.id: r for r in LedgerReader(stack.settings.ledger_dir).scan().records}
    assert [(records[i].scope, records[i].admin) for i in ids] == [
        ("alice/u1", False),
        ("carol", False),
        ("ops", True),
    ]
    with stack.http(KEYS["alice"]) as http:
        refused = http.post(
            "/v1/feedback",
            json={"messages": QUESTION, "completion": "Grey.", "user": "../bob", **feedback},
        )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "user"


def test_admin_share_and_forget(stack: ServeStack, personal: PersonalRegistries) -> None:
    with stack.http(KEYS["carol"]) as http:
        record_id = http.post(
            "/v1/feedback",
            json={"messages": QUESTION, "completion": "Grey.", "correction": "Blue."},
        ).json()["id"]
        assert http.post(f"/admin/feedback/{record_id}/share").status_code == 403
        assert http.post("/admin/scopes/bob/forget").status_code == 403
    with stack.http(ADMIN) as http:
        shared = http.post(f"/admin/feedback/{record_id}/share", params={"reason": "true"})
        assert shared.status_code == 201, shared.text
        missing = http.post(f"/admin/feedback/fb-{'0' * 32}/share")
        assert missing.status_code == 404
    with stack.http(KEYS["carol"]) as http:
        rating_id = http.post(
            "/v1/feedback", json={"messages": QUESTION, "completion": "Grey.", "rating": "up"}
        ).json()["id"]
    with stack.http(ADMIN) as http:
        not_a_correction = http.post(f"/admin/feedback/{rating_id}/share")
        assert not_a_correction.status_code == 404  # a rating never trains, shared or not
        forgot = http.post("/admin/scopes/bob/forget", params={"reason": "asked"})
        assert forgot.status_code == 200, forgot.text
        assert forgot.json()["deleted_models"] == [personal.for_scope("bob").model_name]
        assert http.post("/admin/scopes/bob%2F..%2Fx/forget").status_code in (400, 404)
    reader = LedgerReader(stack.settings.ledger_dir)
    assert record_id in reader.control().shared_ids
    assert set(personal.production_by_scope()) == {"alice"}
    wait_for(lambda: "ouro@bob/v1" not in model_ids(stack, "bob"), "bob's names dropped")
    with stack.http(KEYS["bob"]) as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": "ouro@bob/v1", "messages": QUESTION, "max_tokens": 4},
        )
    assert response.status_code == 404
