"""``data evaluate``: sliding-window evaluation of a model, and of an adapter beside it.

For every assistant turn that has turns before it, the model answers from those turns
alone and its answer is scored against the reference turn: BERTScore F1 (offline MiniLM)
and ROUGE-L. Perplexity is measured over the reference conversations' assistant tokens
only. Numbers are given per source and overall, for the base model and, with an adapter,
for the adapter side by side (same prompts, same seeds). Greedy by default; sampling is
seeded per turn, so a rerun gives the same answers.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field

from data.records import Conversation, read_chat_jsonl
from data.report import markdown_table
from ouro.chat import PromptTooLongError
from ouro.engine import BASE_ADAPTER, GenerationEngine, GenerationRequest, SamplingParams
from ouro.scoring import AssistantLoss, BertScorer, assistant_loss, rouge_l
from ouro.settings import OuroSettings

logger = logging.getLogger(__name__)

EVALUATION_JSON = "evaluation.json"
EVALUATION_MARKDOWN = "evaluation.md"
ADAPTER_NAME = "evaluated-adapter"
BASE = "base"
ADAPTER = "adapter"
OVERALL = "overall"
UNKNOWN_SOURCE = "unknown"
METRICS = ("bertscore_f1", "rouge_l", "perplexity")
EXAMPLES = 5


@dataclass
class EvaluationConfig:
    """What to evaluate on, and how to decode."""

    split: Path = field(metadata={"help": "Chat JSONL to evaluate on (e.g. validation.jsonl)."})
    adapter: Path | None = field(default=None, metadata={"help": "PEFT adapter to compare."})
    out_dir: Path | None = field(default=None, metadata={"help": "Where the reports go."})
    mlflow_uri: str | None = field(default=None, metadata={"help": "MLflow to log the run to."})
    experiment: str = field(default="ouro-evaluation", metadata={"help": "MLflow experiment."})
    max_conversations: int | None = field(
        default=None,
        metadata={"help": "Evaluate N conversations, taken from each source in turn."},
    )
    max_tokens: int = field(default=64, metadata={"help": "Longest generated reply."})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy decoding."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold."})
    seed: int = field(default=0, metadata={"help": "Turn i samples with seed + i."})
    batch_size: int = field(default=16, metadata={"help": "Replies generated per batch."})


@dataclass
class EvaluationTurn:
    """One assistant turn to reproduce from the turns before it."""

    source: str
    history: list[dict]
    reference: str


class Scores(BaseModel):
    conversations: int = Field(description="Conversations evaluated.")
    turns: int = Field(description="Assistant turns generated and scored.")
    skipped_turns: int = Field(description="Turns whose prompt does not fit the model.")
    bertscore_f1: float | None = Field(description="Mean BERTScore F1 of the replies.")
    rouge_l: float | None = Field(description="Mean ROUGE-L F-measure of the replies.")
    perplexity: float | None = Field(description="Perplexity over reference assistant tokens.")
    assistant_tokens: int = Field(description="Assistant tokens the perplexity covers.")
    truncated_tokens: int = Field(description="Assistant tokens past the model's context.")


class VariantScores(BaseModel):
    overall: Scores = Field(description="All sources together.")
    per_source: dict[str, Scores] = Field(description="One entry per record source.")


class Example(BaseModel):
    source: str = Field(description="Record source.")
    last_user_turn: str = Field(description="The turn the model answered.")
    reference: str = Field(description="What the dataset's assistant said.")
    replies: dict[str, str] = Field(description="What each variant said.")


class EvaluationReport(BaseModel):
    split: str = Field(description="The evaluated chat JSONL file.")
    model: str = Field(description="The base model.")
    adapter: str | None = Field(description="The adapter folder, when one was compared.")
    system_prompt: str = Field(description="System prompt in front of every conversation.")
    sampling: dict[str, float | int] = Field(description="Decoding settings.")
    variants: dict[str, VariantScores] = Field(description="'base', and 'adapter' when given.")
    examples: list[Example] = Field(description="The first few turns, for reading.")
    elapsed_s: float = Field(description="Wall time, seconds.")
    mlflow_run_id: str | None = Field(default=None, description="MLflow run it was logged to.")


def select_conversations(
    conversations: Sequence[Conversation], limit: int | None
) -> list[Conversation]:
    """At most ``limit`` conversations, taken from each source in turn (file order within a
    source), so a small sample still covers every source."""
    if limit is None or limit >= len(conversations):
        return list(conversations)
    by_source: dict[str, list[Conversation]] = defaultdict(list)
    for conversation in conversations:
        by_source[conversation.source].append(conversation)
    queues = [iter(items) for items in by_source.values()]
    chosen: list[Conversation] = []
    while len(chosen) < limit:
        for queue in queues:
            conversation = next(queue, None)
            if conversation is not None and len(chosen) < limit:
                chosen.append(conversation)
    return chosen


def sliding_window_turns(conversations: Sequence[Conversation]) -> list[EvaluationTurn]:
    """Every assistant turn that has history, with the turns before it."""
    return [
        EvaluationTurn(
            source=conversation.source or UNKNOWN_SOURCE,
            history=conversation.messages[:index],
            reference=message["content"],
        )
        for conversation in conversations
        for index, message in enumerate(conversation.messages)
        if message["role"] == "assistant" and index > 0
    ]


def generate_replies(
    engine: GenerationEngine,
    turns: Sequence[EvaluationTurn],
    config: EvaluationConfig,
    adapter: str | None,
) -> list[str | None]:
    """The model's reply to each turn's history (None where the prompt does not fit)."""
    requests: list[tuple[int, int, GenerationRequest]] = []
    for index, turn in enumerate(turns):
        request = GenerationRequest(
            messages=turn.history,
            params=SamplingParams(
                max_tokens=config.max_tokens,
                temperature=config.temperature,
                top_p=config.top_p,
                seed=config.seed + index,
            ),
            adapter=adapter,
            request_id=f"evaluate-{index}",
        )
        try:
            length = len(engine.prompt_ids(request))
        except PromptTooLongError:
            continue
        requests.append((length, index, request))
    replies: list[str | None] = [None] * len(turns)
    requests.sort(key=lambda item: item[0])  # similar lengths batch with little padding
    for start in range(0, len(requests), config.batch_size):
        chunk = requests[start : start + config.batch_size]
        outputs = engine.generate([request for _length, _index, request in chunk])
        for (_length, index, _request), output in zip(chunk, outputs, strict=True):
            replies[index] = output.text
    return replies


def score_variant(
    engine: GenerationEngine,
    scorer: BertScorer,
    conversations: Sequence[Conversation],
    turns: Sequence[EvaluationTurn],
    replies: Sequence[str | None],
    adapter: str | None,
) -> VariantScores:
    """Reply scores and assistant-token perplexity, per source and overall."""
    done = [i for i, reply in enumerate(replies) if reply is not None]
    f1 = dict(
        zip(
            done,
            scorer.f1([replies[i] for i in done], [turns[i].reference for i in done]),
            strict=True,
        )
    )
    rouge = {i: rouge_l(replies[i], turns[i].reference) for i in done}
    adapter_name = None
    if engine.adapter_names():  # a PEFT model: name the adapter, or PEFT's base
        adapter_name = adapter or BASE_ADAPTER
    by_source: dict[str, list[Conversation]] = defaultdict(list)
    for conversation in conversations:
        by_source[conversation.source or UNKNOWN_SOURCE].append(conversation)
    losses = {
        source: assistant_loss(
            engine.model,
            engine.tokenizer,
            [c.messages for c in items],
            engine.formatter.system_prompt,
            max_length=engine.max_positions,
            adapter_name=adapter_name,
        )
        for source, items in sorted(by_source.items())
    }

    losses[OVERALL] = AssistantLoss(
        nll_sum=sum(loss.nll_sum for loss in losses.values()),
        tokens=sum(loss.tokens for loss in losses.values()),
        truncated_tokens=sum(loss.truncated_tokens for loss in losses.values()),
    )
    counts = {source: len(items) for source, items in by_source.items()}
    counts[OVERALL] = len(conversations)

    def summary(scope: str) -> Scores:
        mine = [i for i, turn in enumerate(turns) if scope in (OVERALL, turn.source)]
        scored = [i for i in mine if i in f1]
        loss = losses[scope]
        return Scores(
            conversations=counts[scope],
            turns=len(scored),
            skipped_turns=len(mine) - len(scored),
            bertscore_f1=_mean([f1[i] for i in scored]),
            rouge_l=_mean([rouge[i] for i in scored]),
            perplexity=loss.perplexity if loss.tokens else None,
            assistant_tokens=loss.tokens,
            truncated_tokens=loss.truncated_tokens,
        )

    return VariantScores(
        overall=summary(OVERALL),
        per_source={source: summary(source) for source in sorted(by_source)},
    )


def evaluate_engine(
    engine: GenerationEngine,
    scorer: BertScorer,
    conversations: Sequence[Conversation],
    config: EvaluationConfig,
    *,
    model_name: str,
    adapter: str | None = None,
) -> EvaluationReport:
    """Evaluate the engine's base model, and the loaded adapter ``adapter`` when given."""
    started = time.perf_counter()
    turns = sliding_window_turns(conversations)
    variants: dict[str, VariantScores] = {}
    replies: dict[str, list[str | None]] = {}
    for variant, adapter_name in ((BASE, None), (ADAPTER, adapter)):
        if variant == ADAPTER and adapter is None:
            continue
        replies[variant] = generate_replies(engine, turns, config, adapter_name)
        variants[variant] = score_variant(
            engine, scorer, conversations, turns, replies[variant], adapter_name
        )
        logger.info("%s: %s", variant, variants[variant].overall)
    examples = [
        Example(
            source=turn.source,
            last_user_turn=next(
                (m["content"] for m in reversed(turn.history) if m["role"] == "user"), ""
            ),
            reference=turn.reference,
            replies={variant: texts[index] or "" for variant, texts in replies.items()},
        )
        for index, turn in ((index, turns[index]) for index in _example_indices(turns))
    ]
    return EvaluationReport(
        split=str(config.split),
        model=model_name,
        adapter=str(config.adapter) if config.adapter is not None else None,
        system_prompt=engine.formatter.system_prompt,
        sampling={
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "seed": config.seed,
        },
        variants=variants,
        examples=examples,
        elapsed_s=round(time.perf_counter() - started, 2),
    )


