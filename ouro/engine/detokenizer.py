"""Incremental detokenization: one request's tokens to text as they come."""

from __future__ import annotations


class IncrementalDetokenizer:
    """Turns one row's tokens into text as they come, never showing half a character.

    Text that might be the start of a stop string is held back until it is known not to
    be; a completed stop string ends the text (and is not part of it).
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.token_ids: list[int] = []
        self.emitted = ""
        self.stopped = False

    def add(self, token: int) -> str:
        """Take one token; return the newly visible text (sets ``stopped`` on a stop string)."""
        self.token_ids.append(token)
        text = self._decode()
        cut = self._find_stop(text)
        if cut is not None:
            self.stopped = True
            return self._emit(text[:cut])
        visible = text.rstrip("\ufffd")
        return self._emit(visible[: len(visible) - self._held_back(visible)])

    def flush(self) -> str:
        """The text still held back, for when the row ends for another reason."""
        return "" if self.stopped else self._emit(self._decode())

    def _decode(self) -> str:
        return self.tokenizer.decode(
            self.token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def _find_stop(self, text: str) -> int | None:
        # Only the tail can hold a new match: earlier text was already checked.
        longest = max((len(stop) for stop in self.stop), default=0)
        start = max(0, len(self.emitted) - longest)
        found = [index for stop in self.stop if (index := text.find(stop, start)) >= 0]
        return min(found) if found else None

    def _held_back(self, text: str) -> int:
        held = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), held, -1):
                if text.endswith(stop[:size]):
                    held = size
                    break
        return held

    def _emit(self, visible: str) -> str:
        if not visible.startswith(self.emitted):
            return ""  # a tokenizer whose decoding is not prefix-stable: never take text back
        new_text = visible[len(self.emitted) :]
        self.emitted = visible
        return new_text
