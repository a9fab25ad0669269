"""AdapterSlots on a real engine: pins, leases and LRU entries decide when a version leaves."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from ouro.engine import AdapterError, AdapterNotFoundError, AsyncEngine
from ouro.settings import OuroSettings
from serve.adapter_slots import AdapterSlots

V1, V2, V3 = "ouro@v1", "ouro@v2", "ouro@v3"
PERSONAL = "ouro@alice/v1"


@pytest.fixture(scope="module")
def engine(tiny_random_model_dir: Path, tmp_path_factory) -> AsyncEngine:
    settings = OuroSettings(
        data_dir=tmp_path_factory.mktemp("slots"), base_model=str(tiny_random_model_dir)
    )
    return AsyncEngine.from_settings(settings)


@pytest.fixture(scope="module")
def adapter_paths(make_lora_adapter, tiny_random_model_dir: Path) -> dict[str, Path]:
    paths = {V1: 1, V2: 2, V3: 3, PERSONAL: 4}
    return {name: make_lora_adapter(tiny_random_model_dir, seed) for name, seed in paths.items()}


@pytest.fixture
def downloads(adapter_paths) -> list[str]:
    return []


@pytest.fixture
def slots(engine: AsyncEngine, adapter_paths, downloads: list[str]) -> AdapterSlots:
    for name in engine.adapter_names():
        engine.engine.remove_adapter(name)

    def download(name: str) -> Path:
        downloads.append(name)
        if name not in adapter_paths:
            raise AdapterNotFoundError(f"no adapter for {name}")
        return adapter_paths[name]

    return AdapterSlots(engine, download)


async def settle() -> None:
    """Wait for the removals scheduled on the loop (and their worker threads) to finish."""
    await asyncio.sleep(0)  # call_soon_threadsafe callbacks run first
    while pending := [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
        await asyncio.gather(*pending)


def test_a_pinned_version_stays_until_unpinned_and_its_last_request_ends(
    slots: AdapterSlots, engine: AsyncEngine
) -> None:
    async def scenario() -> None:
        await slots.pin(V1)
        assert engine.adapter_names() == [V1]
        lease = slots.acquire(V1)
        await slots.unpin(V1)
        await settle()
        assert engine.adapter_names() == [V1], "a running request still holds it"
        lease.release()
        await settle()
        assert engine.adapter_names() == []
        assert (slots.loads, slots.evictions) == (1, 1)

    asyncio.run(scenario())


def test_concurrent_loads_of_one_version_load_it_once(
    slots: AdapterSlots, downloads: list[str], engine: AsyncEngine
) -> None:
    async def scenario() -> None:
        entries = await asyncio.gather(*(slots.load_cached(V2) for _ in range(5)))
        assert downloads == [V2] and slots.loads == 1
        assert engine.adapter_names() == [V2]
        for entry in entries:
            entry.__del__()  # what Serve's LRU does on eviction
        await settle()
        assert engine.adapter_names() == []

    asyncio.run(scenario())


def test_an_eviction_from_another_thread_is_applied_on_the_loop(
    slots: AdapterSlots, engine: AsyncEngine
) -> None:
    async def scenario() -> None:
        entry = await slots.load_cached(V3)
        await slots.pin(V1)
        evictor = threading.Thread(target=entry.__del__)
        evictor.start()
        await asyncio.to_thread(evictor.join)
        entry.__del__()  # garbage collection later: nothing happens twice
        await settle()
        assert engine.adapter_names() == [V1]
        assert slots.evictions == 1
        await slots.unpin(V1)
        await settle()

    asyncio.run(scenario())


def test_a_version_that_fails_to_load_leaves_the_others_alone(
    slots: AdapterSlots, engine: AsyncEngine
) -> None:
    async def scenario() -> None:
        await slots.pin(V1)
        with pytest.raises(AdapterNotFoundError):
            await slots.load_cached("ouro@v9")
        assert slots.load_failures == 1
        assert engine.adapter_names() == [V1]
        with pytest.raises(AdapterError):
            slots.acquire("ouro@v9")
        with slots.acquire(V1) as lease:
            assert lease.name == V1
        await slots.unpin(V1)
        await settle()

    asyncio.run(scenario())


def test_a_personal_version_is_a_slot_of_its_own_beside_the_shared_one(
    slots: AdapterSlots, engine: AsyncEngine, downloads: list[str]
) -> None:
    async def scenario() -> None:
        await slots.pin(V1)
        entry = await slots.load_cached(PERSONAL)  # version 1 of alice's own model
        assert sorted(engine.adapter_names()) == sorted([V1, PERSONAL])
        assert downloads == [V1, PERSONAL]
        with slots.acquire(PERSONAL) as lease:
            assert lease.name == PERSONAL
        entry.__del__()
        await settle()
        assert engine.adapter_names() == [V1]
        await slots.unpin(V1)
        await settle()

    asyncio.run(scenario())


def test_slots_follow_the_versions_in_use_not_every_version_ever_seen(
    slots: AdapterSlots, engine: AsyncEngine, adapter_paths, monkeypatch
) -> None:
    """Each personal version gets a slot (and a lock) while it is in use, none after."""
    users = [f"ouro@user{index}/v1" for index in range(6)]
    for name in users:
        monkeypatch.setitem(adapter_paths, name, adapter_paths[PERSONAL])

    async def scenario() -> None:
        await slots.pin(V1)
        for name in users:
            entry = await slots.load_cached(name)
            with slots.acquire(name):
                assert slots.tracked_names() == sorted([V1, name])
            entry.__del__()  # evicted from Serve's LRU
            await settle()
            assert slots.tracked_names() == [V1]
        with pytest.raises(AdapterNotFoundError):
            await slots.load_cached("ouro@v9")  # a version that fails to load
        assert slots.tracked_names() == [V1]
        await slots.unpin(V1)
        await settle()
        assert slots.tracked_names() == [] and engine.adapter_names() == []
        assert (slots.loads, slots.evictions) == (len(users) + 1, len(users) + 1)

    asyncio.run(scenario())


def test_a_load_that_waits_for_a_removal_keeps_its_slot(
    slots: AdapterSlots, engine: AsyncEngine
) -> None:
    """A version asked for again while it is being removed is loaded again, and tracked."""

    async def scenario() -> None:
        entry = await slots.load_cached(V2)
        entry.__del__()
        await asyncio.sleep(0)  # the eviction reaches the loop and starts the removal task
        await asyncio.sleep(0)  # the removal now waits for the engine's worker thread
        assert not slots.is_loaded(V2) and slots.tracked_names() == [V2]
        again = await slots.load_cached(V2)  # waits for the removal's lock, then reloads
        assert (slots.loads, slots.evictions) == (2, 1)
        assert slots.is_loaded(V2) and engine.adapter_names() == [V2]
        assert slots.tracked_names() == [V2]
        with slots.acquire(V2) as lease:
            assert lease.name == V2
        again.__del__()
        await settle()
        assert slots.tracked_names() == [] and engine.adapter_names() == []

    asyncio.run(scenario())


def test_close_waits_for_the_removals_it_started_and_starts_no_more(
    slots: AdapterSlots, engine: AsyncEngine
) -> None:
    async def scenario() -> None:
        entry = await slots.load_cached(V3)
        await slots.pin(V1)
        lease_v1 = slots.acquire(V1)
        await slots.unpin(V1)  # the lease keeps it
        entry.__del__()
        await asyncio.sleep(0)  # the removal of V3 is a running task now
        assert len(asyncio.all_tasks()) == 2
        await slots.close()
        assert engine.adapter_names() == [V1], "V3's removal was awaited"
        assert len(asyncio.all_tasks()) == 1
        lease_v1.release()  # after close: no removal is started
        assert len(asyncio.all_tasks()) == 1
        await engine.remove_adapter(V1)

    asyncio.run(scenario())
