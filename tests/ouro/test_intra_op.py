"""small_work_on_this_thread: one thread for small CPU work, the pool back afterwards."""

from __future__ import annotations

import pytest
import torch

from ouro.engine.intra_op import POOL_MIN_WORK, small_work_on_this_thread


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_small_cpu_work_runs_on_this_thread_and_the_pool_comes_back(two_threads):
    with small_work_on_this_thread(POOL_MIN_WORK - 1, torch.device("cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), small_work_on_this_thread(1, torch.device("cpu")):
        raise RuntimeError("the op failed")
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize(
    ("work", "device"),
    [(POOL_MIN_WORK, torch.device("cpu")), (1, torch.device("cuda"))],
    ids=["large CPU work", "CUDA work"],
)
def test_large_or_cuda_work_keeps_the_pool(two_threads, work, device):
    with small_work_on_this_thread(work, device):
        assert torch.get_num_threads() == 2
