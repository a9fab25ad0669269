"""LLMServer: the app's one serving deployment: an engine, its adapters, and the HTTP front.

- One hop: this deployment is the app's ingress. Serve's proxy hands each HTTP request to
  a replica, whose ``serve.ingress.HttpFront`` (auth, validation, OpenAI protocol,
  feedback) calls this replica's engine in the same process, and streamed text goes out as
  SSE from here (Ray Serve LLM's direct streaming): no answer crosses a deployment
  handle (``docs/performance.md`` measures the difference).
- Generation: every request goes straight to ``AsyncEngine.generate``; the engine's
  scheduler batches them continuously (requests join and leave the running batch at
  every step), so nothing here waits for a batch to form or to finish. A cancelled call
  (the HTTP client went away) aborts its row at the engine's next step.
- Streaming: the first token goes out at once, later text (and its tokens' logprobs) at
  most every ``stream_interval_s`` (Ray Serve LLM's stream batching), so a token is not one
  SSE event; ``generate`` (non-streamed) returns one result. The ``n`` choices of a call
  are rows of the engine's batch, coalesced each on its own.
- Adapters: ``@serve.multiplexed`` is the LRU of non-production versions, shared ones
  (``ouro@v<N>``) and personal ones (``ouro@<scope>/v<N>``, from the scope's registered
  model; the front checks the caller may use it). Loader: ``AdapterRegistry.download``
  then ``engine.add_adapter``. The shared production version, what ``ouro`` answers with,
  is pinned on every replica outside that LRU, so it is never evicted while it is
  production. A client that sends Serve's ``serve_multiplexed_model_id`` header with a
  pinned name (``ouro@v7``) is routed by Serve's proxy to a replica that holds it.
- Routing (routed corrections): a version answers only the requests its corrections are
  about. Its correction index is read with its adapter (``ouro.routing.INDEX_DIR``); the
  replica's ``RequestRouter`` (one embedder, built in a thread at start) decides each
  request on a thread of its own, against the version asked for, then its parents
  (``ModelNames.fallbacks``: a personal version, shared production, the base model). The
  answer's ``ServedModel`` names the version that answered, the route and the similarity.
  An admin's ``x-ouro-unrouted`` (``LLMCall.unrouted``) keeps the version asked for.
- Swaps: each replica runs one registry watcher, for its engine and its front alike. When
  ``production`` moves to a new version, the replica loads it first (warm), then switches
  ``ouro`` to it; requests that started on the old version hold a lease on it and finish
  there. No request waits for the cold load.

The engine and registry factories are injected (Ray Serve LLM style), so a test can
pass small ones; the defaults build the real engine and MLflow registry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from ouro.engine import AsyncEngine, GenerationEngine, GenerationRequest, StreamDelta, merge_deltas
from ouro.errors import OuroError
from ouro.names import ALIAS_PRODUCTION, UnknownModelError, parse_model_name, version_label
from ouro.registry import AdapterArtifactError, PersonalRegistries, RegistrySnapshot
from ouro.routing import CorrectionIndex, CorrectionIndexError
from ouro.settings import OuroSettings
from ouro.structured import StructuredOutput, ToolFormat
from serve.adapter_slots import AdapterLease, AdapterSlots, CachedAdapter
from serve.exceptions import NotReadyError
from serve.ingress import HttpFront
from serve.llm_calls import (
    ROUTE_BASE,
    Finished,
    LLMCall,
    LLMChoice,
    LLMEvent,
    LLMResult,
    ServedModel,
    TextDelta,
)
from serve.logs import configure_logging, set_request_id
from serve.model_names import ModelNames, served_model
from serve.registry_watcher import RegistryFactory, RegistryWatcher, build_registry
from serve.replica_report import ReplicaReport, ReplicaScrape, ScrapeAnswerer
from serve.request_router import RequestRouter

logger = logging.getLogger(__name__)

LLM_SERVER_NAME = "LLMServer"

EngineFactory = Callable[[OuroSettings], GenerationEngine]
RouterFactory = Callable[[OuroSettings], RequestRouter]


def build_engine(settings: OuroSettings) -> GenerationEngine:
    """The real engine: the configured base model (default engine factory)."""
    return GenerationEngine.from_settings(settings)


def build_router(settings: OuroSettings) -> RequestRouter:
    """The real router: all-MiniLM-L6-v2 on the CPU, from the model cache (default router
    factory)."""
    return RequestRouter.build(settings.model_cache_dir)


@serve.deployment(name=LLM_SERVER_NAME, health_check_period_s=10, health_check_timeout_s=60)
@serve.ingress()
class LLMServer:
    """Answers the app's HTTP requests, generating with the base model and any registry version."""

    async def __init__(
        self,
        settings_overrides: dict,
        engine_factory: EngineFactory = build_engine,
        registry_factory: RegistryFactory = build_registry,
        coordinator=None,
        router_factory: RouterFactory = build_router,
    ) -> None:
        self.settings = OuroSettings(**settings_overrides)
        configure_logging(self.settings.log_level)
        # Ray sets OMP threads to the actor's CPUs; torch needs telling as well.
        torch.set_num_threads(max(1, int(self.settings.llm_num_cpus)))
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        # The embedder loads in its own thread while the engine loads in another.
        router = asyncio.create_task(asyncio.to_thread(router_factory, self.settings))
        self.engine = AsyncEngine(await asyncio.to_thread(engine_factory, self.settings))
        self.structured = await asyncio.to_thread(StructuredOutput.for_engine, self.engine.engine)
        self.router: RequestRouter = await router
        self.engine.start()
        self.registry = registry_factory(self.settings)
        self.personal_registries = PersonalRegistries(
            self.registry.tracking_uri, self.registry.model_name
        )
        # The correction index of each loaded version (None: trained without one).
        self._indexes: dict[str, CorrectionIndex | None] = {}
        self.slots = AdapterSlots(
            self.engine, self._download, on_removed=lambda name: self._indexes.pop(name, None)
        )
        self.names = ModelNames(personal_adapters=self.settings.personal_adapters)
        self._production_known = False
        self._warm_error: str | None = None
        self._coordinator = coordinator

        async def load_cached(model_id: str) -> CachedAdapter:
            return await self.slots.load_cached(model_id)

        # The LRU size is a setting, so the decorator is applied per replica.
        self._load_cached = serve.multiplexed(
            max_num_models_per_replica=self.settings.max_adapters_per_replica
        )(load_cached)

        self.watcher = RegistryWatcher(
            self.registry,
            self.settings.registry_poll_interval_s,
            on_snapshot=self._on_snapshot,
            on_polled=self._on_polled,
            coordinator=coordinator,
        )
        self.front = HttpFront(
            self.settings, self, self.names, self.watcher, coordinator, self.replica_id
        )
        await self.watcher.start()
        # Each /metrics scrape gets this replica's engine state of that moment.
        self._scrape_answerer = (
            ScrapeAnswerer(coordinator, self._make_scrape) if coordinator is not None else None
        )
        if self._scrape_answerer is not None:
            self._scrape_answerer.start()
        logger.info("LLM server replica %s ready", self.replica_id)

    async def __del__(self) -> None:
        """Serve's graceful shutdown of this replica (Serve awaits an async ``__del__``):
        stop following the registry and answering scrapes, let adapter removals finish,
        close the router's thread, the ledger writer and the engine's step loop. Parts an
        interrupted start never built are skipped."""
        for stop in ("watcher", "_scrape_answerer"):
            part = getattr(self, stop, None)
            if part is not None:
                await part.stop()
        if hasattr(self, "slots"):
            await self.slots.close()
        if hasattr(self, "front"):
            self.front.close()
        if hasattr(self, "router"):
            self.router.close()
        if hasattr(self, "engine"):
            await asyncio.to_thread(self.engine.shutdown)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self.front.app()

    # -- generation (called by the front, in this process) ----------------------------------
    async def generate(self, call: LLMCall) -> LLMResult:
        """The whole answer to one call (the engine hands it over once, not per step)."""
        events = self._answer(call, stream=False)
        texts: dict[int, TextDelta] = {}
        finished: dict[int, Finished] = {}
        try:
            served = await anext(events)
            async for event in events:
                if isinstance(event, TextDelta):
                    texts[event.index] = event  # one per choice when not streaming
                else:
                    finished[event.index] = event
        finally:
            await events.aclose()  # releases the adapter lease now, not at garbage collection
        choices = [
            LLMChoice(
                text=texts[index].text, finished=finished[index], logprobs=texts[index].logprobs
            )
            for index in sorted(finished)
        ]
        return LLMResult(served=served, choices=choices)

    async def generate_stream(self, call: LLMCall) -> AsyncIterator[LLMEvent]:
        """ServedModel, then TextDelta as text comes, then Finished (see serve.llm_calls).

        A request the engine refuses (bad prompt or settings, a full queue) raises before
        ServedModel, so the front can still answer with an error status.
        """
        async for event in self._answer(call, stream=True):
            yield event

    async def _answer(self, call: LLMCall, stream: bool) -> AsyncIterator[LLMEvent]:
        """ServedModel, then per choice TextDelta (text and logprobs coalesced per
        ``stream_interval_s``; one, possibly empty, when not streaming) and Finished."""
        set_request_id(call.request_id)
        started = time.monotonic()
        lease, served, messages = await self._route(call, await self._resolve(call.model))
        with lease or nullcontext():
            request = await self._request(call, messages, lease.name if lease is not None else None)
            deltas = self.engine.generate(request, stream=stream)
            try:
                delta = await anext(deltas)
                yield served
                interval = self.settings.stream_interval_s
                # Per choice: what arrived since its last TextDelta, merged.
                pending: dict[int, StreamDelta] = {}
                sent_at, unfinished = None, call.params.n
                while True:
                    held = pending.get(delta.index)
                    pending[delta.index] = delta if held is None else merge_deltas([held, delta])
                    now = time.monotonic()
                    due = sent_at is None or now - sent_at >= interval
                    # When due every choice's pending text goes; a finished choice's at once.
                    for index in [index for index in pending if due or index == delta.index]:
                        merged = pending[index]
                        finished = merged.finish_reason is not None
                        if not (due or finished):
                            continue
                        del pending[index]
                        if merged.text or merged.logprobs or (finished and not stream):
                            yield TextDelta(merged.text, index, merged.logprobs)
                            sent_at = now
                        if finished:
                            unfinished -= 1
                            yield Finished(
                                finish_reason=merged.finish_reason,
                                prompt_tokens=merged.prompt_tokens,
                                completion_tokens=merged.completion_tokens,
                                first_token_s=merged.first_token_at - started,
                                index=index,
                            )
                    if not unfinished:
                        return
                    delta = await anext(deltas)
            finally:
                await deltas.aclose()  # aborts the rows if the call ends early

    async def _request(
        self, call: LLMCall, messages: list[dict], adapter: str | None
    ) -> GenerationRequest:
        """The engine request for ``messages`` (the call's, as routed): tools described in
        them, and the answer's grammar compiled (a schema it cannot use fails here, before
        anything is streamed)."""
        output = call.output
        tools = [tool.describe() for tool in output.tools] if isinstance(output, ToolFormat) else []
        constraint = None
        if output is not None:
            constraint = await asyncio.to_thread(self.structured.constraint, output)
        return GenerationRequest(
            messages=self.engine.engine.formatter.with_tools(messages, tools),
            params=call.params,
            adapter=adapter,
            request_id=call.request_id,
            constraint=constraint,
        )

    async def report(self) -> ReplicaReport:
        """This replica's state now (``/readyz`` when the coordinator is away)."""
        return self._make_report()

    async def check_health(self) -> None:
        """Serve's health check: a replica whose engine loop died, or that stopped
        following the registry, is replaced."""
        self.engine.check_health()
        if not self.watcher.running:
            raise NotReadyError("the registry watcher has stopped")

    # -- names and adapters ------------------------------------------------------------------
    async def _resolve(self, name: str) -> ServedModel:
        """The version ``name`` asks for; UnknownModelError (404) when this replica's
        registry view lacks it even after one re-read. A name of no served form, or a
        personal one (pinned by the front for the caller's own scope, loaded from the
        scope's model), is refused without a registry read."""
        ref = parse_model_name(name)
        if not self._production_known and self.names.needs_production(name):
            raise NotReadyError(
                "the production version is not loaded yet"
                + (f": {self._warm_error}" if self._warm_error else "")
            )
        try:
            return self.names.resolve(name)
        except UnknownModelError:
            if ref.scope is not None:
                raise
            await self.watcher.refresh()  # a version registered since the last poll
            return self.names.resolve(name)

    async def _route(
        self, call: LLMCall, requested: ServedModel
    ) -> tuple[AdapterLease | None, ServedModel, list[dict]]:
        """The version that answers: the first of ``requested`` and its parents whose
        correction index takes the request (``requested`` itself when unrouted), with its
        adapter held for the request (no lease for the base model), and the conversation
        it answers (``RouteDecision.prompt``: a match reads as the correction matched)."""
        if requested.version is None:
            return None, replace(requested, route=ROUTE_BASE), call.messages
        chain = [requested] if call.unrouted else self.names.fallbacks(requested)
        leases: list[AdapterLease] = []
        try:
            for version in chain:
                if version.version is not None:
                    leases.append(await self._lease(version))
            indexes = [self._indexes[lease.name] for lease in leases]
            choice = await self.router.choose(indexes, call.messages, forced=call.unrouted)
        except BaseException:
            for lease in leases:
                lease.release()
            raise
        for position, lease in enumerate(leases):
            if position != choice.position:
                lease.release()
        decision = choice.decision
        served = replace(
            chain[choice.position],
            route=decision.reason,
            similarity=decision.similarity,
            router_cpu_s=choice.cpu_s,
        )
        logger.debug(
            "%s answered by %s: %s (similarity %s, correction %s)",
            requested.label,
            served.label,
            decision.reason,
            decision.similarity,
            decision.correction_id,
        )
        lease = leases[choice.position] if choice.position < len(leases) else None
        return lease, served, decision.prompt(call.messages)

    async def _lease(self, served: ServedModel) -> AdapterLease:
        """Hold a version's adapter for the request."""
        name = served.label
        production = self.names.production
        pinned = production is not None and name == version_label(production)
        if not (pinned and self.slots.is_loaded(name)):
            await self._load_cached(name)
        # No await between the load and the lease: nothing can evict the version first.
        return self.slots.acquire(name)

    def _download(self, name: str) -> Path:
        """The adapter directory of a pinned version name (shared or personal); its
        correction index is read as well (blocking: runs in a worker thread)."""
        ref = parse_model_name(name)
        if ref.scope is None:
            path = self.registry.download(ref.version, self.settings.adapter_cache_dir)
        else:
            registry = self.personal_registries.for_scope(ref.scope)
            path = registry.download(
                ref.version, self.settings.adapter_cache_dir / registry.model_name
            )
        self._indexes[name] = self._read_index(name, Path(path))
        return path

    def _read_index(self, name: str, path: Path) -> CorrectionIndex | None:
        """A version's correction index; an unreadable one makes the version unusable
        (answering everything instead would break the locality its gates measured)."""
        try:
            index = CorrectionIndex.load(path)
            if index is not None:
                self.router.check(index)
        except CorrectionIndexError as exc:
            raise AdapterArtifactError(f"{name}: {exc}") from exc
        if index is None:
            logger.info("%s has no correction index: it answers every request (no_index)", name)
        else:
            logger.info("%s routes on the index of %d corrections", name, len(index))
        return index

    async def _on_snapshot(self, snapshot: RegistrySnapshot) -> None:
        """Warm a new production version, then switch 'ouro' to it."""
        target = snapshot.aliases.get(ALIAS_PRODUCTION)
        current = self.names.production
        if self._production_known and target == current:
            self._update_names(snapshot, current)
            self._warm_error = None
            return
        if target is not None:
            try:
                await self.slots.pin(version_label(target))
            except (OuroError, OSError) as exc:
                self._warm_error = f"version {target}: {exc}"
                logger.error(
                    "cannot load production version %s, still serving %s: %s", target, current, exc
                )
                self._update_names(snapshot, current)
                return
        self._update_names(snapshot, target)
        self._production_known = True
        self._warm_error = None
        logger.info(
            "'ouro' answers with %s (was %s)",
            served_model(target).label,
            served_model(current).label,
        )
        if current is not None and current != target:
            await self.slots.unpin(version_label(current))

    def _update_names(self, snapshot: RegistrySnapshot, production: int | None) -> None:
        self.names.update(snapshot, production)
        self.front.on_names_changed()

    async def _on_polled(self) -> None:
        await self._send_report()
        await self.front.on_polled()

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
            engine=self.engine.stats(),
        )

    def _make_scrape(self) -> ReplicaScrape:
        """The answer to a scrape: the report and the front's own series."""
        return ReplicaScrape(self._make_report(), self.front.metrics.own_families())

    async def _send_report(self) -> ReplicaReport:
        report = self._make_report()
        if self._coordinator is not None:
            try:
                await self._coordinator.report.remote(report)
            except (RayError, RayServeException) as exc:
                logger.debug("could not report to the coordinator: %s", exc)
        return report
