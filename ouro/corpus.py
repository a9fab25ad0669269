"""The English chatterbot-corpus as OpenAI-style conversations.

The corpus ships inside the ``chatterbot-corpus`` package (BSD-3), so nothing is fetched at
run time. Each YAML file holds ``conversations:``, a list of turn lists whose turns
alternate user / assistant, starting with the user.
"""

from __future__ import annotations

import logging
from importlib import resources

import yaml

logger = logging.getLogger(__name__)

CORPUS_PACKAGE = "chatterbot_corpus"
ENGLISH_DIR = ("data", "english")


def load_chatterbot_conversations() -> list[list[dict]]:
    """Every English conversation as ``[{"role": "user"|"assistant", "content": str}, ...]``.

    Files are read in name order so the result (and everything trained on it) is stable.
    A trailing user turn with no answer is dropped; malformed entries (not a list of
    turns, or with empty turns) and conversations without an answer are skipped.
    """
    folder = resources.files(CORPUS_PACKAGE).joinpath(*ENGLISH_DIR)
    files = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".yml")),
        key=lambda entry: entry.name,
    )
    conversations: list[list[dict]] = []
    for entry in files:
        document = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
        for turns in document.get("conversations") or []:
            messages = _to_messages(turns)
            if messages:
                conversations.append(messages)
    logger.debug("loaded %s chatterbot conversations from %s files", len(conversations), len(files))
    return conversations


def _to_messages(turns: object) -> list[dict]:
    if not isinstance(turns, list):
        return []  # one entry in the corpus is a bare string, not a list of turns
    texts = [str(turn).strip() for turn in turns]
    if not all(texts):
        return []
    if len(texts) % 2:
        texts = texts[:-1]  # a question with no answer teaches nothing
    return [
        {"role": "user" if index % 2 == 0 else "assistant", "content": text}
        for index, text in enumerate(texts)
    ]
