"""AdapterSlots: which adapter versions sit in one engine, and who still needs each.

A version is named by its pinned model name (``ouro@v<N>``, or ``ouro@<scope>/v<N>`` for a
personal one): the engine's adapter name and Serve's multiplexed model id alike. It
enters the engine (``download`` then ``engine.add_adapter(name, path)``) when something
first needs it, and leaves only when nothing does any more:

- a *pin*: the replica's production version (never evicted while it is production);
- a *cache entry*: Serve's ``@serve.multiplexed`` LRU holds a ``CachedAdapter`` per
  version it keeps; evicting it drops the entry;
- a *lease*: each running request holds one on its version, so a swap or an eviction
  never pulls an adapter out from under a request; removal waits for the last lease.

Loads of one version are serialised by a per-version lock, so concurrent requests for
a cold version load it once. A version that fails to load raises for the requests that
wanted it and leaves every other adapter as it was. A version's slot (and its lock) is
forgotten once the version is out of the engine and no coroutine waits on it, so the
slots follow the versions in use, not every personal version ever asked for.

Removals run as tasks of the event loop; the slots keep them until they end, and
``close`` waits for those still running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ouro.engine import AdapterError, AsyncEngine

logger = logging.getLogger(__name__)

Download = Callable[[str], Path]
"""Blocking: a local PEFT adapter directory for a pinned version name."""


@dataclass
class _Slot:
    name: str
    loaded: bool = False
    removing: bool = False
    pinned: bool = False
    cached: int = 0
    leases: int = 0
    waiters: int = 0
    """Coroutines loading or removing the version (holding or waiting for ``lock``)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def needed(self) -> bool:
        return self.pinned or self.cached > 0 or self.leases > 0

    @property
    def forgettable(self) -> bool:
        """Out of the engine, needed by nothing, and no coroutine waits on its lock."""
        return not (self.loaded or self.needed or self.waiters)


class AdapterSlots:
    """Loads and unloads adapter versions in one engine; all methods run on one event loop."""

    def __init__(
        self,
        engine: AsyncEngine,
        download: Download,
        on_removed: Callable[[str], None] | None = None,
    ) -> None:
        self._engine = engine
        self._download = download
        self._on_removed = on_removed
        """Told each version name once it has left the engine (what came with its
        download, such as its correction index, can go too)."""
        # One slot per version in use; one is only dropped when no coroutine holds it.
        self._slots: dict[str, _Slot] = {}
        self._removals: set[asyncio.Task] = set()
        self._closed = False
        self.loads = 0
        self.evictions = 0
        self.load_failures = 0

    def loaded_names(self) -> list[str]:
        return [name for name, slot in sorted(self._slots.items()) if slot.loaded]

    def tracked_names(self) -> list[str]:
        """Versions with a slot: loaded, loading, leaving, or still needed."""
        return sorted(self._slots)

    def is_loaded(self, name: str) -> bool:
        slot = self._slots.get(name)
        return slot is not None and slot.loaded and not slot.removing

    async def pin(self, name: str) -> None:
        """Load ``name`` if needed and keep it until ``unpin`` (raises if it cannot load)."""
        slot = await self._ensure_loaded(name)
        slot.pinned = True

    async def unpin(self, name: str) -> None:
        slot = self._slots.get(name)
        if slot is not None:
            slot.pinned = False
            await self._remove_if_unneeded(slot)

    async def load_cached(self, name: str) -> CachedAdapter:
        """Load ``name`` for Serve's multiplexed LRU; its eviction drops the entry."""
        slot = await self._ensure_loaded(name)
        slot.cached += 1
        return CachedAdapter(self, name, asyncio.get_running_loop())

    def acquire(self, name: str) -> AdapterLease:
        """Hold a loaded version for one request (release it with ``with`` or ``release``).

        Synchronous on purpose: taken right after the version was pinned or cached, with
        no await in between, so no eviction can slip in first.
        """
        slot = self._slots.get(name)
        if slot is None or not slot.loaded or slot.removing:
            raise AdapterError(f"{name} is not loaded")
        slot.leases += 1
        return AdapterLease(self, slot)

    def _release(self, slot: _Slot) -> None:
        slot.leases -= 1
        if not slot.needed:
            self._remove_later(slot)

    def drop_cached(self, name: str) -> None:
        """Serve's LRU evicted its entry for ``name``."""
        slot = self._slots.get(name)
        if slot is None or slot.cached == 0:
            return
        slot.cached -= 1
        if not slot.needed:
            self._remove_later(slot)

    async def close(self) -> None:
        """Start no more removals and wait for those running (cancelled if this is)."""
        self._closed = True
        if self._removals:
            await asyncio.gather(*self._removals, return_exceptions=True)

    def _remove_later(self, slot: _Slot) -> None:
        """Remove ``slot``'s version in a task of the loop, kept until it ends."""
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._remove_if_unneeded(slot))
        self._removals.add(task)
        task.add_done_callback(self._removal_done)

    def _removal_done(self, task: asyncio.Task) -> None:
        self._removals.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("removing an adapter failed", exc_info=task.exception())

    def _forget_if_unused(self, slot: _Slot) -> None:
        if slot.forgettable and self._slots.get(slot.name) is slot:
            del self._slots[slot.name]

    async def _ensure_loaded(self, name: str) -> _Slot:
        slot = self._slots.setdefault(name, _Slot(name))
        slot.waiters += 1
        try:
            async with slot.lock:
                if slot.loaded:
                    return slot
                try:
                    path = await asyncio.to_thread(self._download, name)
                    await self._engine.add_adapter(name, path)
                except BaseException:
                    self.load_failures += 1
                    raise
                slot.loaded = True
                self.loads += 1
                logger.info("adapter %s loaded", name)
                return slot
        finally:
            slot.waiters -= 1
            self._forget_if_unused(slot)  # a version that failed to load

    async def _remove_if_unneeded(self, slot: _Slot) -> None:
        if slot.needed or not slot.loaded:
            return
        slot.removing = True  # no new lease from now on; a new load waits for the lock
        slot.waiters += 1
        try:
            async with slot.lock:
                if slot.needed or not slot.loaded:
                    return
                await self._engine.remove_adapter(slot.name)
                slot.loaded = False
                self.evictions += 1
                if self._on_removed is not None:
                    self._on_removed(slot.name)
                logger.info("adapter %s removed", slot.name)
        finally:
            slot.removing = False
            slot.waiters -= 1
            self._forget_if_unused(slot)


class AdapterLease:
    """One request's hold on an adapter version; released once."""

    def __init__(self, slots: AdapterSlots, slot: _Slot) -> None:
        self._slots = slots
        self._slot = slot
        self._released = False
        self.name = slot.name

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._slots._release(self._slot)

    def __enter__(self) -> AdapterLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class CachedAdapter:
    """What Serve's multiplexed loader keeps per version name; eviction calls ``__del__``.

    Serve runs a synchronous ``__del__`` in a worker thread on eviction, and Python may
    call it again at garbage collection: the entry is dropped once, on the event loop.
    """

    def __init__(self, slots: AdapterSlots, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self._slots = slots
        self._loop = loop
        self._dropped = False

    def __del__(self) -> None:
        if self._dropped:
            return
        self._dropped = True
        try:
            self._loop.call_soon_threadsafe(self._slots.drop_cached, self.name)
        except RuntimeError:  # the loop is closed: the replica is shutting down
            pass
