"""Per-row logits processing and token picking: what happens between a forward and a token.

For each row that needs it, in this order (vLLM's and OpenAI's):

1. ``logit_bias``: added to the named tokens' logits;
2. ``presence_penalty`` / ``frequency_penalty``, OpenAI's formula over the tokens the
   row generated so far: ``logit[j] -= count[j] * frequency_penalty
   + (count[j] > 0) * presence_penalty``;
3. the row's :class:`~ouro.engine.types.TokenConstraint` (structured output) sets the
   tokens its grammar forbids to -inf, so bias and penalties never revive them;
4. the pick: greedy argmax, or temperature then top_p then a draw from the row's seeded
   generator (:func:`sample_rows`, all of a step's sampled rows at once).

Rows that ask for none of 1-3 and decode greedily skip all of it: the engine picks their
tokens with one batched argmax.

**Which distribution logprobs are of**: the raw model output's log-softmax, before any of
the steps above (vLLM's default, ``logprobs_mode="raw_logprobs"``). So a token's logprob
says how likely the model found it, whatever bias, penalty, constraint or temperature
then made it picked; with none of them and greedy decoding the picked token is the
first of ``top_logprobs``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

import torch
from transformers.convert_slow_tokenizer import bytes_to_unicode

from ouro.engine.types import PositionLogprobs, SamplingParams, TokenConstraint, TokenLogprob


class RowLogits:
    """One row's logits processing (steps 1-3 above), built once for the row: its
    logit_bias as tensors, and the counts of the tokens it generated when a penalty needs
    them."""

    def __init__(self, params: SamplingParams, constraint: TokenConstraint | None) -> None:
        self.constraint = constraint
        self._bias = (
            (
                torch.tensor(list(params.logit_bias), dtype=torch.long),
                torch.tensor(list(params.logit_bias.values())),
            )
            if params.logit_bias
            else None
        )
        self._frequency = params.frequency_penalty
        self._presence = params.presence_penalty
        self.generated: Counter[int] | None = (
            Counter() if (self._frequency or self._presence) else None
        )
        """How often each token was generated (kept only when a penalty needs it)."""

    @property
    def changes_logits(self) -> bool:
        return self._bias is not None or self.generated is not None or self.constraint is not None

    def accept(self, token: int) -> None:
        """Count a generated token, and advance the constraint past it."""
        if self.generated is not None:
            self.generated[token] += 1
        if self.constraint is not None:
            self.constraint.accept(token)

    def apply(self, logits: torch.Tensor) -> None:
        """Bias, penalties and the constraint's mask on one row's logits, in place."""
        if self._bias is not None:
            ids, biases = self._bias
            if ids.device != logits.device or biases.dtype != logits.dtype:
                self._bias = ids, biases = ids.to(logits.device), biases.to(logits)
            logits.index_add_(0, ids, biases)
        if self.generated:
            ids = torch.tensor(list(self.generated), device=logits.device)
            counts = torch.tensor(
                list(self.generated.values()), device=logits.device, dtype=logits.dtype
            )
            logits.index_add_(0, ids, -(counts * self._frequency + self._presence))
        if self.constraint is not None:
            self.constraint.mask_logits(logits)


NUCLEUS_CANDIDATES = 64
"""Most likely tokens a row's top_p nucleus is looked for among first; a row whose top
``NUCLEUS_CANDIDATES`` hold less than top_p of its mass (a flat distribution) sorts its
whole vocabulary instead. A language model's next-token distribution is peaked, so a full
sort (most of a CPU step's sampling time over a 49k vocabulary) is rare."""


class UndrawableRowError(RuntimeError):
    """A row whose adjusted logits leave no token with a probability (all -inf, or NaN)."""


def sample_rows(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator],
) -> list[int | UndrawableRowError]:
    """One token per row of ``logits`` (rows, vocab), drawn with each row's temperature,
    top_p and seeded generator, for all rows at once.

    Temperature and softmax run on the whole batch (each row minus its maximum first, so a
    tiny temperature cannot overflow); top_p keeps, per row, the tokens whose more likely
    predecessors hold less than top_p (the most likely always stays); the draw is one
    uniform number per row from the row's own generator, inverted through the row's
    cumulative distribution, so a row's token never depends on the other rows. A row with
    nothing to draw from gets an :class:`UndrawableRowError` in its place."""
    device = logits.device
    temperatures = torch.tensor([p.temperature for p in params], device=device)
    logits = logits.float()
    scaled = (logits - logits.amax(dim=-1, keepdim=True)) / temperatures[:, None]
    probs = torch.softmax(scaled, dim=-1)
    # The generators are the CPU's (seeded per row); the draw runs where the logits are.
    uniforms = torch.cat([torch.rand(1, generator=generator) for generator in generators])
    uniforms = uniforms.to(device)
    top_p = torch.tensor([p.top_p for p in params], device=device)
    tokens = torch.empty(len(params), dtype=torch.long, device=device)

    full = (top_p >= 1.0).nonzero().flatten()
    if len(full):
        tokens[full] = _invert(probs[full], uniforms[full])
    nucleus = (top_p < 1.0).nonzero().flatten()
    if len(nucleus):
        k = min(NUCLEUS_CANDIDATES, probs.shape[-1])
        candidates, ids = probs[nucleus].topk(k, dim=-1)
        inside = candidates.sum(dim=-1) >= top_p[nucleus]
        for rows, sorted_probs, order in (
            (nucleus[inside], candidates[inside], ids[inside]),
            # The nucleus is wider than the candidates: these rows sort their whole vocabulary.
            (nucleus[~inside], *probs[nucleus[~inside]].sort(dim=-1, descending=True)),
        ):
            if len(rows):
                picked = _invert(_nucleus(sorted_probs, top_p[rows]), uniforms[rows])
                tokens[rows] = order.gather(1, picked[:, None]).squeeze(1)
    drawable = torch.isfinite(probs).all(dim=-1) & (probs.sum(dim=-1) > 0)
    return [
        int(token) if ok else UndrawableRowError("no token has a probability to draw from")
        for token, ok in zip(tokens.tolist(), drawable.tolist(), strict=True)
    ]


