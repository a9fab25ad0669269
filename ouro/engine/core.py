"""GenerationEngine: one loop that owns the model and schedules every decoding step.

Continuous batching, as vLLM and TGI do it: requests wait in a bounded FIFO queue, join
the running batch at the next step that has room for them, and leave it the step they
finish or are aborted. Each :meth:`GenerationEngine.step`:

1. drops aborted requests (wherever they are: waiting, prefilling or decoding);
2. admits waiting requests, first come first served, while the budgets allow: running
   requests, KV-cache tokens (each request reserves prompt + max_tokens) — the group
   admitted together is prefilled apart from the running batch;
3. prefills at most ``max_prefill_tokens_per_step`` prompt tokens of that group (chunked
   prefill: a long prompt is spread over several steps and never stalls the decoding
   rows); when the group's prompts are done, each row samples its first token and the
   group joins the running batch (:class:`~ouro.engine.kv_batch.KVBatch` merges caches);
4. decodes one token for every running row in a single forward, each row with its own
   adapter (LoRA bank, see :mod:`ouro.engine.lora_bank`), sampling settings, seed and
   stop strings; finished rows leave at once.

Why its own padded KV cache rather than transformers' ``ContinuousBatchingManager``
(paged attention): that manager packs all requests' tokens into one flattened row and
schedules them in its own thread, so the LoRA bank would need each token's request at
every forward — internal state it does not expose. A left-padded ``DynamicCache`` keeps
the model's ordinary forward (any attention implementation, CPU and CUDA alike) and the
per-row adapter routing; the price is padding when rows of very different lengths share
a batch, bounded by trimming columns no live row uses.

Adapters are added and removed between steps (a lock held for the model work of one
step), so a change never waits for a whole generation. Rows whose adapter is removed
are aborted, never continued on another adapter.

Threads: ``add_request``, ``abort``, ``stats`` and the adapter methods may be called
from any thread; ``step`` from one driver at a time (the :class:`~ouro.engine.AsyncEngine`
thread, or ``generate`` for synchronous callers such as the training job's gates).
Failures stay with their row: a request that cannot be sampled or decoded fails alone.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from ouro.chat import ChatFormatter
from ouro.engine import sampling
from ouro.engine.detokenizer import IncrementalDetokenizer, TokenDecoder
from ouro.engine.kv_batch import KVBatch, RowSelection
from ouro.engine.model_runner import ModelRunner
from ouro.engine.types import (
    BATCH_SIZE_BUCKETS,
    FINISH_LENGTH,
    FINISH_STOP,
    STEP_SECONDS_BUCKETS,
    AdapterNotFoundError,
    EngineLimits,
    EngineOverloadedError,
    EngineStats,
    GenerationOutput,
    GenerationRequest,
    InvalidRequestError,
    PositionLogprobs,
    RequestAbortedError,
    SamplingParams,
    StreamDelta,
    TokenConstraint,
)
from ouro.models import load_base_model

logger = logging.getLogger(__name__)

_END_OF_TURN_TOKENS = ("<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>")


class RequestSink(Protocol):
    """Where a request's output goes; called on the engine's driver thread."""

    def put(self, delta: StreamDelta) -> None:
        """One step's delta (the last one has ``finish_reason`` set)."""

    def fail(self, error: BaseException) -> None:
        """The request ended with ``error``; nothing more follows."""


