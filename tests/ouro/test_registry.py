"""Model names, and the adapter registry against a real MLflow server and a local store."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ouro.ledger import SegmentPosition, Watermark
from ouro.names import (
    ALIAS_CANDIDATE,
    ALIAS_PRODUCTION,
    BASE_MODEL_NAME,
    SERVED_MODEL_NAME,
    ModelRef,
    UnknownModelError,
    parse_model_name,
    version_label,
)
from ouro.registry import (
    ADAPTER_ARTIFACT_PATH,
    TAG_BASE_MODEL,
    TAG_CORRECTIONS,
    TAG_DATASET_HASH,
    TAG_GATE_RESULTS,
    TAG_GATES_PASSED,
    TAG_WATERMARK,
    AdapterArtifactError,
    AdapterRegistry,
    AdapterVersion,
    CycleOutcome,
    NothingToRollBackError,
    RegistrySnapshot,
    RegistryUnavailableError,
    TrainingCycles,
)
from ouro.settings import OuroSettings
from tests.fixtures.mlflow import free_port

# -- names (no server) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ouro", ModelRef("ouro", alias="production")),
        ("ouro@production", ModelRef("ouro@production", alias="production")),
        ("ouro@candidate", ModelRef("ouro@candidate", alias="candidate")),
        ("ouro@staging_2", ModelRef("ouro@staging_2", alias="staging_2")),
        ("ouro@v7", ModelRef("ouro@v7", version=7)),
        ("ouro@v12345", ModelRef("ouro@v12345", version=12345)),
        ("ouro-base", ModelRef("ouro-base")),
    ],
)
def test_served_model_names_parse(name: str, expected: ModelRef) -> None:
    assert parse_model_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "",
        "gpt-4o",
        "Ouro",
        "ouro ",
        "ouro@",
        "ouro@v0",
        "ouro@v07",
        "ouro@V7",
        "ouro@v1.5",
        "ouro@latest",
        "ouro@has space",
        "ouro@/v1",  # a personal name needs a scope
        "ouro@a/",
        "ouro@production@v1",
        "ouro-base@v1",
        "ouro-adapter",
        "ouro@" + "x" * 256,
    ],
)
def test_other_names_are_refused_with_the_valid_forms_listed(name: str) -> None:
    with pytest.raises(UnknownModelError) as raised:
        parse_model_name(name)
    message = str(raised.value)
    assert repr(name) in message
    for form in ("'ouro'", "'ouro@<alias>'", "'ouro@v<N>'", "'ouro-base'"):
        assert form in message


def test_version_label_parses_back_to_its_version() -> None:
    assert version_label(7) == "ouro@v7"
    assert parse_model_name(version_label(42)).version == 42
    assert (SERVED_MODEL_NAME, BASE_MODEL_NAME) == ("ouro", "ouro-base")


def test_snapshot_resolves_names_to_versions() -> None:
    versions = {n: AdapterVersion(version=n, source=f"s/{n}") for n in (1, 2, 3)}
    snapshot = RegistrySnapshot("m", aliases={"production": 2, "candidate": 3}, versions=versions)
    assert snapshot.resolve(parse_model_name("ouro")) == 2
    assert snapshot.resolve(parse_model_name("ouro@candidate")) == 3
    assert snapshot.resolve(parse_model_name("ouro@v1")) == 1
    assert snapshot.resolve(parse_model_name("ouro-base")) is None
    assert snapshot.latest() == versions[3] and snapshot.production == 2
    with pytest.raises(UnknownModelError):
        snapshot.resolve(parse_model_name("ouro@v9"))
    with pytest.raises(UnknownModelError):
        snapshot.resolve(parse_model_name("ouro@staging"))

    empty = RegistrySnapshot("m")
    assert empty.resolve(parse_model_name("ouro")) is None  # base model until a production
    assert empty.latest() is None
    with pytest.raises(UnknownModelError):
        empty.resolve(parse_model_name("ouro@production"))


def test_version_tags_are_read_through_typed_helpers() -> None:
    mark = Watermark(dt.date(2025, 3, 1), (("replica-a", SegmentPosition(dt.date(2025, 3, 2), 9)),))
    version = AdapterVersion(
        version=4,
        source="s",
        tags={
            TAG_BASE_MODEL: "ouro-tiny",
            TAG_GATES_PASSED: "true",
            TAG_GATE_RESULTS: json.dumps({"fix_rate": 0.9}),
            TAG_CORRECTIONS: "20",
            TAG_WATERMARK: mark.encode(),
            TAG_DATASET_HASH: "abc123",
        },
    )
    assert version.label == "ouro@v4"
    assert version.base_model == "ouro-tiny"
    assert version.gates_passed is True
    assert version.gate_results == {"fix_rate": 0.9}
    assert version.corrections == 20
    assert version.watermark == mark
    assert version.dataset_hash == "abc123"

    bare = AdapterVersion(version=5, source="s", tags={TAG_WATERMARK: "garbage"})
    assert (bare.watermark, bare.gates_passed, bare.corrections, bare.gate_results) == (
        None,
        None,
        None,
        None,
    )


# -- against a real server ------------------------------------------------------------------


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    """A PEFT-style adapter directory (config + weights file)."""
    directory = tmp_path / "adapter-src"
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (directory / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    return directory


def log_adapter(tracking_uri: str, experiment_id: str, directory: Path) -> tuple[str, str]:
    """What the training job does: a run with the adapter logged as artifacts."""
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.create_run(experiment_id)
    client.log_artifacts(run.info.run_id, str(directory), ADAPTER_ARTIFACT_PATH)
    client.set_terminated(run.info.run_id)
    return run.info.run_id, f"{run.info.artifact_uri}/{ADAPTER_ARTIFACT_PATH}"


def register(registry: AdapterRegistry, directory: Path, n_versions: int, **tags) -> list[int]:
    experiment_id = registry.ensure_experiment("ouro-registry-tests")
    versions = []
    for _ in range(n_versions):
        run_id, uri = log_adapter(registry.tracking_uri, experiment_id, directory)
        versions.append(registry.register_adapter(run_id, uri, tags))
    return versions


@pytest.mark.integration
def test_registered_versions_and_aliases_appear_in_the_snapshot(
    mlflow_server: str, mlflow_model_name: str, adapter_dir: Path
) -> None:
    registry = AdapterRegistry(mlflow_server, mlflow_model_name)
    assert registry.snapshot() == RegistrySnapshot(mlflow_model_name)

    mark = Watermark(
        dt.date(2025, 3, 1), (("replica-a", SegmentPosition(dt.date(2025, 3, 2), 77)),)
    )
    tags = {TAG_BASE_MODEL: "ouro-tiny", TAG_WATERMARK: mark.encode(), TAG_CORRECTIONS: "3"}
    v1, v2 = register(registry, adapter_dir, 2, **tags)
    assert (v1, v2) == (1, 2)
    registry.set_alias(ALIAS_PRODUCTION, v1)
    registry.set_alias(ALIAS_CANDIDATE, v2)

    snapshot = registry.snapshot()
    assert snapshot.aliases == {"production": 1, "candidate": 2}
    assert sorted(snapshot.versions) == [1, 2]
    assert snapshot.versions[1].aliases == ("production",)
    assert snapshot.versions[2].aliases == ("candidate",)
    assert snapshot.versions[2].watermark == mark
    assert snapshot.versions[2].corrections == 3
    assert snapshot.versions[2].run_id and snapshot.versions[2].source.endswith("/adapter")
    assert snapshot.latest().version == 2
    assert snapshot.resolve(parse_model_name("ouro")) == 1
    assert snapshot.resolve(parse_model_name("ouro@candidate")) == 2
    assert registry.get_version(2).tags[TAG_BASE_MODEL] == "ouro-tiny"
    with pytest.raises(UnknownModelError):
        registry.get_version(3)
    with pytest.raises(UnknownModelError):
        registry.set_alias(ALIAS_PRODUCTION, 3)
    with pytest.raises(ValueError):
        registry.set_alias("v2", 1)  # MLflow reserves v<N> for versions


@pytest.mark.integration
def test_rollback_walks_back_through_promotions_to_the_base_model(
    mlflow_server: str, mlflow_model_name: str, adapter_dir: Path
) -> None:
    registry = AdapterRegistry(mlflow_server, mlflow_model_name)
    v1, v2, v3 = register(registry, adapter_dir, 3)
    for version in (v1, v2, v3):
        registry.set_alias(ALIAS_PRODUCTION, version)
    assert registry.alias_history(ALIAS_PRODUCTION) == [None, 1, 2, 3]

    assert registry.rollback() == v2
    assert registry.alias_version(ALIAS_PRODUCTION) == v2
    assert registry.rollback() == v1
    assert registry.rollback() is None  # before the first promotion: the base model
    assert registry.alias_version(ALIAS_PRODUCTION) is None
    assert registry.snapshot().resolve(parse_model_name("ouro")) is None
    with pytest.raises(NothingToRollBackError):
        registry.rollback()

    # Promote again, then someone moves the alias by hand in the MLflow UI.
    registry.set_alias(ALIAS_PRODUCTION, v1)
    MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server).set_registered_model_alias(
        mlflow_model_name, ALIAS_PRODUCTION, str(v3)
    )
    assert registry.rollback() == v1  # undoes the hand-made move
    registry.set_alias(ALIAS_PRODUCTION, v2)
    assert registry.rollback() == v1
    # Other aliases keep their own history.
    registry.set_alias(ALIAS_CANDIDATE, v3)
    assert registry.rollback(ALIAS_CANDIDATE) is None
    assert registry.alias_version(ALIAS_PRODUCTION) == v1


@pytest.mark.integration
def test_rollback_skips_versions_deleted_since(
    mlflow_server: str, mlflow_model_name: str, adapter_dir: Path
) -> None:
    registry = AdapterRegistry(mlflow_server, mlflow_model_name)
    v1, v2, v3 = register(registry, adapter_dir, 3)
    for version in (v1, v2, v3):
        registry.set_alias(ALIAS_PRODUCTION, version)
    MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server).delete_model_version(
        mlflow_model_name, str(v2)
    )
    assert registry.rollback() == v1


@pytest.mark.integration
def test_download_is_atomic_and_cached_per_version(
    mlflow_server: str, mlflow_model_name: str, adapter_dir: Path, tmp_path: Path
) -> None:
    registry = AdapterRegistry(mlflow_server, mlflow_model_name)
    (version,) = register(registry, adapter_dir, 1)
    cache = tmp_path / "adapters"

    with ThreadPoolExecutor(max_workers=4) as pool:  # concurrent first loads collapse
        paths = list(pool.map(lambda _: registry.download(version, cache), range(4)))
    assert set(paths) == {cache / f"v{version}"}
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (paths[0] / name).read_bytes() == (adapter_dir / name).read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == [f"v{version}"]  # no staging left

    # A cache hit needs no registry: even one that is down serves the cached directory.
    offline = AdapterRegistry(f"http://127.0.0.1:{free_port()}", mlflow_model_name)
    assert offline.download(version, cache) == paths[0]
    with pytest.raises(RegistryUnavailableError):
        offline.download(version + 1, cache)
    with pytest.raises(UnknownModelError):
        registry.download(version + 1, cache)
    assert sorted(p.name for p in cache.iterdir()) == [f"v{version}"]


@pytest.mark.integration
def test_a_version_without_an_adapter_config_is_refused(
    mlflow_server: str, mlflow_model_name: str, tmp_path: Path
) -> None:
    not_an_adapter = tmp_path / "notes"
    not_an_adapter.mkdir()
    (not_an_adapter / "README.md").write_text("no adapter here")
    registry = AdapterRegistry(mlflow_server, mlflow_model_name)
    (version,) = register(registry, not_an_adapter, 1)
    cache = tmp_path / "adapters"
    with pytest.raises(AdapterArtifactError):
        registry.download(version, cache)
    assert list(cache.iterdir()) == []


@pytest.mark.integration
def test_local_sqlite_store_keeps_artifacts_in_the_data_dir(
    tmp_path: Path, adapter_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    settings = OuroSettings(data_dir=tmp_path / "data")
    registry = AdapterRegistry.from_settings(settings)
    assert registry.model_name == "ouro-adapter"

    experiment_id = registry.ensure_experiment("ouro-training")
    assert registry.ensure_experiment("ouro-training") == experiment_id
    location = MlflowClient(tracking_uri=settings.tracking_uri).get_experiment(experiment_id)
    assert location.artifact_location == settings.local_artifacts_dir.resolve().as_uri()

    (version,) = register(registry, adapter_dir, 1, **{TAG_GATES_PASSED: "true"})
    registry.set_alias(ALIAS_PRODUCTION, version)
    downloaded = registry.download(version, settings.adapter_cache_dir)
    assert (downloaded / "adapter_config.json").is_file()
    assert registry.snapshot().versions[version].gates_passed is True
    assert list(settings.local_artifacts_dir.rglob("adapter_config.json"))
    assert list(workdir.iterdir()) == []  # no ./mlruns


@pytest.mark.integration
def test_an_unreachable_registry_fails_fast(tmp_path: Path) -> None:
    env_before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_HTTP")}
    closed = AdapterRegistry(f"http://127.0.0.1:{free_port()}", timeout_s=2.0)

    # A listener that accepts connections and never answers: a hung server.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        silent = AdapterRegistry(f"http://127.0.0.1:{hung.getsockname()[1]}", timeout_s=2.0)
        for registry in (closed, silent):
            for call in (
                registry.snapshot,
                lambda r=registry: r.set_alias(ALIAS_PRODUCTION, 1),
                lambda r=registry: r.download(1, tmp_path),
                lambda r=registry: r.ensure_experiment("x"),
            ):
                started = time.monotonic()
                with pytest.raises(RegistryUnavailableError):
                    call()
                # MLflow's own retries would take minutes; this must not.
                assert time.monotonic() - started < 30
    # Other MLflow users in the process keep MLflow's retry settings.
    assert {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_HTTP")} == env_before


def test_training_cycles_count_failures_in_a_row_until_one_registers() -> None:
    cycles = TrainingCycles()
    cycles = cycles.after(CycleOutcome.GATES_FAILED, 10.0)
    cycles = cycles.after(CycleOutcome.NOTHING_TO_DO, 20.0)  # changes no count
    cycles = cycles.after(CycleOutcome.FAILED, 30.0)
    assert cycles.consecutive_failed == 2
    assert cycles.last_at == {"gates_failed": 10.0, "nothing_to_do": 20.0, "failed": 30.0}
    assert TrainingCycles.decode(cycles.encode()) == cycles
    registered = cycles.after(CycleOutcome.REGISTERED, 40.0)
    assert registered.consecutive_failed == 0
    assert TrainingCycles.decode("not json") == TrainingCycles()


@pytest.mark.integration
def test_cycles_recorded_on_the_registered_model_appear_in_the_snapshot(
    mlflow_server: str, mlflow_model_name: str
) -> None:
    registry = AdapterRegistry(mlflow_server, mlflow_model_name)
    registry.record_cycle(CycleOutcome.GATES_FAILED, at=100.0)  # creates the model
    registry.record_cycle(CycleOutcome.GATES_FAILED, at=200.0)
    cycles = registry.snapshot().cycles
    assert cycles.consecutive_failed == 2
    assert cycles.last_at == {"gates_failed": 200.0}
