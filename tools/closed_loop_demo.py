"""``make demo``: one closed-loop training cycle on a real chat model, measured.

Seeds a fresh feedback ledger with N corrections (the opening exchange of DailyDialog
dialogues: a line and its reply, a correction the model cannot guess), runs ``python -m
train_job run --json`` as a subprocess (process start included in the time), then reads
the cycle's gate report from MLflow and scores it with token F1 (ouro.scoring.token_f1):

- fix rate: trained corrections whose new answer has token F1 >= 0.8 with the correction;
- held-out generalisation: the same on the corrections kept out of training;
- unchanged: probe prompts (general questions never trained on) whose new answer has
  token F1 >= 0.8 with the production (here: base model's) answer before the cycle.

The model cache in ``<work-dir>/data/models`` is kept between runs (the first run converts
the model and generates the replay answers once); the ledger and MLflow store are fresh.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from data.cleaning import clean_text
from data.sources.dailydialog import read_dailydialog
from ouro.ledger import FeedbackLedger
from ouro.scoring import repeats_a_phrase, token_f1
from ouro.settings import DEFAULT_BASE_MODEL, OuroSettings

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
MATCH_F1 = 0.8
"""Token F1 at or above which two answers count as the same (the issue's targets)."""


def correction_pairs(dailydialog: Path, count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` (line, reply) openings of DailyDialog dialogues, short ones, seeded.

    Cleaned as the data pipeline cleans them: DailyDialog is tokenised (``Jim , now ?``),
    which no user types, and an adapter trained on it spaces its other answers that way.
    """
    pairs = []
    for conversation in read_dailydialog(dailydialog).conversations:
        messages = [clean_text(message["content"]) for message in conversation.messages[:2]]
        if len(messages) == 2 and all(3 <= len(text.split()) <= 25 for text in messages):
            pairs.append((messages[0], messages[1]))
    random.Random(seed).shuffle(pairs)
    return pairs[:count]


def seed_ledger(ledger_dir: Path, pairs: list[tuple[str, str]]) -> None:
    ledger = FeedbackLedger(ledger_dir, "demo", max_record_bytes=256_000, max_field_chars=32_000)
    try:
        for question, answer in pairs:
            ledger.append(
                messages=[{"role": "user", "content": question}],
                completion="(the model's answer)",
                correction=answer,
                model="ouro-base",
            )
    finally:
        ledger.close()


def score(report: dict) -> dict:
    """Token-F1 rates of the gate report's answers."""
    trained = [a for a in report["answers"] if a["split"] == "train"]
    held_out = [a for a in report["answers"] if a["split"] == "held_out"]
    probes = report["probes"]

    def rate(flags: list[bool]) -> float | None:
        return round(sum(flags) / len(flags), 3) if flags else None

    return {
        "fix_rate": rate([token_f1(a["answer"], a["correction"]) >= MATCH_F1 for a in trained]),
        "held_out_fix_rate": rate(
            [token_f1(a["answer"], a["correction"]) >= MATCH_F1 for a in held_out]
        ),
        "held_out_mean_f1": rate([token_f1(a["answer"], a["correction"]) for a in held_out]),
        "held_out_baseline_mean_f1": rate(
            [token_f1(a["baseline_answer"], a["correction"]) for a in held_out]
        ),
        "unchanged": rate(
            [token_f1(p["answer"], p["baseline_answer"]) >= MATCH_F1 for p in probes]
        ),
        "degenerate": sum(repeats_a_phrase(a["answer"]) for a in report["answers"])
        + sum(repeats_a_phrase(p["answer"]) for p in probes),
        "corrections": len(trained),
        "held_out": len(held_out),
        "probes": len(probes),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dailydialog", type=Path, required=True, help="a DailyDialog file: use validation"
    )
    parser.add_argument("--base-model", default=DEFAULT_BASE_MODEL)
    parser.add_argument("--corrections", type=int, default=20)
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / ".cache" / "demo")
    parser.add_argument("--seed", type=int, default=0, help="picks the DailyDialog pairs")
    parser.add_argument("train_args", nargs="*", help="extra `train_job run` flags (after --)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    data_dir = args.work_dir / "data"
    for fresh in ("feedback", "mlflow"):
        shutil.rmtree(data_dir / fresh, ignore_errors=True)
    pairs = correction_pairs(args.dailydialog, args.corrections, args.seed)
    seed_ledger(data_dir / "feedback", pairs)
    settings = OuroSettings(data_dir=data_dir, base_model=args.base_model)
    env = {**os.environ, "OURO_DATA_DIR": str(data_dir), "OURO_BASE_MODEL": args.base_model}
    command = [sys.executable, "-m", "train_job", "run", "--json", *args.train_args]
    logger.info("%s corrections seeded; running %s", len(pairs), " ".join(command[1:]))
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    wall_s = time.perf_counter() - started
    if finished.returncode not in (0, 3):  # 3: the gates failed, still worth reading
        logger.error("train_job run failed with exit code %s", finished.returncode)
        return finished.returncode
    result = json.loads(finished.stdout)
    with tempfile.TemporaryDirectory() as tmp:
        path = MlflowClient(settings.tracking_uri).download_artifacts(
            result["run_id"], "gate_report.json", tmp
        )
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    summary = {
        "base_model": args.base_model,
        "wall_s_with_process_start": round(wall_s, 1),
        "stage_s": result["timings_s"],
        "outcome": result["outcome"],
        "version": result["version"],
        "gates": {g["name"]: g["value"] for g in result["gates"] or []},
        **score(report),
    }
    out = args.work_dir / "demo_result.json"
    out.write_text(json.dumps({**summary, "report": report}, indent=2), encoding="utf-8")
    print(json.dumps(summary, indent=2))
    logger.info("the answers behind these numbers: %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
