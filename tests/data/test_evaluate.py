"""Sliding-window evaluation on a tiny model: every number computed, perplexity over
assistant tokens only, base and adapter side by side, and the command with MLflow."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from data.evaluate import (
    ADAPTER_NAME,
    EVALUATION_JSON,
    EVALUATION_MARKDOWN,
    EvaluationConfig,
    EvaluationReport,
    evaluate_engine,
    generate_replies,
    select_conversations,
    sliding_window_turns,
)
from data.records import Conversation, write_chat_jsonl
from ouro.engine import GenerationEngine

REPO_ROOT = Path(__file__).resolve().parents[2]
SYSTEM = "You are Ouro, a friendly and helpful assistant."


def turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


CONVERSATIONS = [
    Conversation(
        [turn("user", "Can you do push-ups?"), turn("assistant", "Of course I can."),
         turn("user", "Really?"), turn("assistant", "Yes, thirty a minute."), turn("user", "Wow.")],
        "dailydialog", "dailydialog:train:2",
    ),
    Conversation([turn("user", "Hi"), turn("assistant", "Hello there. How are you feeling?")],
                 "intents", "intents:greeting"),
    Conversation([turn("user", "Hi!"), turn("assistant", "Hey, what's up?"),
                  turn("user", "Not much."), turn("assistant", "Same here.")],
                 "human_chat", "human_chat:L1"),
]  # fmt: skip


@pytest.fixture(scope="module")
def engine(tiny_random_model_dir: Path, make_lora_adapter) -> GenerationEngine:
    model = AutoModelForCausalLM.from_pretrained(tiny_random_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_random_model_dir)
    engine = GenerationEngine(model, tokenizer, system_prompt=SYSTEM, max_context_tokens=256)
    engine.add_adapter(ADAPTER_NAME, make_lora_adapter(tiny_random_model_dir, 11))
    return engine


def config(tmp_path: Path, **overrides) -> EvaluationConfig:
    return EvaluationConfig(split=tmp_path / "split.jsonl", max_tokens=6, **overrides)


def test_sliding_window_turns_take_each_assistant_turn_with_its_history() -> None:
    turns = sliding_window_turns(CONVERSATIONS)
    assert [(t.source, len(t.history), t.reference) for t in turns] == [
        ("dailydialog", 1, "Of course I can."),
        ("dailydialog", 3, "Yes, thirty a minute."),
        ("intents", 1, "Hello there. How are you feeling?"),
        ("human_chat", 1, "Hey, what's up?"),
        ("human_chat", 3, "Same here."),
    ]
    assert turns[1].history == CONVERSATIONS[0].messages[:3]


def test_a_sample_covers_every_source() -> None:
    pool = [
        Conversation(c.messages, c.source, f"{c.group}-{n}")
        for n in range(3)
        for c in CONVERSATIONS
    ]
    pool.sort(key=lambda c: c.source)  # file order: one source after the other
    chosen = select_conversations(pool, 4)
    assert [c.source for c in chosen] == ["dailydialog", "human_chat", "intents", "dailydialog"]
    assert chosen[0].group == "dailydialog:train:2-0" and chosen[3].group == "dailydialog:train:2-1"
    assert select_conversations(pool, None) == pool == select_conversations(pool, 100)


@pytest.mark.slow
def test_base_and_adapter_scored_side_by_side(engine, bert_scorer, tmp_path: Path) -> None:
    report = evaluate_engine(
        engine,
        bert_scorer,
        CONVERSATIONS,
        config(tmp_path),
        model_name="tiny",
        adapter=ADAPTER_NAME,
    )
    assert set(report.variants) == {"base", "adapter"}
    for variant in report.variants.values():
        assert set(variant.per_source) == {"dailydialog", "intents", "human_chat"}
        assert variant.overall.turns == 5 and variant.overall.skipped_turns == 0
        assert variant.per_source["dailydialog"].turns == 2
        for scores in (variant.overall, *variant.per_source.values()):
            assert 0.0 <= scores.bertscore_f1 <= 1.0
            assert 0.0 <= scores.rouge_l <= 1.0
            assert math.isfinite(scores.perplexity) and scores.perplexity > 1.0
    base, adapter = report.variants["base"], report.variants["adapter"]
    assert adapter.overall.perplexity != pytest.approx(base.overall.perplexity, rel=1e-3)
    assert [e.replies["base"] for e in report.examples] != [
        e.replies["adapter"] for e in report.examples
    ]


@pytest.mark.slow
def test_perplexity_counts_only_assistant_tokens(engine, bert_scorer, tmp_path: Path) -> None:
    report = evaluate_engine(
        engine, bert_scorer, CONVERSATIONS, config(tmp_path), model_name="tiny"
    )
    tokenizer = engine.tokenizer
    expected_tokens = 0
    for conversation in CONVERSATIONS:
        encoded = tokenizer.apply_chat_template(
            [turn("system", SYSTEM), *conversation.messages],
            return_dict=True,
            return_assistant_tokens_mask=True,
        )  # the template's own {% generation %} markers: an independent count
        expected_tokens += sum(encoded["assistant_masks"])
    overall = report.variants["base"].overall
    assert overall.assistant_tokens == expected_tokens
    assert overall.truncated_tokens == 0
    per_source = report.variants["base"].per_source.values()
    assert sum(s.assistant_tokens for s in per_source) == expected_tokens
    # the user turns' text is context only: changing it leaves the scored tokens as they were
    changed = [
        Conversation(
            [turn(m["role"], m["content"] + " and a much longer user turn" if m["role"] == "user"
                  else m["content"]) for m in c.messages],
            c.source, c.group,
        )
        for c in CONVERSATIONS
    ]  # fmt: skip
    again = evaluate_engine(engine, bert_scorer, changed, config(tmp_path), model_name="tiny")
    assert again.variants["base"].overall.assistant_tokens == expected_tokens


@pytest.mark.slow
def test_sampling_is_seeded_and_greedy_repeats(engine, tmp_path: Path) -> None:
    turns = sliding_window_turns(CONVERSATIONS)

    def replies(**options) -> list[str | None]:
        return generate_replies(engine, turns, config(tmp_path, **options), adapter=None)

    greedy = replies()
    assert greedy == replies() and all(reply is not None for reply in greedy)
    sampled = replies(temperature=1.0, seed=5)
    assert sampled == replies(temperature=1.0, seed=5, batch_size=2)  # batching changes nothing
    assert sampled != replies(temperature=1.0, seed=6)


@pytest.mark.slow
def test_turns_that_do_not_fit_are_skipped_and_counted(engine, bert_scorer, tmp_path) -> None:
    too_long = Conversation(
        [turn("user", "word " * 400), turn("assistant", "Short answer.")], "dailydialog", "g"
    )
    report = evaluate_engine(
        engine, bert_scorer, [too_long, CONVERSATIONS[1]], config(tmp_path), model_name="tiny"
    )
    scores = report.variants["base"].per_source["dailydialog"]
    assert scores.turns == 0 and scores.skipped_turns == 1 and scores.bertscore_f1 is None
    assert scores.truncated_tokens > 0  # its answer lies past the model's 256 positions
    assert report.variants["base"].per_source["intents"].turns == 1


@pytest.mark.slow
@pytest.mark.integration
def test_command_logs_to_mlflow(
    tmp_path: Path, tiny_random_model_dir: Path, make_lora_adapter, mlflow_server: str
) -> None:
    split = tmp_path / "validation.jsonl"
    write_chat_jsonl(split, CONVERSATIONS)
    out = tmp_path / "evaluation"
    adapter = make_lora_adapter(tiny_random_model_dir, 11)
    result = subprocess.run(
        [sys.executable, "-m", "data", "evaluate", "--model", str(tiny_random_model_dir),
         "--adapter", str(adapter), "--split", str(split), "--out", str(out),
         "--mlflow-uri", mlflow_server, "--experiment", "data-evaluate-test",
         "--max-conversations", "2", "--max-tokens", "4", "--data-dir", str(tmp_path / "ouro")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = EvaluationReport.model_validate_json((out / EVALUATION_JSON).read_text())
    assert report.variants["base"].overall.conversations == 2
    assert report.variants["adapter"].overall.turns == 3
    assert "adapter - base" in (out / EVALUATION_MARKDOWN).read_text()
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(report.mlflow_run_id)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["base/overall/bertscore_f1"] == pytest.approx(
        report.variants["base"].overall.bertscore_f1
    )
    assert metrics["adapter/intents/perplexity"] == pytest.approx(
        report.variants["adapter"].per_source["intents"].perplexity
    )
    assert "delta/overall/rouge_l" in metrics
    assert run.data.params["adapter"] == str(adapter)
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {EVALUATION_JSON, EVALUATION_MARKDOWN} <= artifacts
    logged = json.loads(
        Path(client.download_artifacts(run.info.run_id, EVALUATION_JSON, str(tmp_path))).read_text()
    )
    assert logged["variants"]["base"]["overall"]["turns"] == 3
