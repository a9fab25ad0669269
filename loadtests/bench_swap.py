"""Scenario "swap under load": the production alias moves while clients keep chatting.

Background clients ask ``ouro`` without pause. After a steady period the harness moves
``production`` from one version to the next in the MLflow registry (``set_alias``, as an
operator or the training job does) and asks Serve to look now
(``POST /admin/registry/refresh``). It keeps going until the new version has answered,
plus a tail, and reports:

- ``swap_failed_requests``: requests that failed (any status but 200) from the move on;
- ``swap_seconds``: from the moment the alias was set to the end of the first answer by
  the new version (the new version is loaded warm first, so this includes its load);
- p50/p99 latency of the requests during the swap (move to end) vs. the steady period.
"""

from __future__ import annotations

import asyncio
import logging
import time

from loadtests.bench_load import (
    LoadSummary,
    RequestRecord,
    async_client,
    chat_body,
    closed_loop,
)
from loadtests.bench_stack import ServeProcess
from ouro.names import ALIAS_PRODUCTION, SERVED_MODEL_NAME, version_label
from ouro.registry import AdapterRegistry

logger = logging.getLogger(__name__)

POLL_S = 0.05


class SwapTimeoutError(TimeoutError):
    """The new version never answered."""


async def _swap(
    stack: ServeProcess,
    registry: AdapterRegistry,
    prompts: list[list[dict]],
    *,
    to_version: int,
    clients: int,
    steady_s: float,
    tail_s: float,
    timeout_s: float,
    max_tokens: int,
) -> dict:
    new_label = version_label(to_version)
    records: list[RequestRecord] = []
    stop = asyncio.Event()

    def body(client_index: int, request_index: int) -> dict:
        messages = prompts[(request_index * clients + client_index) % len(prompts)]
        return chat_body(messages, SERVED_MODEL_NAME, max_tokens)

    async with async_client(stack.base_url, stack.client_key, clients) as client:
        load = asyncio.create_task(closed_loop(client, body, clients, stop=stop, records=records))
        load_started = time.perf_counter()
        first_new: RequestRecord | None = None
        try:
            await asyncio.sleep(steady_s)
            move_started = time.perf_counter()
            await asyncio.to_thread(registry.set_alias, ALIAS_PRODUCTION, to_version)
            moved = time.perf_counter()
            refresh = await asyncio.to_thread(stack.refresh_registry)
            refreshed = time.perf_counter()
            while first_new is None:
                first_new = next((r for r in records if r.model == new_label), None)
                if time.perf_counter() - moved > timeout_s:
                    raise SwapTimeoutError(f"{new_label} did not answer within {timeout_s:.0f} s")
                await asyncio.sleep(POLL_S)
            await asyncio.sleep(tail_s)
        finally:
            stop.set()
            await load
    steady = [r for r in records if r.finished < move_started]
    during = [r for r in records if r.finished >= move_started]
    late_old = [
        r for r in during if r.started > first_new.finished and r.ok and r.model != new_label
    ]
    swap_seconds = first_new.finished - moved
    failed = sum(not r.ok for r in during)
    logger.info(
        "swap to %s: first answer %.2f s after the move, %d failed requests",
        new_label,
        swap_seconds,
        failed,
    )
    return {
        "clients": clients,
        "max_tokens": max_tokens,
        "to_version": new_label,
        "set_alias_s": moved - move_started,
        "refresh_call_s": refreshed - moved,
        "refresh_replicas_synced": refresh.get("replicas_synced"),
        "swap_seconds": swap_seconds,
        "swap_failed_requests": failed,
        "failed_requests_total": sum(not r.ok for r in records),
        "old_version_answers_after_first_new": len(late_old),
        "steady": LoadSummary.of(steady).to_dict(),
        "during_swap": LoadSummary.of(during).to_dict(),
        # For the plot: every request, times relative to the alias move.
        "timeline": [
            {
                "started": round(r.started - moved, 4),
                "latency": round(r.latency, 4),
                "status": r.status,
                "model": r.model,
            }
            for r in records
        ],
        "load_started_before_move_s": moved - load_started,
    }


def run_swap(
    stack: ServeProcess,
    registry: AdapterRegistry,
    prompts: list[list[dict]],
    *,
    to_version: int,
    clients: int,
    steady_s: float,
    tail_s: float,
    timeout_s: float,
    max_tokens: int,
) -> dict:
    return asyncio.run(
        _swap(
            stack,
            registry,
            prompts,
            to_version=to_version,
            clients=clients,
            steady_s=steady_s,
            tail_s=tail_s,
            timeout_s=timeout_s,
            max_tokens=max_tokens,
        )
    )
