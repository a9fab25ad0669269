"""One training cycle: collect → dataset → train → gates → register.

With personal adapters on (``OURO_PERSONAL_ADAPTERS``), the same steps run once for the
shared adapter (on the shared corrections, ``train_job.sharing``) and then once per scope
with new corrections of its own, each from the base model, into the scope's own
registered model (``ouro.registry.PersonalRegistries``), each with its own MLflow run.

Order matters for safety. The registry is read first (an unreachable MLflow fails the
cycle within seconds, before any training); registering is the last step, and the ledger
watermark is written last of all, so a cycle that stops anywhere (error, SIGTERM,
SIGKILL) leaves no version the next cycle would count as "trained up to here": the next
cycle redoes the work. An exclusive lock on the data dir keeps two cycles from running
at once (see ``lock.py``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from mlflow.exceptions import MlflowException

from ouro.embedded.minilm import load_embedder
from ouro.errors import OuroError
from ouro.ledger import LedgerReader, LedgerScan
from ouro.names import BASE_MODEL_NAME, UnknownModelError, parse_model_name
from ouro.registry import (
    AdapterRegistry,
    CycleOutcome,
    PersonalRegistries,
    RegistrySnapshot,
    RegistryUnavailableError,
)
from ouro.rollout import CanaryPolicy
from ouro.routing import CorrectionIndex
from ouro.settings import OuroSettings
from train_job.collect import Collected, collect, usable_corrections
from train_job.config import TrainJobConfig
from train_job.corrections import Correction
from train_job.dataset import RoutingPlanner, build_dataset
from train_job.gates import GateReport, evaluate_gates
from train_job.lock import CycleLock
from train_job.register import CycleRun, Release, register_version, version_tags
from train_job.replay import self_answerer
from train_job.routed import AnsweredBy, plan_routing
from train_job.sharing import SharingPolicy, scopes_with_corrections
from train_job.train import train_adapter

logger = logging.getLogger(__name__)

STAGES = ("collect", "train", "gates", "register")
OUTCOME_TAG = "ouro.outcome"


class CycleInterrupted(BaseException):
    """The process was asked to stop (SIGTERM); like KeyboardInterrupt, not an error."""


class ConcurrentCycleError(OuroError):
    """A version was registered by someone else while this cycle ran: it registers nothing."""


Outcome = CycleOutcome
"""How a cycle ended; the registry records it (``AdapterRegistry.record_cycle``)."""


@dataclass
class CycleResult:
    """What a cycle did."""

    outcome: Outcome
    message: str
    version: int | None = None
    run_id: str | None = None
    release: Release | None = None
    """What the registered version became besides ``candidate`` (None: nothing registered)."""
    report: GateReport | None = None
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage (collect, train, gates, register) and in total."""
    scope: str | None = None
    """The personal scope this result is for (None: the shared adapter)."""
    registered_model: str | None = None
    """The registered model a version went into."""
    personal: list[CycleResult] = field(default_factory=list)
    """With personal adapters on: one result per scope with new corrections."""


class StageTimer:
    """Wall time per stage (a stage entered twice adds up), logged as each ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
            logger.info("stage %s: %.1f s", name, elapsed)

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": time.perf_counter() - self._started}


def run_cycle(config: TrainJobConfig, settings: OuroSettings) -> CycleResult:
    """Run one cycle under the data dir's lock (CycleBusyError when another holds it)."""
    with CycleLock(settings.data_dir):
        return _run_locked(config, settings)


def _run_locked(config: TrainJobConfig, settings: OuroSettings) -> CycleResult:
    if config.cpu_threads > 0:
        torch.set_num_threads(config.cpu_threads)
    timer = StageTimer()
    with timer.stage("collect"):
        registry = AdapterRegistry.from_settings(settings)
        snapshot = registry.snapshot()  # RegistryUnavailableError within seconds
        if settings.personal_adapters:
            policy = SharingPolicy.from_settings(settings)
            scan = LedgerReader(settings.ledger_dir).scan()
            collected = collect(
                settings.ledger_dir, snapshot, policy.shared, control_counts=True, scan=scan
            )
        else:
            collected = collect(settings.ledger_dir, snapshot)
    try:
        result = _cycle(config, settings, registry, snapshot, collected, timer, [])
    except Exception:
        _record_cycle(registry, Outcome.FAILED)
        raise
    _record_cycle(registry, result.outcome)
    if settings.personal_adapters:
        # Re-read: this cycle may have just promoted a shared version (the scopes' baseline).
        shared = (registry, registry.snapshot())
        result.personal = _personal_cycles(
            config, settings, policy, scan, collected.corrections, shared
        )
    return result


