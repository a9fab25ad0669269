"""The GPU path, proved and measured: NF4 + mixed adapters, and a decode roofline.

    python -m loadtests.bench_gpu [--shape llama-3.2-3b|tiny] [--device cuda|cpu]
        [--memory-gib 15] [--out loadtests/results/gpu.json]

Nothing can be downloaded, so the model is randomly initialised with Llama-3.2-3B's exact
shapes (random weights cost the same compute), saved once with a word-level tokenizer
over the same vocabulary, and loaded in NF4 through the serving loader
(``ouro.models.load_base_model``), so what runs is what Serve runs.

1. Correctness: 4 random LoRA adapters (r 16, every projection). A mixed batch gives the
   same greedy tokens as each adapter alone; the first step's logits match PEFT's own
   ``adapter_names`` forward within half-precision tolerance; no NaN. The process memory
   is capped at a T4's 15 GiB (``--memory-gib``) to show the deployment fits.
2. Decode: tokens/s at batch 1, 8, 16 and 64, with no adapters and with 4 mixed, against
   the roofline: bytes read per step (NF4 weights + absmax, the half-precision lm_head and
   norms, the LoRA bank, the KV cache) over the bandwidth measured on the same device with
   a device-to-device copy. A short profile says how much of a step the GPU is busy.

Writes ``gpu.json`` with the keys ``roofline_fraction_batch1``, ``best_batch_speedup``,
``mixed_adapter_equal`` and the device's name. ``--shape tiny --device cpu`` runs the
same code in seconds (the suite does, to keep it working); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from loadtests.bench_engine import random_lora
from ouro.engine import EngineLimits, GenerationEngine, GenerationRequest, SamplingParams
from ouro.models import load_base_model
from ouro.settings import OuroSettings

logger = logging.getLogger("loadtests.bench_gpu")

SHAPES = {
    "llama-3.2-3b": {
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "rope_theta": 500000.0,
        "max_position_embeddings": 4096,
    },
    "tiny": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1024,
        "tie_word_embeddings": True,
        "max_position_embeddings": 1024,
    },
}
ADAPTERS = 4
BATCHES = (1, 8, 16, 64)
PROMPT_TOKENS = 128
DECODE_STEPS = 32
END_TOKEN = "<|end|>"
"""The tokenizer's EOS, with an id past the model's vocabulary: no row stops early."""


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose token i is the word ``t<i>``; text round-trips ids."""
    vocab = {f"t{index}": index for index in range(vocab_size)}
    vocab[END_TOKEN] = vocab_size
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=END_TOKEN, pad_token="t0", unk_token="t0"
    )
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return tokenizer


def build_base(shape: dict, directory: Path, device: torch.device) -> list[Path]:
    """Save the random base model (and 4 random adapters for it); returns the adapters."""
    torch.manual_seed(0)
    config = LlamaConfig(**shape)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(directory / "base")
    build_tokenizer(config.vocab_size).save_pretrained(directory / "base")
    adapters = []
    for index in range(ADAPTERS):
        torch.manual_seed(100 + index)
        peft_model = random_lora(model, lora_alpha=32, std=0.02)
        path = directory / f"adapter-{index}"
        peft_model.save_pretrained(path)
        adapters.append(path)
        model = peft_model.unload()
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return adapters


def random_prompts(count: int, vocab_size: int, length: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab_size, (count, length), generator=generator).tolist()


class _Sink:
    def __init__(self) -> None:
        self.text: list[str] = []
        self.done = False
        self.error: BaseException | None = None

    def put(self, delta) -> None:
        self.text.append(delta.text)
        self.done = delta.finish_reason is not None

    def fail(self, error: BaseException) -> None:
        self.error, self.done = error, True


def run_requests(
    engine: GenerationEngine, prompts: list[list[int]], adapters: list[str | None], tokens: int
) -> list[str]:
    """Greedy answers to token-id prompts, all submitted at once (the engine batches them)."""
    sinks = []
    for index, (prompt, adapter) in enumerate(zip(prompts, adapters, strict=True)):
        sink = _Sink()
        request = GenerationRequest(
            [], SamplingParams(max_tokens=tokens), adapter=adapter, request_id=f"b{index}"
        )
        engine.add_request(request, sink, prompt_ids=prompt, bounded=False)
        sinks.append(sink)
    while not all(sink.done for sink in sinks):
        engine.step()
    for sink in sinks:
        if sink.error is not None:
            raise sink.error
    return ["".join(sink.text) for sink in sinks]


