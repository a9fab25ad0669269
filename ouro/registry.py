"""The MLflow registry of LoRA adapter versions (model names: ``ouro.names``).

The registry holds one registered model (default ``ouro-adapter``); each version is a
PEFT adapter directory logged as a run artifact, with tags (see ``TAG_*``) written by the
training job. Personal adapters: one registered model per scope, named
``<model>.p.<16 hex digits of the scope's SHA-256>`` and tagged ``ouro.scope=<scope>``
(``PersonalRegistries``). One model per scope keeps every per-scope read one small
request (``get_registered_model`` returns all of a model's aliases and tags, so aliases
for 10,000 scopes on one model would make every read carry all of them), and deleting a
scope is deleting its model. Moving ``production`` is promotion; :meth:`AdapterRegistry.rollback` moves
it back, using an alias history kept as a registered-model tag, so moves made by hand in
the MLflow UI are understood too.

Failing fast: MLflow's HTTP client retries a dead server for minutes. Rather than change
its process-wide retry settings (``MLFLOW_HTTP_REQUEST_*`` environment variables, read by
every MLflow call in the process, e.g. a training run's uploads), every registry
operation against an ``http(s)`` URI first probes the server's ``/health`` with a short
timeout and raises RegistryUnavailableError when it does not answer. A server that dies
between the probe and the call still gets MLflow's own retries.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import mlflow.artifacts
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException, RestException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from ouro.errors import OuroError
from ouro.ledger import InvalidWatermarkError, Watermark
from ouro.names import (
    ALIAS_PRODUCTION,
    SERVED_MODEL_NAME,
    ModelRef,
    UnknownModelError,
    is_valid_alias,
    version_label,
)
from ouro.scopes import (
    PERSONAL_MODEL_INFIX,
    personal_model_name,
    validate_scope,
)
from ouro.settings import OuroSettings

logger = logging.getLogger(__name__)

DEFAULT_REGISTERED_MODEL = "ouro-adapter"
ADAPTER_ARTIFACT_PATH = "adapter"
"""Run artifact folder holding the adapter; a version's source is ``<artifact_uri>/adapter``."""

# Version tags, written by the training job when it registers a version.
TAG_BASE_MODEL = "base_model"
TAG_GATES_PASSED = "gates_passed"  # "true" / "false"
TAG_GATE_RESULTS = "gate_results"  # JSON: the gate report's checks
TAG_CORRECTIONS = "corrections"  # number of corrections trained on
TAG_WATERMARK = "ledger_watermark"  # Watermark.encode() of the ledger scan trained on
TAG_DATASET_HASH = "dataset_hash"
# Written by the canary rollout (ouro.rollout) when a version's canary ends.
TAG_ROLLOUT_DECISION = "ouro.rollout.decision"  # "promote" / "rollback"

# Registered-model tags of a personal adapter's model.
TAG_SCOPE = "ouro.scope"
TAG_KIND = "ouro.kind"  # "personal"
KIND_PERSONAL = "personal"

ALIAS_HISTORY_TAG_PREFIX = "alias_history."
ALIAS_HISTORY_LIMIT = 20
# Registered-model tag: the training cycles' outcomes (TrainingCycles), for Serve's metrics.
TRAINING_CYCLES_TAG = "ouro.training_cycles"

_REGISTERED_MODEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,255}$")
_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
_ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"
ADAPTER_CONFIG_FILE = "adapter_config.json"


# -- errors ---------------------------------------------------------------------------


class RegistryError(OuroError):
    """The registry answered, but refused or failed the operation."""


class RegistryUnavailableError(RegistryError):
    """MLflow cannot be reached (raised within seconds, not after minutes of retries)."""


class NothingToRollBackError(RegistryError):
    """The alias has no earlier value recorded to go back to."""


class AdapterArtifactError(RegistryError):
    """A version's artifacts are not a PEFT adapter directory."""


# -- registry contents ----------------------------------------------------------------


