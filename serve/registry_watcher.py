"""RegistryWatcher: follows the MLflow registry's aliases and versions without restarts.

It polls ``AdapterRegistry.snapshot()`` every ``interval_s`` and, when a coordinator is
given, also wakes as soon as an admin asks for a refresh. While the registry is
unreachable it keeps the last snapshot it read and says so (``state``), so serving
goes on with the last known mapping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from ouro.registry import AdapterRegistry, RegistrySnapshot, RegistryUnavailableError
from ouro.settings import OuroSettings

logger = logging.getLogger(__name__)

RegistryFactory = Callable[[OuroSettings], AdapterRegistry]


def build_registry(settings: OuroSettings) -> AdapterRegistry:
    """The real MLflow registry client (the LLM server's default registry factory)."""
    return AdapterRegistry(settings.tracking_uri, settings.registered_model_name)


READ_TIMEOUT_S = 15.0
"""Longest wait for one registry read before the registry counts as unreachable."""

SnapshotCallback = Callable[[RegistrySnapshot], Awaitable[None]]
PolledCallback = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class RegistryState:
    """What a watcher knows about the registry."""

    snapshot: RegistrySnapshot | None
    """The last snapshot read, or None when the registry was never reached."""
    last_success: float | None
    """time.time() of the last successful poll."""
    last_error: str | None
    """Why the last poll failed; None when it worked."""

    @property
    def reachable(self) -> bool:
        return self.last_error is None and self.snapshot is not None

    def age_s(self) -> float | None:
        return None if self.last_success is None else time.time() - self.last_success


class RegistryWatcher:
    """Polls a registry in the background; ``refresh()`` polls now."""

    def __init__(
        self,
        registry: AdapterRegistry,
        interval_s: float,
        *,
        on_snapshot: SnapshotCallback | None = None,
        on_polled: PolledCallback | None = None,
        coordinator=None,
    ) -> None:
        """``on_snapshot`` gets every snapshot read; ``on_polled`` runs after every poll,
        successful or not, once ``on_snapshot`` is done."""
        self._registry = registry
        self._interval_s = interval_s
        self._on_snapshot = on_snapshot
        self._on_polled = on_polled
        self._coordinator = coordinator
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._state = RegistryState(snapshot=None, last_success=None, last_error=None)
        self._seen_generation = 0
        self._last_read_started = float("-inf")
        self.acted_generation = 0
        """Newest coordinator refresh generation this watcher has polled after."""

    @property
    def state(self) -> RegistryState:
        return self._state

    @property
    def running(self) -> bool:
        """Whether the background polling is alive."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Poll once (a failure is recorded, not raised), then keep polling in the background."""
        if self._coordinator is not None:
            self._seen_generation = await self._coordinator_call("generation") or 0
            self.acted_generation = self._seen_generation
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="registry-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def refresh(self) -> RegistryState:
        """Read the registry now and hand it on.

        Calls that arrive while a read is under way share the next one: a burst of
        requests naming a version this replica has not seen costs one registry read.
        """
        asked = time.monotonic()
        async with self._lock:
            if self._last_read_started > asked:
                return self._state
            self._last_read_started = time.monotonic()
            generation = self._seen_generation
            try:
                # MLflow retries for minutes when the server dies mid-call: stop waiting
                # (the worker thread finishes on its own) and say the registry is away.
                snapshot = await asyncio.wait_for(
                    asyncio.to_thread(self._registry.snapshot), READ_TIMEOUT_S
                )
            except (RegistryUnavailableError, TimeoutError) as exc:
                error = str(exc) or f"no answer from the registry in {READ_TIMEOUT_S:g} s"
                if self._state.last_error is None:
                    logger.warning(
                        "model registry unreachable, serving the last known mapping: %s", error
                    )
                self._state = RegistryState(self._state.snapshot, self._state.last_success, error)
            else:
                if self._state.last_error is not None:
                    logger.info("model registry reachable again")
                self._state = RegistryState(snapshot, time.time(), None)
                if self._on_snapshot is not None:
                    await self._on_snapshot(snapshot)
                self.acted_generation = max(self.acted_generation, generation)
            if self._on_polled is not None:
                await self._on_polled()
            return self._state

    async def _run(self) -> None:
        while True:
            try:
                await self._wait()
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the loop must outlive any one bad poll; logged
                logger.exception("registry poll failed unexpectedly; polling on")

    async def _wait(self) -> None:
        """Sleep one interval, or less when an admin asks for a refresh."""
        if self._coordinator is None:
            await asyncio.sleep(self._interval_s)
            return
        started = time.monotonic()
        generation = await self._coordinator_call(
            "wait_for_refresh", self._seen_generation, self._interval_s
        )
        if generation is None:  # the coordinator is away: plain polling meanwhile
            await asyncio.sleep(max(0.0, self._interval_s - (time.monotonic() - started)))
            return
        self._seen_generation = generation

    async def _coordinator_call(self, method: str, *args):
        try:
            return await getattr(self._coordinator, method).remote(*args)
        except (RayError, RayServeException) as exc:
            logger.debug("registry coordinator unavailable (%s); polling on a timer", exc)
            return None
