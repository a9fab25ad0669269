"""NOTES.txt: what `helm install` prints tells how to call the API and open MLflow.

`helm template` does not render NOTES.txt, so the test renders a copy of the chart where
the same text sits in a ConfigMap template.
"""

from __future__ import annotations

import shutil

import pytest

from tools.manifests import find
from tools.paths import CHART_DIR, VALUES_FILES


@pytest.fixture(scope="module")
def notes_chart(tmp_path_factory):
    chart = tmp_path_factory.mktemp("notes") / "ouro"
    shutil.copytree(CHART_DIR, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text(encoding="utf-8")
    body = "".join(f"    {line}\n" for line in notes.splitlines())
    wrapper = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n"
    (chart / "templates" / "zz-notes.yaml").write_text(wrapper + body, encoding="utf-8")
    return chart


def render_notes(render_chart, chart, **kwargs) -> str:
    return find(render_chart(chart_dir=chart, **kwargs), "ConfigMap", "notes")["data"]["notes"]


def test_notes_show_curl_the_openai_sdk_and_mlflow(render_chart, notes_chart):
    notes = render_notes(render_chart, notes_chart)
    assert "kubectl -n ouro port-forward svc/ouro-serve-svc 8000:8000" in notes
    assert 'curl "$OURO_URL/v1/chat/completions" -H "Authorization: Bearer $OURO_API_KEY"' in notes
    assert 'OpenAI(base_url="<OURO_URL>/v1"' in notes
    assert "kubectl -n ouro port-forward svc/ouro-mlflow 5000:5000" in notes
    assert "create secret generic ouro-api-keys" in notes
    assert '--overrides=\'{"spec": {"serviceAccountName": "ouro-trigger"}}\'' in notes
    assert "-- trigger --cronjob ouro-train --namespace ouro --follow" in notes


def test_notes_follow_ingress_external_mlflow_and_open_servers(render_chart, notes_chart):
    notes = render_notes(
        render_chart,
        notes_chart,
        values_files=[VALUES_FILES["external-mlflow-s3"]],
        set_values={"ingress.enabled": "true"},
    )
    assert "export OURO_URL=http://ouro.example.com" in notes
    assert "https://mlflow.internal.example.com" in notes
    assert "port-forward svc/ouro-mlflow" not in notes
    open_notes = render_notes(render_chart, notes_chart, values_files=[VALUES_FILES["cpu-dev"]])
    assert "Authorization" not in open_notes and "create secret" not in open_notes