def check_correctness(engine: GenerationEngine, names: list[str], vocab_size: int) -> dict:
    """Mixed batch vs each adapter alone; first-step logits vs PEFT; finiteness."""
    rows = [*names, None, *names]
    prompts = random_prompts(len(rows), vocab_size, 24, seed=1)
    mixed = run_requests(engine, prompts, rows, 16)
    alone = [run_requests(engine, [p], [a], 16)[0] for p, a in zip(prompts, rows, strict=True)]

    ids = torch.tensor(prompts, device=engine.device)
    mask = torch.ones_like(ids)
    positions = torch.arange(ids.shape[1], device=engine.device).expand_as(ids)
    with torch.inference_mode():
        ours = engine.runner.forward(
            ids, mask, positions, DynamicCache(config=engine.runner.base_model.config), rows
        )
        peft_logits = (
            engine.model(
                input_ids=ids,
                attention_mask=mask,
                adapter_names=[name or "__base__" for name in rows],
            )
            .logits[:, -1, :]
            .float()
        )
    scale = peft_logits.abs().max().item()
    max_diff = (ours - peft_logits).abs().max().item()
    return {
        "mixed_adapter_equal": mixed == alone,
        "rows": len(rows),
        "first_step_max_abs_diff": max_diff,
        "first_step_logit_scale": scale,
        "first_step_within_tolerance": max_diff <= 2e-2 * max(scale, 1.0),
        "finite": bool(torch.isfinite(ours).all() and torch.isfinite(peft_logits).all()),
    }


def bytes_per_step(engine: GenerationEngine, batch: int, context: int, mixed: bool) -> dict:
    """What one decoding step must read from memory, by part."""
    model = engine.runner.base_model
    weights = 0
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if "lora_" in name or "rotary" in name:
            continue
        if name.endswith("embed_tokens.weight") and not model.config.tie_word_embeddings:
            continue  # the embedding reads only ``batch`` rows
        weights += tensor.numel() * tensor.element_size()
        state = getattr(tensor, "quant_state", None)
        if state is not None and state.absmax is not None:
            weights += state.absmax.numel() * state.absmax.element_size()
    bank = engine.runner._lora_bank()
    lora = (
        sum(
            a.numel() * a.element_size() + b.numel() * b.element_size()
            for a, b, _ in bank.weights.values()
        )
        if mixed
        else 0
    )
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    element = 2 if engine.device.type == "cuda" else 4
    kv = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * element
    kv *= batch * context
    return {"weights": weights, "lora_bank": lora, "kv_cache": kv, "total": weights + lora + kv}


def copy_bandwidth(device: torch.device, gib: float = 1.0) -> float:
    """Bytes/s of a device-to-device copy (a read and a write per byte copied)."""
    size = int(gib * 2**30) // 4
    source = torch.empty(size, dtype=torch.float32, device=device).uniform_()
    target = torch.empty_like(source)
    times = []
    for _ in range(5):
        _sync(device)
        started = time.perf_counter()
        target.copy_(source)
        _sync(device)
        times.append(time.perf_counter() - started)
    return 2 * source.numel() * 4 / min(times)


def decode_rate(engine: GenerationEngine, batch: int, names: list[str], vocab_size: int) -> dict:
    """Tokens/s of decoding steps with ``batch`` rows (prefill excluded)."""
    adapters = [names[i % len(names)] for i in range(batch)] if names else [None] * batch
    prompts = random_prompts(batch, vocab_size, PROMPT_TOKENS, seed=batch)
    sinks = []
    for index, (prompt, adapter) in enumerate(zip(prompts, adapters, strict=True)):
        sink = _Sink()
        request = GenerationRequest(
            [], SamplingParams(max_tokens=DECODE_STEPS + 4), adapter=adapter, request_id=f"d{index}"
        )
        engine.add_request(request, sink, prompt_ids=prompt, bounded=False)
        sinks.append(sink)
    while engine.stats().running_requests < batch or engine._prefill is not None:
        engine.step()  # prefill until every row decodes
    engine.step()  # one warm decode step
    _sync(engine.device)
    started = time.perf_counter()
    for _ in range(DECODE_STEPS):
        engine.step()
    _sync(engine.device)
    seconds = (time.perf_counter() - started) / DECODE_STEPS
    while not all(sink.done for sink in sinks):
        engine.step()
    return {"batch": batch, "step_s": seconds, "tokens_per_s": batch / seconds}


