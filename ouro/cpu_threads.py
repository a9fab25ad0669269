"""CPU thread settings that entry points apply before torch is imported.

OpenMP's default wait policy keeps idle worker threads spinning: with another CPU-heavy
process on the machine, ``python -m serve`` pretrained ouro-tiny at about 0.2 steps/s
instead of about 8. OpenMP reads the policy and the thread count once, when torch's
runtime starts, so they must be in the environment before ``import torch``; processes
started afterwards (Ray's workers, a training job) inherit them. Values already in the
environment win, so a user can still choose.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)

WAIT_POLICY = "PASSIVE"
THREAD_COUNT_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def configure_cpu_threads(threads: int | None = None) -> None:
    """Set OMP_WAIT_POLICY=PASSIVE, and ``threads`` as the OpenMP/MKL thread count when
    given, unless the environment already says otherwise."""
    if "torch" in sys.modules:
        logger.warning("torch was imported before the CPU thread settings: they do not apply")
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    if threads is not None:
        for name in THREAD_COUNT_VARIABLES:
            os.environ.setdefault(name, str(max(1, threads)))
