"""``python -m data build|evaluate``: build the chat JSONL splits, or evaluate a model on one."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ouro.cpu_threads import configure_cpu_threads
from ouro.errors import OuroError


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"a fraction must be in [0, 1), got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m data", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="raw datasets -> train/validation/test chat JSONL")
    build.add_argument("--dailydialog", type=Path, help="DailyDialog folder, .txt or Kaggle .csv")
    build.add_argument("--intents", type=Path, help="intents JSON file")
    build.add_argument("--human-chat", type=Path, help="'Human 1:'/'Human 2:' chat log")
    build.add_argument("--out", type=Path, required=True, help="output folder")
    build.add_argument("--validation-fraction", type=_fraction, default=0.1)
    build.add_argument("--test-fraction", type=_fraction, default=0.1)
    build.add_argument("--seed", type=int, default=0, help="seed of the group-hash split")

    evaluate = commands.add_parser("evaluate", help="sliding-window evaluation of a model")
    evaluate.add_argument("--model", required=True, help="'ouro-tiny', a local path or a Hub id")
    evaluate.add_argument("--adapter", type=Path, help="PEFT LoRA adapter folder to compare")
    evaluate.add_argument("--split", type=Path, required=True, help="chat JSONL to evaluate on")
    evaluate.add_argument("--out", type=Path, help="folder for evaluation.json / .md")
    evaluate.add_argument("--mlflow-uri", help="log params, metrics and reports to this MLflow")
    evaluate.add_argument("--experiment", default="ouro-evaluation", help="MLflow experiment")
    evaluate.add_argument(
        "--max-conversations",
        type=_positive,
        help="evaluate N conversations, taken from each source in turn",
    )
    evaluate.add_argument("--max-tokens", type=_positive, default=64, help="longest reply")
    evaluate.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    evaluate.add_argument("--top-p", type=float, default=1.0)
    evaluate.add_argument("--seed", type=int, default=0, help="seeds sampling when temperature > 0")
    evaluate.add_argument("--batch-size", type=_positive, default=16)
    evaluate.add_argument("--data-dir", type=Path, help="Ouro data dir (model cache for ouro-tiny)")
    return root


def main(argv: list[str] | None = None) -> int:
    configure_cpu_threads()  # evaluate imports torch: the wait policy must be set first
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "build":
            return _build(args)
        return _evaluate(args)
    except OuroError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _build(args: argparse.Namespace) -> int:
    from data.build import STATS_MARKDOWN, BuildConfig, build_dataset
    from data.splitting import SplitFractions

    report = build_dataset(
        BuildConfig(
            out_dir=args.out,
            dailydialog=args.dailydialog,
            intents=args.intents,
            human_chat=args.human_chat,
            fractions=SplitFractions.from_held_out(args.validation_fraction, args.test_fraction),
            seed=args.seed,
        )
    )
    print((args.out / STATS_MARKDOWN).read_text(encoding="utf-8"))
    return 0 if report.leakage.leak_free else 1


def _evaluate(args: argparse.Namespace) -> int:
    from data.evaluate import EvaluationConfig, evaluation_report_markdown, run_evaluation
    from ouro.settings import OuroSettings

    overrides = {"base_model": args.model}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    report = run_evaluation(
        EvaluationConfig(
            split=args.split,
            adapter=args.adapter,
            out_dir=args.out,
            mlflow_uri=args.mlflow_uri,
            experiment=args.experiment,
            max_conversations=args.max_conversations,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            batch_size=args.batch_size,
        ),
        OuroSettings(**overrides),
    )
    print(evaluation_report_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