@dataclass(frozen=True)
class AdapterVersion:
    """One registered adapter version."""

    version: int = field(metadata={"help": "Version number in the registered model."})
    source: str = field(metadata={"help": "Artifact URI of the adapter directory."})
    run_id: str | None = field(default=None, metadata={"help": "Training run that made it."})
    tags: dict[str, str] = field(default_factory=dict, metadata={"help": "Version tags."})
    aliases: tuple[str, ...] = field(default=(), metadata={"help": "Aliases pointing at it."})
    created_at: dt.datetime | None = field(default=None, metadata={"help": "When registered."})

    @property
    def label(self) -> str:
        return version_label(self.version)

    @property
    def base_model(self) -> str | None:
        return self.tags.get(TAG_BASE_MODEL)

    @property
    def gates_passed(self) -> bool | None:
        value = self.tags.get(TAG_GATES_PASSED)
        return None if value is None else value.strip().lower() == "true"

    @property
    def gate_results(self) -> object | None:
        value = self.tags.get(TAG_GATE_RESULTS)
        if value is None:
            return None
        try:
            return json.loads(value)
        except ValueError:
            logger.warning("version %d: gate results tag is not JSON", self.version)
            return None

    @property
    def corrections(self) -> int | None:
        value = self.tags.get(TAG_CORRECTIONS)
        return int(value) if value is not None and value.strip().isdigit() else None

    @property
    def dataset_hash(self) -> str | None:
        return self.tags.get(TAG_DATASET_HASH)

    @property
    def rolled_back(self) -> bool:
        """Whether users' signals (or an operator) rolled back its canary."""
        return self.tags.get(TAG_ROLLOUT_DECISION) == "rollback"

    @property
    def watermark(self) -> Watermark | None:
        """The ledger position this version was trained up to (None if not recorded)."""
        value = self.tags.get(TAG_WATERMARK)
        if not value:
            return None
        try:
            return Watermark.decode(value)
        except InvalidWatermarkError:
            logger.warning("version %d: unreadable ledger watermark %r", self.version, value)
            return None

    @classmethod
    def from_mlflow(cls, mv: ModelVersion, aliases: tuple[str, ...] = ()) -> AdapterVersion:
        created = (
            dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, dt.UTC)
            if mv.creation_timestamp
            else None
        )
        return cls(
            version=int(mv.version),
            source=mv.source,
            run_id=mv.run_id or None,
            tags=dict(mv.tags or {}),
            aliases=aliases,
            created_at=created,
        )


class CycleOutcome(enum.StrEnum):
    """How a training cycle ended (``train_job.cycle``; recorded in ``TrainingCycles``)."""

    REGISTERED = "registered"
    NOTHING_TO_DO = "nothing_to_do"
    GATES_FAILED = "gates_failed"
    FAILED = "failed"
    """It raised: no result, nothing registered."""

    @property
    def failing(self) -> bool:
        """Whether it counts towards cycles failing in a row."""
        return self in (CycleOutcome.GATES_FAILED, CycleOutcome.FAILED)


