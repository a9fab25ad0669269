"""The model cache: one folder per built model, named by what decides its content.

Every embedded model is built (or converted) the same way: into a private staging
folder, then renamed into ``<cache_dir>/<name>-<key>/``, so a build that dies part-way
leaves nothing that looks finished, and two processes building at once both end with a
complete folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

BUILD_FILE = "ouro_recipe.json"
"""Written last into a finished build: what it was built from. Its presence marks the
folder as complete."""


def cached_build(
    cache_dir: Path, name: str, key: str, metadata: dict, build: Callable[[Path], None]
) -> Path:
    """``<cache_dir>/<name>-<key>``: reused when complete, else ``build(staging)`` fills it.

    ``build`` writes the model (``save_pretrained``) into the folder it is given;
    ``metadata`` (what the key stands for) goes into BUILD_FILE.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / f"{name}-{key}"
    if (target / BUILD_FILE).is_file():
        logger.info("using cached %s at %s", name, target)
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    logger.info("building %s (%s) into %s", name, key, target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_dir))
    try:
        build(staging)
        (staging / BUILD_FILE).write_text(
            json.dumps(metadata, indent=2, sort_keys=True), encoding="utf-8"
        )
        # mkdtemp makes a private folder; the model is shared (other users, pods, a volume).
        staging.chmod(0o755)
        for file in staging.iterdir():
            file.chmod(0o644)
        try:
            staging.rename(target)
        except OSError:
            # Another process finished the same build first: theirs is as good as ours.
            if not (target / BUILD_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
