"""Ray Serve's HAProxy ingress, the chart's default: the serving tests that matter run behind it.

HAProxy mode cannot be switched on for one module of a running Ray cluster (Serve reads it
when its processes start), and on a shared machine it must not run in the open: HAProxy's
stats and Prometheus listeners bind every interface. So this test re-runs pytest on the
continuous-batching and error modules in a private network namespace with HAProxy mode on
(``loadtests.private_network``): answers, streaming, abort on disconnect, /metrics at scrape
time, errors before the first byte, and that HAProxy is what answers the API port.
"""

from __future__ import annotations

import pytest

from loadtests.private_network import rerun_in_private_network, unavailable_reason

pytestmark = pytest.mark.integration

MODULES = ("tests/serve/test_continuous_batching.py", "tests/serve/test_errors.py")


def test_the_serving_tests_pass_behind_haproxy() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"HAProxy mode runs in a private network namespace here, but {reason}")
    status = rerun_in_private_network("pytest", ["-q", "-p", "no:cacheprovider", *MODULES])
    assert status == 0, "the serving tests failed behind HAProxy (their output is above)"
