"""Ouro's data pipeline: raw conversation datasets -> chat JSONL splits, and their evaluation.

``python -m data build`` writes ``train.jsonl`` / ``validation.jsonl`` / ``test.jsonl`` and a
stats report; ``python -m data evaluate`` scores a model (and an adapter) on a split.
"""

from data.records import Conversation, load_chat_jsonl, read_chat_jsonl, write_chat_jsonl

__all__ = ["Conversation", "load_chat_jsonl", "read_chat_jsonl", "write_chat_jsonl"]