class _Sequence:
    """One choice of a request, from admission to its last token (a row of the batch)."""

    def __init__(
        self,
        request: GenerationRequest,
        prompt_ids: list[int],
        max_new_tokens: int,
        detokenizer: IncrementalDetokenizer,
        sink: RequestSink,
        seq_id: int,
        index: int = 0,
    ) -> None:
        self.seq_id = seq_id
        """The request's id in the engine, shared by its choices (what ``abort`` takes)."""
        self.index = index
        """Which of the request's ``n`` choices this row generates."""
        self.request = request
        self.params: SamplingParams = request.params.choice(index)
        self.prompt_ids = prompt_ids
        self.max_new_tokens = max_new_tokens
        self.detokenizer = detokenizer
        self.sink = sink
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.next_token: int | None = None
        """The last sampled token: fed to the model at the next decoding step."""
        self.first_token_at: float | None = None
        self.logits = sampling.RowLogits(
            self.params, request.constraint() if request.constraint is not None else None
        )
        """Its bias, penalties and structured-output constraint."""
        self.generator: torch.Generator | None = None
        if not self.params.greedy:
            seed = self.params.seed if self.params.seed is not None else secrets.randbits(63)
            self.generator = torch.Generator().manual_seed(seed)

    @property
    def constraint(self) -> TokenConstraint | None:
        return self.logits.constraint

    @property
    def fast(self) -> bool:
        """Picked by the batched argmax: greedy, with nothing that changes its logits."""
        return self.generator is None and not self.logits.changes_logits

    @property
    def reserved_tokens(self) -> int:
        """KV-cache tokens this request may come to hold."""
        return len(self.prompt_ids) + self.max_new_tokens

    def advance(
        self, token: int, end_ids: frozenset[int], logprobs: PositionLogprobs | None = None
    ) -> StreamDelta:
        """Take one generated token; return what it adds to the answer."""
        self.completion_tokens += 1
        self.logits.accept(token)
        self.next_token = token
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        if token in end_ids:
            self.finish_reason = FINISH_STOP
            text = self.detokenizer.flush()
        else:
            text = self.detokenizer.add(token)
            if self.detokenizer.stopped:
                self.finish_reason = FINISH_STOP
            elif self.constraint is not None and self.constraint.finished:
                self.finish_reason = FINISH_STOP
                text += self.detokenizer.flush()
            elif self.completion_tokens >= self.max_new_tokens:
                self.finish_reason = FINISH_LENGTH
                text += self.detokenizer.flush()
        return StreamDelta(
            text=text,
            finish_reason=self.finish_reason,
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=self.completion_tokens,
            first_token_at=self.first_token_at,
            index=self.index,
            logprobs=(logprobs,) if logprobs is not None else (),
        )


class _PrefillGroup:
    """Requests admitted together, prefilled (in chunks) apart from the running batch."""

    def __init__(self, seqs: list[_Sequence], pad_id: int, config, device: torch.device):
        self.seqs = seqs
        width = max(len(seq.prompt_ids) for seq in seqs)
        self.input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        self.attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            self.input_ids[row, width - len(seq.prompt_ids) :] = torch.tensor(seq.prompt_ids)
            self.attention_mask[row, width - len(seq.prompt_ids) :] = 1
        self.input_ids = self.input_ids.to(device)
        self.attention_mask = self.attention_mask.to(device)
        self.positions = (self.attention_mask.cumsum(-1) - 1).clamp(min=0)
        self.batch = KVBatch.empty(config, device)
        self.done = 0
        """Columns prefilled so far."""

    @property
    def width(self) -> int:
        return self.input_ids.shape[1]

    def select(self, keep: list[int]) -> None:
        """Keep the rows at ``keep`` (aborted rows leave before their prefill ends)."""
        selection = RowSelection(keep, self.input_ids.device)
        self.seqs = [self.seqs[row] for row in keep]
        self.input_ids = selection(self.input_ids)
        self.attention_mask = selection(self.attention_mask)
        self.positions = selection(self.positions)
        if self.done and keep:
            selection.apply_to_cache(self.batch.cache)


