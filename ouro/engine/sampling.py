"""Per-row logits processing and token picking: what happens between a forward and a token.

For each row that needs it, in this order (vLLM's and OpenAI's):

1. ``logit_bias``: added to the named tokens' logits;
2. ``presence_penalty`` / ``frequency_penalty``, OpenAI's formula over the tokens the
   row generated so far: ``logit[j] -= count[j] * frequency_penalty
   + (count[j] > 0) * presence_penalty``;
3. the row's :class:`~ouro.engine.types.TokenConstraint` (structured output) sets the
   tokens its grammar forbids to -inf, so bias and penalties never revive them;
4. the pick: greedy argmax, or temperature then top_p then a draw from the row's seeded
   generator (:func:`sample`).

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
from functools import lru_cache

import torch
from transformers.convert_slow_tokenizer import bytes_to_unicode

from ouro.engine.types import PositionLogprobs, SamplingParams, TokenConstraint, TokenLogprob


def adjust_logits(
    logits: torch.Tensor,
    params: SamplingParams,
    generated: Counter[int],
    constraint: TokenConstraint | None,
) -> None:
    """Apply bias, penalties and the constraint's mask to one row's logits, in place."""
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), device=logits.device)
        biases = torch.tensor(list(params.logit_bias.values()), device=logits.device)
        logits.index_add_(0, ids, biases.to(logits.dtype))
    if generated and (params.presence_penalty or params.frequency_penalty):
        ids = torch.tensor(list(generated), device=logits.device)
        counts = torch.tensor(list(generated.values()), device=logits.device, dtype=logits.dtype)
        penalties = counts * params.frequency_penalty + params.presence_penalty
        logits.index_add_(0, ids, -penalties)
    if constraint is not None:
        constraint.mask_logits(logits)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token drawn with the row's temperature, top_p and generator (numerically safe)."""
    # Subtracting the maximum first keeps a tiny temperature from overflowing: the best
    # token stays at 0, the others go to -inf at worst, and softmax stays defined.
    scaled = (logits - logits.max()) / params.temperature
    probs = torch.softmax(scaled.double(), dim=-1).cpu()
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Drop tokens once the ones before them already reach top_p (the first always stays).
        sorted_probs[(sorted_probs.cumsum(-1) - sorted_probs) >= params.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())


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
    gave them (call it before ``adjust_logits``)."""
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