@dataclass(frozen=True)
class TrainingCycles:
    """The outcomes of a registered model's training cycles, as the training job records
    them on the model (one tag), so that Serve can export them without reading runs."""

    consecutive_failed: int = 0
    """Cycles since the last one that registered a version that failed or whose candidate
    the gates refused (a cycle with nothing to train changes nothing)."""
    last_at: dict[str, float] = field(default_factory=dict)
    """Per outcome, when its newest cycle ended (Unix seconds)."""

    def after(self, outcome: CycleOutcome, at: float) -> TrainingCycles:
        """These cycles with one more, ended at ``at``."""
        if outcome is CycleOutcome.REGISTERED:
            consecutive = 0
        else:
            consecutive = self.consecutive_failed + int(outcome.failing)
        return TrainingCycles(consecutive, {**self.last_at, outcome.value: at})

    def encode(self) -> str:
        return json.dumps(
            {"consecutive_failed": self.consecutive_failed, "last_at": self.last_at},
            sort_keys=True,
        )

    @classmethod
    def decode(cls, text: str | None) -> TrainingCycles:
        """The recorded cycles; none recorded (or an unreadable tag) reads as no cycle."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            return cls(
                int(data["consecutive_failed"]),
                {str(k): float(v) for k, v in dict(data["last_at"]).items()},
            )
        except (ValueError, TypeError, KeyError):
            logger.warning("unreadable %s tag %r", TRAINING_CYCLES_TAG, text)
            return cls()


@dataclass(frozen=True)
class RegistrySnapshot:
    """The registered model's aliases and ready versions at one moment."""

    model_name: str
    aliases: dict[str, int] = field(default_factory=dict)
    versions: dict[int, AdapterVersion] = field(default_factory=dict)
    cycles: TrainingCycles = field(default_factory=TrainingCycles)
    model_tags: dict[str, str] = field(default_factory=dict)
    """The registered model's own tags (alias histories, cycles, the canary's state)."""

    @property
    def production(self) -> int | None:
        return self.aliases.get(ALIAS_PRODUCTION)

    def latest(self) -> AdapterVersion | None:
        """The newest version (highest number), or None when there is none."""
        return self.versions[max(self.versions)] if self.versions else None

    def last_trained(self) -> AdapterVersion | None:
        """The newest version that records a ledger watermark (what was trained up to) and
        was not rolled back: a rolled-back version's corrections are still pending."""
        for number in sorted(self.versions, reverse=True):
            version = self.versions[number]
            if version.watermark is not None and not version.rolled_back:
                return version
        return None

    def resolve(self, ref: ModelRef) -> int | None:
        """The version a name means now; None means the base model with no adapter.

        ``ouro`` falls back to the base model while ``production`` is unset; an explicit
        alias or version that does not exist raises UnknownModelError. A personal name
        (``ref.scope``) is resolved against that scope's own snapshot; the caller checks
        the scope is the snapshot's.
        """
        if ref.version is not None:
            if ref.version not in self.versions:
                raise UnknownModelError(f"model version {ref.name!r} does not exist")
            return ref.version
        if ref.alias is None:
            return None
        if ref.alias in self.aliases:
            return self.aliases[ref.alias]
        if ref.name == SERVED_MODEL_NAME:
            return None
        raise UnknownModelError(f"alias {ref.alias!r} is not set, so {ref.name!r} names nothing")


# -- the registry client --------------------------------------------------------------


