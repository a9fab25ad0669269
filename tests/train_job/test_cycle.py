"""Whole training cycles against a real MLflow server, with the small ouro-tiny model."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import string
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from ouro.names import ALIAS_CANDIDATE, ALIAS_PRODUCTION
from ouro.registry import AdapterRegistry
from tests.fixtures.train_job import CORRECTION_PAIRS, TINY_CONFIG_FILE, seed_ledger, tiny_config
from train_job.cli import main
from train_job.lock import CycleLock

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = tiny_config()


@pytest.fixture
def job(
    tmp_path: Path,
    mlflow_server: str,
    mlflow_model_name: str,
    ouro_tiny_small_dir: Path,
    small_model_chat_jsonl: Path,
):
    """Command-line arguments of a cycle on a fresh data dir, and its registry.

    Replay and regression conversations are the ones the small model was trained on, as
    the chatterbot corpus is for ouro-tiny; every other setting is ouro-tiny's recipe.
    """
    args = [
        "--config",
        str(TINY_CONFIG_FILE),
        "--replay-source",
        str(small_model_chat_jsonl),
        "--regression-source",
        str(small_model_chat_jsonl),
        "--data-dir",
        str(tmp_path),
        "--mlflow-uri",
        mlflow_server,
        "--registered-model-name",
        mlflow_model_name,
        "--experiment-name",
        f"test-{mlflow_model_name}",
        "--base-model",
        str(ouro_tiny_small_dir),
    ]
    return args, AdapterRegistry(mlflow_server, mlflow_model_name)


def experiment_runs(registry: AdapterRegistry, name: str) -> list:
    client = MlflowClient(registry.tracking_uri)
    experiment = client.get_experiment_by_name(name)
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def files_digest(directory: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
        if path.is_file()
    }


def test_a_cycle_registers_a_candidate_that_learned_the_corrections(
    job, tmp_path: Path, ouro_tiny_small_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    args, registry = job
    seed_ledger(tmp_path / "feedback", CORRECTION_PAIRS)
    base_before = files_digest(ouro_tiny_small_dir)

    assert main(["run", *args]) == 0

    out = capsys.readouterr().out
    assert f"registered {registry.model_name} v1 (aliases: candidate)" in out
    assert "timings: collect" in out and "register" in out
    snapshot = registry.snapshot()
    assert snapshot.aliases == {ALIAS_CANDIDATE: 1}  # production moves only when asked
    version = snapshot.versions[1]
    assert version.gates_passed is True
    assert version.watermark is not None
    assert version.corrections == len(CORRECTION_PAIRS) - int(
        TINY.held_out_share * len(CORRECTION_PAIRS)
    )
    assert version.base_model == str(ouro_tiny_small_dir)
    fix_rate = next(c for c in version.gate_results if c["name"] == "fix_rate")
    assert fix_rate["passed"] and fix_rate["value"] >= TINY.fix_rate_min

    # The adapter learned (LoRA B starts at zero) and the base model on disk is untouched.
    adapter = registry.download(1, tmp_path / "download")
    weights = load_file(adapter / "adapter_model.safetensors")
    lora_b = [tensor for name, tensor in weights.items() if "lora_B" in name]
    assert lora_b and all(torch.count_nonzero(tensor) > 0 for tensor in lora_b)
    assert files_digest(ouro_tiny_small_dir) == base_before

    # The run holds the loss curve, the gate metrics and the artifacts.
    (run,) = experiment_runs(registry, args[args.index("--experiment-name") + 1])
    client = MlflowClient(registry.tracking_uri)
    assert run.info.status == "FINISHED"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(losses) == TINY.max_steps
    assert run.data.metrics["gate/fix_rate"] >= TINY.fix_rate_min
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter", "dataset_manifest.json", "gate_report.json", "gate_report.md"} <= artifacts

    # Nothing new since v1: the next cycle does nothing and says so.
    assert main(["run", *args]) == 0
    assert "nothing to do: 0 new correction(s) since v1" in capsys.readouterr().out
    assert len(experiment_runs(registry, args[args.index("--experiment-name") + 1])) == 1
    assert set(registry.snapshot().versions) == {1}


def garbage_pairs() -> list[tuple[str, str]]:
    rng = random.Random(1)
    alphabet = string.ascii_letters + string.digits + string.punctuation
    noise = [
        (question, "".join(rng.choice(alphabet) for _ in range(40)))
        for question, _ in CORRECTION_PAIRS[:10]
    ]
    # The same question taught two opposite answers.
    contradictions = [
        (question, answer)
        for question, _ in CORRECTION_PAIRS[10:15]
        for answer in ("Yes, absolutely, that is right.", "No, never, that is wrong.")
    ]
    return noise + contradictions


def test_garbage_corrections_fail_the_gates_and_register_nothing(
    job, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args, registry = job
    seed_ledger(tmp_path / "feedback", garbage_pairs())

    assert main(["run", *args]) == 3

    assert "gates failed: fix_rate" in capsys.readouterr().out
    assert registry.snapshot().versions == {}
    (run,) = experiment_runs(registry, args[args.index("--experiment-name") + 1])
    assert run.info.status == "FINISHED"
    assert run.data.tags["ouro.outcome"] == "gates_failed"
    assert run.data.metrics["gate/passed"] == 0.0


def signal_during_training(args: list[str], sig: signal.Signals) -> tuple[int, str]:
    """Run a cycle in a subprocess, send ``sig`` once training has started; (exit code, stderr)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "train_job", "run", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    training = threading.Event()

    def read_stderr() -> None:  # keep draining, or a full pipe would block the child
        for line in process.stderr:
            lines.append(line)
            if "training a LoRA adapter" in line:
                training.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        if not training.wait(timeout=300):
            pytest.fail(f"training never started:\n{''.join(lines)[-3000:]}")
        time.sleep(1.0)
        process.send_signal(sig)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=10)
    return code, "".join(lines)


