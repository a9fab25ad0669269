"""Entry points set OpenMP's wait policy (and serve its thread count) before torch starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Runs an entry point as `python -m MODULE ARGS` would, and records OMP_WAIT_POLICY when
# torch is first imported (if it is) and at exit.
RECORDER = """
import importlib.abc, json, os, runpy, sys
seen = {}
class Recorder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "at_torch_import" not in seen:
            seen["at_torch_import"] = os.environ.get("OMP_WAIT_POLICY")
        return None
sys.meta_path.insert(0, Recorder())
module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit:
    pass
seen["at_exit"] = os.environ.get("OMP_WAIT_POLICY")
seen["threads"] = os.environ.get("OMP_NUM_THREADS")
print("RECORDED " + json.dumps(seen))
"""


def run_entry_point(module: str, *args: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_"))}
    result = subprocess.run(
        [sys.executable, "-c", RECORDER, module, *args],
        cwd=REPO_ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RECORDED ")]
    return json.loads(line.removeprefix("RECORDED "))


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("train_job", ["--help"]),
        # Refused (no key on a non-loopback address) right after the settings are applied.
        ("serve", ["--host", "0.0.0.0", "--port", "1", "--num-cpus", "3"]),
        ("data", ["evaluate", "--model", "ouro-tiny", "--split", "no-such-split.jsonl"]),
    ],
    ids=["train_job", "serve", "data"],
)
def test_entry_points_set_the_passive_wait_policy_before_torch(module, args) -> None:
    seen = run_entry_point(module, *args)
    assert seen["at_exit"] == "PASSIVE"
    assert seen.get("at_torch_import", "PASSIVE") == "PASSIVE"
    if module == "serve":
        assert seen["threads"] == "3"  # the CPUs it gives Ray


def test_a_wait_policy_already_in_the_environment_is_kept() -> None:
    seen = run_entry_point("train_job", "--help", OMP_WAIT_POLICY="ACTIVE")
    assert seen["at_exit"] == "ACTIVE"
