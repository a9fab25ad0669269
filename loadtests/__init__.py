"""Load tests (Locust) and benchmarks; not part of the test suite."""