def profile_step(engine: GenerationEngine, vocab_size: int) -> dict:
    """Share of a batch-1 decoding step the device is busy, and kernels per step."""
    from torch.profiler import ProfilerActivity, profile

    sink = _Sink()
    prompt = random_prompts(1, vocab_size, PROMPT_TOKENS, seed=7)[0]
    engine.add_request(
        GenerationRequest([], SamplingParams(max_tokens=12), request_id="p"), sink, prompt
    )
    for _ in range(3):
        engine.step()
    activities = [ProfilerActivity.CPU]
    if engine.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    steps = 5
    _sync(engine.device)
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            engine.step()
        _sync(engine.device)
    wall = (time.perf_counter() - started) / steps
    while not sink.done:
        engine.step()
    events = prof.key_averages()
    device_us = sum(getattr(e, "self_device_time_total", 0) for e in events) / steps
    kernels = sum(e.count for e in events if getattr(e, "self_device_time_total", 0) > 0) / steps
    return {
        "step_wall_s": wall,
        "device_busy_s": device_us / 1e6,
        "device_busy_fraction": (device_us / 1e6) / wall if wall else None,
        "kernels_per_step": kernels,
        "top_ops": [
            {"name": e.key, "self_device_ms": getattr(e, "self_device_time_total", 0) / 1e3 / steps}
            for e in sorted(
                events, key=lambda e: getattr(e, "self_device_time_total", 0), reverse=True
            )[:8]
        ],
    }


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    shape = SHAPES[args.shape]
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_gib * 2**30 / total))
    with tempfile.TemporaryDirectory(prefix="ouro-gpu-bench-") as scratch:
        work = Path(scratch)
        adapter_dirs = build_base(shape, work, device)
        settings = OuroSettings(
            data_dir=work / "data",
            base_model=str(work / "base"),
            device=device.type,
            quantization="nf4",
        )
        loaded = load_base_model(settings)
        engine = GenerationEngine(
            loaded.model,
            loaded.tokenizer,
            system_prompt="",
            max_context_tokens=shape["max_position_embeddings"],
            limits=EngineLimits(
                max_running_requests=max(BATCHES),
                max_kv_cache_tokens=max(BATCHES) * (PROMPT_TOKENS + DECODE_STEPS + 8),
                max_prefill_tokens_per_step=4096,
            ),
        )
        names = [f"adapter-{i}" for i in range(ADAPTERS)]
        for name, path in zip(names, adapter_dirs, strict=True):
            engine.add_adapter(name, path)
        vocab = shape["vocab_size"]
        correctness = check_correctness(engine, names, vocab)
        logger.info("correctness: %s", correctness)
        bandwidth = copy_bandwidth(device)
        decode = {}
        for mode, chosen in (("no_adapters", []), ("mixed_4_adapters", names)):
            rows = []
            for batch in BATCHES:
                rate = decode_rate(engine, batch, chosen, vocab)
                read = bytes_per_step(
                    engine, batch, PROMPT_TOKENS + DECODE_STEPS // 2, bool(chosen)
                )
                roofline = batch * bandwidth / read["total"]
                rows.append(
                    {
                        **rate,
                        "bytes_per_step": read,
                        "roofline_tokens_per_s": roofline,
                        "roofline_fraction": rate["tokens_per_s"] / roofline,
                    }
                )
                logger.info(
                    "%s batch %d: %.1f tok/s (%.0f%% of roofline)",
                    mode,
                    batch,
                    rate["tokens_per_s"],
                    100 * rows[-1]["roofline_fraction"],
                )
            decode[mode] = rows
        profile = profile_step(engine, vocab)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    base_rows = decode["no_adapters"]
    best = max(row["tokens_per_s"] for row in base_rows)
    return {
        "command": " ".join(["python -m loadtests.bench_gpu", *sys.argv[1:]]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "shape": args.shape,
        "memory_cap_gib": args.memory_gib if device.type == "cuda" else None,
        "peak_memory_gib": peak / 2**30 if peak is not None else None,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "roofline_fraction_batch1": base_rows[0]["roofline_fraction"],
        "best_batch_speedup": best / base_rows[0]["tokens_per_s"],
        "mixed_adapter_equal": correctness["mixed_adapter_equal"],
        "correctness": correctness,
        "decode": decode,
        "profile_batch1": profile,
        "t4_projection_batch1_tokens_per_s": 320e9 / base_rows[0]["bytes_per_step"]["total"],
        "median_step_s_batch1": statistics.median([base_rows[0]["step_s"]]),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_gpu", description=__doc__)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-3b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--memory-gib", type=float, default=15.0, help="a T4's memory")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/gpu.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "device",
                    "roofline_fraction_batch1",
                    "best_batch_speedup",
                    "mixed_adapter_equal",
                )
            }
        )
    )
    return 0 if result["mixed_adapter_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
