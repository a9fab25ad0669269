"""The LoRA bank: every loaded adapter's weights side by side, applied per row in one matmul."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

BASE_ADAPTER = "__base__"
"""PEFT's name for 'no adapter' in ``adapter_names``."""


class LoraBank:
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
        self.active = False
        """Hooks act only inside ``routed``; other calls of the model see plain PEFT."""
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

    @contextmanager
    def routed(self, adapters: list[str | None]) -> Iterator[None]:
        """Within the block, forwards apply each row's adapter from the bank."""
        self.route(adapters)
        self.active = True
        try:
            yield
        finally:
            self.active = False

    def attach(self) -> None:
        """Hook the bank into its layers (once; the hooks are idle outside ``routed``)."""
        for layer in self.weights:
            self._handles.append(layer.register_forward_pre_hook(self._base_only, with_kwargs=True))
            self._handles.append(layer.register_forward_hook(self._add_lora, with_kwargs=True))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _base_only(self, layer, args, kwargs):
        if not self.active:
            return None
        kwargs["adapter_names"] = self.base_names
        return args, kwargs

    def _add_lora(self, layer, args, kwargs, output):
        if not self.active:
            return None
        a, b, owner = self.weights[layer]
        x = (args[0] if args else kwargs["x"]).to(a.dtype)
        hidden = (x @ a.T) * self.masks[id(owner)]
        return output + (hidden @ b.T).to(output.dtype)