class AdapterRegistry:
    """The registered model of adapter versions in one MLflow tracking/registry store."""

    def __init__(
        self,
        tracking_uri: str,
        model_name: str = DEFAULT_REGISTERED_MODEL,
        *,
        timeout_s: float = 5.0,
        scope: str | None = None,
    ) -> None:
        if not _REGISTERED_MODEL_PATTERN.match(model_name):
            raise ValueError(f"registered model name {model_name!r} is not allowed")
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.scope = scope
        """The personal scope this model belongs to (None: the shared model)."""
        self.timeout_s = timeout_s
        self._http = tracking_uri.startswith(("http://", "https://"))
        db_path = sqlite_path(tracking_uri)
        if db_path is not None:
            # sqlite cannot create the folder of its database file.
            db_path.parent.mkdir(parents=True, exist_ok=True)
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._download_locks: dict[int, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._nesting = threading.local()  # operations inside operations probe only once

    @classmethod
    def from_settings(cls, settings: OuroSettings, scope: str | None = None) -> AdapterRegistry:
        """The shared registered model, or ``scope``'s personal one."""
        if scope is not None:
            return PersonalRegistries.from_settings(settings).for_scope(scope)
        return cls(settings.tracking_uri, settings.registered_model_name)

    # -- failure handling ---------------------------------------------------------------

    def check_available(self) -> None:
        """Raise RegistryUnavailableError unless the server answers within ``timeout_s``."""
        if not self._http:
            return
        url = self.tracking_uri.rstrip("/") + "/health"
        try:
            response = httpx.get(url, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise RegistryUnavailableError(
                f"MLflow at {self.tracking_uri} is unreachable: {exc!r}"
            ) from exc
        if response.status_code >= 500:
            raise RegistryUnavailableError(
                f"MLflow at {self.tracking_uri} answered {response.status_code} to /health"
            )

    @contextmanager
    def _calling(self, action: str) -> Iterator[None]:
        """Probe once per public operation, and turn MLflow's exceptions into ours."""
        outermost = not getattr(self._nesting, "depth", 0)
        if outermost:
            self.check_available()
        self._nesting.depth = getattr(self._nesting, "depth", 0) + 1
        try:
            yield
        except RestException as exc:  # the server answered with an error
            raise RegistryError(f"{action}: {exc.message}") from exc
        except MlflowException as exc:
            if exc.error_code in (_NOT_FOUND, _ALREADY_EXISTS, "INVALID_PARAMETER_VALUE"):
                raise RegistryError(f"{action}: {exc.message}") from exc
            raise RegistryUnavailableError(
                f"{action}: MLflow at {self.tracking_uri} failed: {exc.message}"
            ) from exc
        finally:
            self._nesting.depth -= 1

    # -- reading ------------------------------------------------------------------------

    def snapshot(self) -> RegistrySnapshot:
        """Aliases and READY versions; empty when the registered model does not exist yet."""
        with self._calling(f"reading registered model {self.model_name!r}"):
            registered = self._registered_model()
            if registered is None:
                return RegistrySnapshot(self.model_name)
            self._check_scope(registered)
            # search_model_versions leaves aliases empty: take them from the model.
            aliases = {alias: int(v) for alias, v in registered.aliases.items()}
            by_version: dict[int, list[str]] = {}
            for alias, version in sorted(aliases.items()):
                by_version.setdefault(version, []).append(alias)
            versions = {}
            for mv in self._all_versions():
                if mv.status != "READY":
                    continue
                number = int(mv.version)
                versions[number] = AdapterVersion.from_mlflow(mv, tuple(by_version.get(number, ())))
        cycles = TrainingCycles.decode(registered.tags.get(TRAINING_CYCLES_TAG))
        return RegistrySnapshot(
            self.model_name,
            aliases,
            dict(sorted(versions.items())),
            cycles,
            dict(registered.tags or {}),
        )

    def _all_versions(self) -> Iterator[ModelVersion]:
        token = None
        while True:
            page = self._client.search_model_versions(
                filter_string=f"name='{self.model_name}'", page_token=token
            )
            yield from page
            token = page.token
            if not token:
                return

    def get_version(self, version: int) -> AdapterVersion:
        """One version; UnknownModelError when it does not exist."""
        with self._calling(f"reading version {version} of {self.model_name!r}"):
            try:
                mv = self._client.get_model_version(self.model_name, str(version))
            except MlflowException as exc:
                if exc.error_code == _NOT_FOUND:
                    raise UnknownModelError(
                        f"{version_label(version)} does not exist in {self.model_name!r}"
                    ) from exc
                raise
        return AdapterVersion.from_mlflow(mv, tuple(mv.aliases or ()))

    def _registered_model(self) -> RegisteredModel | None:
        """The registered model, or None before its first version (inside ``_calling``)."""
        try:
            return self._client.get_registered_model(self.model_name)
        except MlflowException as exc:
            if exc.error_code == _NOT_FOUND:
                return None
            raise

    def _check_scope(self, registered: RegisteredModel) -> None:
        """A personal model must carry its scope: a hash collision is refused, not served."""
        if self.scope is not None and registered.tags.get(TAG_SCOPE) != self.scope:
            raise RegistryError(
                f"{self.model_name!r} belongs to scope {registered.tags.get(TAG_SCOPE)!r}, "
                f"not {self.scope!r}"
            )

    def alias_version(self, alias: str) -> int | None:
        """The version an alias points at, or None when it is not set."""
        return self._alias_state(alias)[0]

    def alias_history(self, alias: str) -> list[int | None]:
        """Values the alias was given, oldest first (None: it was unset)."""
        return self._alias_state(alias)[1]

    def _alias_state(self, alias: str) -> tuple[int | None, list[int | None]]:
        with self._calling(f"reading alias {alias!r} of {self.model_name!r}"):
            registered = self._registered_model()
        if registered is None:
            return None, []
        value = registered.aliases.get(alias)
        history = _parse_history(registered.tags.get(ALIAS_HISTORY_TAG_PREFIX + alias))
        return (int(value) if value is not None else None), history

    # -- writing ------------------------------------------------------------------------

    def register_adapter(self, run_id: str, artifact_uri: str, tags: Mapping[str, str]) -> int:
        """Create a version from a logged adapter directory; returns its number.

        ``artifact_uri`` is where the run logged the directory, normally
        ``f"{run.info.artifact_uri}/{ADAPTER_ARTIFACT_PATH}"`` after
        ``mlflow.log_artifacts(adapter_dir, ADAPTER_ARTIFACT_PATH)``.
        """
        with self._calling(f"registering a version of {self.model_name!r}"):
            self._ensure_registered_model()
            mv = self._client.create_model_version(
                self.model_name,
                source=artifact_uri,
                run_id=run_id,
                tags={key: str(value) for key, value in tags.items()},
            )
        logger.info("registered %s from run %s", version_label(int(mv.version)), run_id)
        return int(mv.version)

    def _ensure_registered_model(self) -> None:
        tags = {TAG_SCOPE: self.scope, TAG_KIND: KIND_PERSONAL} if self.scope is not None else None
        try:
            self._client.create_registered_model(self.model_name, tags=tags)
        except MlflowException as exc:
            if exc.error_code != _ALREADY_EXISTS:
                raise
            if self.scope is not None:
                registered = self._registered_model()
                if registered is not None:
                    self._check_scope(registered)

    def set_alias(self, alias: str, version: int) -> None:
        """Point ``alias`` at ``version``, recording the move for :meth:`rollback`."""
        if not is_valid_alias(alias):
            raise ValueError(f"{alias!r} is not a valid alias name")
        with self._calling(f"setting alias {alias!r} to {version}"):
            self.get_version(version)  # UnknownModelError before anything changes
            current, history = self._alias_state(alias)
            if not history or history[-1] != current:
                history.append(current)  # also catches a move made by hand in the MLflow UI
            if history[-1] != version:
                history.append(version)
            self._client.set_registered_model_alias(self.model_name, alias, str(version))
            self._write_history(alias, history)
        logger.info("alias %s: %s -> %s", alias, current, version)

    def delete_alias(self, alias: str) -> None:
        """Unset ``alias`` (recorded in its history like a move); nothing when it is unset."""
        with self._calling(f"deleting alias {alias!r}"):
            current, history = self._alias_state(alias)
            if current is None:
                return
            if not history or history[-1] != current:
                history.append(current)
            history.append(None)
            self._client.delete_registered_model_alias(self.model_name, alias)
            self._write_history(alias, history)
        logger.info("alias %s: %s -> unset", alias, current)

    def set_model_tag(self, key: str, value: str) -> None:
        """Set a tag of the registered model (created if needed)."""
        with self._calling(f"tagging {self.model_name!r}"):
            self._ensure_registered_model()
            self._client.set_registered_model_tag(self.model_name, key, value)

    def delete_model_tag(self, key: str) -> None:
        """Remove a tag of the registered model; nothing when it is not set."""
        with self._calling(f"untagging {self.model_name!r}"):
            registered = self._registered_model()
            if registered is not None and key in (registered.tags or {}):
                self._client.delete_registered_model_tag(self.model_name, key)

    def set_version_tag(self, version: int, key: str, value: str) -> None:
        """Set a tag of one version."""
        with self._calling(f"tagging {version_label(version)}"):
            self._client.set_model_version_tag(self.model_name, str(version), key, value)

    def rollback(self, alias: str = ALIAS_PRODUCTION) -> int | None:
        """Move ``alias`` back to the value it had before its current one.

        Returns the version it now points at, or None when the alias was unset before
        (it is then removed, so ``ouro`` serves the base model). "Before" is the last
        recorded value that differs from the current one, so a move made by hand in the
        MLflow UI is undone too. Versions deleted since are skipped.
        """
        with self._calling(f"rolling back alias {alias!r}"):
            current, history = self._alias_state(alias)
            existing = set(self.snapshot().versions)
            while history and (
                history[-1] == current or (history[-1] is not None and history[-1] not in existing)
            ):
                history.pop()
            if not history:
                raise NothingToRollBackError(
                    f"alias {alias!r} of {self.model_name!r} has no earlier value recorded"
                )
            target = history[-1]
            if target is None:
                self._client.delete_registered_model_alias(self.model_name, alias)
            else:
                self._client.set_registered_model_alias(self.model_name, alias, str(target))
            self._write_history(alias, history)
        logger.info("alias %s rolled back: %s -> %s", alias, current, target)
        return target

    def record_cycle(self, outcome: CycleOutcome, *, at: float) -> TrainingCycles:
        """Record a training cycle's outcome on the registered model (created if needed)."""
        with self._calling(f"recording a training cycle on {self.model_name!r}"):
            registered = self._registered_model()
            if registered is None:
                self._ensure_registered_model()
                registered = self._registered_model()
            recorded = TrainingCycles.decode(
                registered.tags.get(TRAINING_CYCLES_TAG) if registered else None
            )
            cycles = recorded.after(outcome, at)
            self._client.set_registered_model_tag(
                self.model_name, TRAINING_CYCLES_TAG, cycles.encode()
            )
        return cycles

    def _write_history(self, alias: str, history: list[int | None]) -> None:
        self._client.set_registered_model_tag(
            self.model_name,
            ALIAS_HISTORY_TAG_PREFIX + alias,
            json.dumps(history[-ALIAS_HISTORY_LIMIT:]),
        )

    # -- artifacts ----------------------------------------------------------------------

    def download(self, version: int, cache_dir: Path) -> Path:
        """The adapter directory of ``version`` under ``cache_dir/v<N>``, downloaded once.

        Versions are immutable, so a directory already there is used as is. A download
        lands in a temporary folder beside it and is renamed into place, so readers never
        see half an adapter, and two processes racing both end up with the same result.
        ``cache_dir`` belongs to one registered model of one registry.
        """
        target = Path(cache_dir) / f"v{version}"
        if _is_adapter_dir(target):
            return target
        with self._download_lock(version):
            if _is_adapter_dir(target):
                return target
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".v{version}-", dir=target.parent))
            try:
                with self._calling(f"downloading {version_label(version)}"):
                    source = self.get_version(version).source
                    local = Path(
                        mlflow.artifacts.download_artifacts(
                            artifact_uri=source,
                            dst_path=str(staging),
                            tracking_uri=self.tracking_uri,
                        )
                    )
                if not _is_adapter_dir(local):
                    raise AdapterArtifactError(
                        f"{version_label(version)} ({source}) has no {ADAPTER_CONFIG_FILE}"
                    )
                try:
                    os.rename(local, target)
                except OSError:
                    if not _is_adapter_dir(target):  # someone else's rename won: fine
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        logger.info("downloaded %s to %s", version_label(version), target)
        return target

    def _download_lock(self, version: int) -> threading.Lock:
        with self._locks_guard:
            return self._download_locks.setdefault(version, threading.Lock())

    def delete(self) -> list[str]:
        """Delete the registered model, its versions, and the runs that made them.

        Returns the deleted run ids. Each run's artifacts are deleted through MLflow's
        artifact repository (a server's artifact proxy or the local folder); the run
        itself is marked deleted (``mlflow gc`` purges its metadata).
        """
        with self._calling(f"deleting registered model {self.model_name!r}"):
            registered = self._registered_model()
            if registered is None:
                return []
            run_ids = sorted({mv.run_id for mv in self._all_versions() if mv.run_id})
            self._client.delete_registered_model(self.model_name)
            for run_id in run_ids:
                run = self._client.get_run(run_id)
                # The run's artifacts (adapter, dataset manifest, gate report) go first:
                # a deleted run's artifacts would otherwise wait for ``mlflow gc``.
                get_artifact_repository(
                    run.info.artifact_uri, tracking_uri=self.tracking_uri
                ).delete_artifacts()
                self._client.delete_run(run_id)
        logger.info("deleted %s and %d run(s)", self.model_name, len(run_ids))
        return run_ids

    # -- experiments ----------------------------------------------------------------------

    def ensure_experiment(self, name: str, artifacts_dir: Path | None = None) -> str:
        """The id of experiment ``name``, created (or restored) when needed.

        With a local store (``sqlite:///``) its artifacts go to ``artifacts_dir``, by
        default ``artifacts/`` beside the database, instead of ``./mlruns`` in the working
        directory. A server decides for itself (``--artifacts-destination``).
        """
        location = None
        db_path = sqlite_path(self.tracking_uri)
        if db_path is not None:
            location = Path(artifacts_dir or db_path.parent / "artifacts").resolve().as_uri()
        elif artifacts_dir is not None:
            logger.info("artifacts_dir ignored: %s stores artifacts itself", self.tracking_uri)
        with self._calling(f"creating experiment {name!r}"):
            experiment = self._client.get_experiment_by_name(name)
            if experiment is None:
                try:
                    return self._client.create_experiment(name, artifact_location=location)
                except MlflowException as exc:
                    if exc.error_code != _ALREADY_EXISTS:
                        raise
                    experiment = self._client.get_experiment_by_name(name)
                    assert experiment is not None
            if experiment.lifecycle_stage == "deleted":
                self._client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id


