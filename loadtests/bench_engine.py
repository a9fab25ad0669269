"""Benchmark: batched mixed-adapter generation vs. one request at a time.

    python -m loadtests.bench_engine [--data-dir .ouro] [--max-tokens 64] [--repeats 3]
        [--threads N] [--clock wall|cpu]

For 1, 4 and 16 concurrent requests spread over 4 LoRA adapters on ouro-tiny, it measures
the aggregate tokens/s of
  * the original project's way: one request at a time, switching the active adapter with
    ``set_adapter`` between requests and calling ``generate`` (Hugging Face) for each;
  * Ouro's engine: all requests in one batch, each row with its own adapter.
Both decode greedily from the same prompts; the tokens counted are those each produced.
Prints a Markdown table. This is a measurement, not a test: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from ouro.corpus import load_chatterbot_conversations
from ouro.embedded import TINY_MODEL
from ouro.engine import GenerationEngine, GenerationRequest, SamplingParams
from ouro.settings import OuroSettings

logger = logging.getLogger(__name__)

ADAPTERS = 4
CONCURRENCY = (1, 4, 16)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def random_lora(model, lora_alpha: int, std: float):
    """``model`` wrapped with a rank-16 LoRA on every projection, B drawn from N(0, std):
    a fresh adapter is a no-op, so give it weights that change the outputs."""
    peft_model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=lora_alpha, target_modules=LORA_TARGETS)
    )
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=std)
    return peft_model


def make_adapters(model_dir: str, directory: Path, count: int) -> dict[str, Path]:
    """``count`` LoRA adapters (rank 16, all linear layers) with small random weights."""
    adapters = {}
    for index in range(count):
        torch.manual_seed(index)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        peft_model = random_lora(model, lora_alpha=16, std=0.01)
        path = directory / f"adapter-{index}"
        peft_model.save_pretrained(path)
        adapters[f"adapter-{index}"] = path
    return adapters


def make_requests(count: int, names: list[str], max_tokens: int) -> list[GenerationRequest]:
    questions = [conversation[0]["content"] for conversation in load_chatterbot_conversations()]
    return [
        GenerationRequest(
            messages=[{"role": "user", "content": questions[(index * 37) % len(questions)]}],
            params=SamplingParams(max_tokens=max_tokens),
            adapter=names[index % len(names)],
        )
        for index in range(count)
    ]


def run_one_at_a_time(engine: GenerationEngine, requests: list[GenerationRequest]) -> int:
    """The original way: set the adapter, generate one request, repeat. Returns tokens made."""
    model = engine.model
    tokens = 0
    with torch.inference_mode():
        for request in requests:
            model.set_adapter(request.adapter)
            prompt = torch.tensor([engine.prompt_ids(request)], device=engine.device)
            output = model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=request.params.max_tokens,
                do_sample=False,
                eos_token_id=sorted(engine.end_ids),
                pad_token_id=engine.pad_id,
            )
            tokens += output.shape[1] - prompt.shape[1]
    return tokens


def run_batched(engine: GenerationEngine, requests: list[GenerationRequest]) -> int:
    return sum(output.completion_tokens for output in engine.generate(requests))


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def measure(function, engine, requests, repeats: int, clock) -> float:
    """Median aggregate tokens/s over ``repeats`` runs."""
    rates = []
    for _ in range(repeats):
        started = clock()
        tokens = function(engine, requests)
        rates.append(tokens / (clock() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(".ouro"), help="model cache root")
    parser.add_argument("--base-model", default=TINY_MODEL, help="default: the embedded ouro-tiny")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per request")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (median)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time, or this process's CPU time (fairer on a shared machine, with --threads 1)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    settings = OuroSettings(
        data_dir=args.data_dir, device="cpu", quantization="none", base_model=args.base_model
    )
    clock = CLOCKS[args.clock]
    engine = GenerationEngine.from_settings(settings)
    with tempfile.TemporaryDirectory(prefix="ouro-bench-") as scratch:
        adapters = make_adapters(engine.model.name_or_path, Path(scratch), ADAPTERS)
        for name, path in adapters.items():
            engine.add_adapter(name, path)
        names = list(adapters)
        run_batched(engine, make_requests(2, names, 4))  # warm-up
        rows = []
        for count in CONCURRENCY:
            requests = make_requests(count, names, args.max_tokens)
            baseline = measure(run_one_at_a_time, engine, requests, args.repeats, clock)
            batched = measure(run_batched, engine, requests, args.repeats, clock)
            rows.append((count, baseline, batched))
            logger.info("%s requests: %.1f vs %.1f tokens/s", count, baseline, batched)

    print(
        f"Base model: {settings.base_model}; {ADAPTERS} LoRA adapters (rank 16, all linear "
        f"layers); greedy, max_tokens={args.max_tokens}; torch threads={torch.get_num_threads()}; "
        f"{args.clock} clock, median of {args.repeats} runs."
    )
    print()
    print(
        "| concurrent requests | one at a time, set_adapter (tok/s) | batched mixed adapters (tok/s) | speed-up |"
    )
    print("|---:|---:|---:|---:|")
    for count, baseline, batched in rows:
        print(f"| {count} | {baseline:.1f} | {batched:.1f} | {batched / baseline:.2f}x |")


if __name__ == "__main__":
    main()
