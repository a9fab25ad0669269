"""Scenario "Locust at the knee": the project's locustfile, headless, for a few minutes.

Runs ``locust --headless`` as a subprocess with ``loadtests/locustfile.py`` (all its
tags: streamed and plain chat, and corrections, which land in the run's throw-away
ledger) at the knee's number of users, and reads its CSV statistics.
``locust_failures`` is the failure count of Locust's "Aggregated" row.
"""

from __future__ import annotations

import csv
import logging
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from loadtests.bench_stack import REPO_ROOT, ServeProcess, offline_env
from ouro.errors import OuroError

logger = logging.getLogger(__name__)

LOCUSTFILE = REPO_ROOT / "loadtests" / "locustfile.py"
AGGREGATED = "Aggregated"
GRACE_S = 120.0
"""Beyond the run time: Locust's start-up and its users' last requests."""


class LocustRunError(OuroError):
    """Locust did not run to the end or wrote no statistics."""


def locust_command(host: str, users: int, duration_s: int, csv_prefix: Path) -> list[str]:
    executable = shutil.which("locust", path=str(Path(sys.executable).parent)) or "locust"
    return [
        executable,
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        f"{duration_s}s",
        "--stop-timeout",
        "60",
        "--host",
        host,
        "--csv",
        str(csv_prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]


def read_stats(stats_csv: Path) -> list[dict[str, str]]:
    with stats_csv.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _number(row: dict[str, str], column: str) -> float | None:
    value = row.get(column, "")
    try:
        return float(value)
    except ValueError:
        return None  # Locust writes "N/A" for empty percentiles


def summarise_rows(rows: list[dict[str, str]]) -> dict:
    """Per-row counts and percentiles, keyed by "Type Name"."""
    table = {}
    for row in rows:
        key = f"{row.get('Type', '')} {row['Name']}".strip()
        table[key] = {
            "requests": int(_number(row, "Request Count") or 0),
            "failures": int(_number(row, "Failure Count") or 0),
            "requests_per_s": _number(row, "Requests/s"),
            "p50": _number(row, "50%"),
            "p99": _number(row, "99%"),
            "average": _number(row, "Average Response Time"),
        }
    return table


def run_locust(
    stack: ServeProcess, users: int, duration_s: int, out_dir: Path, max_tokens: int
) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / "locust"
    env = offline_env(
        {
            "OURO_API_KEY": stack.client_key,
            "OURO_LOADTEST_MAX_TOKENS": str(max_tokens),
            "PYTHONPATH": str(REPO_ROOT),  # the locustfile imports ouro
        }
    )
    command = locust_command(stack.base_url, users, duration_s, prefix)
    log_path = out_dir / "locust.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            returncode = process.wait(timeout=duration_s + GRACE_S)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)  # Locust writes its CSV on the way out
            returncode = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    stats_csv = prefix.with_name(prefix.name + "_stats.csv")
    if not stats_csv.is_file():
        raise LocustRunError(
            f"locust exited {returncode} without {stats_csv.name}:\n"
            + log_path.read_text(errors="replace")[-3000:]
        )
    rows = summarise_rows(read_stats(stats_csv))
    aggregated = rows.get(AGGREGATED, {"requests": 0, "failures": 0})
    logger.info(
        "locust: %d users for %d s: %d requests and events, %d failures (exit %s)",
        users,
        duration_s,
        aggregated["requests"],
        aggregated["failures"],
        returncode,
    )
    return {
        "users": users,
        "duration_s": duration_s,
        "max_tokens": max_tokens,
        "exit_code": returncode,
        "failures": aggregated["failures"],
        "rows": rows,
        "command": "locust -f loadtests/locustfile.py --headless "
        f"--users {users} --spawn-rate {users} --run-time {duration_s}s --host <stack> --csv ...",
    }
