"""Smoke tests of the decode-length benchmark's pieces (the benchmark itself is not a test).

The engine round runs for real on the tiny random model; no timings are asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from loadtests.bench_decode_length import (
    EARLY,
    LATE,
    POSITIONS,
    WINDOW,
    _ForwardClock,
    engine_round,
    long_context_copy,
    summary,
)
from ouro.engine import GenerationEngine


def test_long_context_copy_changes_only_the_positions(tiny_random_model_dir: Path, tmp_path):
    copy = long_context_copy(tiny_random_model_dir, tmp_path / "copy")
    original = json.loads((tiny_random_model_dir / "config.json").read_text())
    changed = json.loads((copy / "config.json").read_text())
    assert changed == {**original, "max_position_embeddings": POSITIONS}
    assert sorted(path.name for path in copy.iterdir()) == sorted(
        path.name for path in tiny_random_model_dir.iterdir()
    )
    assert AutoModelForCausalLM.from_pretrained(copy).config.max_position_embeddings == POSITIONS


def test_engine_round_times_every_decoding_position(tiny_random_model_dir: Path):
    engine = GenerationEngine(
        AutoModelForCausalLM.from_pretrained(tiny_random_model_dir),
        AutoTokenizer.from_pretrained(tiny_random_model_dir),
        system_prompt="Be brief.",
        max_context_tokens=256,
    )
    forward = _ForwardClock(engine.runner)
    times = engine_round(engine, forward, rows=3, tokens=20)
    # End-of-turn tokens are forbidden: all rows run to max_tokens, one token a step
    # (the step that ends the prefill, which may decode a token too, is not timed).
    assert min(times.cpu) <= 3
    assert sorted(times.cpu) == list(range(min(times.cpu), 21))
    assert all(len(steps) == 1 for steps in times.cpu.values())
    assert times.wall.keys() == times.outside_forward_cpu.keys() == times.cpu.keys()
    assert forward.cpu > 0
    assert all(
        0 <= outside[0] <= whole[0]
        for outside, whole in zip(
            times.outside_forward_cpu.values(), times.cpu.values(), strict=True
        )
    )


def test_summary_is_the_ratio_of_window_medians():
    def round_(early: float, late: float) -> dict[int, list[float]]:
        return {
            **{p: [early] for p in range(EARLY - WINDOW, EARLY + WINDOW + 1)},
            **{p: [late] for p in range(LATE - WINDOW, LATE + WINDOW + 1)},
            LATE + WINDOW + 1: [100.0],  # outside the window: not counted
        }

    result = summary([round_(0.002, 0.003), round_(0.002, 0.002), round_(0.002, 0.0022)])
    assert result["ratio"] == pytest.approx(1.1)
    assert result["ratio_by_round"] == [1.5, 1.0, 1.1]
    assert result["ratio_spread"] == [1.0, 1.5]
    assert result[f"step_ms_at_{EARLY}"] == 2.0
