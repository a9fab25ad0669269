"""The replica profiler's reading of py-spy's output (the sampling itself needs a live replica:
``python -m loadtests.profile_replica``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from loadtests.profile_replica import OTHER, SAMPLE_RATE_HZ, part_of, read_collapsed, summarize


def test_collapsed_stacks_are_read_and_sorted_by_their_innermost_known_frame(
    tmp_path: Path,
) -> None:
    raw = tmp_path / "replica.txt"
    raw.write_text(
        "\n".join(
            [
                # A forward pass called from the engine's step loop is the model's.
                "run (threading.py:1);step (ouro/engine/core.py:10);forward (torch/nn/modules/module.py:5) 6",
                # Serve handing a request to FastAPI, then pydantic validating it.
                "handle (ray/serve/_private/replica.py:3);app (fastapi/routing.py:9);validate (pydantic/main.py:2) 3",
                "handle (ray/serve/_private/replica.py:3) 2",
                "main (somewhere.py:1) 1",
                "not a sample line",
            ]
        ),
        encoding="utf-8",
    )
    stacks = read_collapsed(raw)
    assert sum(stacks.values()) == 12
    assert part_of(["a (ouro/engine/core.py:1)", "b (torch/nn/functional.py:2)"]) == (
        "model forward (torch)"
    )
    assert part_of(["main (somewhere.py:1)"]) == OTHER

    summary = summarize(stacks, requests=4, duration_s=1.0)
    shares = {part["part"]: part["share"] for part in summary["parts"]}
    assert shares == {
        "model forward (torch)": 0.5,
        "HTTP front: FastAPI, Starlette, pydantic": 0.25,
        "Ray Serve request handling": 2 / 12,
        OTHER: 1 / 12,
    }
    # 12 samples at SAMPLE_RATE_HZ over 4 requests.
    assert summary["cpu_ms_per_request"] == 12 * 1000 / SAMPLE_RATE_HZ / 4
    assert summary["top_functions"][0]["function"] == "forward (torch/nn/modules/module.py:5)"


def test_an_empty_profile_is_empty_not_an_error() -> None:
    summary = summarize(Counter(), requests=0, duration_s=1.0)
    assert summary["samples"] == 0
    assert summary["parts"] == []