def _nucleus(sorted_probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Probabilities sorted most likely first, with the tokens past each row's top_p zeroed
    (a token stays while the ones before it hold less than top_p; the first always stays)."""
    past = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p[:, None]
    past[:, 0] = False  # even a top_p that rounds to 0 keeps the most likely token
    return sorted_probs.masked_fill(past, 0.0)


def _invert(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Per row, the position where the cumulative weights pass ``uniform`` times their total."""
    cumulative = weights.cumsum(dim=-1)
    targets = (uniforms * cumulative[:, -1])[:, None]
    picked = torch.searchsorted(cumulative, targets, right=True).squeeze(1)
    return picked.clamp(max=weights.shape[-1] - 1)


class TokenTexts:
    """Token ids to the text and bytes logprobs report (cached: the vocabulary is fixed)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
        self._cached = lru_cache(maxsize=65536)(self._describe)

    def logprob(self, token_id: int, logprob: float) -> TokenLogprob:
        text, raw = self._cached(token_id)
        return TokenLogprob(token_id=token_id, token=text, token_bytes=raw, logprob=logprob)

    def _describe(self, token_id: int) -> tuple[str, bytes]:
        text = self.tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        return text, _token_bytes(piece, text, self._byte_of)


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _token_bytes(piece: str | None, text: str, byte_of: dict[str, int]) -> bytes:
    """The exact bytes of a token: byte-level BPE pieces map char by char to bytes (GPT-2's
    table), SentencePiece byte-fallback pieces are "<0xHH>"; otherwise the text's UTF-8."""
    if piece is not None:
        if fallback := _BYTE_FALLBACK.fullmatch(piece):
            return bytes([int(fallback.group(1), 16)])
        if piece and all(char in byte_of for char in piece):
            return bytes(byte_of[char] for char in piece)
    return text.encode("utf-8")


def raw_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """The distribution logprobs report: the log-softmax of one row's logits as the model
    gave them (call it before ``RowLogits.apply``)."""
    return torch.log_softmax(logits.float(), dim=-1)


def position_logprobs(
    logprobs: torch.Tensor, token: int, top: int, texts: TokenTexts
) -> PositionLogprobs:
    """The logprobs entry of ``token``, picked at a position whose ``raw_logprobs`` are
    ``logprobs``, with the ``top`` most likely tokens."""
    chosen = texts.logprob(token, float(logprobs[token]))
    if not top:
        return PositionLogprobs(chosen=chosen, top=())
    values, ids = logprobs.topk(top)
    return PositionLogprobs(
        chosen=chosen,
        top=tuple(
            texts.logprob(token_id, value)
            for token_id, value in zip(ids.tolist(), values.tolist(), strict=True)
        ),
    )
