"""KVBatch's row selection: the rows kept, in order, and no copy for a contiguous run."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig

from ouro.engine.kv_batch import KVBatch, RowSelection

CONFIG = LlamaConfig(
    hidden_size=16, num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=2
)


def batch_of(rows: int, width: int) -> KVBatch:
    """Row r's cache entries are all r; its mask covers its last r + 1 columns."""
    cache = DynamicCache(config=CONFIG)
    fill = torch.arange(rows, dtype=torch.float).view(rows, 1, 1, 1)
    for layer in range(CONFIG.num_hidden_layers):
        keys = fill.expand(rows, 2, width, 8).clone()
        cache.update(keys, keys + 100, layer)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for row in range(rows):
        mask[row, width - row - 1 :] = 1
    return KVBatch(CONFIG, cache, mask, mask.sum(-1, keepdim=True))


@pytest.mark.parametrize("keep", [[2, 3, 4], [0, 1], [0, 2, 4], [4, 1]])
def test_the_kept_rows_stay_in_order_and_unused_columns_are_trimmed(keep):
    batch = batch_of(5, 6)
    batch.select(keep)
    assert batch.rows == len(keep)
    assert batch.width == max(keep) + 1  # the longest kept row's columns
    assert batch.positions.squeeze(1).tolist() == [row + 1 for row in keep]
    for layer in batch.cache.layers:
        assert layer.keys[:, 0, -1, 0].tolist() == [float(row) for row in keep]
        assert layer.values[:, 0, -1, 0].tolist() == [row + 100.0 for row in keep]
        assert layer.keys.shape[2] == batch.width


def select_rows(tensor: torch.Tensor, keep: list[int]) -> torch.Tensor:
    return RowSelection(keep, tensor.device)(tensor)


def test_a_contiguous_run_of_rows_is_a_view_and_others_a_copy():
    tensor = torch.arange(12).view(6, 2)
    run = select_rows(tensor, [2, 3, 4])
    assert run.data_ptr() == tensor[2].data_ptr()  # no copy
    assert run.tolist() == tensor[2:5].tolist()
    scattered = select_rows(tensor, [4, 0])
    assert scattered.tolist() == [tensor[4].tolist(), tensor[0].tolist()]
    assert select_rows(tensor, []).shape == (0, 2)
