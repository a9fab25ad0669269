"""The chart's alert rules: promtool accepts them, and its unit tests (alert_rules_test.yaml)
show every alert firing when it should and silent when it should not.

promtool comes from Debian's prometheus package, which `make install-test` installs; without
it these tests fail rather than skip, so that a green run always means the rules were tested.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools.manifests import find

UNIT_TESTS = Path(__file__).with_name("alert_rules_test.yaml")
ALERTS = {
    "OuroNoReadyReplica": "critical",
    "OuroHighErrorRatio": "critical",
    "OuroSlowTimeToFirstToken": "warning",
    "OuroRegistryUnreachable": "warning",
    "OuroLedgerWriteFailures": "critical",
    "OuroTrainingCyclesFailing": "warning",
    "OuroCorrectionsPilingUp": "warning",
    "OuroRouterFalseAcceptsRising": "warning",
}
"""The alerts of the metrics contract, with their severity."""


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: run `make install-test` (Debian's prometheus package)")
    return path


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False
    )


def rules_of(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    groups = find(objects, "PrometheusRule")["spec"]["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


@pytest.fixture(scope="module")
def prometheus_rule(render_chart) -> dict[str, Any]:
    objects = render_chart(set_values={"monitoring.prometheusRule.enabled": "true"})
    return find(objects, "PrometheusRule")


@pytest.fixture
def rules_file(prometheus_rule, tmp_path) -> Path:
    """The rendered rule groups as a Prometheus rule file."""
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": prometheus_rule["spec"]["groups"]}), encoding="utf-8")
    return path


def test_promtool_accepts_the_rendered_rules(rules_file):
    result = run_promtool("check", "rules", rules_file.name, cwd=rules_file.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_every_alert_fires_and_stays_silent_as_its_unit_tests_say(prometheus_rule, rules_file):
    rules = rules_of([prometheus_rule])
    unit_tests = yaml.safe_load(UNIT_TESTS.read_text(encoding="utf-8"))
    unit_tests["rule_files"] = [rules_file.name]
    for case in unit_tests["tests"]:
        for check in case["alert_rule_test"]:
            static = rules[check["alertname"]]["annotations"]
            for alert in check["exp_alerts"]:
                alert["exp_annotations"] = {
                    "summary": static["summary"],
                    "runbook_url": static["runbook_url"],
                    **alert["exp_annotations"],
                }
    test_file = rules_file.parent / UNIT_TESTS.name
    test_file.write_text(yaml.safe_dump(unit_tests, sort_keys=False), encoding="utf-8")
    result = run_promtool("test", "rules", test_file.name, cwd=rules_file.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_unit_tests_check_every_alert_firing_and_silent():
    unit_tests = yaml.safe_load(UNIT_TESTS.read_text(encoding="utf-8"))
    firing: set[str] = set()
    silent: set[str] = set()
    for case in unit_tests["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    assert firing == set(ALERTS)
    assert silent == set(ALERTS)


def test_alerts_carry_severity_summary_description_and_runbook(prometheus_rule):
    rules = rules_of([prometheus_rule])
    assert set(rules) == set(ALERTS)
    for name, rule in rules.items():
        assert rule["labels"] == {"severity": ALERTS[name]}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert rule["annotations"]["runbook_url"] == f"docs/operations.md#{name.lower()}"


def test_rules_read_only_this_installs_series(prometheus_rule):
    for name, rule in rules_of([prometheus_rule]).items():
        selectors = rule["expr"].count('{job="ouro-metrics",namespace="ouro"')
        assert selectors == rule["expr"].count("{"), name


def test_thresholds_durations_and_runbooks_follow_the_values(render_chart):
    rules = rules_of(
        render_chart(
            set_values={
                "monitoring.prometheusRule.enabled": "true",
                "monitoring.prometheusRule.failedCycles": "5",
                "monitoring.prometheusRule.routedMinRequests": "100",
            },
            set_strings={
                "monitoring.prometheusRule.for": "15m",
                "monitoring.prometheusRule.runbookBaseUrl": "https://docs.example.com/ops/",
            },
            release="prod",
            namespace="llm",
        )
    )
    assert rules["OuroNoReadyReplica"]["for"] == "15m"
    assert "OuroLedgerWriteFailures" in rules and "for" not in rules["OuroLedgerWriteFailures"]
    assert rules["OuroTrainingCyclesFailing"]["expr"].endswith(">= 5")
    assert rules["OuroRouterFalseAcceptsRising"]["expr"].endswith(">= 100")
    assert '{job="prod-ouro-metrics",namespace="llm"}' in rules["OuroRegistryUnreachable"]["expr"]
    assert (
        rules["OuroHighErrorRatio"]["annotations"]["runbook_url"]
        == "https://docs.example.com/ops/#ourohigherrorratio"
    )
