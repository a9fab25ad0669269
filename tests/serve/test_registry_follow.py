"""Serving registry versions: multiplexed adapters, alias moves, swaps, LRU, outages.

One Serve app for the module, following a real ``mlflow server`` of its own (so the
last test can stop it) with a 1 s poll interval. Adapters are random LoRAs on the tiny
random model (``make_lora_adapter``), registered the way the training job does; the
expected answers come from the same engine run directly in this process.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ouro.embedded.tiny import build_random_model
from ouro.engine import GenerationEngine, GenerationRequest, SamplingParams
from ouro.names import ALIAS_CANDIDATE, ALIAS_PRODUCTION, version_label
from ouro.registry import AdapterRegistry
from tests.fixtures.mlflow import MlflowServer, start_mlflow_server
from tests.fixtures.models import TINY_RANDOM_RECIPE
from tests.fixtures.serve import ServeStack, register_adapter_version

pytestmark = pytest.mark.integration

MAX_TOKENS = 10
PROMPTS = [
    [{"role": "user", "content": "Hello, who are you?"}],
    [{"role": "user", "content": "What is your favourite colour?"}],
]
SWITCH_DEADLINE_S = 90.0
"""Upper bound for waiting on a poll-driven switch (poll 1 s + load); not a timing assertion."""


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with start_mlflow_server(tmp_path_factory.mktemp("serve-registry-mlflow")) as server:
        yield server


@pytest.fixture(scope="module")
def registry(mlflow: MlflowServer) -> AdapterRegistry:
    return AdapterRegistry(mlflow.uri, "ouro-adapter")


@pytest.fixture(scope="module")
def adapters(make_lora_adapter, tiny_random_model_dir: Path) -> dict[str, Path]:
    return {
        name: make_lora_adapter(tiny_random_model_dir, seed)
        for name, seed in (("a", 101), ("b", 102), ("c", 103), ("d", 104))
    }


@pytest.fixture(scope="module")
def versions(registry: AdapterRegistry, adapters: dict[str, Path]) -> dict[str, int]:
    """Two versions exist before the app starts; no alias is set yet."""
    return {name: register_adapter_version(registry, adapters[name]) for name in ("a", "b")}


@pytest.fixture(scope="module")
def stack(serve_stack_factory, mlflow: MlflowServer, versions, tiny_random_model_dir) -> ServeStack:
    return serve_stack_factory(
        {
            "base_model": str(tiny_random_model_dir),
            "mlflow_tracking_uri": mlflow.uri,
            "registered_model_name": "ouro-adapter",
            "registry_poll_interval_s": 1.0,
            "max_adapters_per_replica": 2,
            "max_running_requests": 8,
            "allow_unauthenticated": True,
        }
    )


@pytest.fixture(scope="module")
def engine(stack: ServeStack, adapters: dict[str, Path]) -> GenerationEngine:
    """The engine the app runs, run directly here: the reference answers."""
    direct = GenerationEngine.from_settings(stack.settings)
    for name, path in adapters.items():
        direct.add_adapter(name, path)
    return direct


def expected(engine: GenerationEngine, adapter: str | None, prompt: list[dict]) -> str:
    request = GenerationRequest(prompt, SamplingParams(max_tokens=MAX_TOKENS), adapter=adapter)
    return engine.generate([request])[0].text


def chat(
    stack: ServeStack, model: str, prompt: list[dict], stream: bool = False
) -> tuple[str, str]:
    """(model label, text) of one greedy answer, through the official client."""
    client = stack.openai(timeout=120)
    if not stream:
        answer = client.chat.completions.create(
            model=model, messages=prompt, max_tokens=MAX_TOKENS, temperature=0
        )
        return answer.model, answer.choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model=model, messages=prompt, max_tokens=MAX_TOKENS, temperature=0, stream=True
        )
    )
    return chunks[0].model, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def wait_for_label(stack: ServeStack, model: str, label: str) -> float:
    """Seconds until ``model`` is answered by ``label`` (fails past the deadline)."""
    started = time.monotonic()
    seen = None
    while time.monotonic() - started < SWITCH_DEADLINE_S:
        seen, _ = chat(stack, model, PROMPTS[0])
        if seen == label:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"{model} still answered by {seen}, not {label}")


def refresh(stack: ServeStack) -> dict:
    response = httpx.post(
        f"{stack.base_url}/admin/registry/refresh", params={"wait_s": 60}, timeout=120
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_versions_answer_concurrently_with_the_engines_own_text(
    stack: ServeStack, engine: GenerationEngine, versions: dict[str, int]
) -> None:
    names = {f"ouro@v{versions['a']}": "a", f"ouro@v{versions['b']}": "b", "ouro-base": None}
    wanted = {
        (model, index): expected(engine, adapter, prompt)
        for model, adapter in names.items()
        for index, prompt in enumerate(PROMPTS)
    }
    assert len({wanted[(model, 0)] for model in names}) == 3, "adapters must change the answer"
    jobs = [(model, index, stream) for (model, index) in wanted for stream in (False, True)] * 2

    def run(job):
        model, index, stream = job
        return job, chat(stack, model, PROMPTS[index], stream)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(run, jobs))
    for (model, index, _), (label, text) in results:
        assert label == model
        assert text == wanted[(model, index)]


def test_an_alias_moved_in_the_registry_is_served_without_restart(
    stack: ServeStack, registry: AdapterRegistry, engine: GenerationEngine, versions
) -> None:
    assert chat(stack, "ouro", PROMPTS[0])[0] == "ouro-base"  # no production yet
    registry.set_alias(ALIAS_PRODUCTION, versions["a"])
    wait_for_label(stack, "ouro", f"ouro@v{versions['a']}")
    assert chat(stack, "ouro", PROMPTS[1]) == (
        f"ouro@v{versions['a']}",
        expected(engine, "a", PROMPTS[1]),
    )

    registry.set_alias(ALIAS_CANDIDATE, versions["b"])
    wait_for_label(stack, "ouro@candidate", f"ouro@v{versions['b']}")
    models = {m.id: m for m in stack.openai().models.list().data}
    assert {"ouro", "ouro-base", "ouro@production", "ouro@candidate"} <= set(models)
    assert {f"ouro@v{versions['a']}", f"ouro@v{versions['b']}"} <= set(models)
    assert models["ouro"].model_extra["version"] == versions["a"]
    assert models["ouro"].model_extra["parent"] == "ouro-base"
    assert models[f"ouro@v{versions['a']}"].model_extra["aliases"] == [ALIAS_PRODUCTION]
    assert models["ouro@candidate"].model_extra["version"] == versions["b"]


def test_an_admin_refresh_switches_every_replica_before_it_answers(
    stack: ServeStack, registry: AdapterRegistry, adapters, engine: GenerationEngine, versions
) -> None:
    versions["c"] = register_adapter_version(registry, adapters["c"])
    registry.set_alias(ALIAS_PRODUCTION, versions["c"])
    body = refresh(stack)
    assert body["replicas_synced"] is True
    assert body["aliases"][ALIAS_PRODUCTION] == versions["c"]
    assert [r["production_version"] for r in body["replicas"]] == [versions["c"]]
    # Synced means loaded and switched: the very next answer comes from the new version.
    assert chat(stack, "ouro", PROMPTS[0]) == (
        f"ouro@v{versions['c']}",
        expected(engine, "c", PROMPTS[0]),
    )


def test_swaps_fail_no_request_and_pinned_versions_stay_put(
    stack: ServeStack, registry: AdapterRegistry, engine: GenerationEngine, versions
) -> None:
    by_label = {f"ouro@v{number}": name for name, number in versions.items()}
    pinned = f"ouro@v{versions['a']}"
    results: list[tuple[str, str, str]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def client_loop(model: str, stream: bool) -> None:
        while not stop.is_set():
            try:
                label, text = chat(stack, model, PROMPTS[0], stream)
            except Exception as exc:  # noqa: BLE001 - every failure is counted below
                failures.append(exc)
            else:
                results.append((model, label, text))

    threads = [
        threading.Thread(target=client_loop, args=(model, stream))
        for model, stream in (("ouro", False), ("ouro", True), (pinned, False))
    ]
    for thread in threads:
        thread.start()
    try:
        for name in ("b", "a", "c"):
            registry.set_alias(ALIAS_PRODUCTION, versions[name])
            assert refresh(stack)["replicas_synced"]
            wait_for_label(stack, "ouro", f"ouro@v{versions[name]}")
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
    assert failures == []
    labels = {label for model, label, _ in results if model == "ouro"}
    assert labels >= {f"ouro@v{versions[name]}" for name in ("b", "a", "c")}
    for model, label, text in results:
        if model == pinned:
            assert label == pinned
        # The label names the version that really answered: its text is that version's.
        assert text == expected(engine, by_label[label], PROMPTS[0])


def metric(stack: ServeStack, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{stack.base_url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def replica(stack: ServeStack) -> dict:
    (report,) = httpx.get(f"{stack.base_url}/readyz").json()["replicas"]
    return report


def test_the_lru_evicts_old_versions_but_never_production(
    stack: ServeStack, registry: AdapterRegistry, adapters, versions
) -> None:
    versions["d"] = register_adapter_version(registry, adapters["d"])
    production = registry.alias_version(ALIAS_PRODUCTION)
    assert production == versions["c"]
    evictions = metric(stack, "ouro_adapter_evictions_total")
    # Two LRU slots besides the pinned production version: three others must evict.
    for _ in range(2):
        for name in ("a", "b", "d"):
            assert (
                chat(stack, f"ouro@v{versions[name]}", PROMPTS[1])[0] == f"ouro@v{versions[name]}"
            )
    refresh(stack)  # replicas report their counters after a poll
    assert metric(stack, "ouro_adapter_evictions_total") > evictions
    assert version_label(production) in replica(stack)["adapters_loaded"]
    loads = metric(stack, "ouro_adapter_loads_total")
    assert chat(stack, "ouro", PROMPTS[1])[0] == f"ouro@v{production}"
    refresh(stack)
    assert metric(stack, "ouro_adapter_loads_total") == loads  # production was never unloaded


def test_a_broken_version_is_refused_and_the_others_keep_answering(
    stack: ServeStack,
    registry: AdapterRegistry,
    make_lora_adapter,
    tmp_path_factory: pytest.TempPathFactory,
    versions,
) -> None:
    other_base = tmp_path_factory.mktemp("other-base")
    model, tokenizer = build_random_model(
        dataclasses.replace(TINY_RANDOM_RECIPE, hidden_size=32, intermediate_size=64)
    )
    model.save_pretrained(other_base)
    tokenizer.save_pretrained(other_base)
    broken = register_adapter_version(registry, make_lora_adapter(other_base, 7))
    refresh(stack)
    production = registry.alias_version(ALIAS_PRODUCTION)

    with ThreadPoolExecutor(max_workers=4) as pool:
        bad = pool.submit(
            httpx.post,
            f"{stack.base_url}/v1/chat/completions",
            json={"model": f"ouro@v{broken}", "messages": PROMPTS[0], "max_tokens": 4},
            timeout=120,
        )
        good = [
            pool.submit(chat, stack, name, PROMPTS[0])
            for name in ("ouro", f"ouro@v{versions['a']}", "ouro-base")
        ]
    assert bad.result().status_code == 400
    assert bad.result().json()["error"]["code"] == "model_unusable"
    assert [g.result()[0] for g in good] == [
        f"ouro@v{production}",
        f"ouro@v{versions['a']}",
        "ouro-base",
    ]

    # Promoting it by mistake: the replicas keep serving the version they have.
    registry.set_alias(ALIAS_PRODUCTION, broken)
    refresh(stack)
    assert chat(stack, "ouro", PROMPTS[0])[0] == f"ouro@v{production}"
    ready = httpx.get(f"{stack.base_url}/readyz")
    assert ready.status_code == 200
    assert f"version {broken}" in ready.json()["replicas"][0]["warm_error"]
    registry.set_alias(ALIAS_PRODUCTION, production)
    refresh(stack)
    assert replica(stack)["warm_error"] is None


def test_an_unreachable_registry_leaves_the_last_mapping_serving(
    stack: ServeStack, mlflow: MlflowServer, versions
) -> None:
    """Last in the module: it stops the registry."""
    before = {m.id for m in stack.openai().models.list().data}
    production_label = chat(stack, "ouro", PROMPTS[0])[0]
    mlflow.kill()
    deadline = time.monotonic() + SWITCH_DEADLINE_S
    while httpx.get(f"{stack.base_url}/readyz").json()["registry"]["reachable"]:
        assert time.monotonic() < deadline, "the outage was never noticed"
        time.sleep(0.5)
    for _ in range(3):
        assert chat(stack, "ouro", PROMPTS[0])[0] == production_label
        assert (
            chat(stack, f"ouro@v{versions['b']}", PROMPTS[1], stream=True)[0]
            == f"ouro@v{versions['b']}"
        )
        assert chat(stack, "ouro-base", PROMPTS[0])[0] == "ouro-base"
    assert {m.id for m in stack.openai().models.list().data} == before
    ready = httpx.get(f"{stack.base_url}/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["registry"]["stale"] is True and body["registry"]["error"]
    assert body["serving"]["ouro"] == [production_label]
    while replica(stack)["registry_reachable"]:  # the LLM replicas notice at their next poll
        assert time.monotonic() < deadline, "the LLM replica never noticed the outage"
        time.sleep(0.5)
    missing = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json={"model": "ouro@nobody", "messages": PROMPTS[0]},
        timeout=60,
    )
    assert missing.status_code == 404
