"""The private network that HAProxy mode runs in on one machine (``loadtests.private_network``).

The namespace itself is exercised by ``tests/serve/test_haproxy_ingress.py``; these check
what decides whether and how a command re-runs in it.
"""

from __future__ import annotations

import pytest

from loadtests import private_network
from loadtests.private_network import (
    MARKER_ENV,
    current_ingress,
    haproxy_env,
    rerun_for_ingress,
    rerun_in_private_network,
)


def test_haproxy_env_turns_the_mode_on_and_keeps_haproxys_files_in_the_folder(tmp_path) -> None:
    env = haproxy_env(tmp_path)
    assert env.pop("RAY_SERVE_ENABLE_HA_PROXY") == "1"
    assert float(env.pop("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S")) < 30
    assert env and all(value.startswith(str(tmp_path)) for value in env.values())


def test_the_ingress_a_stack_gets_follows_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("RAY_SERVE_ENABLE_HA_PROXY", raising=False)
    assert current_ingress() == "proxy"
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")
    assert current_ingress() == "haproxy"


def test_only_haproxy_outside_the_namespace_re_runs(monkeypatch) -> None:
    monkeypatch.setattr(private_network, "rerun_in_private_network", pytest.fail)
    assert rerun_for_ingress("proxy", "loadtests.bench", []) is None
    monkeypatch.setenv(MARKER_ENV, "1")
    assert rerun_for_ingress("haproxy", "loadtests.bench", []) is None


def test_without_unshare_the_re_run_says_why(monkeypatch, capsys) -> None:
    monkeypatch.delenv(MARKER_ENV, raising=False)
    monkeypatch.setattr(private_network.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="unshare command"):
        rerun_in_private_network("loadtests.bench", [])
    assert rerun_for_ingress("haproxy", "loadtests.bench", []) == 1
    assert "--ingress proxy" in capsys.readouterr().err
