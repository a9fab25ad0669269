"""The generation engine: batched decoding in which every row may use its own LoRA adapter.

One decoding loop over the model's forward with a KV cache serves both ``generate`` and
``stream``, so streamed text equals non-streamed text. Rows are left-padded, each row has
its own max_tokens, sampling settings, random generator and stop strings, and finished
rows leave the batch. Mixed adapters go through PEFT's ``adapter_names`` (one entry per
row, ``"__base__"`` for none). A lock serialises all use of the model: PEFT's adapter
state is not thread-safe.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel, PeftType
from peft.tuners.lora import LoraLayer
from transformers import DynamicCache

from ouro.chat import ChatFormatter
from ouro.errors import OuroError
from ouro.models import load_base_model

logger = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"
"""PEFT's name for 'no adapter' in ``adapter_names``."""
ADAPTER_CONFIG_FILE = "adapter_config.json"
FINISH_STOP = "stop"
FINISH_LENGTH = "length"
_END_OF_TURN_TOKENS = ("<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>")


class AdapterError(OuroError):
    """A LoRA adapter could not be used."""


class AdapterNotFoundError(AdapterError):
    """No adapter at that path, or no adapter loaded under that name."""


class AdapterIncompatibleError(AdapterError):
    """The adapter does not fit the base model (other architecture, shapes or modules)."""


class InvalidRequestError(OuroError, ValueError):
    """A generation request that cannot be served as asked."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded."""

    max_tokens: int = 256
    """Most tokens to generate."""
    temperature: float = 0.0
    """0 means greedy (deterministic); higher values sample more freely."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    stop: tuple[str, ...] = ()
    """Strings that end the answer (not included in it)."""
    seed: int | None = None
    """Seeds this request's sampling; None draws a fresh seed."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.max_tokens < 1:
            raise InvalidRequestError("max_tokens must be at least 1")
        if self.temperature < 0:
            raise InvalidRequestError("temperature must not be negative")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError("top_p must be in (0, 1]")
        if any(not stop for stop in self.stop):
            raise InvalidRequestError("stop strings must not be empty")


@dataclass
class GenerationRequest:
    """One conversation to answer."""

    messages: list[dict]
    """OpenAI-style messages: [{"role": ..., "content": ...}, ...]."""
    params: SamplingParams = field(default_factory=SamplingParams)
    """Decoding settings."""
    adapter: str | None = None
    """Name of a loaded adapter, or None for the base model."""
    request_id: str = ""
    """Caller's id, for the logs."""


@dataclass(frozen=True)
class GenerationOutput:
    """A finished answer."""

    text: str
    """The generated text (stop string and end-of-turn token excluded)."""
    finish_reason: str
    """'stop' (end of turn or a stop string) or 'length' (max_tokens or the context)."""
    prompt_tokens: int
    """Tokens in the prompt after formatting and truncation."""
    completion_tokens: int
    """Tokens generated."""


@dataclass(frozen=True)
class StreamDelta:
    """What one decoding step added to one request."""

    text: str
    """New text since the previous delta (may be empty while text is held back)."""
    finish_reason: str | None
    """Set on the request's last delta."""
    prompt_tokens: int
    """Tokens in the prompt."""
    completion_tokens: int
    """Tokens generated so far."""


