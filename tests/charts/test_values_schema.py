"""values.schema.json: Helm refuses wrong types, negative GPU counts and unknown keys."""

from __future__ import annotations

import pytest

from tools.manifests import RenderError, find, helm_lint
from tools.paths import VALUES_FILES

# (how the value is set, key, value, what Helm's message names). Helm's --set types only
# integers and booleans (0.5 stays a string), so fractions go through a values file.
BAD_VALUES = [
    ("set", "serve.workers.gpus", "-1", "/serve/workers/gpus"),
    ("set", "training.gpus", "-2", "/training/gpus"),
    ("file", "serve:\n  llmDeployment:\n    numGpus: -0.5\n", "", "minimum"),
    ("string", "training.gpus", "one", "/training/gpus"),
    ("set", "serve.workers.gpus", "1.5", "/serve/workers/gpus"),
    ("string", "serve.port", "http", "/serve/port"),
    ("set", "serve.port", "70000", "/serve/port"),
    ("string", "training.autoPromote", "yes", "/training/autoPromote"),
    ("string", "model.quantization", "int4", "/model/quantization"),
    ("string", "mlflow.backendStore.type", "mysql", "/mlflow/backendStore/type"),
    ("string", "storage.feedback.accessModes[0]", "ReadWriteAll", "/storage/feedback/accessModes"),
    ("string", "storage.feedback.mountPath", "feedback", "/storage/feedback/mountPath"),
    ("set", "serve.gpus", "1", "serve"),  # a typo'd key is refused, not silently ignored
    ("string", "secrets.apiKeys.name", "Not_A_Secret", "/secrets/apiKeys/name"),
    ("string", "training.resources.limits.memory", "lots", "/training/resources/limits/memory"),
]


@pytest.mark.parametrize(("how", "key", "value", "where"), BAD_VALUES)
def test_schema_rejects_bad_values(render_chart, tmp_path, how, key, value, where):
    if how == "file":
        values_file = tmp_path / "values.yaml"
        values_file.write_text(key, encoding="utf-8")
        overrides = {"values_files": [values_file]}
    elif how == "set":
        overrides = {"set_values": {key: value}}
    else:
        overrides = {"set_strings": {key: value}}
    with pytest.raises(RenderError, match="schema") as refused:
        render_chart(**overrides)
    assert where in str(refused.value)


@pytest.mark.parametrize(
    "values",
    [
        "serve:\n  workers:\n    gpus: 0\n  llmDeployment:\n    numGpus: 0\n",
        "training:\n  gpus: 3\n",
        "serve:\n  llmDeployment:\n    numGpus: 0.5\n",
    ],
)
def test_schema_accepts_sensible_gpu_counts(render_chart, tmp_path, values):
    values_file = tmp_path / "values.yaml"
    values_file.write_text(values, encoding="utf-8")
    assert find(render_chart(values_files=[values_file]), "RayService")


def test_helm_lint_fails_on_a_values_file_with_a_negative_gpu_count(kube_tools, tmp_path):
    bad = tmp_path / "bad-values.yaml"
    bad.write_text("training:\n  gpus: -1\n", encoding="utf-8")
    with pytest.raises(RenderError, match="minimum"):
        helm_lint(kube_tools, bad)


@pytest.mark.parametrize("name", sorted(VALUES_FILES))
def test_helm_lint_strict_passes_for_every_shipped_values_file(kube_tools, name):
    assert "0 chart(s) failed" in helm_lint(kube_tools, VALUES_FILES[name])