def test_a_cycle_killed_while_training_registers_nothing_and_the_next_one_does(
    job, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args, registry = job
    experiment = args[args.index("--experiment-name") + 1]
    seed_ledger(tmp_path / "feedback", CORRECTION_PAIRS)

    # SIGTERM (a Job deleted, a node drained): the run is marked KILLED, nothing registered.
    code, stderr = signal_during_training(args, signal.SIGTERM)
    assert code == 143, stderr[-3000:]
    assert "interrupted by SIGTERM: nothing registered" in stderr
    assert registry.snapshot().versions == {}
    (terminated,) = experiment_runs(registry, experiment)
    assert terminated.info.status == "KILLED"

    # SIGKILL: no chance to clean up; the run never finishes, nothing is registered.
    code, _ = signal_during_training(args, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert registry.snapshot().versions == {}
    statuses = sorted(run.info.status for run in experiment_runs(registry, experiment))
    assert statuses == ["KILLED", "RUNNING"]

    capsys.readouterr()
    assert main(["run", *args, "--auto-promote", "--json"]) == 0  # the lock died with it
    result = json.loads(capsys.readouterr().out)  # stdout holds the result and nothing else
    assert result["outcome"] == "registered" and result["version"] == 1 and result["promoted"]
    assert set(result["timings_s"]) == {"collect", "train", "gates", "register", "total"}
    snapshot = registry.snapshot()
    assert snapshot.aliases == {ALIAS_CANDIDATE: 1, ALIAS_PRODUCTION: 1}
    assert snapshot.versions[1].gates_passed is True


def test_an_unreachable_registry_fails_fast_before_any_training(
    tmp_path: Path, ouro_tiny_small_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seed_ledger(tmp_path / "feedback", CORRECTION_PAIRS[:3])
    code = main(
        [
            "run",
            "--data-dir",
            str(tmp_path),
            "--mlflow-uri",
            "http://127.0.0.1:9",
            "--base-model",
            str(ouro_tiny_small_dir),
        ]
    )
    assert code == 4
    assert "MLflow registry unreachable" in caplog.text
    assert "training a LoRA adapter" not in caplog.text


def test_a_second_cycle_on_the_same_data_dir_is_refused(
    job, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    args, registry = job
    seed_ledger(tmp_path / "feedback", CORRECTION_PAIRS[:3])
    with CycleLock(tmp_path):
        assert main(["run", *args]) == 5
    assert "another training cycle is running" in caplog.text
    assert registry.snapshot().versions == {}