class IncrementalDetokenizer:
    """Turns one row's tokens into text as they come, never showing half a character.

    Text that might be the start of a stop string is held back until it is known not to
    be; a completed stop string ends the text (and is not part of it).
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.token_ids: list[int] = []
        self.emitted = ""
        self.stopped = False

    def add(self, token: int) -> str:
        """Take one token; return the newly visible text (sets ``stopped`` on a stop string)."""
        self.token_ids.append(token)
        text = self._decode()
        cut = self._find_stop(text)
        if cut is not None:
            self.stopped = True
            return self._emit(text[:cut])
        visible = text.rstrip("\ufffd")
        return self._emit(visible[: len(visible) - self._held_back(visible)])

    def flush(self) -> str:
        """The text still held back, for when the row ends for another reason."""
        return "" if self.stopped else self._emit(self._decode())

    def _decode(self) -> str:
        return self.tokenizer.decode(
            self.token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def _find_stop(self, text: str) -> int | None:
        # Only the tail can hold a new match: earlier text was already checked.
        longest = max((len(stop) for stop in self.stop), default=0)
        start = max(0, len(self.emitted) - longest)
        found = [index for stop in self.stop if (index := text.find(stop, start)) >= 0]
        return min(found) if found else None

    def _held_back(self, text: str) -> int:
        held = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), held, -1):
                if text.endswith(stop[:size]):
                    held = size
                    break
        return held

    def _emit(self, visible: str) -> str:
        if not visible.startswith(self.emitted):
            return ""  # a tokenizer whose decoding is not prefix-stable: never take text back
        new_text = visible[len(self.emitted) :]
        self.emitted = visible
        return new_text


class _Row:
    """Decoding state of one request in a batch."""

    def __init__(
        self,
        request: GenerationRequest,
        prompt_ids: list[int],
        max_new_tokens: int,
        tokenizer,
        end_ids: frozenset[int],
    ) -> None:
        self.request = request
        self.params = request.params
        self.prompt_tokens = len(prompt_ids)
        self.max_new_tokens = max_new_tokens
        self.end_ids = end_ids
        self.detokenizer = IncrementalDetokenizer(tokenizer, self.params.stop)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.generator: torch.Generator | None = None
        if self.params.temperature > 0:
            seed = self.params.seed if self.params.seed is not None else secrets.randbits(63)
            self.generator = torch.Generator().manual_seed(seed)

    def advance(self, token: int) -> StreamDelta:
        """Take one generated token; return what it adds to the answer."""
        self.completion_tokens += 1
        if token in self.end_ids:
            self.finish_reason = FINISH_STOP
            text = self.detokenizer.flush()
        else:
            text = self.detokenizer.add(token)
            if self.detokenizer.stopped:
                self.finish_reason = FINISH_STOP
            elif self.completion_tokens >= self.max_new_tokens:
                self.finish_reason = FINISH_LENGTH
                text += self.detokenizer.flush()
        return StreamDelta(
            text=text,
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
        )


class _LoraBank:
    """Every loaded adapter's LoRA weights, layer by layer, side by side for one matmul.

    PEFT's mixed-adapter forward loops over the adapters inside every layer at every step;
    on a small model that Python work costs more than the arithmetic. Here each LoRA layer
    does the same sum for the whole batch at once (the idea behind S-LoRA and Punica):
    ``h = x @ [A_1; ...; A_n]^T``, keep the columns of each row's own adapter (a 0/1 mask;
    none for base rows), ``delta = h @ [s_1 B_1, ..., s_n B_n]^T``. PEFT itself runs only
    the base layer (every row is ``__base__`` to it).
    """

    def __init__(self, layers: list[torch.nn.Module], names: list[str]) -> None:
        self.index = {name: position for position, name in enumerate(names)}
        self.weights: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        owners: dict[
            tuple[int, ...], torch.Tensor
        ] = {}  # layers with the same column layout share one
        for layer in layers:
            present = [name for name in names if name in layer.lora_A]
            if not present:
                continue
            a = torch.cat([layer.lora_A[name].weight for name in present])
            b = torch.cat([layer.lora_B[name].weight * layer.scaling[name] for name in present], 1)
            layout = tuple(self.index[name] for name in present for _ in range(layer.r[name]))
            owner = owners.setdefault(layout, torch.tensor(layout, device=a.device))
            self.weights[layer] = (a, b, owner)
        self.masks: dict[int, torch.Tensor] = {}
        self.base_names: list[str] = []
        self._handles: list = []

    @staticmethod
    def unsupported(layer: torch.nn.Module, name: str) -> str | None:
        """Why ``name``'s weights in ``layer`` cannot be banked (None: they can)."""
        if name in getattr(layer, "lora_variant", {}) or layer.use_dora.get(name, False):
            return "LoRA variants such as DoRA are not served"
        if name in layer.lora_embedding_A:
            return "LoRA on embeddings is not served"
        if layer.lora_B[name].bias is not None:
            return "LoRA with a bias is not served"
        if getattr(layer, "fan_in_fan_out", False):
            return "transposed (fan_in_fan_out) layers are not served"
        return None

    def route(self, adapters: list[str | None]) -> None:
        """Point the batch's rows at their adapters (None: the base model)."""
        self.base_names = [BASE_ADAPTER] * len(adapters)
        rows = [self.index[name] if name is not None else -1 for name in adapters]
        self.masks = {}
        for a, _, owner in self.weights.values():
            if id(owner) not in self.masks:
                row_tensor = torch.tensor(rows, device=owner.device)
                mask = (owner.unsqueeze(0) == row_tensor.unsqueeze(1)).to(a.dtype)
                self.masks[id(owner)] = mask.unsqueeze(1)  # (batch, 1, columns)

    def __enter__(self) -> _LoraBank:
        for layer in self.weights:
            self._handles.append(layer.register_forward_pre_hook(self._base_only, with_kwargs=True))
            self._handles.append(layer.register_forward_hook(self._add_lora, with_kwargs=True))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _base_only(self, layer, args, kwargs):
        kwargs["adapter_names"] = self.base_names
        return args, kwargs

    def _add_lora(self, layer, args, kwargs, output):
        a, b, owner = self.weights[layer]
        x = (args[0] if args else kwargs["x"]).to(a.dtype)
        hidden = (x @ a.T) * self.masks[id(owner)]
        return output + (hidden @ b.T).to(output.dtype)


