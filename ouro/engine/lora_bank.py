"""The LoRA bank: every loaded adapter's weights, from which each row gathers its own."""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ouro.engine.intra_op import small_work_on_this_thread

BASE_ADAPTER = "__base__"
"""PEFT's name for 'no adapter' in ``adapter_names``."""

Layout = tuple[tuple[int, int], ...]
"""The adapters a layer holds, in bank order: (adapter index, rank) for each."""

PER_ROW_MIN_ADAPTERS = 5
"""A batch using at least this many adapters gathers per row (BGMV) instead of masking."""
SELECTIONS_KEPT = 8
"""Gathered selections kept, by the set of adapters they are for: the running batch's set
and a prefill chunk's each keep theirs, so alternating steps regather nothing."""


class LoraBank:
    """Every loaded adapter's LoRA weights, layer by layer; a batch uses only its own.

    PEFT's mixed-adapter forward loops over the adapters inside every layer at every step;
    on a small model that Python work costs more than the arithmetic. Here each LoRA layer
    does the sum for the whole batch at once (the idea behind S-LoRA and Punica). Each
    layer keeps its adapters' A matrices stacked, ``[A_1; ...; A_n]``, and their scaled B
    matrices side by side, ``[s_1 B_1, ..., s_n B_n]``. When the set of adapters the batch's
    rows use changes, each layer gathers just those adapters' rows and columns once (kept for
    the last ``SELECTIONS_KEPT`` sets: each holds copies of its adapters' A and B, rank x
    (in + out) numbers per adapter and layer, small beside the model); a step then runs,
    per layer,

        ``delta = ((x @ A_used^T) * mask) @ B_used^T``

    where the 0/1 mask keeps each row's own adapter's columns (none for base rows). The
    step's cost follows the rows and the ranks of the adapters they use, not how many are
    resident. Adapters may differ in rank (their columns are simply as many), scaling
    (``alpha / r``, folded into B) and in the layers and modules they target (a layer holds
    only the adapters present in it; a layer none of the batch's adapters is in is
    skipped). Inside ``routed`` the bank runs each layer in PEFT's place: the base layer,
    then the rows' LoRA sum.

    The masked matmul computes every used adapter's columns for every row; its gathers are
    kept for the last ``SELECTIONS_KEPT`` sets of adapters (a prefill chunk's set beside the
    running batch's), and its masks while the rows stay the same. When a batch uses at
    least ``PER_ROW_MIN_ADAPTERS`` adapters (personal adapters: nearly every row its own,
    and the set changes at almost every step), each row gathers its own adapter's A and B
    instead, from per-layer stacks padded to the layer's largest rank with a zero
    adapter for base rows (Punica's BGMV: two batched matmuls), so the step does a row's own
    rank of work per row and nothing is regathered when the set changes. With few adapters
    the masked matmul is cheaper on the CPU: for a decode step of 16 rows over 4 adapters
    the per-row gather costs about half as much again (16 vs. 11 µs per layer, width 128,
    rank 8, one thread).
    """

    def __init__(
        self,
        layers: list[torch.nn.Module],
        names: list[str],
        per_row_min_adapters: int = PER_ROW_MIN_ADAPTERS,
    ) -> None:
        self.per_row_min_adapters = per_row_min_adapters
        self.index = {name: position for position, name in enumerate(names)}
        self.weights: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor, Layout]] = {}
        for layer in layers:
            present = [name for name in names if name in layer.lora_A]
            if not present:
                continue
            a = torch.cat([layer.lora_A[name].weight for name in present])
            b = torch.cat([layer.lora_B[name].weight * layer.scaling[name] for name in present], 1)
            layout = tuple((self.index[name], layer.r[name]) for name in present)
            self.weights[layer] = (a, b, layout)  # (sum of ranks, in), (out, sum of ranks)
        self.stacks: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        """Per layer, built on first use: A transposed as (adapters + 1, in, max rank) and B
        transposed as (adapters + 1, max rank, out), zero-padded, the last adapter all zeros
        (base rows); a row's gathered A and B are then ready for ``bmm`` as they are."""
        self.per_row = False
        """The routed batch gathers per row (``row_slots``) rather than masking."""
        self.any_lora = False
        """Some row of the routed batch has an adapter."""
        self.row_slots: dict[Layout, torch.Tensor] = {}
        """Per layout: each row's position in that layer's stacks."""
        self.used: tuple[int, ...] | None = None
        """Bank indices of the adapters the routed batch uses; ``selected`` is built for it."""
        self.selected: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor, Layout]] = {}
        """Per layer that holds one of ``used``: those adapters' A rows and B columns."""
        self._selections: OrderedDict[tuple[int, ...], dict] = OrderedDict()
        """``selected`` of the last ``SELECTIONS_KEPT`` sets of adapters, the newest last."""
        self.masks: dict[Layout, torch.Tensor] = {}
        """Per layout of the selected weights: (batch, 1, columns), 1 where a column is the
        row's own adapter's."""
        self._masked_rows: tuple[int, ...] | None = None
        """The rows ``masks`` were built for."""
        self.active = False
        """The bank acts only inside ``routed``; other calls of the model see plain PEFT."""
        self._attached: list[torch.nn.Module] = []

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
        rows = [self.index[name] if name is not None else -1 for name in adapters]
        used = tuple(sorted(set(rows) - {-1}))
        self.any_lora = bool(used)
        if not used:
            return  # base rows only: no LoRA layer is touched, the selection is kept
        self.per_row = len(used) >= self.per_row_min_adapters
        if self.per_row:
            self._route_rows(rows)
            return
        if used != self.used:
            self._select(used)
        if tuple(rows) == self._masked_rows:
            return  # the same rows as the last step: the masks hold
        self._masked_rows = tuple(rows)
        self.masks = {}
        for a, _, layout in self.selected.values():
            if layout not in self.masks:
                owner = torch.tensor(
                    [i for i, rank in layout for _ in range(rank)], device=a.device
                )
                row_tensor = torch.tensor(rows, device=a.device)
                mask = (owner.unsqueeze(0) == row_tensor.unsqueeze(1)).to(a.dtype)
                self.masks[layout] = mask.unsqueeze(1)  # (batch, 1, columns)

    def _route_rows(self, rows: list[int]) -> None:
        """Each row's slot in the stacks of every layout (the zero adapter when a row's
        adapter is not in that layer)."""
        self.row_slots = {}
        for a, _, layout in self.weights.values():
            if layout in self.row_slots:
                continue
            slot = {adapter: position for position, (adapter, _) in enumerate(layout)}
            zero = len(layout)
            self.row_slots[layout] = torch.tensor(
                [slot.get(row, zero) for row in rows], device=a.device
            )

    def _stacks(self, layer: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        stacks = self.stacks.get(layer)
        if stacks is None:
            a, b, layout = self.weights[layer]
            width = max(rank for _, rank in layout)
            a_stack = a.new_zeros(len(layout) + 1, a.shape[1], width)
            b_stack = b.new_zeros(len(layout) + 1, width, b.shape[0])
            start = 0
            for position, (_, rank) in enumerate(layout):
                a_stack[position, :, :rank] = a[start : start + rank].T
                b_stack[position, :rank] = b[:, start : start + rank].T
                start += rank
            stacks = self.stacks[layer] = (a_stack, b_stack)
        return stacks

    def _select(self, used: tuple[int, ...]) -> None:
        """Point ``selected`` at the gathered weights of the adapters in ``used`` (gathered
        now unless a recent batch used the same set)."""
        self.used = used
        self._masked_rows = None
        kept = self._selections.pop(used, None)
        self.selected = kept if kept is not None else self._gather(used)
        self._selections[used] = self.selected
        while len(self._selections) > SELECTIONS_KEPT:
            self._selections.popitem(last=False)

    def _gather(self, used: tuple[int, ...]) -> dict:
        """Per layer, the A rows and B columns of the adapters in ``used`` only."""
        selected = {}
        wanted = set(used)
        positions: dict[Layout, tuple[torch.Tensor, Layout]] = {}
        for layer, (a, b, layout) in self.weights.items():
            if layout not in positions:
                columns: list[int] = []
                kept: list[tuple[int, int]] = []
                start = 0
                for adapter, rank in layout:
                    if adapter in wanted:
                        columns += range(start, start + rank)
                        kept.append((adapter, rank))
                    start += rank
                positions[layout] = (torch.tensor(columns, device=a.device), tuple(kept))
            columns, kept = positions[layout]
            if kept:
                selected[layer] = (a[columns], b[:, columns], kept)
        return selected

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
        """Take over the forward of the bank's layers (once; outside ``routed`` each still
        runs PEFT's own forward)."""
        for layer in self.weights:
            layer.forward = functools.partial(self._forward, layer)
            self._attached.append(layer)

    def detach(self) -> None:
        for layer in self._attached:
            del layer.forward  # the class's (PEFT's) forward again
        self._attached = []

    def _forward(self, layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """A banked layer's forward: the base layer, plus each row's LoRA inside ``routed``.

        PEFT's forward is not called there at all: with every row ``__base__`` to it, it
        would only add Python around the base layer, which on a small model costs about a
        fifth of a step with no adapter in use.
        """
        if not self.active:
            return type(layer).forward(layer, x, *args, **kwargs)
        output = layer.base_layer(x, *args, **kwargs)
        if not self.any_lora:
            return output
        if self.per_row:
            a_stack, b_stack = self._stacks(layer)
            slots = self.row_slots[self.weights[layer][2]]
            x = x.to(a_stack.dtype)
            width, rank, out = a_stack.shape[1], a_stack.shape[2], b_stack.shape[2]
            work = x.numel() // width * rank * (width + out)
            with small_work_on_this_thread(work, x.device):
                hidden = torch.bmm(x, a_stack.index_select(0, slots))
                delta = torch.bmm(hidden, b_stack.index_select(0, slots))
            return output + delta.to(output.dtype)
        selected = self.selected.get(layer)
        if selected is None:
            return output  # none of the batch's adapters is in this layer
        a, b, layout = selected
        hidden = (x.to(a.dtype) @ a.T) * self.masks[layout]
        return output + (hidden @ b.T).to(output.dtype)
