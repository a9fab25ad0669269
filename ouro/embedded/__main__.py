"""``python -m ouro.embedded [MODEL]``: build or convert an embedded model into the cache.

For ouro-tiny it also scores the build on its own corpus questions.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ouro.embedded import EMBEDDED_MODELS, SMOLLM2_MODEL, TINY_MODEL, build_embedded_model
from ouro.embedded.accuracy import answer_accuracy
from ouro.embedded.tiny import TinyModelRecipe, build_tiny_model, select_conversations
from ouro.settings import OuroSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", nargs="?", default=SMOLLM2_MODEL, choices=EMBEDDED_MODELS)
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="default: OURO_DATA_DIR or .ouro"
    )
    parser.add_argument("--small", action="store_true", help="ouro-tiny: the reduced test recipe")
    parser.add_argument(
        "--max-questions", type=int, default=None, help="ouro-tiny: score on fewer questions"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = OuroSettings(**({"data_dir": args.data_dir} if args.data_dir else {}))
    if args.model != TINY_MODEL:
        print(build_embedded_model(args.model, settings.model_cache_dir))
        return
    recipe = TinyModelRecipe.small() if args.small else TinyModelRecipe()
    path = build_tiny_model(settings.model_cache_dir, recipe)
    accuracy = answer_accuracy(
        path,
        system_prompt=recipe.system_prompt,
        conversations=select_conversations(recipe),
        max_questions=args.max_questions,
    )
    print(f"{path}")
    print(
        f"{accuracy.questions} corpus questions, greedy answers: "
        f"{accuracy.exact:.1%} exact, {accuracy.near:.1%} exact or near"
    )


if __name__ == "__main__":
    main()
