"""Self-distilled replay: the base model's own greedy answers to general prompts.

Replaying other people's answers teaches their style: on SmolLM2-135M, 64 replayed
DailyDialog answers changed 10 of 10 unrelated answers. Replaying the model's own
answers keeps them. They are generated once per (base model, system prompt, prompt) and
cached in ``<model cache>/replay/``, so later cycles load them in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ouro.engine import GenerationEngine, GenerationRequest, SamplingParams
from ouro.models import resolve_base_model
from ouro.settings import OuroSettings
from train_job.dataset import Messages, ReplayAnswerer

logger = logging.getLogger(__name__)


def cache_file(settings: OuroSettings, max_new_tokens: int) -> Path:
    """One JSON file per base model (its resolved folder names the build), system prompt and
    answer length."""
    base = resolve_base_model(settings)
    key = hashlib.sha256(
        json.dumps([base, settings.system_prompt, max_new_tokens]).encode()
    ).hexdigest()[:16]
    return settings.model_cache_dir / "replay" / f"{Path(base).name}-{key}.json"


def self_answerer(settings: OuroSettings, max_new_tokens: int) -> ReplayAnswerer:
    """An answerer that asks the base model (no adapter), greedily, through the cache."""

    def answer(prompts: Sequence[Messages]) -> list[str | None]:
        path = cache_file(settings, max_new_tokens)
        cached = _read(path)
        keys = [json.dumps(prompt, sort_keys=True, ensure_ascii=False) for prompt in prompts]
        missing = list(dict.fromkeys(key for key in keys if key not in cached))
        if missing:
            logger.info(
                "generating the base model's own answers to %s replay prompts", len(missing)
            )
            engine = GenerationEngine.from_settings(settings)
            params = SamplingParams(max_tokens=max_new_tokens)
            # The engine batches them within its own limits (continuous batching).
            outputs = engine.generate(
                [GenerationRequest(json.loads(key), params) for key in missing]
            )
            for key, output in zip(missing, outputs, strict=True):
                # An answer cut at max_new_tokens would teach the model to stop mid-sentence.
                finished = output.finish_reason == "stop" and output.text.strip()
                cached[key] = output.text.strip() if finished else None
            del engine
            _write(path, cached)
        return [cached[key] for key in keys]

    return answer


def _read(path: Path) -> dict[str, str | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable replay cache %s: %s", path, exc)
        return {}


def _write(path: Path, answers: dict[str, str | None]) -> None:
    # Written aside and renamed, so a concurrent reader sees the old or the new file whole.
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        json.dump(answers, file, ensure_ascii=False, indent=0, sort_keys=True)
    os.replace(staging, path)
