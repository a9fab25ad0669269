"""Fixtures of the data tests: the real raw datasets beside the repo, and one build of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from data.build import BuildConfig, build_dataset
from data.stats import BuildReport
from tests.conftest import SHARED_DIR

DATASETS_DIR = SHARED_DIR / "datasets"


@pytest.fixture(scope="session")
def real_datasets() -> Path:
    """``../shared/datasets`` (DailyDialog, intents, human chat); skips where it is absent."""
    needed = [
        DATASETS_DIR / "dailydialog" / "dialogues_train.txt",
        DATASETS_DIR / "mental_health" / "intents.json",
        DATASETS_DIR / "human_chat" / "human_chat.txt",
    ]
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        pytest.skip(f"the real raw datasets are not beside the repo (missing: {missing})")
    return DATASETS_DIR


@pytest.fixture(scope="session")
def real_build(
    real_datasets: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, BuildReport]:
    """The full build of the three real datasets (a few seconds), shared by the session."""
    out = tmp_path_factory.mktemp("real-build")
    report = build_dataset(
        BuildConfig(
            out_dir=out,
            dailydialog=real_datasets / "dailydialog",
            intents=real_datasets / "mental_health" / "intents.json",
            human_chat=real_datasets / "human_chat" / "human_chat.txt",
        )
    )
    return out, report


@pytest.fixture(scope="session")
def bert_scorer():
    """One offline BERTScore scorer for the data tests (loads in about a second)."""
    from ouro.scoring import BertScorer

    return BertScorer()