def _personal_cycles(
    config: TrainJobConfig,
    settings: OuroSettings,
    policy: SharingPolicy,
    scan: LedgerScan,
    shared_set: list[Correction],
    shared: tuple[AdapterRegistry, RegistrySnapshot],
) -> list[CycleResult]:
    """One cycle per scope with new corrections of its own (scopes with none are skipped).

    ``shared_set`` is the shared adapter's training set, worked out once for all scopes.
    """
    personal = PersonalRegistries.from_settings(settings)
    corrections, _ = usable_corrections(scan.corrections)
    results = []
    for scope in scopes_with_corrections(corrections):
        timer = StageTimer()
        with timer.stage("collect"):
            registry = personal.for_scope(scope)
            snapshot = registry.snapshot()
            select = policy.personal(scope, shared_set)
            collected = collect(settings.ledger_dir, snapshot, select, scan=scan)
            own_new = _own_new(collected, scope)
        if own_new < config.min_corrections:
            logger.info("scope %s: no new corrections of its own", scope)
            continue
        logger.info("scope %s: %d new correction(s) of its own", scope, own_new)
        result = _cycle(config, settings, registry, snapshot, collected, timer, [shared])
        result.scope = scope
        results.append(result)
    return results


def _own_new(collected: Collected, scope: str) -> int:
    """New corrections the scope sent itself (new shared ones alone retrain no scope)."""
    return sum(1 for c in collected.corrections if c.scope == scope and c.id in collected.new_ids)


def _cycle(
    config: TrainJobConfig,
    settings: OuroSettings,
    registry: AdapterRegistry,
    snapshot: RegistrySnapshot,
    collected: Collected,
    timer: StageTimer,
    fallback_baselines: list[tuple[AdapterRegistry, RegistrySnapshot]],
) -> CycleResult:
    """Train, gate and register one adapter (the shared one, or one scope's)."""
    if collected.new < config.min_corrections:
        since = f"v{collected.since_version}" if collected.since_version else "the start"
        message = (
            f"nothing to do: {collected.new} new correction(s) since {since} "
            f"(min_corrections={config.min_corrections}); "
            f"{len(collected.corrections)} in the ledger"
        )
        logger.info("%s", message)
        return CycleResult(Outcome.NOTHING_TO_DO, message, timings=timer.total())

    with timer.stage("train"):  # the run's set-up counts as training overhead
        run = CycleRun.start(
            registry,
            config.experiment_name,
            settings.local_artifacts_dir if not settings.mlflow_tracking_uri else None,
            run_name=f"cycle-{time.strftime('%Y%m%d-%H%M%S')}"
            + (f"-{registry.scope}" if registry.scope else ""),
            tags={
                "ouro.base_model": settings.base_model,
                "ouro.new_corrections": str(collected.new),
                **({"ouro.scope": registry.scope} if registry.scope else {}),
            },
        )
    status = "FAILED"
    try:
        result = _train_gate_register(
            config, settings, registry, snapshot, collected, run, timer, fallback_baselines
        )
        status = "FINISHED"
        return result
    except (KeyboardInterrupt, CycleInterrupted):
        status = "KILLED"
        raise
    finally:
        _end_run(registry, run, status)


