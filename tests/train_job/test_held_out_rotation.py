"""The held-out share rotates: no correction stays unlearned for more than one cycle.

Consecutive cycles are simulated with ``split_held_out`` directly (the cycle number is the
count of versions already registered, ``train_job.cycle.held_out_cycle``), over a fixed
set of corrections and over sets that grow, lose corrections and change seed.
"""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from ouro.registry import AdapterVersion, RegistrySnapshot
from ouro.settings import OuroSettings
from train_job import cycle as cycle_module
from train_job.config import TrainJobConfig
from train_job.corrections import Correction
from train_job.cycle import StageTimer, _train_gate_register, held_out_cycle
from train_job.dataset import build_dataset, split_held_out

BOUND = 2
"""Every correction is trained in at least one of any BOUND consecutive cycles."""


def correction(correction_id: str) -> Correction:
    return Correction(
        id=correction_id,
        messages=({"role": "user", "content": f"question {correction_id}?"},),
        completion="wrong",
        correction=f"answer {correction_id}.",
    )


def random_ids(rng: random.Random, count: int) -> list[str]:
    return [f"fb-{rng.getrandbits(128):032x}" for _ in range(count)]


def held_out_ids(corrections: list[Correction], share: float, seed: int, cycle: int) -> set[str]:
    train, held = split_held_out(corrections, share, seed, cycle=cycle)
    assert {c.id for c in train} | {c.id for c in held} == {c.id for c in corrections}
    assert train, "at least one correction is always trained"
    return {c.id for c in held}


def assert_trained_within_bound(history: list[tuple[set[str], set[str]]]) -> None:
    """``history``: per cycle, (the corrections present, the ones held out)."""
    for start in range(len(history) - BOUND + 1):
        window = history[start : start + BOUND]
        present_throughout = set.intersection(*(present for present, _ in window))
        never_trained = set.intersection(*(held for _, held in window)) & present_throughout
        assert not never_trained, f"held out in cycles {start}..{start + BOUND - 1}"


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 7])
def test_a_fixed_set_rotates_and_every_correction_is_trained_within_two_cycles(
    share: float, seed: int
) -> None:
    corrections = [correction(i) for i in random_ids(random.Random(seed), 40)]
    history = []
    for cycle in range(30):
        held = held_out_ids(corrections, share, seed, cycle)
        if share <= 0.25:  # the cycle's side (about half) has room for the whole share
            assert len(held) == int(share * len(corrections))
        history.append(({c.id for c in corrections}, held))

    assert_trained_within_bound(history)
    if share <= 0.25:
        # Within a side it rotates too: no correction is held out in every one of its
        # side's cycles (with a larger share the side is held out whole).
        held_sets = [held for _, held in history]
        assert not set.intersection(*held_sets[::2])
        assert not set.intersection(*held_sets[1::2])


@pytest.mark.parametrize("share", [0.1, 0.3])
def test_a_growing_set_trains_every_correction_within_two_cycles(share: float) -> None:
    rng = random.Random(3)
    ids = random_ids(rng, 5)
    history = []
    for cycle in range(40):
        ids += random_ids(rng, rng.randint(1, 6))  # a cycle runs when corrections arrived
        corrections = [correction(i) for i in ids]
        history.append((set(ids), held_out_ids(corrections, share, 0, cycle)))
    assert_trained_within_bound(history)


def test_the_bound_survives_forgotten_corrections_and_a_new_seed() -> None:
    rng = random.Random(11)
    ids = random_ids(rng, 30)
    history = []
    for cycle in range(40):
        ids = [i for i in ids if rng.random() > 0.1]  # some forgotten
        ids += random_ids(rng, rng.randint(0, 8))
        corrections = [correction(i) for i in ids]
        seed = cycle // 10  # the recipe's seed changed every 10 cycles
        history.append((set(ids), held_out_ids(corrections, 0.1, seed, cycle)))
    assert_trained_within_bound(history)


def test_the_split_is_reproducible_for_the_same_cycle_whatever_the_order() -> None:
    corrections = [correction(i) for i in random_ids(random.Random(5), 30)]
    held = held_out_ids(corrections, 0.1, 0, cycle=4)
    assert held_out_ids(corrections, 0.1, 0, cycle=4) == held
    assert held_out_ids(list(reversed(corrections)), 0.1, 0, cycle=4) == held
    assert held_out_ids(corrections, 0.1, 0, cycle=5).isdisjoint(held)


def test_the_dataset_and_its_manifest_follow_the_cycle() -> None:
    corrections = [correction(i) for i in random_ids(random.Random(9), 20)]
    config = TrainJobConfig(held_out_share=0.1, replay_size=0)
    first = build_dataset(corrections, config, "", cycle=6)
    second = build_dataset(corrections, config, "", cycle=7)
    assert {c.id for c in first.held_out}.isdisjoint(c.id for c in second.held_out)
    assert first.manifest(watermark=None, replay_source="chatterbot")["held_out_cycle"] == 6
    assert {c.id for c in first.held_out} == held_out_ids(corrections, 0.1, 0, 6)


class _Stop(Exception):
    """Ends the cycle right after the dataset is asked for."""


def test_a_cycle_splits_for_the_number_of_versions_already_registered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    snapshot = RegistrySnapshot(
        "ouro-adapter",
        versions={n: AdapterVersion(version=n, source=f"s/{n}") for n in (1, 2, 3)},
    )
    assert held_out_cycle(snapshot) == 3
    assert held_out_cycle(RegistrySnapshot("ouro-adapter")) == 0
    seen: dict[str, int] = {}

    def fake_build_dataset(*args: object, cycle: int, **kwargs: object) -> None:
        seen["cycle"] = cycle
        raise _Stop

    monkeypatch.setattr(cycle_module, "build_dataset", fake_build_dataset)
    collected = SimpleNamespace(corrections=[], new=1, bad_lines=0, since_version=3)
    registry = SimpleNamespace(model_name="ouro-adapter", scope=None)
    run = SimpleNamespace(log_params=lambda params: None)
    with pytest.raises(_Stop):
        _train_gate_register(
            TrainJobConfig(routing=False),
            OuroSettings(data_dir=tmp_path),
            registry,
            snapshot,
            collected,
            run,
            StageTimer(),
            [],
        )
    assert seen == {"cycle": 3}
