"""AdapterSlots: which adapter versions sit in one engine, and who still needs each.

A version enters the engine (``download`` then ``engine.add_adapter("v<N>", path)``)
when something first needs it, and leaves only when nothing does any more:

- a *pin*: the replica's production version (never evicted while it is production);
- a *cache entry*: Serve's ``@serve.multiplexed`` LRU holds a ``CachedAdapter`` per
  version it keeps; evicting it drops the entry;
- a *lease*: each running request holds one on its version, so a swap or an eviction
  never pulls an adapter out from under a request; removal waits for the last lease.

Loads of one version are serialised by a per-version lock, so concurrent requests for
a cold version load it once. A version that fails to load raises for the requests that
wanted it and leaves every other adapter as it was.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ouro.engine import AdapterError, AsyncEngine

logger = logging.getLogger(__name__)

Download = Callable[[int], Path]
"""Blocking: a local PEFT adapter directory for a registry version."""


def adapter_name(version: int) -> str:
    """The engine's name for a registry version."""
    return f"v{version}"


@dataclass
class _Slot:
    version: int
    loaded: bool = False
    removing: bool = False
    pinned: bool = False
    cached: int = 0
    leases: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def needed(self) -> bool:
        return self.pinned or self.cached > 0 or self.leases > 0


class AdapterSlots:
    """Loads and unloads adapter versions in one engine; all methods run on one event loop."""

    def __init__(self, engine: AsyncEngine, download: Download) -> None:
        self._engine = engine
        self._download = download
        # One slot per version ever used (never deleted, so a waiter never holds a stale one).
        self._slots: dict[int, _Slot] = {}
        self.loads = 0
        self.evictions = 0
        self.load_failures = 0

    def loaded_names(self) -> list[str]:
        return [adapter_name(v) for v, slot in sorted(self._slots.items()) if slot.loaded]

    def is_loaded(self, version: int) -> bool:
        slot = self._slots.get(version)
        return slot is not None and slot.loaded and not slot.removing

    async def pin(self, version: int) -> None:
        """Load ``version`` if needed and keep it until ``unpin`` (raises if it cannot load)."""
        slot = await self._ensure_loaded(version)
        slot.pinned = True

    async def unpin(self, version: int) -> None:
        slot = self._slots.get(version)
        if slot is not None:
            slot.pinned = False
            await self._remove_if_unneeded(slot)

    async def load_cached(self, version: int) -> CachedAdapter:
        """Load ``version`` for Serve's multiplexed LRU; its eviction drops the entry."""
        slot = await self._ensure_loaded(version)
        slot.cached += 1
        return CachedAdapter(self, version, asyncio.get_running_loop())

    def acquire(self, version: int) -> AdapterLease:
        """Hold a loaded version for one request (release it with ``with`` or ``release``).

        Synchronous on purpose: taken right after the version was pinned or cached, with
        no await in between, so no eviction can slip in first.
        """
        slot = self._slots.get(version)
        if slot is None or not slot.loaded or slot.removing:
            raise AdapterError(f"adapter version {version} is not loaded")
        slot.leases += 1
        return AdapterLease(self, slot)

    def _release(self, slot: _Slot) -> None:
        slot.leases -= 1
        if not slot.needed:
            asyncio.get_running_loop().create_task(self._remove_if_unneeded(slot))

    def drop_cached(self, version: int) -> None:
        """Serve's LRU evicted its entry for ``version``."""
        slot = self._slots.get(version)
        if slot is None or slot.cached == 0:
            return
        slot.cached -= 1
        if not slot.needed:
            asyncio.get_running_loop().create_task(self._remove_if_unneeded(slot))

    async def _ensure_loaded(self, version: int) -> _Slot:
        slot = self._slots.setdefault(version, _Slot(version))
        async with slot.lock:
            if slot.loaded:
                return slot
            name = adapter_name(version)
            try:
                path = await asyncio.to_thread(self._download, version)
                await self._engine.add_adapter(name, path)
            except BaseException:
                self.load_failures += 1
                raise
            slot.loaded = True
            self.loads += 1
            logger.info("adapter version %s loaded", version)
            return slot

    async def _remove_if_unneeded(self, slot: _Slot) -> None:
        if slot.needed or not slot.loaded:
            return
        slot.removing = True  # no new lease from now on; a new load waits for the lock
        async with slot.lock:
            try:
                if slot.needed or not slot.loaded:
                    return
                await self._engine.remove_adapter(adapter_name(slot.version))
                slot.loaded = False
                self.evictions += 1
                logger.info("adapter version %s removed", slot.version)
            finally:
                slot.removing = False


class AdapterLease:
    """One request's hold on an adapter version; released once."""

    def __init__(self, slots: AdapterSlots, slot: _Slot) -> None:
        self._slots = slots
        self._slot = slot
        self._released = False
        self.name = adapter_name(slot.version)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._slots._release(self._slot)

    def __enter__(self) -> AdapterLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class CachedAdapter:
    """What Serve's multiplexed loader keeps per version; eviction calls ``__del__``.

    Serve runs a synchronous ``__del__`` in a worker thread on eviction, and Python may
    call it again at garbage collection: the entry is dropped once, on the event loop.
    """

    def __init__(self, slots: AdapterSlots, version: int, loop: asyncio.AbstractEventLoop) -> None:
        self.version = version
        self._slots = slots
        self._loop = loop
        self._dropped = False

    def __del__(self) -> None:
        if self._dropped:
            return
        self._dropped = True
        try:
            self._loop.call_soon_threadsafe(self._slots.drop_cached, self.version)
        except RuntimeError:  # the loop is closed: the replica is shutting down
            pass
