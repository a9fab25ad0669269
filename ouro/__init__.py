"""Ouro's core library, shared by the Serve app and the training job; imports no Ray."""

import logging


class _KernelsHubNotice(logging.Filter):
    """Drops bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community".

    On CPUs with AVX512-BF16, importing bitsandbytes tries the optional ``kernels`` package,
    which would fetch a kernel from the Hugging Face Hub; without it bitsandbytes falls back
    to its own CPU kernels, which is what Ouro wants (nothing is fetched at run time). The
    warning is harmless but printed by every process that imports transformers, so it is
    filtered here, the first Ouro module any process imports.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_KernelsHubNotice())
