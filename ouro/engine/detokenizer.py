"""Incremental detokenization: one request's tokens to text as they come, in constant time.

Decoding a row's whole token list at every token costs time in the answer's length, so
an answer costs time in its square. Here each token decodes only a short window, as
vLLM's ``detokenize_incrementally`` does: the tokens of the last piece of text shown
(the *prefix*, which gives the new tokens their context: a leading space, a byte that
completes a character) and the tokens since. The new text is the window's text minus
the prefix's; a window whose text ends in an incomplete character waits for the next
token. Every window starts where the text so far was complete, so the pieces join up to
the decode of the whole list.

Why not tokenizers' ``DecodeStream``: it does the same in Rust but keeps its window to
itself, so the tokens of an unfinished character cannot be flushed when the row ends,
and its work per token cannot be checked.
"""

from __future__ import annotations

from tokenizers import Tokenizer

_INCOMPLETE = "\ufffd"
"""What a decoder shows for bytes that are not (yet) a whole UTF-8 character."""


class TokenDecoder:
    """Token ids to text with special tokens skipped: an engine's own decoding pipeline.

    A fast tokenizer's pipeline is copied, so the engine's driver thread decodes without
    the lock that guards the tokenizer the event loop encodes prompts with (the Rust
    tokenizer refuses concurrent use: "Already borrowed"). Any other tokenizer is used
    through its own ``decode``.
    """

    def __init__(self, tokenizer) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if isinstance(backend, Tokenizer):
            copy = Tokenizer.from_str(backend.to_str())
            self._decode = lambda ids: copy.decode(ids, skip_special_tokens=True)
            added = backend.get_added_tokens_decoder()
            self.special_ids = frozenset(i for i, token in added.items() if token.special)
        else:
            self._decode = lambda ids: tokenizer.decode(
                ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
            self.special_ids = frozenset(tokenizer.all_special_ids)

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids``, special tokens skipped, spaces as the tokenizer made them."""
        return self._decode(ids)


class IncrementalDetokenizer:
    """Turns one row's tokens into text as they come, never showing half a character.

    Text that might be the start of a stop string is held back until it is known not to
    be; a completed stop string ends the text (and is not part of it). The work per token
    is bounded by the window (see the module docstring) and the longest stop string, not
    by the answer's length.
    """

    def __init__(self, decoder: TokenDecoder, stop: tuple[str, ...] = ()) -> None:
        self.decoder = decoder
        self.stop = stop
        self.stopped = False
        self._window: list[int] = []
        """Tokens of the last piece of text (the prefix), then the tokens not yet shown."""
        self._read = 0
        """Where the prefix ends in ``_window``."""
        self._prefix_text = ""
        """The text of ``_window[:_read]``."""
        self._pending = ""
        """Decoded text not shown yet, because it may be the start of a stop string."""

    def add(self, token: int) -> str:
        """Take one token; return the newly visible text (sets ``stopped`` on a stop string)."""
        if self.stopped or token in self.decoder.special_ids:
            return ""  # skipped in the decode of the whole list too
        self._window.append(token)
        text = self.decoder.decode(self._window)
        if len(text) <= len(self._prefix_text) or text.endswith(_INCOMPLETE):
            return ""  # nothing new yet, or half a character: wait for the next token
        new_text = text[len(self._prefix_text) :]
        # The tokens just shown become the prefix of the next window.
        self._window = self._window[self._read :]
        self._read = len(self._window)
        self._prefix_text = self.decoder.decode(self._window)
        return self._release(new_text)

    def flush(self) -> str:
        """The text still held back, for when the row ends for another reason."""
        if self.stopped:
            return ""
        text = self.decoder.decode(self._window)
        rest = self._pending + text[len(self._prefix_text) :]
        self._pending = ""
        self._window, self._read, self._prefix_text = [], 0, ""
        return rest

    def _release(self, new_text: str) -> str:
        """Add ``new_text`` to what is held back; return what is now safe to show."""
        text = self._pending + new_text
        found = [index for stop in self.stop if (index := text.find(stop)) >= 0]
        if found:
            self.stopped = True
            self._pending = ""
            return text[: min(found)]
        held = self._held_back(text)
        self._pending = text[len(text) - held :] if held else ""
        return text[: len(text) - held]

    def _held_back(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        held = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), held, -1):
                if text.endswith(stop[:size]):
                    held = size
                    break
        return held
