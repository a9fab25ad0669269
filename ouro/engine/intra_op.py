"""Small CPU work on the calling thread alone, instead of through torch's intra-op pool.

Ouro runs torch with ``OMP_WAIT_POLICY=PASSIVE`` (see :mod:`ouro.cpu_threads`): the pool's
idle threads sleep, and every parallel region wakes them again. Torch splits an op over
the pool by its element count alone (``torch.bmm`` by its batch, at any size), so for the
engine's small bookkeeping ops the wake-ups cost more than the work: measured at 2 torch
threads on 2 vCPUs, a per-row LoRA product for 16 decoding rows took about 270 us through
the pool and 22 us on one thread, and selecting 15 of 16 rows of ouro-tiny's KV cache 756
against 175 us.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

POOL_MIN_WORK = 1 << 24
"""Multiply-adds, or elements copied, from which an op goes through the pool: about a
millisecond of one core's work, past which splitting it pays for the wake-ups."""


@contextmanager
def small_work_on_this_thread(work: int, device: torch.device) -> Iterator[None]:
    """Run the block's CPU ops on this thread alone when ``work`` is under POOL_MIN_WORK.

    OpenMP's thread count is a setting of the calling thread: the other threads' parallel
    regions keep the pool. CUDA work is not affected.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or work >= POOL_MIN_WORK:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