class GenerationEngine:
    """A base model, its loaded LoRA adapters, and batched generation over both.

    Thread-safe: one lock serialises everything that touches the model. ``stream``
    holds the lock while its iterator is being consumed: exhaust it or close it.
    """

    def __init__(self, model, tokenizer, *, system_prompt: str, max_context_tokens: int) -> None:
        self._base = model.eval()
        self._peft: PeftModel | None = None
        self.tokenizer = tokenizer
        self._lock = threading.RLock()
        # Fast tokenizers fail with "Already borrowed" when used from several threads at once.
        self._tokenizer_lock = threading.Lock()
        self._adapter_paths: dict[str, Path] = {}
        self._bank: _LoraBank | None = None  # rebuilt after each adapter change
        self.max_positions = int(
            getattr(model.config, "max_position_embeddings", None) or max_context_tokens
        )
        self.formatter = ChatFormatter(
            tokenizer, system_prompt, min(max_context_tokens, self.max_positions)
        )
        self.end_ids = _end_of_turn_ids(model, tokenizer)
        pad_id = tokenizer.pad_token_id
        self.pad_id = pad_id if pad_id is not None else min(self.end_ids)

    @classmethod
    def from_settings(cls, settings) -> GenerationEngine:
        """Load the configured base model and build an engine around it."""
        loaded = load_base_model(settings)
        return cls(
            loaded.model,
            loaded.tokenizer,
            system_prompt=settings.system_prompt,
            max_context_tokens=settings.max_context_tokens,
        )

    @property
    def model(self):
        """The model that generates: the base, or the PeftModel wrapping it once adapters exist."""
        return self._peft if self._peft is not None else self._base

    @property
    def device(self) -> torch.device:
        return next(self._base.parameters()).device

    # -- adapters ----------------------------------------------------------------------
    def adapter_names(self) -> list[str]:
        """Names of the loaded adapters, in load order (does not wait for a running batch)."""
        return list(self._adapter_paths)  # one atomic copy under the GIL

    def add_adapter(self, name: str, path: Path) -> None:
        """Load the PEFT LoRA adapter in ``path`` under ``name``.

        Raises AdapterNotFoundError when ``path`` holds no adapter and
        AdapterIncompatibleError when it does not fit the base model; either way the
        adapters already loaded stay as they were.
        """
        if not name or name == BASE_ADAPTER:
            raise AdapterError(f"invalid adapter name {name!r}")
        path = Path(path)
        config = _read_adapter_config(path)
        with self._lock:
            if name in self._adapter_paths:
                if self._adapter_paths[name] == path.resolve():
                    return
                raise AdapterError(f"an adapter named {name!r} is already loaded; remove it first")
            self._check_base_model(name, config)
            self._load_adapter(name, path, config)
            self._adapter_paths[name] = path.resolve()
            self._bank = None
        logger.info("loaded adapter %s from %s", name, path)

    def remove_adapter(self, name: str) -> None:
        """Unload an adapter; the others keep working."""
        with self._lock:
            if name not in self._adapter_paths:
                raise AdapterNotFoundError(f"no adapter named {name!r} is loaded")
            del self._adapter_paths[name]
            self._bank = None
            if self._adapter_paths:
                self._peft.delete_adapter(name)
            else:
                # PEFT cannot run with zero adapters: take the LoRA layers out again.
                self._base = self._peft.unload().eval()
                self._peft = None
        logger.info("removed adapter %s", name)

    def _check_base_model(self, name: str, config: PeftConfig) -> None:
        if config.peft_type != PeftType.LORA:
            raise AdapterIncompatibleError(
                f"adapter {name!r} is {config.peft_type}; only LoRA adapters are served"
            )
        if getattr(config, "modules_to_save", None):
            raise AdapterIncompatibleError(
                f"adapter {name!r} retrains whole modules ({config.modules_to_save}); "
                "only LoRA weights are served"
            )
        base_name = config.base_model_name_or_path
        if base_name and Path(base_name).name != Path(self._base.name_or_path or "").name:
            # Paths differ between machines, so a name is no proof either way: shapes decide.
            logger.warning(
                "adapter %s was trained on %s; the base model is %s",
                name,
                base_name,
                self._base.name_or_path,
            )

    def _load_adapter(self, name: str, path: Path, config: PeftConfig) -> None:
        first = self._peft is None
        if first:
            try:  # the first adapter wraps the base model (injecting its LoRA layers)
                wrapper = PeftModel(self._base, config, adapter_name=name)
            except (RuntimeError, ValueError, KeyError, TypeError) as error:
                raise AdapterIncompatibleError(
                    f"adapter {name!r} at {path} does not fit the base model: {error}"
                ) from error
        else:
            wrapper = self._peft
        try:
            result = wrapper.load_adapter(str(path), adapter_name=name, is_trainable=False)
            unexpected = [key for key in result.unexpected_keys if "lora_" in key]
            missing = [key for key in result.missing_keys if f".{name}." in key]
            problem = (
                f"weights for modules the base model lacks: {unexpected[:3]}"
                if unexpected
                else f"weights missing for {missing[:3]}"
                if missing
                else self._unsupported(wrapper, name)
            )
        except (RuntimeError, ValueError, KeyError, OSError) as error:
            problem = str(error)
        if problem is not None:
            # Take the half-loaded adapter out again; the loaded ones stay as they were.
            if first:
                self._base = wrapper.unload().eval()
            elif name in wrapper.peft_config:
                wrapper.delete_adapter(name)
            raise AdapterIncompatibleError(
                f"adapter {name!r} at {path} does not fit the base model: {problem}"
            )
        self._peft = wrapper.eval()

    @staticmethod
    def _unsupported(wrapper: PeftModel, name: str) -> str | None:
        for module in wrapper.modules():
            if isinstance(module, LoraLayer) and name in module.r:
                reason = _LoraBank.unsupported(module, name)
                if reason is not None:
                    return reason
        return None

    # -- generation --------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationOutput]:
        """Answer a batch of requests together; each row uses its own adapter (None = base)."""
        texts = [""] * len(requests)
        finals: list[StreamDelta | None] = [None] * len(requests)
        for step in self.stream(requests):
            for index, delta in enumerate(step):
                if delta is not None:
                    texts[index] += delta.text
                    if delta.finish_reason is not None:
                        finals[index] = delta
        return [
            GenerationOutput(
                text=text,
                finish_reason=final.finish_reason,
                prompt_tokens=final.prompt_tokens,
                completion_tokens=final.completion_tokens,
            )
            for text, final in zip(texts, finals, strict=True)
        ]

    def stream(self, requests: Sequence[GenerationRequest]) -> Iterator[list[StreamDelta | None]]:
        """Decode a batch step by step: one list per step, one slot per request.

        A slot holds that request's StreamDelta, or None once it has finished. Bad
        requests (unknown adapter, prompt too long, bad settings) raise here, before any
        work is done.
        """
        requests = list(requests)
        prompts = [self._prompt_ids(request) for request in requests]
        self._check_adapters(requests)
        return self._decode(requests, prompts)

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The request's formatted prompt; raises what ``stream`` would for a bad request."""
        self._check_adapters([request])
        return self._prompt_ids(request)

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        # Leave room for the answer, but never less than half the context for the prompt.
        room = min(request.params.max_tokens, self.max_positions // 2)
        with self._tokenizer_lock:
            return self.formatter.prompt_ids(request.messages, self.max_positions - room)

    def _check_adapters(self, requests: Sequence[GenerationRequest]) -> None:
        # No lock: a running batch must not delay this check; _decode repeats it under the lock.
        loaded = set(self._adapter_paths)
        for request in requests:
            if request.adapter is not None and request.adapter not in loaded:
                raise AdapterNotFoundError(f"no adapter named {request.adapter!r} is loaded")

    def _decode(
        self, requests: list[GenerationRequest], prompts: list[list[int]]
    ) -> Iterator[list[StreamDelta | None]]:
        if not requests:
            return
        with self._lock:
            self._check_adapters(requests)  # an adapter may have gone since stream() was called
            rows = [
                _Row(
                    request,
                    prompt,
                    min(request.params.max_tokens, self.max_positions - len(prompt)),
                    self.tokenizer,
                    self.end_ids,
                )
                for request, prompt in zip(requests, prompts, strict=True)
            ]
            with self._lora_bank() as bank:
                yield from self._decode_rows(rows, prompts, bank)

    def _decode_rows(
        self, rows: list[_Row], prompts: list[list[int]], bank: _LoraBank
    ) -> Iterator[list[StreamDelta | None]]:
        # inference_mode only around tensor work: it is thread state, and must not stay on
        # in the caller's code while this generator waits at a yield.
        device = self.device
        with torch.inference_mode():
            input_ids, attention_mask = self._left_pad(prompts, device)
            positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            cache = DynamicCache(config=self._base.config)
            bank.route([row.request.adapter for row in rows])
            logits = self._forward(input_ids, attention_mask, positions, cache)
            positions = positions[:, -1:]
        active = list(range(len(rows)))
        while True:
            with torch.inference_mode():
                tokens = self._sample(logits, [rows[index] for index in active])
            step: list[StreamDelta | None] = [None] * len(rows)
            keep = []
            with self._tokenizer_lock:
                for slot, index in enumerate(active):
                    step[index] = rows[index].advance(tokens[slot])
                    if rows[index].finish_reason is None:
                        keep.append(slot)
            yield step
            if not keep:
                return
            with torch.inference_mode():
                next_tokens = torch.tensor(tokens, device=device).unsqueeze(-1)
                if len(keep) < len(active):
                    # Finished rows leave the batch (and its KV cache).
                    selected = torch.tensor(keep, device=device)
                    cache.batch_select_indices(selected)
                    attention_mask = attention_mask[selected]
                    positions = positions[selected]
                    next_tokens = next_tokens[selected]
                    active = [active[slot] for slot in keep]
                    bank.route([rows[index].request.adapter for index in active])
                attention_mask = torch.cat(
                    [attention_mask, attention_mask.new_ones((len(active), 1))], dim=-1
                )
                positions = positions + 1
                logits = self._forward(next_tokens, attention_mask, positions, cache)

    def _lora_bank(self) -> _LoraBank:
        if self._bank is None:
            layers = [] if self._peft is None else self._lora_layers()
            with torch.inference_mode():
                self._bank = _LoraBank(layers, list(self._adapter_paths))
        return self._bank

    def _lora_layers(self) -> list[torch.nn.Module]:
        return [module for module in self._peft.modules() if isinstance(module, LoraLayer)]

    def _left_pad(
        self, prompts: list[list[int]], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(prompt) for prompt in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for index, prompt in enumerate(prompts):
            input_ids[index, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[index, width - len(prompt) :] = 1
        return input_ids.to(device), attention_mask.to(device)

    def _forward(self, input_ids, attention_mask, positions, cache) -> torch.Tensor:
        output = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return output.logits[:, -1, :].float()

    @staticmethod
    def _sample(logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        tokens = logits.argmax(dim=-1).tolist()
        for slot, row in enumerate(rows):
            if row.generator is None:
                continue
            probs = torch.softmax(logits[slot] / row.params.temperature, dim=-1).cpu()
            if row.params.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                # Drop tokens once the ones before them already reach top_p.
                sorted_probs[(sorted_probs.cumsum(-1) - sorted_probs) >= row.params.top_p] = 0.0
                probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
            tokens[slot] = int(torch.multinomial(probs, 1, generator=row.generator).item())
        return tokens


def _read_adapter_config(path: Path) -> PeftConfig:
    if not (path / ADAPTER_CONFIG_FILE).is_file():
        raise AdapterNotFoundError(f"no PEFT adapter at {path} (missing {ADAPTER_CONFIG_FILE})")
    try:
        return PeftConfig.from_pretrained(str(path))
    except (ValueError, TypeError, KeyError, OSError) as error:
        raise AdapterIncompatibleError(f"unreadable adapter config in {path}: {error}") from error


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