class GenerationEngine:
    """A base model, its LoRA adapters, and a continuous-batching scheduler over both."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        system_prompt: str,
        max_context_tokens: int,
        limits: EngineLimits | None = None,
    ) -> None:
        self.runner = ModelRunner(model)
        self.tokenizer = tokenizer
        self.limits = limits or EngineLimits()
        self.max_positions = int(
            getattr(model.config, "max_position_embeddings", None) or max_context_tokens
        )
        self.formatter = ChatFormatter(
            tokenizer, system_prompt, min(max_context_tokens, self.max_positions)
        )
        self.end_ids = _end_of_turn_ids(model, tokenizer)
        # Ids a logit_bias may name: those the model scores and the tokenizer can decode.
        self.vocab_size = min(len(tokenizer), model.get_output_embeddings().weight.shape[0])
        self.token_texts = sampling.TokenTexts(tokenizer)
        self.token_decoder = TokenDecoder(tokenizer)
        """Answers' decoding, private to the driver thread (no lock shared with prompts)."""
        pad_id = tokenizer.pad_token_id
        self.pad_id = pad_id if pad_id is not None else min(self.end_ids)
        # Fast tokenizers fail with "Already borrowed" when used from several threads at once.
        self._tokenizer_lock = threading.Lock()
        # Held for the model work of one step, and by adapter changes (between steps).
        self._model_lock = threading.RLock()
        self._queue_lock = threading.Lock()
        self._waiting: deque[_Sequence] = deque()
        self._aborted_seqs: set[int] = set()
        self._failed_seq_ids: set[int] = set()
        """Requests one of whose choices failed: their other choices leave at the next step."""
        self._seq_ids = itertools.count()
        self._work = threading.Event()
        """Set when a request or an abort arrives; the driver waits on it when idle."""
        self._prefill: _PrefillGroup | None = None
        self._running: list[_Sequence] = []
        self._batch = KVBatch.empty(model.config, self.device)
        self._reserved_tokens = 0
        self._counters = {"aborted": 0, "failed": 0, "finished": 0, "steps": 0}
        self._step_seconds = _Histogram(STEP_SECONDS_BUCKETS)
        self._batch_sizes = _Histogram(BATCH_SIZE_BUCKETS)

    @classmethod
    def from_settings(cls, settings) -> GenerationEngine:
        """Load the configured base model and build an engine around it."""
        loaded = load_base_model(settings)
        return cls(
            loaded.model,
            loaded.tokenizer,
            system_prompt=settings.system_prompt,
            max_context_tokens=settings.max_context_tokens,
            limits=EngineLimits(
                max_running_requests=settings.max_running_requests,
                max_waiting_requests=settings.max_queued_requests,
                max_kv_cache_tokens=settings.max_kv_cache_tokens,
                max_prefill_tokens_per_step=settings.max_prefill_tokens_per_step,
            ),
        )

    @property
    def model(self):
        """The model that generates: the base, or the PeftModel wrapping it once adapters exist."""
        return self.runner.model

    @property
    def device(self) -> torch.device:
        return self.runner.device

    # -- adapters (any thread; they wait for the current step, never for a generation) ----
    def adapter_names(self) -> list[str]:
        """Names of the loaded adapters, in load order."""
        return self.runner.adapter_names()

    def add_adapter(self, name: str, path: Path) -> None:
        """Load the PEFT LoRA adapter in ``path`` under ``name`` (see ModelRunner)."""
        with self._model_lock:
            self.runner.add_adapter(name, path)

    def remove_adapter(self, name: str) -> None:
        """Unload an adapter; requests still using it are aborted, the others go on."""
        with self._model_lock:
            self.runner.remove_adapter(name)
            error = RequestAbortedError(f"adapter {name!r} was removed")
            self._drop(lambda seq: seq.request.adapter == name, error)

    # -- requests --------------------------------------------------------------------------
    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The request's formatted prompt; raises what ``add_request`` would for a bad one."""
        self._check_adapter(request)
        # Leave room for the answer, but never less than half the context for the prompt.
        room = min(request.params.max_tokens, self.max_positions // 2)
        try:
            with self._tokenizer_lock:
                return self.formatter.prompt_ids(request.messages, self.max_positions - room)
        except (TypeError, UnicodeError) as error:  # e.g. a lone surrogate in the text
            raise InvalidRequestError(f"the messages cannot be encoded: {error}") from error

    def add_request(
        self,
        request: GenerationRequest,
        sink: RequestSink,
        prompt_ids: list[int] | None = None,
        *,
        bounded: bool = True,
    ) -> int:
        """Queue a request; its output goes to ``sink``. Returns the engine's id for it.

        Each of the request's ``n`` choices is a row of its own (its deltas carry its
        ``index``); the prompt is prefilled once per row, which keeps every row an
        ordinary one of the batch (no shared cache to copy) at the price of ``n``
        prefills. Raises at once, before any work, for a request that cannot be served
        (bad settings, a logit_bias id outside the vocabulary, unknown adapter, prompt
        too long: ``OuroError`` subclasses) and with EngineOverloadedError when the
        waiting queue is full (``bounded``). ``prompt_ids`` skips formatting when the
        caller already has them. The id returned is the only handle ``abort`` takes: the
        engine assigns it, so a client's own request id (``x-request-id``, which anyone
        can send) never names another client's request.
        """
        if prompt_ids is None:
            prompt_ids = self.prompt_ids(request)
        else:
            self._check_adapter(request)
        outside = [token for token in request.params.logit_bias if not 0 <= token < self.vocab_size]
        if outside:
            raise InvalidRequestError(
                f"logit_bias names token ids outside the vocabulary [0, {self.vocab_size}): "
                f"{sorted(outside)[:5]}",
                "logit_bias",
            )
        max_new = min(request.params.max_tokens, self.max_positions - len(prompt_ids))
        seq_id = next(self._seq_ids)
        seqs = [
            _Sequence(
                request,
                prompt_ids,
                max_new,
                IncrementalDetokenizer(self.token_decoder, request.params.stop),
                sink,
                seq_id,
                index,
            )
            for index in range(request.params.n)
        ]
        if seqs[0].reserved_tokens > self.limits.max_kv_cache_tokens:
            raise InvalidRequestError(
                f"the request needs {seqs[0].reserved_tokens} KV-cache tokens (prompt + "
                f"max_tokens); the engine holds {self.limits.max_kv_cache_tokens}"
            )
        with self._queue_lock:
            if bounded and len(self._waiting) >= self.limits.max_waiting_requests:
                raise EngineOverloadedError(
                    f"{len(self._waiting)} requests are already waiting; retry shortly"
                )
            self._waiting.extend(seqs)
        self._work.set()
        return seq_id

    def abort(self, seq_id: int) -> None:
        """Stop the request ``add_request`` returned ``seq_id`` for, every choice of it, at
        the next step (a no-op once it has finished)."""
        with self._queue_lock:
            self._aborted_seqs.add(seq_id)
        self._work.set()

    def wake(self) -> None:
        """Return a driver waiting in ``wait_for_work`` at once."""
        self._work.set()

    def has_work(self) -> bool:
        return bool(self._waiting or self._running or self._prefill or self._aborted_seqs)

    def wait_for_work(self, timeout: float) -> bool:
        """Block until a request or an abort arrives (True) or ``timeout`` passes."""
        if self.has_work():
            return True
        self._work.clear()
        return self.has_work() or self._work.wait(timeout)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationOutput]:
        """Answer requests together, stepping the engine on this thread until all finish.

        For synchronous callers (training gates, benchmarks) of an engine no
        AsyncEngine drives. Every request is checked before any work starts. One output
        per choice: the ``n`` choices of the first request, then the next request's.
        """
        prompts = [self.prompt_ids(request) for request in requests]
        collectors = [_Collector(request.params.n) for request in requests]
        for request, prompt, collector in zip(requests, prompts, collectors, strict=True):
            self.add_request(request, collector, prompt, bounded=False)
        while not all(collector.done for collector in collectors):
            self.step()
        with self._model_lock:
            self._apply_aborts()  # the other choices of a request that failed
        return [output for collector in collectors for output in collector.outputs()]

    # -- the step ------------------------------------------------------------------------
    def step(self) -> None:
        """One scheduling step (see the module docstring)."""
        started = time.perf_counter()
        with self._model_lock:
            self._apply_aborts()
            self._admit()
            rows = 0
            with torch.inference_mode():
                if self._prefill is not None:
                    rows += len(self._prefill.seqs)
                    self._prefill_chunk()
                if self._running:
                    rows += len(self._running)
                    self._decode()
        if rows:
            self._counters["steps"] += 1
            self._step_seconds.observe(time.perf_counter() - started)
            self._batch_sizes.observe(rows)

    def _apply_aborts(self) -> None:
        with self._queue_lock:
            seqs, self._aborted_seqs = self._aborted_seqs, set()
        if seqs:
            error = RequestAbortedError("the request was aborted")
            dropped = self._drop(lambda seq: seq.seq_id in seqs, error)
            self._counters["aborted"] += dropped
            self._failed_seq_ids -= seqs  # their remaining choices are gone now

    def _end(self, seq: _Sequence, error: BaseException) -> None:
        """Tell a dropped row's sink, unless another choice of its request already failed it."""
        if seq.seq_id not in self._failed_seq_ids:
            seq.sink.fail(error)

    def _drop(self, doomed, error: BaseException) -> int:
        """Take every sequence for which ``doomed(seq)`` holds out of the engine."""
        dropped = 0
        with self._queue_lock:
            kept = deque(seq for seq in self._waiting if not doomed(seq))
            dropped += len(self._waiting) - len(kept)
            gone = [seq for seq in self._waiting if doomed(seq)]
            self._waiting = kept
        for seq in gone:
            self._end(seq, error)
        if self._prefill is not None:
            keep = [row for row, seq in enumerate(self._prefill.seqs) if not doomed(seq)]
            for seq in self._prefill.seqs:
                if doomed(seq):
                    self._release(seq)
                    self._end(seq, error)
                    dropped += 1
            if not keep:
                self._prefill = None
            elif len(keep) < len(self._prefill.seqs):
                self._prefill.select(keep)
        keep = [row for row, seq in enumerate(self._running) if not doomed(seq)]
        if len(keep) < len(self._running):
            for seq in self._running:
                if doomed(seq):
                    self._release(seq)
                    self._end(seq, error)
                    dropped += 1
            self._keep_running(keep)
        return dropped

    def _admit(self) -> None:
        if self._prefill is not None:
            return  # one group prefills at a time; the next forms when it has joined
        room = self.limits.max_running_requests - len(self._running)
        admitted: list[_Sequence] = []
        with self._queue_lock:
            while self._waiting and len(admitted) < room:
                seq = self._waiting[0]
                if self._reserved_tokens + seq.reserved_tokens > self.limits.max_kv_cache_tokens:
                    break  # first come, first served: nobody overtakes the head of the queue
                self._waiting.popleft()
                self._reserved_tokens += seq.reserved_tokens
                admitted.append(seq)
        admitted = [seq for seq in admitted if self._still_servable(seq)]
        if admitted:
            self._prefill = _PrefillGroup(
                admitted, self.pad_id, self.runner.base_model.config, self.device
            )

    def _still_servable(self, seq: _Sequence) -> bool:
        adapter = seq.request.adapter
        if adapter is None or self.runner.has_adapter(adapter):
            return True
        # Its adapter went while it waited.
        self._fail(seq, AdapterNotFoundError(f"no adapter named {adapter!r} is loaded"))
        return False

    def _prefill_chunk(self) -> None:
        group = self._prefill
        chunk = max(1, self.limits.max_prefill_tokens_per_step // len(group.seqs))
        end = min(group.width, group.done + chunk)
        try:
            logits = self.runner.forward(
                group.input_ids[:, group.done : end],
                group.attention_mask[:, :end],
                group.positions[:, group.done : end],
                group.batch.cache,
                [seq.request.adapter for seq in group.seqs],
            )
        except (RuntimeError, ValueError) as error:
            logger.exception("prefill failed for %d requests", len(group.seqs))
            self._prefill = None
            for seq in group.seqs:
                self._fail(seq, error)
            return
        group.done = end
        if end < group.width:
            return
        self._prefill = None
        batch = group.batch
        batch.attention_mask = group.attention_mask
        batch.positions = group.attention_mask.sum(-1, keepdim=True)
        joined = self._emit(group.seqs, logits)
        batch.select(joined)
        self._batch.merge(batch)
        self._running += [group.seqs[row] for row in joined]

    def _decode(self) -> None:
        running = self._running
        tokens = torch.tensor([[seq.next_token] for seq in running], device=self.device)
        mask, positions = self._batch.step_inputs()
        try:
            logits = self.runner.forward(
                tokens, mask, positions, self._batch.cache, [seq.request.adapter for seq in running]
            )
        except (RuntimeError, ValueError) as error:
            logger.exception("decoding step failed for %d requests", len(running))
            for seq in running:
                self._fail(seq, error)
            self._keep_running([])
            return
        self._batch.advance()
        self._keep_running(self._emit(running, logits))

    def _emit(self, seqs: list[_Sequence], logits: torch.Tensor) -> list[int]:
        """Pick each row's next token and hand out its delta; the rows that go on.

        Rows that ask for nothing special share one batched argmax; the others have
        their logits adjusted row by row (bias, penalties, constraint: :mod:`ouro.engine.sampling`),
        then the greedy ones take the argmax and the sampled ones are drawn together
        (``sampling.sample_rows``); logprobs are of the logits as the model gave them.
        """
        keep = []
        failed: set[int] = set()
        raw: dict[int, torch.Tensor] = {}
        for row, seq in enumerate(seqs):
            try:
                if seq.params.logprobs:
                    raw[row] = sampling.raw_logprobs(logits[row])
                if not seq.fast:
                    seq.logits.apply(logits[row])
            except (RuntimeError, ValueError) as error:
                failed.add(row)
                self._fail(seq, error)
        greedy = logits.argmax(dim=-1).tolist()
        sampled_rows = [
            r for r, seq in enumerate(seqs) if seq.generator is not None and r not in failed
        ]
        sampled = {}
        if sampled_rows:
            try:
                tokens = sampling.sample_rows(
                    logits[sampled_rows],
                    [seqs[row].params for row in sampled_rows],
                    [seqs[row].generator for row in sampled_rows],
                )
            except (RuntimeError, ValueError) as error:  # the sampled rows fail, not the step
                tokens = [error] * len(sampled_rows)
            sampled = dict(zip(sampled_rows, tokens, strict=True))
        for row, seq in enumerate(seqs):
            if row in failed:
                continue
            if seq.seq_id in self._failed_seq_ids:  # a choice of this request failed above
                self._release(seq)
                self._counters["aborted"] += 1
                continue
            try:
                token = greedy[row] if seq.generator is None else sampled[row]
                if isinstance(token, Exception):
                    raise token
                logprobs = None
                if row in raw:
                    with self._tokenizer_lock:
                        logprobs = sampling.position_logprobs(
                            raw[row], token, seq.params.top_logprobs, self.token_texts
                        )
                delta = seq.advance(token, self.end_ids, logprobs)
            except (RuntimeError, ValueError, TypeError, OverflowError) as error:
                logger.warning("request %s failed: %s", seq.request.request_id, error)
                self._fail(seq, error)
                continue
            if seq.finish_reason is None:
                keep.append(row)
            else:
                self._release(seq)
                self._counters["finished"] += 1
            seq.sink.put(delta)
        return keep

    def _keep_running(self, keep: list[int]) -> None:
        self._running = [self._running[row] for row in keep]
        self._batch.select(keep)

    def _fail(self, seq: _Sequence, error: BaseException) -> None:
        self._release(seq)
        if seq.seq_id in self._failed_seq_ids:
            return  # another choice already failed the request
        self._counters["failed"] += 1
        seq.sink.fail(error)
        if seq.request.params.n > 1:
            # The request has failed: its other choices stop at the next step, silently.
            self._failed_seq_ids.add(seq.seq_id)
            with self._queue_lock:
                self._aborted_seqs.add(seq.seq_id)

    def _release(self, seq: _Sequence) -> None:
        """Give back the KV-cache tokens an admitted request reserved."""
        self._reserved_tokens -= seq.reserved_tokens

    def _check_adapter(self, request: GenerationRequest) -> None:
        if request.adapter is not None and not self.runner.has_adapter(request.adapter):
            raise AdapterNotFoundError(f"no adapter named {request.adapter!r} is loaded")

    # -- stats ---------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        """Counters and gauges as of now (read without waiting for the step)."""
        prefilling = self._prefill.seqs if self._prefill is not None else []
        return EngineStats(
            running_requests=len(self._running) + len(prefilling),
            waiting_requests=len(self._waiting),
            kv_cache_usage=self._reserved_tokens / self.limits.max_kv_cache_tokens,
            aborted_requests=self._counters["aborted"],
            failed_requests=self._counters["failed"],
            finished_requests=self._counters["finished"],
            steps=self._counters["steps"],
            step_seconds_sum=self._step_seconds.sum,
            step_seconds_buckets=self._step_seconds.cumulative(),
            batch_size_sum=int(self._batch_sizes.sum),
            batch_size_buckets=self._batch_sizes.cumulative(),
        )


class _Collector:
    """A sink that gathers one request's whole answer, each choice's (for ``generate``)."""

    def __init__(self, choices: int) -> None:
        self.deltas: list[list[StreamDelta]] = [[] for _ in range(choices)]
        self.error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.error is not None or all(
            deltas and deltas[-1].finish_reason is not None for deltas in self.deltas
        )

    def put(self, delta: StreamDelta) -> None:
        self.deltas[delta.index].append(delta)

    def fail(self, error: BaseException) -> None:
        self.error = error

    def outputs(self) -> list[GenerationOutput]:
        if self.error is not None:
            raise self.error
        return [
            GenerationOutput(
                text="".join(delta.text for delta in deltas),
                finish_reason=deltas[-1].finish_reason,
                prompt_tokens=deltas[-1].prompt_tokens,
                completion_tokens=deltas[-1].completion_tokens,
                index=index,
                logprobs=tuple(entry for delta in deltas for entry in delta.logprobs),
            )
            for index, deltas in enumerate(self.deltas)
        ]


class _Histogram:
    """Counts per bucket (Prometheus style: cumulative on read, +Inf last)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> tuple[int, ...]:
        return tuple(itertools.accumulate(self.counts))


def _end_of_turn_ids(model, tokenizer) -> frozenset[int]:
    """Token ids that end an answer: the tokenizer's EOS, end-of-turn markers, the config's."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in _END_OF_TURN_TOKENS if token in vocab)
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return frozenset(ids)
