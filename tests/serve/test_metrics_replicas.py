"""/metrics with two LLM server replicas, through the real Serve app.

A scrape reaches one replica through the load balancer; that replica exports every
replica's series, labelled ``replica``. So however the scrapes land, each counter only
grows and the sum over replicas is what the clients were answered.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.serve import ServeStack

pytestmark = pytest.mark.integration

REPLICAS = 2
ROUNDS = 4
REQUESTS_PER_ROUND = 6
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def stack(serve_stack_factory, tiny_random_model_dir: Path) -> ServeStack:
    return serve_stack_factory(
        {
            "base_model": str(tiny_random_model_dir),
            "allow_unauthenticated": True,
            "llm_num_cpus": 0.5,
            "default_max_tokens": 2,
        },
        num_replicas=REPLICAS,
    )


def scrape(stack: ServeStack) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{stack.base_url}/metrics", timeout=30).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def answered(samples: dict[tuple[str, frozenset], float]) -> float:
    """Chat completions answered 200, summed over the replicas."""
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "ouro_requests_total"
        and ("route", CHAT) in labels
        and ("status", "200") in labels
    )


def test_counters_only_grow_and_sum_to_what_clients_were_answered(stack: ServeStack) -> None:
    sent = 0
    previous: dict[tuple[str, frozenset], float] = {}
    with httpx.Client(base_url=stack.base_url, timeout=60) as client:
        for _ in range(ROUNDS):
            for _ in range(REQUESTS_PER_ROUND):
                response = client.post(
                    CHAT,
                    json={"model": "ouro-base", "messages": [{"role": "user", "content": "Hi"}]},
                )
                assert response.status_code == 200, response.text
                sent += 1
            deadline = time.monotonic() + 10
            samples = scrape(stack)
            while answered(samples) < sent and time.monotonic() < deadline:
                samples = scrape(stack)  # a count lands just after the response's last byte
            assert answered(samples) == sent
            replicas = {
                dict(labels)["replica"]
                for name, labels in samples
                if name == "ouro_registry_reachable"
            }
            assert len(replicas) == REPLICAS, replicas
            for key, value in previous.items():
                name = key[0]
                if name.endswith(("_total", "_count", "_sum", "_bucket")) and key in samples:
                    assert samples[key] >= value, (key, value, samples[key])
            counters = {
                key
                for key in previous
                if key[0].endswith("_total") and dict(key[1]).get("replica") in replicas
            }
            assert counters <= set(samples), "a replica's counter vanished between scrapes"
            previous = samples
    by_replica = Counter(
        dict(labels)["replica"]
        for (name, labels), value in previous.items()
        if name == "ouro_requests_total" and ("route", CHAT) in labels and value > 0
    )
    assert len(by_replica) == REPLICAS, "both replicas answered clients, and both are counted"
