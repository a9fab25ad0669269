"""A batch of rows sharing one left-padded KV cache, which rows can join and leave.

Every row's cache is aligned on the right: column ``width - 1`` holds each row's newest
token, and shorter rows are padded on the left (attention mask 0). That keeps one
``DynamicCache`` per batch, so a decoding step is a single forward for all rows:

- *join*: a group prefilled apart (its own cache) is merged in by left-padding whichever
  cache is narrower and concatenating along the batch dimension (a copy, once per join);
- *leave*: the remaining rows are kept (a view when they are one contiguous run, which is
  the usual case: rows join at the end and leave oldest first; else ``index_select``);
  columns that became padding in every remaining row are cut off, so the width follows the
  longest live row.

Each row keeps its own positions (RoPE was applied with the row's real positions when its
keys were cached), so padding never changes a row's numbers.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from ouro.engine.intra_op import small_work_on_this_thread


class KVBatch:
    """Rows' cache, attention mask and next positions; tensors on the model's device."""

    def __init__(
        self, config, cache: DynamicCache, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> None:
        self.config = config
        """The model's config (what a fresh cache is built from)."""
        self.cache = cache
        self.attention_mask = attention_mask
        """(rows, width): 1 where a row has a real cached token."""
        self.positions = positions
        """(rows, 1): the position of each row's next token."""
        self._next_mask = attention_mask

    @classmethod
    def empty(cls, config, device: torch.device) -> KVBatch:
        return cls(
            config,
            DynamicCache(config=config),
            torch.zeros((0, 0), dtype=torch.long, device=device),
            torch.zeros((0, 1), dtype=torch.long, device=device),
        )

    @property
    def rows(self) -> int:
        return self.attention_mask.shape[0]

    @property
    def width(self) -> int:
        return self.attention_mask.shape[1]

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention mask and positions for feeding one new token per row; ``advance``
        keeps that mask once the forward has cached the tokens."""
        self._next_mask = torch.cat(
            [self.attention_mask, self.attention_mask.new_ones((self.rows, 1))], 1
        )
        return self._next_mask, self.positions

    def advance(self) -> None:
        """Record that one token per row was just cached (after a ``step_inputs`` forward)."""
        self.attention_mask = self._next_mask
        self.positions = self.positions + 1

    def select(self, keep: list[int]) -> None:
        """Keep only the rows at ``keep`` (in that order); trim columns nobody uses."""
        if len(keep) == self.rows:
            return
        selection = RowSelection(keep, self.attention_mask.device)
        if keep:
            selection.apply_to_cache(self.cache)
        else:
            self.cache = DynamicCache(config=self.config)
        self.attention_mask = selection(self.attention_mask)
        self.positions = selection(self.positions)
        self._trim()

    def merge(self, other: KVBatch) -> None:
        """Append ``other``'s rows after this batch's rows."""
        if other.rows == 0:
            return
        if self.rows == 0:
            self.cache, self.attention_mask, self.positions = (
                other.cache,
                other.attention_mask,
                other.positions,
            )
            return
        width = max(self.width, other.width)
        mine, theirs = _layers(self.cache), _layers(other.cache)
        for own, new in zip(mine, theirs, strict=True):
            own.keys = torch.cat([_pad_left(own.keys, width), _pad_left(new.keys, width)], 0)
            own.values = torch.cat([_pad_left(own.values, width), _pad_left(new.values, width)], 0)
        self.attention_mask = torch.cat(
            [_pad_left(self.attention_mask, width), _pad_left(other.attention_mask, width)], 0
        )
        self.positions = torch.cat([self.positions, other.positions], 0)

    def _trim(self) -> None:
        if self.rows == 0:
            self.attention_mask = self.attention_mask[:, :0]
            return
        used = self.attention_mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else self.width
        if start == 0:
            return
        for layer in _layers(self.cache):
            layer.keys = layer.keys[:, :, start:, :]
            layer.values = layer.values[:, :, start:, :]
        self.attention_mask = self.attention_mask[:, start:]


class RowSelection:
    """The rows at ``keep`` (dimension 0, in that order) of a batch's tensors, worked out once
    for all of them: a view when they are one contiguous run, else ``index_select``.

    A view costs nothing; ``index_select`` copies the kept rows (on this thread alone when
    they are few, see :mod:`ouro.engine.intra_op`).
    """

    def __init__(self, keep: list[int], device: torch.device) -> None:
        self.rows = len(keep)
        self.start = keep[0] if keep and keep == list(range(keep[0], keep[0] + len(keep))) else None
        self.index = (
            None if self.start is not None else torch.tensor(keep, dtype=torch.long, device=device)
        )

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return tensor.narrow(0, self.start, self.rows)
        copied = tensor.numel() // max(len(tensor), 1) * self.rows
        with small_work_on_this_thread(copied, tensor.device):
            return tensor.index_select(0, self.index)

    def apply_to_cache(self, cache: DynamicCache) -> None:
        """Keep these rows of every layer of ``cache``."""
        for layer in _layers(cache):
            layer.keys = self(layer.keys)
            layer.values = self(layer.values)


def _layers(cache: DynamicCache) -> list:
    return [layer for layer in cache.layers if getattr(layer, "keys", None) is not None]


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad the sequence dimension (-2 for (b, h, s, d) caches, -1 for masks) with 0."""
    dim = -2 if tensor.dim() == 4 else -1
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim)
