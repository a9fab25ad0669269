"""Gates: the baseline is production (or the base model), never the new adapter; the report."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from ouro.embedding import SentenceEmbedder
from ouro.engine import EngineLimits, GenerationEngine, GenerationRequest, SamplingParams
from ouro.models import load_base_model
from ouro.routing import CorrectionIndex, RouteKey, Router, RoutingBoundary
from ouro.scoring import repeats_a_phrase
from ouro.settings import OuroSettings
from train_job.config import TrainJobConfig
from train_job.corrections import Correction
from train_job.dataset import CycleDataset
from train_job.gates import (
    GateCheck,
    GateReport,
    PatchedProcessError,
    Side,
    Tier,
    _evaluate,
    evaluate_gates,
)

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of Australia?", "How many legs does a spider have?"]


def dataset() -> CycleDataset:
    corrections = [
        Correction(
            id=f"fb-{i}",
            messages=({"role": "user", "content": q},),
            completion="?",
            correction="The answer.",
        )
        for i, q in enumerate(QUESTIONS)
    ]
    return CycleDataset(
        train=corrections[:1],
        held_out=corrections[1:],
        replay=[],
        regression=[[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]],
        probes=[[{"role": "user", "content": "How are you?"}]],
    )


def greedy(engine: GenerationEngine, adapter: str | None, max_tokens: int) -> list[str]:
    requests = [
        GenerationRequest(
            messages=[{"role": "user", "content": q}],
            params=SamplingParams(max_tokens=max_tokens),
            adapter=adapter,
        )
        for q in QUESTIONS
    ]
    return [output.text.strip() for output in engine.generate(requests)]


def test_the_baseline_is_the_production_adapter_or_the_base_model_never_the_new_one(
    tiny_random_model_dir: Path, make_lora_adapter: Callable[[Path, int], Path]
) -> None:
    settings = OuroSettings(base_model=str(tiny_random_model_dir), device="cpu")
    config = TrainJobConfig(gate_max_new_tokens=8)
    new = make_lora_adapter(tiny_random_model_dir, 1)
    production = make_lora_adapter(tiny_random_model_dir, 2)
    loaded = load_base_model(settings)
    reference = GenerationEngine(
        loaded.model, loaded.tokenizer, system_prompt=settings.system_prompt, max_context_tokens=256
    )
    reference.add_adapter("new", new)
    reference.add_adapter("production", production)
    expected_new = greedy(reference, "new", 16)
    expected_prod = greedy(reference, "production", 16)
    expected_base = greedy(reference, None, 16)
    assert expected_new != expected_base  # the adapters really change the answers

    against_base = evaluate_gates(config, settings, dataset(), new, None, "base model")
    against_prod = evaluate_gates(config, settings, dataset(), new, production, "v2 (production)")

    # The gates cut answers near the correction's length: compare as prefixes.
    def starts(answers: list[str], full: list[str]) -> bool:
        return all(f.startswith(a) for a, f in zip(answers, full, strict=True))

    assert starts([a.answer for a in against_base.answers], expected_new)
    assert starts([a.baseline_answer for a in against_base.answers], expected_base)
    assert starts([a.baseline_answer for a in against_prod.answers], expected_prod)
    assert against_prod.baseline == "v2 (production)"
    assert set(against_base.perplexity) == {"new", "baseline"}
    assert against_base.perplexity["baseline"] != against_prod.perplexity["baseline"]

    # Degenerate answers count against the baseline's own on the same prompts.
    (degenerate,) = [c for c in against_prod.checks if c.name == "degenerate_answers"]
    new_texts = [a.answer for a in against_prod.answers] + [
        p["answer"] for p in against_prod.probes
    ]
    old_texts = [a.baseline_answer for a in against_prod.answers] + [
        p["baseline_answer"] for p in against_prod.probes
    ]
    extra = sum(map(repeats_a_phrase, new_texts)) - sum(map(repeats_a_phrase, old_texts))
    assert degenerate.value == extra
    assert degenerate.passed == (extra <= config.max_degenerate_answers)


def test_a_side_answers_a_rewording_as_the_correction_it_matched(
    tiny_random_model_dir: Path,
    make_lora_adapter: Callable[[Path, int], Path],
    sentence_embedder: SentenceEmbedder,
    tmp_path: Path,
) -> None:
    settings = OuroSettings(base_model=str(tiny_random_model_dir), device="cpu")
    loaded = load_base_model(settings)
    engine = GenerationEngine(
        loaded.model, loaded.tokenizer, system_prompt=settings.system_prompt, max_context_tokens=256
    )
    adapter = shutil.copytree(make_lora_adapter(tiny_random_model_dir, 3), tmp_path / "v1")
    embedder = sentence_embedder
    items = [("c-1", RouteKey(QUESTIONS[0]))]
    CorrectionIndex.build(embedder, items, RoutingBoundary(base=0.5, slope=0.3)).save(adapter)
    side = Side([Tier("v1", engine, adapter)], Router(embedder))

    def user(text: str) -> list[dict]:
        return [{"role": "user", "content": text}]

    prompts = [user("what is the capital of australia"), user(QUESTIONS[0]), user("Hi there!")]
    routed, adapters = side.route(prompts)
    assert adapters == ["v1", "v1", None]
    assert routed == [user(QUESTIONS[0]), user(QUESTIONS[0]), user("Hi there!")]
    answers, _ = side.answers(engine, prompts, [8, 8, 8])
    assert answers[0] == answers[1]


def test_report_verdict_json_and_markdown() -> None:
    report = GateReport(
        baseline="base model",
        checks=[
            GateCheck("fix_rate", 0.9, 0.8, ">=", True, "18/20"),
            GateCheck("generalisation", 0.5, None, ">=", None, "reported"),
            GateCheck("perplexity_rise_pct", 80.0, 50.0, "<=", False, "2.0 -> 3.6"),
            GateCheck("probe_similarity", None, 0.6, ">=", None, "skipped: no probe prompts"),
        ],
    )
    assert not report.passed
    assert [c.name for c in report.failures()] == ["perplexity_rise_pct"]
    assert report.summary() == "gates failed: perplexity_rise_pct 80.000 (needs <= 50.000)"
    checks = json.loads(report.checks_json())
    assert checks[0] == {
        "name": "fix_rate",
        "value": 0.9,
        "threshold": 0.8,
        "comparison": ">=",
        "passed": True,
    }
    markdown = report.to_markdown()
    assert "# Gate report: FAILED" in markdown
    assert "| perplexity_rise_pct | 80.000 | <= 50.000 | FAIL |" in markdown
    assert "| generalisation | 0.500 | - | reported |" in markdown
    assert report.metrics()["gate/passed"] == 0.0

    report.checks[2] = GateCheck("perplexity_rise_pct", 10.0, 50.0, "<=", True)
    assert report.passed and report.summary() == "all gates passed"


def test_after_unsloth_is_imported_the_gates_run_in_a_fresh_process(
    tiny_random_model_dir: Path,
    make_lora_adapter: Callable[[Path, int], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unsloth patches transformers for the whole training process: with it imported, the
    gates refuse to run there and evaluate, unchanged, in a spawned process instead."""
    settings = OuroSettings(base_model=str(tiny_random_model_dir), device="cpu")
    config = TrainJobConfig(gate_max_new_tokens=8)
    new = make_lora_adapter(tiny_random_model_dir, 1)
    here = evaluate_gates(config, settings, dataset(), new, None, "base model")

    monkeypatch.setitem(sys.modules, "unsloth", ModuleType("unsloth"))
    with pytest.raises(PatchedProcessError):
        _evaluate(config, settings, dataset(), new, None, "base model")
    fresh = evaluate_gates(config, settings, dataset(), new, None, "base model")
    assert fresh.to_dict() == here.to_dict()


def test_the_gates_engine_is_built_from_the_serving_settings(
    tiny_random_model_dir: Path, tmp_path: Path
) -> None:
    """The gates and Serve build their engine with GenerationEngine.from_settings: every
    setting that changes an answer or a schedule reaches it."""
    settings = OuroSettings(
        data_dir=tmp_path,
        base_model=str(tiny_random_model_dir),
        system_prompt="Answer in one short sentence.",
        max_context_tokens=333,
        max_running_requests=5,
        max_queued_requests=9,
        max_kv_cache_tokens=4321,
        max_prefill_tokens_per_step=123,
    )
    engine = GenerationEngine.from_settings(settings)
    assert engine.formatter.system_prompt == settings.system_prompt
    assert engine.formatter.max_context_tokens == min(333, engine.max_positions)
    assert engine.limits == EngineLimits(
        max_running_requests=5,
        max_waiting_requests=9,
        max_kv_cache_tokens=4321,
        max_prefill_tokens_per_step=123,
    )
