"""Locust, headless, runs the project's locustfile against a real Serve app.

Locust runs as its own process (it monkey-patches the standard library with gevent on
import, which must not happen inside the test process), for a few seconds with a few
users, and its CSV must show the custom TTFT / ITL / TPS rows and no failure.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ouro.corpus import load_chatterbot_conversations
from ouro.ledger import LedgerReader
from tests.conftest import REPO_ROOT
from tests.fixtures.serve import ServeStack

LOCUSTFILE = REPO_ROOT / "loadtests" / "locustfile.py"
API_KEY = "sk-locust-" + "d" * 24
FEEDBACK_REASON = "locust load test"  # what the locustfile writes in every correction
RUN_GRACE_S = 180  # Locust's start-up and its users' last requests, on two shared cores


def run_locust(
    host: str, csv_prefix: Path, *options: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--users",
        "4",
        "--spawn-rate",
        "4",
        "--stop-timeout",
        "60",
        "--host",
        host,
        "--csv",
        str(csv_prefix),
        "--only-summary",
        "--ouro-max-tokens",
        "12",
        *options,
    ]
    return subprocess.run(
        command,
        cwd=REPO_ROOT,  # the locustfile imports ouro from the working directory
        env={**os.environ, "OURO_API_KEY": API_KEY, **(env or {})},
        capture_output=True,
        text=True,
        timeout=RUN_GRACE_S,
    )


def stats_rows(csv_prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    """Locust's ``*_stats.csv`` keyed by (Type, Name)."""
    with Path(f"{csv_prefix}_stats.csv").open(newline="", encoding="utf-8") as handle:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(handle)}


def assert_no_failures(result: subprocess.CompletedProcess, csv_prefix: Path) -> None:
    assert result.returncode == 0, result.stderr[-4000:]
    with Path(f"{csv_prefix}_failures.csv").open(newline="", encoding="utf-8") as handle:
        assert list(csv.DictReader(handle)) == []
    assert stats_rows(csv_prefix)[("", "Aggregated")]["Failure Count"] == "0"


@pytest.fixture(scope="module")
def stack(serve_stack_factory, mlflow_server: str, tiny_random_model_dir: Path) -> ServeStack:
    return serve_stack_factory(
        {
            "base_model": str(tiny_random_model_dir),
            "mlflow_tracking_uri": mlflow_server,
            "registered_model_name": f"ouro-locust-{uuid.uuid4().hex[:8]}",
            "api_keys": [API_KEY],
        }
    )


@pytest.mark.integration
def test_chat_scenarios_report_time_to_first_token_inter_token_latency_and_tokens_per_second(
    stack: ServeStack, tmp_path: Path
) -> None:
    prefix = tmp_path / "locust"
    result = run_locust(stack.base_url, prefix, "--run-time", "10s", "--tags", "stream", "chat")

    assert_no_failures(result, prefix)
    rows = stats_rows(prefix)
    for key in [
        ("POST", "/v1/chat/completions (stream)"),
        ("POST", "/v1/chat/completions"),
        ("TTFT", "/v1/chat/completions"),
        ("ITL", "/v1/chat/completions"),
        ("TPS", "/v1/chat/completions (stream)"),
        ("TPS", "/v1/chat/completions"),
    ]:
        assert key in rows, f"no {key} row in {sorted(rows)}"
        assert int(rows[key]["Request Count"]) > 0, rows[key]
        assert rows[key]["Failure Count"] == "0", rows[key]
        assert float(rows[key]["Average Response Time"]) > 0, rows[key]
    # At most one TTFT per streamed answer (none for an empty one); an ITL sample per gap
    # between content chunks: the first token goes at once, the rest coalesced per
    # stream_interval_s, so every answer of two or more chunks gives one or more. An answer
    # that is one chunk (one token, or a first token held back as a possible stop string)
    # gives none, so the count is not bounded below by the answers.
    streams = int(rows[("POST", "/v1/chat/completions (stream)")]["Request Count"])
    first_tokens = int(rows[("TTFT", "/v1/chat/completions")]["Request Count"])
    assert 0 < first_tokens <= streams
    assert int(rows[("ITL", "/v1/chat/completions")]["Request Count"]) > first_tokens // 2
    assert ("POST", "/v1/feedback") not in rows  # not selected by the tags


@pytest.mark.integration
def test_feedback_scenario_posts_the_data_answers_as_corrections(
    stack: ServeStack, tmp_path: Path
) -> None:
    # A chat JSONL of the kind `python -m data build` writes, with a system turn.
    conversations = [c for c in load_chatterbot_conversations() if len(c) >= 4][:20]
    conversations[0] = [{"role": "system", "content": "Be brief."}, *conversations[0]]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    prefix = tmp_path / "locust"

    result = run_locust(
        stack.base_url,
        prefix,
        "--run-time",
        "6s",
        "--tags",
        "feedback",
        "--json-file",
        str(prefix),
        env={"OURO_LOADTEST_DATA": str(data)},
    )

    assert_no_failures(result, prefix)
    # Counted from the JSON summary: it is written after the users' last requests,
    # while the CSV is refreshed once a second and can miss the final one.
    entries = json.loads(Path(f"{prefix}.json").read_text())
    posted = sum(e["num_requests"] for e in entries if e["name"] == "/v1/feedback")
    assert posted > 0
    records = [
        r
        for r in LedgerReader(stack.settings.ledger_dir).scan().records
        if r.reason == FEEDBACK_REASON
    ]
    assert len(records) == posted
    for record in records:
        # The question is a real conversation cut at a user turn; the correction is the
        # answer that conversation gives next.
        messages = record.message_dicts()
        assert messages[-1]["role"] == "user"
        source = next(c for c in conversations if c[: len(messages)] == messages)
        assert record.correction == source[len(messages)]["content"]
        assert record.model == "ouro-base"
        assert record.completion_id


def test_unusable_data_stops_locust_at_start_with_the_line_named(tmp_path: Path) -> None:
    data = tmp_path / "broken.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n{oops\n")
    result = run_locust(
        "http://127.0.0.1:9",  # never reached: Locust stops before any user starts
        tmp_path / "locust",
        "--run-time",
        "1s",
        env={"OURO_LOADTEST_DATA": str(data)},
    )
    assert result.returncode != 0
    assert f"LoadTestDataError: {data}:2: not JSON" in result.stderr
