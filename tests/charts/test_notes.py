"""NOTES.txt: what `helm install` prints tells how to call the API and open MLflow.

`helm template` does not render NOTES.txt, so the test renders a copy of the chart where
the same text sits in a ConfigMap template.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tools.manifests import find
from tools.paths import CHART_DIR, MONITORING_VALUES, VALUES_FILES


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


def test_notes_list_the_monitoring_objects_only_when_enabled(render_chart, notes_chart):
    assert "Monitoring" not in render_notes(render_chart, notes_chart)
    notes = render_notes(render_chart, notes_chart, values_files=[MONITORING_VALUES])
    assert 'through the Service ouro-metrics (key "metrics-api-key" of the Secret' in notes
    assert '--from-literal=metrics-api-key="$(openssl rand -hex 24)"' in notes
    assert "PrometheusRule ouro: Ouro's alerts, runbooks in docs/operations.md" in notes


def test_notes_export_the_key_part_of_a_named_client_key(render_chart, notes_chart):
    """The Secret holds "name:key" entries; the printed command keeps only the first key."""
    notes = render_notes(render_chart, notes_chart)
    pipeline = re.search(r"base64 -d \| (cut -d, -f1 \| .+)\)$", notes, re.M)
    assert pipeline, notes
    result = subprocess.run(
        ["/bin/sh", "-c", f"printf '%s' 'alice:sk-alice-1,bob:sk-bob-2' | {pipeline.group(1)}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "sk-alice-1"


def test_notes_warn_when_the_gated_default_model_has_no_token(render_chart, notes_chart):
    assert "is a gated model" in render_notes(render_chart, notes_chart)
    with_token = render_notes(
        render_chart, notes_chart, set_strings={"secrets.huggingface.name": "hf"}
    )
    assert "is a gated model" not in with_token
