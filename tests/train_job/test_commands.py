"""status / promote / rollback against a real MLflow server, and the best-effort notify."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ouro.ledger import LedgerReader
from ouro.names import ALIAS_CANDIDATE, ALIAS_PRODUCTION
from ouro.registry import ADAPTER_ARTIFACT_PATH, TAG_WATERMARK, AdapterRegistry
from ouro.rollout import Rollout, rollout_record
from tests.fixtures.train_job import CORRECTION_PAIRS, seed_ledger, seed_ratings
from train_job.cli import main
from train_job.register import version_tags

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(mlflow_server: str, mlflow_model_name: str) -> AdapterRegistry:
    return AdapterRegistry(mlflow_server, mlflow_model_name)


@pytest.fixture
def register(
    registry: AdapterRegistry,
    tiny_random_model_dir: Path,
    make_lora_adapter: Callable[[Path, int], Path],
) -> Callable[..., int]:
    """Register a real adapter directory as a version, as the training job does."""
    client = MlflowClient(registry.tracking_uri)
    experiment_id = registry.ensure_experiment(f"test-commands-{registry.model_name}")

    def make(seed: int, *, gates_passed: bool, watermark: str | None = None) -> int:
        run = client.create_run(experiment_id)
        client.log_artifacts(
            run.info.run_id,
            str(make_lora_adapter(tiny_random_model_dir, seed)),
            ADAPTER_ARTIFACT_PATH,
        )
        client.set_terminated(run.info.run_id)
        tags = version_tags(
            base_model="tiny",
            corrections=seed,
            dataset_hash=f"hash{seed}",
            gates_passed=gates_passed,
            gate_results=json.dumps([{"name": "fix_rate", "value": 0.9, "passed": gates_passed}]),
        )
        if watermark is not None:
            tags[TAG_WATERMARK] = watermark
        return registry.register_adapter(
            run.info.run_id, f"{run.info.artifact_uri}/{ADAPTER_ARTIFACT_PATH}", tags
        )

    return make


def cli(registry: AdapterRegistry, data_dir: Path, *args: str) -> int:
    return main(
        [
            args[0],
            "--data-dir",
            str(data_dir),
            "--mlflow-uri",
            registry.tracking_uri,
            "--registered-model-name",
            registry.model_name,
            *args[1:],
        ]
    )


def test_status_lists_versions_aliases_gates_and_pending_corrections(
    registry: AdapterRegistry,
    register: Callable[..., int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    ledger = tmp_path / "feedback"
    seed_ledger(ledger, CORRECTION_PAIRS[:4])
    trained_up_to = LedgerReader(ledger).scan().watermark.encode()
    seed_ledger(ledger, CORRECTION_PAIRS[4:7], writer_id="later")
    seed_ratings(ledger, CORRECTION_PAIRS[:5])  # ratings: neither in the ledger's count nor pending
    first = register(1, gates_passed=True, watermark=trained_up_to)
    registry.set_alias(ALIAS_CANDIDATE, first)
    registry.set_alias(ALIAS_PRODUCTION, first)
    capsys.readouterr()  # MLflow prints a link when a run ends

    assert cli(registry, tmp_path, "status", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["aliases"] == {ALIAS_CANDIDATE: first, ALIAS_PRODUCTION: first}
    (version,) = info["versions"]
    assert version["version"] == first and version["gates_passed"] is True
    assert sorted(version["aliases"]) == [ALIAS_CANDIDATE, ALIAS_PRODUCTION]
    assert version["gate_results"][0]["name"] == "fix_rate"
    assert info["corrections"] == {"in_ledger": 7, "pending": 3, "since_version": first}

    assert cli(registry, tmp_path, "status") == 0
    text = capsys.readouterr().out
    assert f"production -> v{first}" in text
    assert "3 pending since v1 (7 in the ledger)" in text


def test_status_of_an_empty_registry(
    registry: AdapterRegistry, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert cli(registry, tmp_path, "status") == 0
    assert "no versions registered yet" in capsys.readouterr().out


def test_promote_refuses_a_version_that_failed_its_gates_unless_forced(
    registry: AdapterRegistry,
    register: Callable[..., int],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = register(1, gates_passed=True)
    bad = register(2, gates_passed=False)

    assert cli(registry, tmp_path, "promote", str(good)) == 0
    assert registry.alias_version(ALIAS_PRODUCTION) == good

    assert cli(registry, tmp_path, "promote", f"v{bad}") == 3
    assert "failed its gates" in caplog.text
    assert registry.alias_version(ALIAS_PRODUCTION) == good  # unchanged

    assert cli(registry, tmp_path, "promote", str(bad), "--force", "--alias", "canary") == 0
    assert registry.alias_version("canary") == bad

    assert cli(registry, tmp_path, "promote", "99") == 2  # no such version


def test_rollback_moves_production_back(
    registry: AdapterRegistry,
    register: Callable[..., int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    first = register(1, gates_passed=True)
    second = register(2, gates_passed=True)
    assert cli(registry, tmp_path, "promote", str(first)) == 0
    assert cli(registry, tmp_path, "promote", str(second)) == 0
    capsys.readouterr()

    assert cli(registry, tmp_path, "rollback") == 0
    assert capsys.readouterr().out.strip() == f"production -> v{first}"
    assert registry.alias_version(ALIAS_PRODUCTION) == first

    assert cli(registry, tmp_path, "rollback") == 0  # before v1 there was none: base model
    assert "unset (base model)" in capsys.readouterr().out
    assert registry.alias_version(ALIAS_PRODUCTION) is None

    assert cli(registry, tmp_path, "rollback") == 1  # nothing left to go back to


class _RecordingHandler(BaseHTTPRequestHandler):
    requests: list[tuple[str, str | None]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        type(self).requests.append((self.path, self.headers.get("Authorization")))
        body = b'{"aliases": {"production": 1}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def admin_endpoint() -> Iterator[str]:
    """A local HTTP server standing in for Serve's admin endpoint; records what it gets."""
    _RecordingHandler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_promote_notifies_serve_with_the_admin_key(
    registry: AdapterRegistry,
    register: Callable[..., int],
    tmp_path: Path,
    admin_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OURO_ADMIN_API_KEY", "admin-secret")
    version = register(1, gates_passed=True)
    assert cli(registry, tmp_path, "promote", str(version), "--notify-url", admin_endpoint) == 0
    ((path, authorization),) = _RecordingHandler.requests
    assert path.startswith("/admin/registry/refresh")
    assert authorization == "Bearer admin-secret"


def test_notify_is_best_effort(
    registry: AdapterRegistry,
    register: Callable[..., int],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    version = register(1, gates_passed=True)
    nobody = "http://127.0.0.1:9"  # discard port: nothing listens
    assert cli(registry, tmp_path, "promote", str(version), "--notify-url", nobody) == 0
    assert registry.alias_version(ALIAS_PRODUCTION) == version
    assert "could not notify Serve" in caplog.text


def test_commands_fail_fast_when_mlflow_is_unreachable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = AdapterRegistry("http://127.0.0.1:9", "ouro-adapter", timeout_s=2)
    assert cli(dead, tmp_path, "status") == 4
    assert cli(dead, tmp_path, "rollback") == 4
    assert "unreachable" in caplog.text


def test_an_operator_watches_pauses_and_ends_a_canary(
    registry: AdapterRegistry,
    register: Callable[..., int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    production = register(1, gates_passed=True)
    canary = register(2, gates_passed=True)
    assert cli(registry, tmp_path, "promote", str(production)) == 0
    assert cli(registry, tmp_path, "canary", "status") == 0
    assert "no canary running" in capsys.readouterr().out
    assert cli(registry, tmp_path, "canary", "abort") == 1  # nothing to abort

    Rollout(registry).start(canary)
    assert cli(registry, tmp_path, "canary", "pause") == 0
    capsys.readouterr()
    assert cli(registry, tmp_path, "canary", "status") == 0
    status = capsys.readouterr().out
    assert f"canary ouro@v{canary} against ouro@v{production}: 10% of 'ouro'" in status
    assert "PAUSED" in status and "now: continue (paused by an operator)" in status
    assert cli(registry, tmp_path, "canary", "status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["paused"] is True

    assert cli(registry, tmp_path, "canary", "abort", "--reason", "billing answers") == 0
    snapshot = registry.snapshot()
    assert "canary" not in snapshot.aliases and snapshot.production == production
    record = rollout_record(snapshot.versions[canary].tags)
    assert (record.decision, record.reason) == ("rollback", "billing answers")
    assert record.by.startswith("operator")

    Rollout(registry).start(canary)
    assert cli(registry, tmp_path, "canary", "promote") == 0
    assert registry.alias_version(ALIAS_PRODUCTION) == canary
    assert rollout_record(registry.snapshot().versions[canary].tags).decision == "promote"
