"""The cycle's MLflow run, and registration of an adapter that passed its gates.

One run per cycle holds the parameters, the loss curve (one point per optimizer step),
the gate metrics, and as artifacts the adapter directory, the dataset manifest and the
gate report. A run that ends early is marked FAILED (an error) or KILLED (a signal); one
whose process was SIGKILLed stays RUNNING. None of them registers anything.
"""

from __future__ import annotations

import enum
import json
import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from ouro.names import ALIAS_CANDIDATE, ALIAS_PRODUCTION
from ouro.registry import (
    ADAPTER_ARTIFACT_PATH,
    TAG_BASE_MODEL,
    TAG_CORRECTIONS,
    TAG_DATASET_HASH,
    TAG_GATE_RESULTS,
    TAG_GATES_PASSED,
    TAG_WATERMARK,
    AdapterRegistry,
)
from ouro.rollout import CanaryPolicy, Rollout

logger = logging.getLogger(__name__)

MAX_PARAM_CHARS = 500
"""Longer parameter values are cut (MLflow's limit is 6000; long ones help nobody)."""


class CycleRun:
    """The MLflow run of one training cycle."""

    def __init__(self, client: MlflowClient, run_id: str, artifact_uri: str) -> None:
        self.client = client
        self.run_id = run_id
        self.artifact_uri = artifact_uri

    @classmethod
    def start(
        cls,
        registry: AdapterRegistry,
        experiment_name: str,
        artifacts_dir: Path | None,
        run_name: str,
        tags: Mapping[str, str],
    ) -> CycleRun:
        experiment_id = registry.ensure_experiment(experiment_name, artifacts_dir)
        client = MlflowClient(
            tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri
        )
        run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        logger.info(
            "MLflow run %s (%s) in experiment %s", run.info.run_id, run_name, experiment_name
        )
        return cls(client, run.info.run_id, run.info.artifact_uri)

    def log_params(self, params: Mapping[str, object]) -> None:
        batch = [Param(key, str(value)[:MAX_PARAM_CHARS]) for key, value in params.items()]
        for start in range(0, len(batch), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=batch[start : start + 100])

    def log_metrics(self, values: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_json(self, obj: object, artifact_file: str) -> None:
        self.log_text(json.dumps(obj, indent=2, ensure_ascii=False), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_text(text, encoding="utf-8")
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(self.run_id, str(path), None if parent == "." else parent)

    def end(self, status: str) -> None:
        """FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.run_id, status)
        logger.info("MLflow run %s ended %s", self.run_id, status)


def version_tags(
    *, base_model: str, corrections: int, dataset_hash: str, gates_passed: bool, gate_results: str
) -> dict[str, str]:
    """The tags a version is created with (the watermark comes last: see register_version)."""
    return {
        TAG_BASE_MODEL: base_model,
        TAG_CORRECTIONS: str(corrections),
        TAG_DATASET_HASH: dataset_hash,
        TAG_GATES_PASSED: "true" if gates_passed else "false",
        TAG_GATE_RESULTS: gate_results,
    }


def register_version(
    registry: AdapterRegistry,
    run: CycleRun,
    tags: Mapping[str, str],
    watermark: str,
    *,
    release: Release,
    canary_policy: CanaryPolicy | None = None,
) -> int:
    """Create the version, move ``candidate`` and release it as asked, then record the watermark.

    ``release``: ``production`` promotes at once; ``canary`` starts a canary at the first of
    ``canary_policy``'s steps (``ouro.rollout.Rollout.start``: the shared model only,
    personal versions are judged by their gates alone); ``candidate`` waits for an operator. The ledger watermark is what
    tells the next cycle "trained up to here", so it is written last: a cycle killed
    between these calls leaves a version without it, and the next cycle redoes the work
    instead of skipping it.
    """
    version = registry.register_adapter(
        run.run_id, f"{run.artifact_uri}/{ADAPTER_ARTIFACT_PATH}", tags
    )
    registry.set_alias(ALIAS_CANDIDATE, version)
    if release is Release.PRODUCTION:
        registry.set_alias(ALIAS_PRODUCTION, version)
    elif release is Release.CANARY:
        Rollout(registry, canary_policy or CanaryPolicy()).start(version)
    registry.check_available()
    run.client.set_model_version_tag(registry.model_name, str(version), TAG_WATERMARK, watermark)
    return version


class Release(enum.StrEnum):
    """What a version that passed its gates becomes (besides ``candidate``)."""

    CANDIDATE = "candidate"
    CANARY = "canary"
    PRODUCTION = "production"

    @classmethod
    def of(cls, *, auto_promote: bool, canary: bool, personal: bool) -> Release:
        """--auto-promote wins; a canary is for the shared model (its traffic is split)."""
        if auto_promote:
            return cls.PRODUCTION
        return cls.CANARY if canary and not personal else cls.CANDIDATE

    @property
    def aliases(self) -> str:
        return {"candidate": "candidate", "canary": "candidate, canary"}.get(
            self.value, "candidate, production"
        )