def _train_gate_register(
    config: TrainJobConfig,
    settings: OuroSettings,
    registry: AdapterRegistry,
    snapshot: RegistrySnapshot,
    collected: Collected,
    run: CycleRun,
    timer: StageTimer,
    fallback_baselines: list[tuple[AdapterRegistry, RegistrySnapshot]],
) -> CycleResult:
    run.log_params(
        {
            **config.to_params(),
            "base_model": settings.base_model,
            "registered_model_name": registry.model_name,
            "scope": registry.scope,
            "corrections": len(collected.corrections),
            "new_corrections": collected.new,
            "ledger_bad_lines": collected.bad_lines,
            "previous_version": collected.since_version,
        }
    )
    with tempfile.TemporaryDirectory(prefix="ouro-train-") as tmp:
        work_dir = Path(tmp)
        with timer.stage("train"):
            dataset = build_dataset(
                collected.corrections,
                config,
                settings.system_prompt,
                self_answerer(settings, config.replay_max_new_tokens),
                planner=_routing_planner(config, settings, registry, snapshot),
                cycle=held_out_cycle(snapshot),
            )
            manifest = dataset.manifest(
                watermark=collected.watermark.encode(), replay_source=config.replay_source
            )
            run.log_json(manifest, "dataset_manifest.json")
            run.log_params({"dataset_sha256": dataset.sha256, "train_rows": len(dataset.rows)})
            trained = train_adapter(
                config,
                settings,
                dataset.rows,
                work_dir,
                on_log=lambda step, values: run.log_metrics(
                    {f"train/{key}": value for key, value in values.items()}, step
                ),
            )
            run.log_metrics({"train/final_mean_loss": trained.train_loss}, trained.steps)
            if dataset.routing is not None:
                # Inside the adapter directory: the version's artifact carries its index, so
                # registry lineage, rollback and forget move the two together.
                dataset.routing.index.save(trained.adapter_dir)

        with timer.stage("gates"):
            baseline_dir, baseline_label = _baseline(
                [(registry, snapshot), *fallback_baselines], settings
            )
            parent_dir = None
            if registry.scope is not None and fallback_baselines:
                parent_dir, _ = _baseline(fallback_baselines, settings)
            report = evaluate_gates(
                config,
                settings,
                dataset,
                trained.adapter_dir,
                baseline_dir,
                baseline_label,
                parent_dir=parent_dir,
            )

        with timer.stage("register"):
            run.log_metrics(report.metrics())
            run.log_json(report.to_dict(), "gate_report.json")
            run.log_text(report.to_markdown(), "gate_report.md")
            run.log_artifacts(trained.adapter_dir, "adapter")
            # The run's description in the MLflow UI (tag values are limited to a few KB).
            run.set_tags(
                {
                    "mlflow.note.content": report.to_markdown(answers=False)
                    + "\nAnswers: see gate_report.md.\n"
                }
            )
            version = None
            release = Release.of(
                auto_promote=config.auto_promote,
                canary=config.canary,
                personal=registry.scope is not None,
            )
            if report.passed:
                _check_no_new_version(registry, snapshot)
                version = register_version(
                    registry,
                    run,
                    version_tags(
                        base_model=settings.base_model,
                        corrections=len(dataset.train),
                        dataset_hash=dataset.sha256,
                        gates_passed=True,
                        gate_results=report.checks_json(),
                    ),
                    collected.watermark.encode(),
                    release=release,
                    canary_policy=CanaryPolicy.from_settings(settings),
                )
                run.set_tags({OUTCOME_TAG: Outcome.REGISTERED.value, "ouro.version": str(version)})
            else:
                run.set_tags({OUTCOME_TAG: Outcome.GATES_FAILED.value})
    timings = timer.total()
    run.log_metrics({f"time/{k}_s": v for k, v in timings.items()})
    if version is None:
        return CycleResult(
            Outcome.GATES_FAILED,
            f"{report.summary()}; nothing registered",
            run_id=run.run_id,
            report=report,
            timings=timings,
        )
    whose = f" for scope {registry.scope}" if registry.scope else ""
    return CycleResult(
        Outcome.REGISTERED,
        f"registered {registry.model_name} v{version}{whose} (aliases: {release.aliases})",
        version=version,
        run_id=run.run_id,
        release=release,
        report=report,
        timings=timings,
        registered_model=registry.model_name,
    )


def held_out_cycle(snapshot: RegistrySnapshot) -> int:
    """The held-out rotation's cycle number: the versions already registered in this model.

    A cycle the gates refused is retried with the same split; each registered version moves
    the rotation on by one (``train_job.dataset.split_held_out``).
    """
    return len(snapshot.versions)


