"""Closed-loop HTTP load against Ouro's chat completions API, and the statistics of it.

Each simulated client sends one non-streamed ``/v1/chat/completions`` request, waits for
the answer, and sends the next, until told to stop. Every request becomes a
``RequestRecord`` (times on the ``time.perf_counter`` clock, status, version that
answered, tokens), so scenarios can cut the records into windows afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import httpx
import numpy as np

if TYPE_CHECKING:
    from loadtests.bench_stack import ServeProcess

CHAT_PATH = "/v1/chat/completions"
REQUEST_TIMEOUT_S = 600.0
"""Generous: at 64 clients on two shared cores a request may wait a long time."""
TRANSPORT_ERROR = 0
"""``RequestRecord.status`` of a request that got no HTTP answer at all."""

BodyFactory = Callable[[int, int], dict]
"""``body(client_index, request_index) -> JSON body`` of a chat completion request."""


@dataclass(frozen=True)
class RequestRecord:
    """One request as the client saw it."""

    client: int
    """Index of the simulated client that sent it."""
    started: float
    """``time.perf_counter()`` when it was sent."""
    finished: float
    """``time.perf_counter()`` when the whole answer had arrived (or it failed)."""
    status: int
    """HTTP status; 0 when the connection failed."""
    model: str | None
    """The response's ``model``: the exact version that answered."""
    completion_tokens: int
    """``usage.completion_tokens`` (0 for a failure)."""
    error: str | None = None
    """The error message of a failed request."""

    @property
    def latency(self) -> float:
        return self.finished - self.started

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles of successful requests, in seconds."""

    count: int
    p50: float | None
    p90: float | None
    p99: float | None
    mean: float | None

    @classmethod
    def of(cls, latencies: Sequence[float]) -> LatencyStats:
        if not latencies:
            return cls(0, None, None, None, None)
        values = np.asarray(latencies, dtype=float)
        p50, p90, p99 = (float(np.percentile(values, q)) for q in (50, 90, 99))
        return cls(len(values), p50, p90, p99, float(values.mean()))


@dataclass(frozen=True)
class LoadSummary:
    """What a window of records adds up to."""

    requests: int
    """Requests that finished in the window."""
    succeeded: int
    failed: int
    """Anything but 200, 429 included."""
    rejected_429: int
    """Failures that were 429 (queue full): the server shedding load, not crashing."""
    status_counts: dict[str, int]
    duration_s: float
    requests_per_s: float
    tokens_per_s: float
    """Completion tokens of successful requests per second of the window."""
    latency: LatencyStats
    models: dict[str, int]
    """Answers per version that answered."""

    @classmethod
    def of(cls, records: Sequence[RequestRecord], duration_s: float | None = None) -> LoadSummary:
        """Summary of ``records``; the duration defaults to first start .. last finish."""
        if duration_s is None:
            duration_s = (
                max(r.finished for r in records) - min(r.started for r in records)
                if records
                else 0.0
            )
        ok = [r for r in records if r.ok]
        rate = (lambda n: n / duration_s) if duration_s > 0 else (lambda n: 0.0)
        return cls(
            requests=len(records),
            succeeded=len(ok),
            failed=len(records) - len(ok),
            rejected_429=sum(r.status == 429 for r in records),
            status_counts=dict(Counter(str(r.status) for r in records)),
            duration_s=duration_s,
            requests_per_s=rate(len(ok)),
            tokens_per_s=rate(sum(r.completion_tokens for r in ok)),
            latency=LatencyStats.of([r.latency for r in ok]),
            models=dict(Counter(r.model for r in ok if r.model)),
        )

    def to_dict(self) -> dict:
        return asdict(self)


def chat_body(messages: list[dict], model: str, max_tokens: int, temperature: float = 0.0) -> dict:
    """A non-streamed chat completion request."""
    return {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
    }


def async_client(base_url: str, api_key: str, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=REQUEST_TIMEOUT_S,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


async def send_chat(client: httpx.AsyncClient, body: dict, client_index: int) -> RequestRecord:
    """Send one request and wait for the whole answer."""
    started = time.perf_counter()
    try:
        response = await client.post(CHAT_PATH, json=body)
    except httpx.HTTPError as exc:
        return RequestRecord(
            client_index, started, time.perf_counter(), TRANSPORT_ERROR, None, 0, repr(exc)
        )
    finished = time.perf_counter()
    if response.status_code != 200:
        return RequestRecord(
            client_index, started, finished, response.status_code, None, 0, response.text[:300]
        )
    answer = response.json()
    return RequestRecord(
        client_index,
        started,
        finished,
        200,
        answer.get("model"),
        int(answer.get("usage", {}).get("completion_tokens", 0)),
    )


async def closed_loop(
    client: httpx.AsyncClient,
    body: BodyFactory,
    clients: int,
    *,
    requests_per_client: int | None = None,
    duration_s: float | None = None,
    stop: asyncio.Event | None = None,
    records: list[RequestRecord] | None = None,
) -> list[RequestRecord]:
    """Run ``clients`` closed-loop clients; each stops after ``requests_per_client``
    requests, once ``duration_s`` has passed, or when ``stop`` is set (whichever first).

    Records are appended to ``records`` as they finish (pass a list to watch them live)
    and returned.
    """
    if requests_per_client is None and duration_s is None and stop is None:
        raise ValueError("closed_loop needs a request count, a duration or a stop event")
    deadline = time.perf_counter() + duration_s if duration_s is not None else None
    records = [] if records is None else records

    def more(sent: int) -> bool:
        if requests_per_client is not None and sent >= requests_per_client:
            return False
        if deadline is not None and time.perf_counter() >= deadline:
            return False
        return stop is None or not stop.is_set()

    async def one_client(index: int) -> None:
        sent = 0
        while more(sent):
            records.append(await send_chat(client, body(index, sent), index))
            sent += 1

    await asyncio.gather(*(one_client(index) for index in range(clients)))
    return records


async def prompt_rotation_load(
    base_url: str,
    api_key: str,
    model: str,
    prompts: list[list[dict]],
    clients: int,
    max_tokens: int,
    *,
    requests_per_client: int | None = None,
    duration_s: float | None = None,
) -> LoadSummary:
    """Closed-loop load on one model name; the clients take the prompts in turn."""

    def body(client_index: int, request_index: int) -> dict:
        messages = prompts[(request_index * clients + client_index) % len(prompts)]
        return chat_body(messages, model, max_tokens)

    async with async_client(base_url, api_key, clients) as client:
        records = await closed_loop(
            client, body, clients, requests_per_client=requests_per_client, duration_s=duration_s
        )
    return LoadSummary.of(records)


def run_prompt_rotation(
    stack: ServeProcess,
    model: str,
    prompts: list[list[dict]],
    clients: int,
    max_tokens: int,
    **limit: float | None,
) -> LoadSummary:
    """``prompt_rotation_load`` on a running stack, from synchronous code (``limit``:
    ``requests_per_client`` or ``duration_s``)."""
    return asyncio.run(
        prompt_rotation_load(
            stack.base_url, stack.client_key, model, prompts, clients, max_tokens, **limit
        )
    )
