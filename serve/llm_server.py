"""LLMServer: the deployment that owns a GenerationEngine and the adapters loaded into it.

- Batching: every request goes through one ``@serve.batch`` streaming generator, which
  feeds ``GenerationEngine.stream`` (one list of deltas per decoding step). Serve
  splits a batch by *multiplexed model id*, so the ingress does not set one: the adapter
  travels in the request body (``LLMCall.model``) and requests for different versions
  share a batch (the engine gives each row its own adapter).
- Adapters: ``@serve.multiplexed`` is the LRU of non-production versions (loader:
  ``AdapterRegistry.download`` then ``engine.add_adapter``). The production version is
  pinned outside that LRU, so it is never evicted while it is production (an engine
  holds at most ``max_adapters_per_replica`` + 1 adapters).
- Swaps: each replica runs its own registry watcher. When ``production`` moves to a new
  version, the replica loads it first (warm), then switches ``ouro`` to it; requests
  that started on the old version hold a lease on it and finish there. No request
  waits for the cold load.
- Engine calls run in a worker thread; the replica's event loop is never blocked.

The engine and registry factories are injected (Ray Serve LLM style), so a test can
pass small ones; the defaults build the real engine and MLflow registry.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import nullcontext

import torch
from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from ouro.engine import GenerationEngine, GenerationRequest, StreamDelta
from ouro.errors import OuroError
from ouro.registry import ALIAS_PRODUCTION, AdapterRegistry, RegistrySnapshot
from ouro.settings import OuroSettings
from serve.adapter_slots import AdapterLease, AdapterSlots, CachedAdapter, adapter_name
from serve.exceptions import NotReadyError
from serve.llm_calls import Finished, LLMCall, LLMResult, ServedModel, TextDelta
from serve.logs import configure_logging, set_request_id
from serve.model_names import ModelNames
from serve.registry_watcher import RegistryWatcher
from serve.replica_report import ReplicaReport

logger = logging.getLogger(__name__)

LLM_SERVER_NAME = "LLMServer"

EngineFactory = Callable[[OuroSettings], GenerationEngine]
RegistryFactory = Callable[[OuroSettings], AdapterRegistry]


def build_engine(settings: OuroSettings) -> GenerationEngine:
    """The real engine: the configured base model (default engine factory)."""
    return GenerationEngine.from_settings(settings)


def build_registry(settings: OuroSettings) -> AdapterRegistry:
    """The real MLflow registry client (default registry factory)."""
    return AdapterRegistry(settings.tracking_uri, settings.registered_model_name)


@serve.deployment(name=LLM_SERVER_NAME, health_check_period_s=10, health_check_timeout_s=60)
class LLMServer:
    """Generates chat answers with the base model and any registry version."""

    async def __init__(
        self,
        settings_overrides: dict,
        engine_factory: EngineFactory = build_engine,
        registry_factory: RegistryFactory = build_registry,
        coordinator=None,
    ) -> None:
        self.settings = OuroSettings(**settings_overrides)
        configure_logging()
        # Ray sets OMP threads to the actor's CPUs; torch needs telling as well.
        torch.set_num_threads(max(1, int(self.settings.llm_num_cpus)))
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.engine = await asyncio.to_thread(engine_factory, self.settings)
        self.registry = registry_factory(self.settings)
        self.slots = AdapterSlots(self.engine, self._download)
        self.names = ModelNames()
        self._production_known = False
        self._warm_error: str | None = None
        self._coordinator = coordinator
        self._background: set[asyncio.Task] = set()

        async def load_cached(model_id: str) -> CachedAdapter:
            return await self.slots.load_cached(int(model_id.removeprefix("v")))

        # The LRU size is a setting, so the decorator is applied per replica.
        self._load_cached = serve.multiplexed(
            max_num_models_per_replica=self.settings.max_adapters_per_replica
        )(load_cached)
        self._decode_batch.set_max_batch_size(self.settings.max_batch_size)
        self._decode_batch.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)

        self.watcher = RegistryWatcher(
            self.registry,
            self.settings.registry_poll_interval_s,
            on_snapshot=self._on_snapshot,
            on_polled=self._send_report,
            coordinator=coordinator,
        )
        await self.watcher.start()
        logger.info("LLM server replica %s ready", self.replica_id)

    # -- public methods (called through Serve handles) -------------------------------------
    async def generate(self, call: LLMCall) -> LLMResult:
        """The whole answer to one call."""
        served: ServedModel | None = None
        text: list[str] = []
        events = self.generate_stream(call)
        try:
            async for event in events:
                if isinstance(event, ServedModel):
                    served = event
                elif isinstance(event, TextDelta):
                    text.append(event.text)
                elif served is not None:
                    return LLMResult(served=served, text="".join(text), finished=event)
        finally:
            await events.aclose()  # releases the adapter lease now, not at garbage collection
        raise RuntimeError("generation ended without finishing")

    async def generate_stream(self, call: LLMCall) -> AsyncIterator:
        """ServedModel, then TextDelta per new text, then Finished (see serve.llm_calls)."""
        set_request_id(call.request_id)
        started = time.monotonic()
        served = await self._resolve(call.model)
        lease = await self._lease(served)
        with lease or nullcontext():
            yield served
            first_token_s: float | None = None
            request = GenerationRequest(
                messages=call.messages,
                params=call.params,
                adapter=lease.name if lease is not None else None,
                request_id=call.request_id,
            )
            steps = self._decode_batch(request)
            try:
                async for delta in steps:
                    if delta is None:
                        continue
                    if isinstance(delta, BaseException):
                        raise delta
                    if first_token_s is None:
                        first_token_s = time.monotonic() - started
                    if delta.text:
                        yield TextDelta(delta.text)
                    if delta.finish_reason is not None:
                        yield Finished(
                            finish_reason=delta.finish_reason,
                            prompt_tokens=delta.prompt_tokens,
                            completion_tokens=delta.completion_tokens,
                            first_token_s=first_token_s,
                        )
                        return
            finally:
                # Serve ends each request of a streaming batch with one more (sentinel)
                # step; consume it in the background, so nothing is left unretrieved.
                task = asyncio.get_running_loop().create_task(_drain(steps))
                self._background.add(task)  # the loop keeps only a weak reference
                task.add_done_callback(self._background.discard)

    async def refresh_registry(self) -> ReplicaReport:
        """Re-read the registry now (this replica only; the coordinator reaches all)."""
        await self.watcher.refresh()
        return self._make_report()

    async def report(self) -> ReplicaReport:
        return self._make_report()

    async def check_health(self) -> None:
        """Serve's health check: a replica that stopped following the registry is replaced."""
        if not self.watcher.running:
            raise NotReadyError("the registry watcher has stopped")

    # -- names and adapters ------------------------------------------------------------------
    async def _resolve(self, name: str) -> ServedModel:
        if not self._production_known and self.names.needs_production(name):
            raise NotReadyError(
                "the production version is not loaded yet"
                + (f": {self._warm_error}" if self._warm_error else "")
            )
        if not self.names.knows(name):
            # The ingress only forwards names its own registry view resolves, so a miss
            # here means this replica's view is behind: read the registry now.
            await self.watcher.refresh()
        return self.names.resolve(name)

    async def _lease(self, served: ServedModel) -> AdapterLease | None:
        """Hold the served version's adapter for the request (None for the base model)."""
        version = served.version
        if version is None:
            return None
        if not (version == self.names.production and self.slots.is_loaded(version)):
            await self._load_cached(adapter_name(version))
        # No await between the load and the lease: nothing can evict the version first.
        return self.slots.acquire(version)

    def _download(self, version: int):
        return self.registry.download(version, self.settings.adapter_cache_dir)

    async def _on_snapshot(self, snapshot: RegistrySnapshot) -> None:
        """Warm a new production version, then switch 'ouro' to it."""
        target = snapshot.aliases.get(ALIAS_PRODUCTION)
        current = self.names.production
        if self._production_known and target == current:
            self.names.update(snapshot, current)
            self._warm_error = None
            return
        if target is not None:
            try:
                await self.slots.pin(target)
            except (OuroError, OSError) as exc:
                self._warm_error = f"version {target}: {exc}"
                logger.error(
                    "cannot load production version %s, still serving %s: %s", target, current, exc
                )
                self.names.update(snapshot, current)
                return
        self.names.update(snapshot, target)
        self._production_known = True
        self._warm_error = None
        logger.info("'ouro' now answers with %s (was %s)", target, current)
        if current is not None and current != target:
            await self.slots.unpin(current)

    # -- batching ---------------------------------------------------------------------------
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _decode_batch(self, requests: list[GenerationRequest]) -> AsyncIterator[list]:
        """One list per decoding step, one slot per request (Serve's streaming batch).

        A slot is the request's StreamDelta, its error (a request the engine refuses,
        so the others still run), None (nothing new yet), or StopIteration once it
        has finished.
        """
        errors = await asyncio.to_thread(self._refused, requests)
        if errors:
            yield [errors.get(index) for index in range(len(requests))]
        valid = [index for index in range(len(requests)) if index not in errors]
        done = [StopIteration] * len(requests)
        if not valid:
            yield done
            return
        async for step in self._engine_steps([requests[index] for index in valid]):
            out: list = list(done)
            for slot, delta in zip(valid, step, strict=True):
                out[slot] = delta if delta is not None else StopIteration
            yield out

    def _refused(self, requests: list[GenerationRequest]) -> dict[int, OuroError]:
        """The requests the engine would refuse (bad prompt or settings), by position."""
        errors = {}
        for index, request in enumerate(requests):
            try:
                self.engine.prompt_ids(request)
            except OuroError as exc:
                errors[index] = exc
        return errors

    async def _engine_steps(
        self, requests: list[GenerationRequest]
    ) -> AsyncIterator[list[StreamDelta | None]]:
        """GenerationEngine.stream run in a worker thread, its steps handed to the loop."""
        loop = asyncio.get_running_loop()
        steps_queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def produce() -> None:
            try:
                steps = self.engine.stream(requests)
                try:
                    for step in steps:
                        loop.call_soon_threadsafe(steps_queue.put_nowait, (step, None))
                        if cancelled.is_set():
                            break
                finally:
                    steps.close()  # releases the engine's lock at once
            except Exception as exc:  # noqa: BLE001 - handed to the requests, which raise it
                loop.call_soon_threadsafe(steps_queue.put_nowait, (None, exc))
            else:
                loop.call_soon_threadsafe(steps_queue.put_nowait, (None, None))

        worker = loop.run_in_executor(None, produce)
        try:
            while True:
                step, error = await steps_queue.get()
                if error is not None:
                    raise error
                if step is None:
                    return
                yield step
        finally:
            cancelled.set()
            await asyncio.shield(worker)

    # -- reports ----------------------------------------------------------------------------
    def _make_report(self) -> ReplicaReport:
        state = self.watcher.state
        return ReplicaReport(
            replica_id=self.replica_id,
            reported_at=time.time(),
            production_version=self.names.production,
            production_known=self._production_known,
            refresh_generation=self.watcher.acted_generation,
            adapters_loaded=tuple(self.slots.loaded_names()),
            adapter_loads=self.slots.loads,
            adapter_evictions=self.slots.evictions,
            adapter_load_failures=self.slots.load_failures,
            registry_reachable=state.reachable,
            registry_error=state.last_error,
            warm_error=self._warm_error,
        )

    async def _send_report(self) -> ReplicaReport:
        report = self._make_report()
        if self._coordinator is not None:
            try:
                await self._coordinator.report.remote(report)
            except (RayError, RayServeException) as exc:
                logger.debug("could not report to the coordinator: %s", exc)
        return report


async def _drain(steps: AsyncIterator) -> None:
    try:
        async for _ in steps:
            pass
    except Exception as exc:  # noqa: BLE001 - the request it belonged to has reported it
        logger.debug("batch failed after its request had finished: %s", exc)
