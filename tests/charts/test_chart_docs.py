"""The chart README generator: every value documented, read by a template, README current."""

from __future__ import annotations

import shutil

import pytest

from tools import chart_docs
from tools.paths import CHART_DIR


@pytest.fixture
def chart_copy(tmp_path):
    copy = tmp_path / "ouro"
    shutil.copytree(CHART_DIR, copy)
    return copy


def test_shipped_chart_is_fully_documented_and_its_readme_current():
    assert chart_docs.check() == []


def test_readme_lists_every_value_with_default_and_description():
    readme = (CHART_DIR / "README.md").read_text(encoding="utf-8")
    documented = chart_docs.parse_documented_values(CHART_DIR / "values.yaml")
    assert len(documented) > 100
    for value in documented:
        assert f"| {value.key} | {value.type_name} |" in readme
    assert "| training.gpus | int | `1` | NVIDIA GPUs of the training pod" in readme


def test_a_commented_mapping_documents_its_whole_subtree():
    keys = {v.key for v in chart_docs.parse_documented_values(CHART_DIR / "values.yaml")}
    assert "podSecurityContext" in keys and "podSecurityContext.runAsUser" not in keys
    assert "serve.workers.tolerations" in keys
    assert not any(key.startswith("serve.workers.tolerations.") for key in keys)


def test_an_undocumented_value_is_reported(chart_copy):
    values = chart_copy / "values.yaml"
    values.write_text(
        values.read_text(encoding="utf-8") + "undocumentedKnob: 3\n", encoding="utf-8"
    )
    assert chart_docs.undocumented_values(values) == ["undocumentedKnob"]


def test_a_value_no_template_reads_is_reported(chart_copy):
    values = chart_copy / "values.yaml"
    text = values.read_text(encoding="utf-8")
    text = text.replace(
        "  # -- Time zone of the schedule.\n",
        "  # -- A knob nothing reads.\n  deadKnob: 1\n  # -- Time zone of the schedule.\n",
    )
    values.write_text(text, encoding="utf-8")
    assert chart_docs.unread_values(chart_copy) == ["training.deadKnob"]


def test_a_stale_readme_is_reported_and_regenerated(chart_copy):
    readme = chart_copy / "README.md"
    readme.write_text("old\n", encoding="utf-8")
    assert chart_docs.check(chart_copy) == ["README.md is stale: run `python -m tools.chart_docs`"]
    assert chart_docs.main(["--chart", str(chart_copy)]) == 0
    assert chart_docs.check(chart_copy) == []
