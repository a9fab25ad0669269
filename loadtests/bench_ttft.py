"""Time to first token of a new request, on an idle server and while others decode.

A continuous-batching server starts a newcomer at the next step; a static one makes it
wait for the running batch to finish. ``ttft_under_load_ratio`` is the p50 TTFT of
streamed probe requests while ``background`` closed-loop clients keep the server busy,
divided by the p50 on the idle server (the same probes, one at a time).
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time

from loadtests.bench_load import CHAT_PATH, async_client, chat_body, closed_loop
from loadtests.bench_stack import ServeProcess
from ouro.registry import SERVED_MODEL_NAME

logger = logging.getLogger(__name__)


async def stream_ttft(client, messages: list[dict], max_tokens: int) -> float:
    """Seconds from sending a streamed request to its first chunk with text."""
    body = {**chat_body(messages, SERVED_MODEL_NAME, max_tokens), "stream": True}
    started = time.perf_counter()
    first: float | None = None
    async with client.stream("POST", CHAT_PATH, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if first is not None or not line.startswith("data: {"):
                continue
            choices = json.loads(line.removeprefix("data: ")).get("choices") or []
            if choices and choices[0].get("delta", {}).get("content"):
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the stream carried no text")
    return first


async def _probes(client, prompts, probes: int, max_tokens: int) -> list[float]:
    return [
        await stream_ttft(client, prompts[index % len(prompts)], max_tokens)
        for index in range(probes)
    ]


async def _measure(
    stack: ServeProcess,
    prompts: list[list[dict]],
    *,
    background: int,
    probes: int,
    probe_max_tokens: int,
    background_max_tokens: int,
) -> dict:
    async with async_client(stack.base_url, stack.client_key, background + 2) as client:
        idle = await _probes(client, prompts, probes, probe_max_tokens)
        stop = asyncio.Event()
        records: list = []

        def body(client_index: int, request_index: int) -> dict:
            messages = prompts[(client_index + request_index) % len(prompts)]
            return chat_body(messages, SERVED_MODEL_NAME, background_max_tokens)

        load = asyncio.create_task(closed_loop(client, body, background, stop=stop, records=records))
        await asyncio.sleep(2.0)  # let the background requests fill the batch
        try:
            loaded = await _probes(client, prompts, probes, probe_max_tokens)
        finally:
            stop.set()
            await load
    failed = sum(not record.ok for record in records)
    idle_p50, loaded_p50 = statistics.median(idle), statistics.median(loaded)
    logger.info(
        "TTFT p50: idle %.3f s, with %d decoding %.3f s", idle_p50, background, loaded_p50
    )
    return {
        "background_clients": background,
        "probes": probes,
        "probe_max_tokens": probe_max_tokens,
        "background_max_tokens": background_max_tokens,
        "idle_ttft_s": idle,
        "loaded_ttft_s": loaded,
        "idle_ttft_p50_s": idle_p50,
        "loaded_ttft_p50_s": loaded_p50,
        "ttft_under_load_ratio": loaded_p50 / idle_p50,
        "background_requests": len(records),
        "background_failed": failed,
    }


def run_ttft(stack: ServeProcess, prompts: list[list[dict]], **sizes: int) -> dict:
    """The scenario (see the module docstring); ``sizes`` are ``_measure``'s keywords."""
    return asyncio.run(_measure(stack, prompts, **sizes))
