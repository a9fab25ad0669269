"""Training tests run torch on one thread.

On a machine whose cores are shared with other test processes, torch's default of one
thread per core spends most of its time waiting for the other threads; one thread trains
the small test model several times faster. Restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
