"""The model side of the engine: the base model, its LoRA adapters, and one forward pass.

Adapters are loaded into one PEFT wrapper (``load_adapter``), checked to be plain LoRA,
and applied through a :class:`~ouro.engine.lora_bank.LoraBank` rebuilt after each change,
so each row of a batch gets its own adapter (or none) in one pass. Not thread-safe: the
engine's loop is the only caller, and adapter changes happen between its steps.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel, PeftType
from peft.tuners.lora import LoraLayer

from ouro.engine.lora_bank import BASE_ADAPTER, PER_ROW_MIN_ADAPTERS, LoraBank
from ouro.engine.types import AdapterError, AdapterIncompatibleError, AdapterNotFoundError

logger = logging.getLogger(__name__)

ADAPTER_CONFIG_FILE = "adapter_config.json"


class ModelRunner:
    """A base model plus named LoRA adapters; runs a forward for rows with mixed adapters."""

    def __init__(self, model) -> None:
        self._base = model.eval()
        self._peft: PeftModel | None = None
        self._adapter_paths: dict[str, Path] = {}
        self._bank: LoraBank | None = None  # rebuilt after each adapter change
        self.per_row_min_adapters = PER_ROW_MIN_ADAPTERS
        """Batches using at least this many adapters gather LoRA weights per row (the
        bank's BGMV path); read when the bank is next built."""

    @property
    def model(self):
        """The model that generates: the base, or the PeftModel wrapping it once adapters exist."""
        return self._peft if self._peft is not None else self._base

    @property
    def base_model(self):
        return self._base

    @property
    def device(self) -> torch.device:
        return next(self._base.parameters()).device

    # -- adapters ----------------------------------------------------------------------
    def adapter_names(self) -> list[str]:
        """Names of the loaded adapters, in load order."""
        return list(self._adapter_paths)

    def has_adapter(self, name: str) -> bool:
        return name in self._adapter_paths

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
        if name in self._adapter_paths:
            if self._adapter_paths[name] == path.resolve():
                return
            raise AdapterError(f"an adapter named {name!r} is already loaded; remove it first")
        self._check_base_model(name, config)
        self._drop_bank()  # it runs the forward of the LoRA layers PEFT is about to change
        self._load_adapter(name, path, config)
        self._adapter_paths[name] = path.resolve()
        logger.info("loaded adapter %s from %s", name, path)

    def remove_adapter(self, name: str) -> None:
        """Unload an adapter; the others keep working."""
        if name not in self._adapter_paths:
            raise AdapterNotFoundError(f"no adapter named {name!r} is loaded")
        del self._adapter_paths[name]
        self._drop_bank()
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
                reason = LoraBank.unsupported(module, name)
                if reason is not None:
                    return reason
        return None

    # -- forward -----------------------------------------------------------------------
    def forward(self, input_ids, attention_mask, positions, cache, adapters) -> torch.Tensor:
        """Logits of each row's last position, every row with its own adapter (None: base)."""
        with self.lora_bank().routed(adapters):
            output = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return output.logits[:, -1, :].float()

    def lora_bank(self) -> LoraBank:
        """The bank of the loaded adapters (built, and attached, after each adapter change)."""
        if self._bank is None:
            layers = [] if self._peft is None else self._lora_layers()
            with torch.inference_mode():
                self._bank = LoraBank(layers, list(self._adapter_paths), self.per_row_min_adapters)
            self._bank.attach()  # attached until the next adapter change
        return self._bank

    def _drop_bank(self) -> None:
        if self._bank is not None:
            self._bank.detach()
            self._bank = None

    def _lora_layers(self) -> list[torch.nn.Module]:
        return [module for module in self._peft.modules() if isinstance(module, LoraLayer)]


def _read_adapter_config(path: Path) -> PeftConfig:
    if not (path / ADAPTER_CONFIG_FILE).is_file():
        raise AdapterNotFoundError(f"no PEFT adapter at {path} (missing {ADAPTER_CONFIG_FILE})")
    try:
        return PeftConfig.from_pretrained(str(path))
    except (ValueError, TypeError, KeyError, OSError) as error:
        raise AdapterIncompatibleError(f"unreadable adapter config in {path}: {error}") from error
