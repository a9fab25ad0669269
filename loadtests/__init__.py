"""Load tests (Locust) and benchmarks; not part of the test suite."""

# Before anything imports bitsandbytes: ouro's package init filters its harmless
# "kernels-community" notice (see ouro/__init__.py).
import ouro  # noqa: F401
