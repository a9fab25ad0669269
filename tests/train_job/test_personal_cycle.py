"""Personal adapters at the training-job level: per-scope cycles, registry, rollback, forget.

A real MLflow server and the small ouro-tiny model, with ``OURO_PERSONAL_ADAPTERS=true``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ouro.ledger import FeedbackLedger, LedgerReader
from ouro.names import ALIAS_PRODUCTION
from ouro.registry import AdapterRegistry, PersonalRegistries
from tests.fixtures.train_job import CORRECTION_PAIRS, TINY_CONFIG_FILE
from train_job.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ALICE = CORRECTION_PAIRS[:8]
BOB = CORRECTION_PAIRS[8:16]
# The same question, corrected differently by each.
CONFLICT = "What is the best colour?"
ALICE_ANSWER = "The best colour is green."
BOB_ANSWER = "The best colour is orange."


def seed(ledger_dir: Path, scope: str, pairs, writer: str = "replica-a") -> list[str]:
    ledger = FeedbackLedger(ledger_dir, writer, max_record_bytes=64_000, max_field_chars=4_000)
    with ledger:
        return [
            ledger.append(
                messages=[{"role": "user", "content": question}],
                completion="I do not know.",
                correction=answer,
                scope=scope,
            ).id
            for question, answer in pairs
        ]


@pytest.fixture
def personal_job(
    tmp_path: Path,
    mlflow_server: str,
    mlflow_model_name: str,
    ouro_tiny_small_dir: Path,
    small_model_chat_jsonl: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("OURO_PERSONAL_ADAPTERS", "true")
    registry_args = [
        "--data-dir",
        str(tmp_path),
        "--mlflow-uri",
        mlflow_server,
        "--registered-model-name",
        mlflow_model_name,
    ]
    run_args = [
        "run",
        *registry_args,
        "--config",  # ouro-tiny's recipe; the defaults suit smollm2-135m
        str(TINY_CONFIG_FILE),
        "--replay-source",
        str(small_model_chat_jsonl),
        "--regression-source",
        str(small_model_chat_jsonl),
        "--experiment-name",
        f"test-{mlflow_model_name}",
        "--base-model",
        str(ouro_tiny_small_dir),
        "--auto-promote",
        "--json",
    ]
    return run_args, registry_args, PersonalRegistries(mlflow_server, mlflow_model_name)


def run_json(run_args: list[str], capsys: pytest.CaptureFixture) -> dict:
    code = main(run_args)
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def manifest_ids(tracking_uri: str, run_id: str) -> set[str]:
    client = MlflowClient(tracking_uri)
    path = client.download_artifacts(run_id, "dataset_manifest.json")
    manifest = json.loads(Path(path).read_text())
    return set(manifest["train_correction_ids"]) | set(manifest["held_out_correction_ids"])


def test_per_scope_cycles_rollback_of_one_scope_and_forget(
    personal_job, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_args, registry_args, personal = personal_job
    ledger_dir = tmp_path / "feedback"
    alice_ids = seed(ledger_dir, "alice", [*ALICE, (CONFLICT, ALICE_ANSWER)])
    bob_ids = seed(ledger_dir, "bob", [*BOB, (CONFLICT, BOB_ANSWER)])

    # One cycle: nothing is shared (no admin key, no mark, no consensus), two personal adapters.
    first = run_json(run_args, capsys)
    assert first["outcome"] == "nothing_to_do"
    by_scope = {result["scope"]: result for result in first["personal"]}
    assert set(by_scope) == {"alice", "bob"}
    assert all(r["outcome"] == "registered" and r["version"] == 1 for r in by_scope.values())
    alice, bob = personal.for_scope("alice"), personal.for_scope("bob")
    # Each trained on its own corrections only: a scope never sees another's.
    assert manifest_ids(personal.tracking_uri, by_scope["alice"]["run_id"]) <= set(alice_ids)
    assert manifest_ids(personal.tracking_uri, by_scope["bob"]["run_id"]) <= set(bob_ids)
    assert personal.production_by_scope() == {
        "alice": {"candidate": 1, ALIAS_PRODUCTION: 1},
        "bob": {"candidate": 1, ALIAS_PRODUCTION: 1},
    }
    shared = AdapterRegistry(personal.tracking_uri, personal.shared_model_name)
    assert shared.snapshot().versions == {}

    # status --scope: the scope's own model; scopes lists both.
    assert main(["status", *registry_args, "--scope", "alice", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["scope"] == "alice" and status["registered_model"] == alice.model_name
    assert status["aliases"][ALIAS_PRODUCTION] == 1
    assert status["corrections"] == {"in_ledger": 9, "pending": 0, "since_version": 1}
    assert main(["scopes", *registry_args]) == 0
    assert "alice: candidate -> v1, production -> v1" in capsys.readouterr().out

    # Rolling alice back leaves bob where he was (alice had no production before v1).
    assert main(["rollback", *registry_args, "--scope", "alice"]) == 0
    assert capsys.readouterr().out.strip() == "production -> unset (base model)"
    assert alice.alias_version(ALIAS_PRODUCTION) is None
    assert bob.alias_version(ALIAS_PRODUCTION) == 1
    assert personal.production_by_scope()["bob"][ALIAS_PRODUCTION] == 1
    assert main(["promote", *registry_args, "--scope", "alice", "1"]) == 0
    assert alice.alias_version(ALIAS_PRODUCTION) == 1

    # Forget alice: tombstone, registry versions and run artifacts gone; bob untouched.
    alice_runs = [by_scope["alice"]["run_id"]]
    assert main(["forget", *registry_args, "alice", "--reason", "asked"]) == 0
    out = capsys.readouterr().out
    assert "9 correction(s) hidden" in out and "deleted 1 registered model(s) and 1 run(s)" in out
    assert set(personal.production_by_scope()) == {"bob"}
    assert alice.snapshot().versions == {}
    client = MlflowClient(personal.tracking_uri)
    for run_id in alice_runs:
        assert client.get_run(run_id).info.lifecycle_stage == "deleted"
        assert client.list_artifacts(run_id) == []
    with pytest.raises(MlflowException):
        client.get_registered_model(alice.model_name)
    assert {r.scope for r in LedgerReader(ledger_dir).scan().records} == {"bob"}
    assert bob.alias_version(ALIAS_PRODUCTION) == 1

    # The next cycle trains no set on alice's corrections, and forgetting twice is harmless.
    bob_ids += seed(ledger_dir, "bob", [CORRECTION_PAIRS[17]])
    third = run_json(run_args, capsys)
    assert [(r["scope"], r["version"]) for r in third["personal"]] == [("bob", 2)]
    trained = manifest_ids(personal.tracking_uri, third["personal"][0]["run_id"])
    assert trained <= set(bob_ids) and not trained & set(alice_ids)
    assert main(["forget", *registry_args, "alice"]) == 0
    assert "0 correction(s) hidden" in capsys.readouterr().out


def test_share_marks_a_correction_and_refuses_unknown_ids(
    personal_job, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _run_args, registry_args, _personal = personal_job
    (record_id,) = seed(tmp_path / "feedback", "alice", ALICE[:1])
    assert main(["share", *registry_args, record_id, "--reason", "true for everyone"]) == 0
    assert "marked shared" in capsys.readouterr().out
    assert LedgerReader(tmp_path / "feedback").control().shared_ids == {record_id}
    assert main(["share", *registry_args, "fb-" + "0" * 32]) == 2
    with pytest.raises(SystemExit) as raised:  # argparse: usage error
        main(["status", *registry_args, "--scope", "alice/../bob"])
    assert raised.value.code == 2
