"""Correction: one accepted correction from the feedback ledger, as the training job uses it.

Its own module because everything in the job passes corrections along: ``collect`` makes
them from ledger records, ``dataset`` turns them into training rows, ``routed`` indexes
them, the gates, ``export`` and ``sharing`` read them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Correction:
    """One accepted correction from the ledger, as the training job uses it."""

    id: str
    messages: tuple[dict, ...]
    """The conversation the model answered; ends with the user turn."""
    completion: str
    """What the model said."""
    correction: str
    """What it should have said."""
    model: str | None = None
    """The version that answered (e.g. ``ouro@v3``)."""
    scope: str | None = None
    """The author's personal scope (None: open server, or before personal adapters)."""
    admin: bool = False
    """Sent with an admin key."""

    def prompt(self) -> list[dict]:
        """The conversation as chat messages (copies: callers may change them)."""
        return [dict(message) for message in self.messages]

    def question(self) -> str:
        """The latest user turn (what the correction answers)."""
        users = [m["content"] for m in self.messages if m.get("role") == "user"]
        return users[-1] if users else ""
