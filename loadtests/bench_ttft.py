"""Time to first token of a new request, on an idle server and while others decode.

A continuous-batching server starts a newcomer at the next step; a static one makes it
wait for the running batch to finish. ``ttft_under_load_ratio`` is the p50 TTFT of
streamed probe requests while ``background`` closed-loop clients keep the server busy,
divided by the p50 on the idle server (the same probes, one at a time). The same
measurement on the engine in-process (an :class:`~ouro.engine.AsyncEngine` in this
process, no HTTP) gives ``engine_ttft_under_load_ratio``: how much of the ratio is the
engine's schedule, and how much the serving path's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing

from loadtests.bench_load import CHAT_PATH, async_client, chat_body
from loadtests.bench_stack import ServeProcess
from ouro.engine import AsyncEngine, GenerationEngine, GenerationRequest, SamplingParams
from ouro.names import SERVED_MODEL_NAME

logger = logging.getLogger(__name__)

FirstToken = Callable[[list[dict], int], Awaitable[float]]
"""Seconds from sending a streamed request to its first text."""
WholeAnswer = Callable[[list[dict], int], Awaitable[bool]]
"""One non-streamed request to its end; whether it succeeded."""


async def _under_load(
    first_token: FirstToken,
    whole_answer: WholeAnswer,
    prompts: list[list[dict]],
    *,
    background: int,
    probes: int,
    probe_max_tokens: int,
    background_max_tokens: int,
) -> dict:
    """Probes one at a time on the idle system, then again while ``background`` closed-loop
    clients keep it decoding."""

    async def probe_all() -> list[float]:
        return [
            await first_token(prompts[index % len(prompts)], probe_max_tokens)
            for index in range(probes)
        ]

    idle = await probe_all()
    stop = asyncio.Event()
    outcomes: list[bool] = []

    async def client(client_index: int) -> None:
        request_index = 0
        while not stop.is_set():
            messages = prompts[(client_index + request_index) % len(prompts)]
            outcomes.append(await whole_answer(messages, background_max_tokens))
            request_index += 1

    load = [asyncio.create_task(client(index)) for index in range(background)]
    await asyncio.sleep(2.0)  # let the background requests fill the batch
    try:
        loaded = await probe_all()
    finally:
        stop.set()
        await asyncio.gather(*load)
    idle_p50, loaded_p50 = statistics.median(idle), statistics.median(loaded)
    return {
        "idle_ttft_s": idle,
        "loaded_ttft_s": loaded,
        "idle_ttft_p50_s": idle_p50,
        "loaded_ttft_p50_s": loaded_p50,
        "ttft_under_load_ratio": loaded_p50 / idle_p50,
        "background_requests": len(outcomes),
        "background_failed": outcomes.count(False),
    }


async def _over_http(stack: ServeProcess, prompts: list[list[dict]], **sizes: int) -> dict:
    async with async_client(stack.base_url, stack.client_key, sizes["background"] + 2) as client:

        async def first_token(messages: list[dict], max_tokens: int) -> float:
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

        async def whole_answer(messages: list[dict], max_tokens: int) -> bool:
            body = chat_body(messages, SERVED_MODEL_NAME, max_tokens)
            return (await client.post(CHAT_PATH, json=body)).status_code == 200

        return await _under_load(first_token, whole_answer, prompts, **sizes)


async def _in_process(engine: GenerationEngine, prompts: list[list[dict]], **sizes: int) -> dict:
    driver = AsyncEngine(engine)
    driver.start()

    def request(messages: list[dict], max_tokens: int) -> GenerationRequest:
        return GenerationRequest(messages, SamplingParams(max_tokens=max_tokens))

    async def first_token(messages: list[dict], max_tokens: int) -> float:
        started = time.perf_counter()
        async with aclosing(driver.generate(request(messages, max_tokens))) as deltas:
            async for delta in deltas:
                if delta.text:
                    return time.perf_counter() - started  # closing aborts the rest
        raise RuntimeError("the answer carried no text")

    async def whole_answer(messages: list[dict], max_tokens: int) -> bool:
        async for _ in driver.generate(request(messages, max_tokens), stream=False):
            pass
        return True

    try:
        return await _under_load(first_token, whole_answer, prompts, **sizes)
    finally:
        driver.shutdown()


def run_ttft(
    stack: ServeProcess, engine: GenerationEngine, prompts: list[list[dict]], **sizes: int
) -> dict:
    """The scenario (see the module docstring); ``sizes`` are ``_under_load``'s keywords."""
    http = asyncio.run(_over_http(stack, prompts, **sizes))
    in_process = asyncio.run(_in_process(engine, prompts, **sizes))
    logger.info(
        "TTFT p50: idle %.3f s, with %d decoding %.3f s (engine in-process: %.3f s, %.3f s)",
        http["idle_ttft_p50_s"],
        sizes["background"],
        http["loaded_ttft_p50_s"],
        in_process["idle_ttft_p50_s"],
        in_process["loaded_ttft_p50_s"],
    )
    return {
        "background_clients": sizes["background"],
        "probes": sizes["probes"],
        "probe_max_tokens": sizes["probe_max_tokens"],
        "background_max_tokens": sizes["background_max_tokens"],
        **http,
        "engine": in_process,
        "engine_ttft_under_load_ratio": in_process["ttft_under_load_ratio"],
    }