def _routing_planner(
    config: TrainJobConfig,
    settings: OuroSettings,
    registry: AdapterRegistry,
    snapshot: RegistrySnapshot,
) -> RoutingPlanner | None:
    """A routed cycle's planner (its embedder loaded once), or None for an unrouted one."""
    if not config.routing:
        return None
    embedder = load_embedder(settings.model_cache_dir)
    cache = settings.model_cache_dir / "routing"
    answered_by = _answered_by(settings, registry, snapshot)
    return lambda train, pool: plan_routing(embedder, train, pool, config, cache, answered_by)


def _answered_by(
    settings: OuroSettings, registry: AdapterRegistry, snapshot: RegistrySnapshot
) -> AnsweredBy:
    """The correction index whose decision a correction corrects (``train_job.routed``):
    the version its answer names, or, for an answer of the base model, the production
    version this cycle builds on (the router that did not take it). Each is downloaded
    once; a version that cannot be had teaches nothing (logged)."""
    indexes: dict[tuple[str | None, int], CorrectionIndex | None] = {}

    def index_of(scope: str | None, version: int) -> CorrectionIndex | None:
        if (scope, version) not in indexes:
            try:
                owner = registry
                if scope != registry.scope:
                    owner = AdapterRegistry.from_settings(settings, scope)
                indexes[scope, version] = CorrectionIndex.load(
                    _version_dir(owner, version, settings)
                )
            except (OuroError, OSError, MlflowException) as exc:
                logger.warning("no routing lessons from %s v%s: %s", scope or "", version, exc)
                indexes[scope, version] = None
        return indexes[scope, version]

    def answered_by(correction: Correction) -> CorrectionIndex | None:
        try:
            ref = parse_model_name(correction.model or BASE_MODEL_NAME)
        except UnknownModelError:
            return None
        if ref.version is not None:
            return index_of(ref.scope, ref.version)
        if snapshot.production is None:
            return None
        return index_of(registry.scope, snapshot.production)

    return answered_by


def _version_dir(registry: AdapterRegistry, version: int, settings: OuroSettings) -> Path:
    """A version's adapter directory, downloaded into the adapter cache (one folder per
    registered model: version numbers repeat across models)."""
    cache = settings.adapter_cache_dir
    if registry.scope is not None:
        cache = cache / registry.model_name
    return registry.download(version, cache)


def _baseline(
    candidates: list[tuple[AdapterRegistry, RegistrySnapshot]], settings: OuroSettings
) -> tuple[Path | None, str]:
    """The first candidate's production adapter (downloaded) or None for the base model.

    A scope's adapter is measured against the scope's own production, else against shared
    production (what the scope is served without it).
    """
    for registry, snapshot in candidates:
        production = snapshot.production
        if production is None:
            continue
        label = f"{registry.model_name} v{production} (production)"
        if registry.scope is None:
            label = f"v{production} (production)"
        return _version_dir(registry, production, settings), label
    return None, "base model (no production version)"


def _check_no_new_version(registry: AdapterRegistry, before: RegistrySnapshot) -> None:
    now = registry.snapshot()
    newest_before = max(before.versions, default=0)
    newest_now = max(now.versions, default=0)
    if newest_now > newest_before:
        raise ConcurrentCycleError(
            f"v{newest_now} was registered while this cycle ran (another cycle without the "
            "data dir's lock?); registering nothing, the next cycle starts from it"
        )


def _record_cycle(registry: AdapterRegistry, outcome: Outcome) -> None:
    """Record the shared cycle's outcome on the registered model, where Serve's metrics
    read it (alerts on cycles failing in a row); a dead registry only costs the record."""
    try:
        registry.check_available()
        registry.record_cycle(outcome, at=time.time())
    except (RegistryUnavailableError, MlflowException) as exc:
        logger.warning("could not record the cycle's outcome %s: %s", outcome, exc)


def _end_run(registry: AdapterRegistry, run: CycleRun, status: str) -> None:
    try:
        registry.check_available()  # a dead server would hold this call in retries for minutes
        run.end(status)
    except (RegistryUnavailableError, MlflowException) as exc:  # the run stays unfinished
        logger.warning("could not mark MLflow run %s %s: %s", run.run_id, status, exc)