class PersonalRegistries:
    """The personal registered models of one store: one per scope (see module docstring)."""

    def __init__(self, tracking_uri: str, shared_model_name: str = DEFAULT_REGISTERED_MODEL):
        self.tracking_uri = tracking_uri
        self.shared_model_name = shared_model_name
        self._shared = AdapterRegistry(tracking_uri, shared_model_name)

    @classmethod
    def from_settings(cls, settings: OuroSettings) -> PersonalRegistries:
        return cls(settings.tracking_uri, settings.registered_model_name)

    def for_scope(self, scope: str) -> AdapterRegistry:
        """The registry of ``scope``'s personal adapter versions."""
        return AdapterRegistry(
            self.tracking_uri,
            personal_model_name(self.shared_model_name, scope),
            scope=validate_scope(scope),
        )

    def production_by_scope(self) -> dict[str, dict[str, int]]:
        """Every scope with a personal model, and its aliases (one paged search).

        ``search_registered_models`` returns aliases and tags, so 10,000 scopes are ten
        requests of 1,000 models, not 10,000.
        """
        prefix = self.shared_model_name + PERSONAL_MODEL_INFIX
        found: dict[str, dict[str, int]] = {}
        client = self._shared._client
        with self._shared._calling("listing personal registered models"):
            token = None
            while True:
                page = client.search_registered_models(
                    filter_string=f"name LIKE '{prefix}%'", max_results=1000, page_token=token
                )
                for model in page:
                    scope = model.tags.get(TAG_SCOPE)
                    if scope and personal_model_name(self.shared_model_name, scope) == model.name:
                        found[scope] = {alias: int(v) for alias, v in model.aliases.items()}
                token = page.token
                if not token:
                    break
        return found


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    return Path(tracking_uri[len(prefix) :].split("?", 1)[0])


def _is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_CONFIG_FILE).is_file()


def _parse_history(value: str | None) -> list[int | None]:
    if not value:
        return []
    try:
        items = json.loads(value)
    except ValueError:
        logger.warning("ignoring an unreadable alias history: %r", value)
        return []
    if not isinstance(items, list):
        return []
    return [item for item in items if item is None or type(item) is int]