def run_evaluation(config: EvaluationConfig, settings: OuroSettings) -> EvaluationReport:
    """Load the model (and adapter), evaluate, write the reports, log to MLflow if asked."""
    conversations = select_conversations(read_chat_jsonl(config.split), config.max_conversations)
    engine = GenerationEngine.from_settings(settings)
    adapter = None
    if config.adapter is not None:
        engine.add_adapter(ADAPTER_NAME, config.adapter)
        adapter = ADAPTER_NAME
    report = evaluate_engine(
        engine,
        BertScorer(),
        conversations,
        config,
        model_name=settings.base_model,
        adapter=adapter,
    )
    if config.mlflow_uri:
        log_to_mlflow(report, config)
    elif config.out_dir is not None:
        write_reports(report, config.out_dir)
    return report


def write_reports(report: EvaluationReport, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = out_dir / EVALUATION_JSON, out_dir / EVALUATION_MARKDOWN
    json_path.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    markdown_path.write_text(evaluation_report_markdown(report), encoding="utf-8")
    return [json_path, markdown_path]


def report_metrics(report: EvaluationReport) -> dict[str, float]:
    """Flat metric names for MLflow: ``<variant>/<overall|source>/<metric>``, plus deltas."""
    metrics: dict[str, float] = {}
    for variant, scores in report.variants.items():
        for scope, values in (
            (OVERALL, scores.overall),
            *sorted(scores.per_source.items()),
        ):
            for name in (*METRICS, "turns"):
                value = getattr(values, name)
                if value is not None:
                    metrics[f"{variant}/{scope}/{name}"] = float(value)
    if ADAPTER in report.variants:
        for name in METRICS:
            base, adapted = (metrics.get(f"{v}/{OVERALL}/{name}") for v in (BASE, ADAPTER))
            if base is not None and adapted is not None:
                metrics[f"delta/{OVERALL}/{name}"] = adapted - base
    return metrics


def log_to_mlflow(report: EvaluationReport, config: EvaluationConfig) -> str:
    """One MLflow run: sampling and inputs as params, scores as metrics, reports as artifacts.

    The reports go to ``config.out_dir`` too when it is set.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunStatus

    from ouro.registry import AdapterRegistry

    assert config.mlflow_uri is not None
    experiment_id = AdapterRegistry(config.mlflow_uri).ensure_experiment(config.experiment)
    client = MlflowClient(tracking_uri=config.mlflow_uri)
    run = client.create_run(experiment_id, run_name=f"evaluate {Path(report.split).name}")
    run_id = run.info.run_id
    report.mlflow_run_id = run_id
    try:
        params = {
            "split": report.split,
            "model": report.model,
            "adapter": report.adapter or "",
            **{f"sampling.{key}": value for key, value in report.sampling.items()},
        }
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in report_metrics(report).items()],
            params=[Param(key, str(value)) for key, value in params.items()],
        )
        with tempfile.TemporaryDirectory() as scratch:
            for path in write_reports(report, config.out_dir or Path(scratch)):
                client.log_artifact(run_id, str(path))
    except BaseException:
        client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id)
    logger.info("logged evaluation to MLflow run %s", run_id)
    return run_id


def evaluation_report_markdown(report: EvaluationReport) -> str:
    variants = list(report.variants)
    header = ["scope", "metric", *variants]
    if len(variants) == 2:
        header.append("adapter - base")
    rows: list[list[object]] = []
    scopes = [OVERALL, *sorted(report.variants[BASE].per_source)]
    for scope in scopes:
        for name in ("turns", "skipped_turns", *METRICS):
            values = []
            for variant in variants:
                scores = report.variants[variant]
                values.append(
                    getattr(scores.overall if scope == OVERALL else scores.per_source[scope], name)
                )
            row: list[object] = [scope, name, *("n/a" if v is None else v for v in values)]
            if len(variants) == 2 and name in METRICS:
                row.append("n/a" if None in values else values[1] - values[0])
            elif len(variants) == 2:
                row.append("")
            rows.append(row)
    example_rows = [
        [e.source, e.last_user_turn, e.reference, *(e.replies.get(v, "") for v in variants)]
        for e in report.examples
    ]
    sampling = json.dumps(report.sampling)
    return (
        "\n\n".join(
            [
                "# Evaluation report",
                f"Split `{report.split}`; model `{report.model}`"
                + (f"; adapter `{report.adapter}`" if report.adapter else "")
                + f"; sampling {sampling}; {report.elapsed_s:.1f} s.",
                "Replies are generated from the turns before each assistant turn and scored "
                "against it (BERTScore F1 with all-MiniLM-L6-v2, no rescaling; ROUGE-L). "
                "Perplexity covers the reference assistant tokens only.",
                markdown_table(header, rows),
                "## Examples",
                markdown_table(["source", "user", "reference", *variants], example_rows),
            ]
        )
        + "\n"
    )


def _example_indices(turns: Sequence[EvaluationTurn]) -> list[int]:
    """The first turn of each source, then the next ones, up to EXAMPLES."""
    first_of_source: dict[str, int] = {}
    for index, turn in enumerate(turns):
        first_of_source.setdefault(turn.source, index)
    chosen = sorted(first_of_source.values())[:EXAMPLES]
    rest = [index for index in range(len(turns)) if index not in first_of_source.values()]
    return sorted(chosen + rest[: EXAMPLES - len(chosen)])


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
