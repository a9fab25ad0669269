"""How well ouro-tiny answers the questions of the corpus it was pretrained on."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from ouro.corpus import load_chatterbot_conversations
from ouro.embedded.tiny import DEFAULT_SYSTEM_PROMPT
from ouro.engine import GenerationEngine, GenerationRequest, SamplingParams


@dataclass(frozen=True)
class AnswerAccuracy:
    """How many of the corpus's own questions the model answers like the corpus."""

    questions: int
    """Distinct opening questions asked."""
    exact: float
    """Share answered with one of the corpus answers (ignoring case, spacing, punctuation)."""
    near: float
    """Share whose answer is exact or close (character similarity >= NEAR_MATCH_RATIO)."""


NEAR_MATCH_RATIO = 0.8


def corpus_questions(conversations: list[list[dict]]) -> dict[str, set[str]]:
    """Each conversation's opening question, with every answer the corpus gives to it."""
    answers: dict[str, set[str]] = {}
    for conversation in conversations:
        if len(conversation) >= 2:
            answers.setdefault(conversation[0]["content"], set()).add(conversation[1]["content"])
    return answers


def answer_accuracy(
    model_dir: Path,
    *,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    conversations: list[list[dict]] | None = None,
    max_questions: int | None = None,
    batch_size: int = 32,
    max_tokens: int = 64,
) -> AnswerAccuracy:
    """Ask the model each opening question of the corpus (greedy) and compare its answers."""

    model = LlamaForCausalLM.from_pretrained(model_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    engine = GenerationEngine(
        model,
        tokenizer,
        system_prompt=system_prompt,
        max_context_tokens=model.config.max_position_embeddings,
    )
    questions = corpus_questions(conversations or load_chatterbot_conversations())
    items = sorted(questions.items())[:max_questions]
    params = SamplingParams(max_tokens=max_tokens)
    exact = near = 0
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        requests = [
            GenerationRequest([{"role": "user", "content": question}], params)
            for question, _ in chunk
        ]
        for (_, references), output in zip(chunk, engine.generate(requests), strict=True):
            score = max(_similarity(output.text, reference) for reference in references)
            exact += score == 1.0
            near += score >= NEAR_MATCH_RATIO
    total = max(1, len(items))
    return AnswerAccuracy(questions=len(items), exact=exact / total, near=near / total)


def _normalise(text: str) -> str:
    kept = "".join(char.lower() if char.isalnum() else " " for char in text)
    return " ".join(kept.split())


def _similarity(answer: str, reference: str) -> float:
    answer, reference = _normalise(answer), _normalise(reference)
    if answer == reference:
        return 1.0
    return difflib.SequenceMatcher(None, answer, reference).ratio() * 0.999
