"""The wheels a GPU proof run carries to the lent GPU machine, trimmed to fit one call.

    python -m tools.gpu_wheels             # download, trim and check into .gpu-wheels/
    python -m tools.gpu_wheels --offline   # the same from the download cache, no network

That machine cannot download anything, and one call carries at most 64 MiB (the working
tree and the carried folders together). Its image already has torch 2.11 (CUDA 13),
transformers 5.17, accelerate 1.15, huggingface_hub 1.33 and most of the scientific stack
(``DEVICE_IMAGE_PACKAGES``), but not bitsandbytes, TRL, Unsloth, datasets or pydantic. So:

1. Each wheel of ``WHEELS`` is downloaded once with ``pip download --no-deps`` for CPython
   3.12 on manylinux x86_64 into an ignored cache (``.cache/gpu-wheels``).
2. It is copied into ``.gpu-wheels/`` without the members it does not need there:
   bitsandbytes keeps only its CUDA 13 and CPU libraries, Unsloth loses ``studio/`` (its
   web app). The removed members' lines leave ``RECORD`` too.
3. Every carried wheel's declared requirements (for Python 3.12 on Linux x86_64) are
   checked against the carried set and the image: a version the image is known to have,
   or a carried one, must satisfy them; a package the image has at a version nobody has
   read there is listed as unchecked; a missing one is a problem, except the packages that
   Unsloth declares but imports only where present (``UNSLOTH_OPTIONAL``, too big to carry
   or unused by a LoRA step), which are listed as waived.
4. The sizes are printed, and the wheels plus the working tree that travels (tracked and
   untracked-not-ignored files) are checked against the 64 MiB a call carries.

Exit status 0 when the set is complete and fits, 1 otherwise. Nothing here is committed:
``.gpu-wheels/`` and the cache are ignored. The device command that installs the set is
``loadtests/gpu_device_run.sh``.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from tools.paths import REPO_ROOT

logger = logging.getLogger(__name__)

WHEEL_DIR = REPO_ROOT / ".gpu-wheels"
"""The trimmed set: the folder a device call names in ``carry``."""
DOWNLOAD_DIR = REPO_ROOT / ".cache" / "gpu-wheels"
"""The wheels as downloaded (ignored; never carried)."""
CARRY_LIMIT = 64 * 2**20
"""What one device call carries: the working tree and the carried folders together."""

PYTHON_VERSION = "3.12"
PLATFORMS = tuple(f"manylinux_2_{minor}_x86_64" for minor in (17, 24, 27, 28, 31, 34, 35)) + (
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
"""pip matches a manylinux tag exactly: every glibc the device's Python 3.12 can load."""
MARKER_ENVIRONMENT = {
    "python_version": PYTHON_VERSION,
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "extra": "",
}
"""The device's Python (3.12.3 on Linux x86_64), for evaluating requirement markers."""


@dataclass(frozen=True)
class Wheel:
    """One carried distribution at one version, and what is cut from it."""

    name: str
    version: str
    why: str
    drop: tuple[str, ...] = ()
    """Archive members removed (fnmatch patterns)..."""
    keep: tuple[str, ...] = ()
    """...except these."""


WHEELS = (
    Wheel(
        "bitsandbytes",
        "0.50.2",
        "NF4 serving and QLoRA (the CPU stack's version)",
        drop=("bitsandbytes/libbitsandbytes_*",),
        keep=("bitsandbytes/libbitsandbytes_cuda130*", "bitsandbytes/libbitsandbytes_cpu*"),
    ),
    Wheel("trl", "1.15.0", "SFTTrainer; Unsloth 2026.10.7 accepts trl<=1.15 (the GPU lock's pin)"),
    Wheel("peft", "0.21.2", "the CPU stack's PEFT (the image's version is not read)"),
    Wheel("datasets", "4.8.5", "TRL's datasets; Unsloth accepts datasets<5 (the GPU lock's pin)"),
    Wheel("dill", "0.4.1", "datasets"),
    Wheel("multiprocess", "0.70.19", "datasets"),
    Wheel("pydantic", "2.14.3", "Ouro's settings"),
    Wheel("pydantic-core", "2.50.4", "pydantic 2.14.3's exact core"),
    Wheel("pydantic-settings", "2.16.3", "Ouro's settings"),
    Wheel("typing-inspection", "0.4.5", "pydantic"),
    Wheel("annotated-types", "0.8.0", "pydantic"),
    Wheel("python-dotenv", "1.2.4", "pydantic-settings"),
    Wheel("typing-extensions", "4.16.0", "pydantic needs >=4.16 (the image's version is not read)"),
    Wheel("fsspec", "2026.2.0", "datasets 4.8.5 declares fsspec<=2026.2.0 (the image's: not read)"),
    Wheel(
        "unsloth",
        "2026.10.7",
        "the Unsloth training step; 2026.10.8+ need a certifi the index lacks (the GPU lock)",
        drop=("studio/*",),
    ),
    Wheel("unsloth-zoo", "2026.10.7", "Unsloth's own kernels and patches"),
)

DEVICE_IMAGE_VERSIONS = {
    "torch": "2.11.0",
    "transformers": "5.17.0",
    "accelerate": "1.15.0",
    "huggingface-hub": "1.33.0",
    "tokenizers": "0.23.2",
    "safetensors": "0.8.0",
    "numpy": "2.5.2",
    "triton": "3.6.0",
    "sentencepiece": "0.2.2",
    "torchvision": "0.26.0",
}
"""Versions read on the device image (2026-11)."""

DEVICE_IMAGE_PACKAGES = frozenset(
    canonicalize_name(name)
    for name in """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
    botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
    coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
    diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
    frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
    hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
    jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
    linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl
    meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
    narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
    nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
    nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
    nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime
    onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
    orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
    prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
    pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
    pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich
    sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
    sentencepiece sentence-transformers setuptools shellingham simplejson six
    sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
    tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
    torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
    typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt
    xarray xxhash yarl zipp
    """.split()
)
"""The Python packages of the device image, as read there on 2026-11-17."""

UNSLOTH_PACKAGES = frozenset({"unsloth", "unsloth-zoo"})
UNSLOTH_OPTIONAL = frozenset(
    {
        "xformers",  # hundreds of MiB; Unsloth falls back to PyTorch's attention without it
        "torchao",  # quantisation-aware training and fp8 only
        "diffusers",  # diffusion models only
        "hf-transfer",  # faster Hub downloads; nothing is downloaded there
        "tyro",  # the unsloth command line
        "structlog",  # Unsloth's studio (not carried)
        "nest-asyncio",  # notebooks
        "cut-cross-entropy",  # an optional fused loss
        "msgspec",  # vLLM LoRA requests
    }
)
"""Declared by Unsloth or unsloth_zoo, not carried, and imported by neither at import time
or in a LoRA step (each is imported inside a guard or a function that step does not
call). The training job's gate (``train_job.train.unsloth_incompatibilities``) still
counts them; ``loadtests.bench_gpu`` waives them by name and records that it did."""


@dataclass
class Finding:
    """One declared requirement of a carried wheel, and where it is met."""

    wheel: str
    requirement: str
    status: str
    """'met' (carried, or a version read on the image), 'unchecked' (on the image, version
    not read there), 'waived' (``UNSLOTH_OPTIONAL``) or 'problem'."""
    note: str = ""


@dataclass
class Carried:
    """A trimmed wheel in the carried folder."""

    wheel: Wheel
    path: Path
    downloaded_bytes: int
    dropped: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def target_flags() -> list[str]:
    """pip's flags that pick (or install) wheels for the device's Python, not this one."""
    return [
        "--only-binary=:all:",
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        "cp",
        *(argument for platform in PLATFORMS for argument in ("--platform", platform)),
    ]


def download(wheel: Wheel, cache: Path) -> Path:
    """The downloaded wheel of ``wheel`` in ``cache``, fetched with pip only when absent."""
    found = _find(wheel, cache)
    if found is not None:
        return found
    cache.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        *target_flags(),
        "--dest",
        str(cache),
        f"{wheel.name}=={wheel.version}",
    ]
    logger.info("downloading %s %s", wheel.name, wheel.version)
    subprocess.run(command, check=True)
    found = _find(wheel, cache)
    if found is None:
        raise FileNotFoundError(f"pip saved no wheel of {wheel.name} {wheel.version} in {cache}")
    return found


def _find(wheel: Wheel, folder: Path) -> Path | None:
    """The wheel file of ``wheel``'s name and version in ``folder``, if there is one."""
    for path in sorted(folder.glob("*.whl")) if folder.is_dir() else ():
        name, version, _, _ = parse_wheel_filename(path.name)
        if name == canonicalize_name(wheel.name) and version == Version(wheel.version):
            return path
    return None


def dropped(wheel: Wheel, member: str) -> bool:
    """True when ``member`` of the archive is cut from ``wheel``."""
    return any(fnmatch.fnmatch(member, pattern) for pattern in wheel.drop) and not any(
        fnmatch.fnmatch(member, pattern) for pattern in wheel.keep
    )


def trim(wheel: Wheel, source: Path, dest_dir: Path) -> Carried:
    """Copy ``source`` into ``dest_dir`` (same file name) without ``wheel``'s cut members,
    whose lines also leave the dist-info's RECORD."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / source.name
    removed = []
    with (
        zipfile.ZipFile(source) as archive,
        zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as out,
    ):
        for info in archive.infolist():
            if dropped(wheel, info.filename):
                removed.append(info.filename)
                continue
            data = archive.read(info)
            if wheel.drop and info.filename.endswith(".dist-info/RECORD"):
                data = _without_records(data, wheel)
            out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return Carried(wheel, target, source.stat().st_size, removed)


def _without_records(record: bytes, wheel: Wheel) -> bytes:
    lines = record.decode("utf-8").splitlines(keepends=True)
    return "".join(line for line in lines if not dropped(wheel, line.split(",", 1)[0])).encode()


def declared_requirements(path: Path) -> list[Requirement]:
    """The wheel's Requires-Dist lines that apply on the device (markers evaluated, no extras)."""
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(name).decode("utf-8")
    requirements = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = Requirement(line.split(":", 1)[1].strip())
        if requirement.marker is None or requirement.marker.evaluate(MARKER_ENVIRONMENT):
            requirements.append(requirement)
    return requirements


def check_requirements(carried: dict[str, tuple[str, list[Requirement]]]) -> list[Finding]:
    """Each carried wheel's requirements against the carried set and the device image.

    ``carried`` maps a canonical name to (version, declared requirements).
    """
    findings = []
    for owner, (_, requirements) in sorted(carried.items()):
        for requirement in requirements:
            name = canonicalize_name(requirement.name)
            text = str(requirement)
            if name in carried:
                version = carried[name][0]
                where = "carried"
            elif name in DEVICE_IMAGE_VERSIONS:
                version = DEVICE_IMAGE_VERSIONS[name]
                where = "image"
            elif name in DEVICE_IMAGE_PACKAGES:
                findings.append(Finding(owner, text, "unchecked", "on the image"))
                continue
            elif owner in UNSLOTH_PACKAGES and name in UNSLOTH_OPTIONAL:
                findings.append(Finding(owner, text, "waived", "imported only where present"))
                continue
            else:
                findings.append(Finding(owner, text, "problem", "neither carried nor on the image"))
                continue
            if requirement.specifier.contains(version, prereleases=True):
                findings.append(Finding(owner, text, "met", f"{where} {version}"))
            else:
                findings.append(Finding(owner, text, "problem", f"{where} {version}"))
    return findings


def travelling_tree_bytes(root: Path = REPO_ROOT) -> int:
    """Bytes of what a device call sends besides ``carry``: tracked and untracked files
    that git does not ignore (as they are now, in this checkout)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.decode("utf-8")
    total = 0
    for name in filter(None, listed.split("\0")):
        path = root / name
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def build(dest: Path, cache: Path, offline: bool) -> list[Carried]:
    """Download (unless ``offline``) and trim every wheel of ``WHEELS`` into ``dest``,
    removing any other wheel found there (two versions of one package stop the install)."""
    wanted = set()
    carried = []
    for wheel in WHEELS:
        source = _find(wheel, cache) if offline else download(wheel, cache)
        if source is None:
            raise FileNotFoundError(f"{wheel.name} {wheel.version} is not in {cache} (offline)")
        item = trim(wheel, source, dest)
        wanted.add(item.path.name)
        carried.append(item)
    for stale in dest.glob("*.whl"):
        if stale.name not in wanted:
            logger.info("removing %s (not in the set)", stale.name)
            stale.unlink()
    return carried


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_wheels", description=__doc__)
    parser.add_argument("--dest", type=Path, default=WHEEL_DIR)
    parser.add_argument("--cache", type=Path, default=DOWNLOAD_DIR)
    parser.add_argument("--offline", action="store_true", help="use the cache only")
    parser.add_argument(
        "--target-flags",
        action="store_true",
        help="print pip's flags for the device's interpreter and platform, and exit",
    )
    args = parser.parse_args(argv)
    if args.target_flags:
        print(" ".join(target_flags()))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    carried = build(args.dest, args.cache, args.offline)
    for item in carried:
        cut = f", {len(item.dropped)} members cut" if item.dropped else ""
        print(
            f"{item.wheel.name:18} {item.wheel.version:10} {_mib(item.downloaded_bytes):>9}"
            f" -> {_mib(item.size):>9}{cut}  ({item.wheel.why})"
        )
    findings = check_requirements(
        {
            canonicalize_name(item.wheel.name): (
                item.wheel.version,
                declared_requirements(item.path),
            )
            for item in carried
        }
    )
    for status in ("problem", "waived", "unchecked"):
        chosen = [f for f in findings if f.status == status]
        if chosen:
            print(f"{status} ({len(chosen)}):")
            for finding in chosen:
                print(f"  {finding.wheel}: {finding.requirement} [{finding.note}]")
    print(f"met: {sum(f.status == 'met' for f in findings)} requirements")

    wheels = sum(item.size for item in carried)
    tree = travelling_tree_bytes()
    total = wheels + tree
    print(
        f"wheels {_mib(wheels)} + working tree {_mib(tree)} = {_mib(total)}"
        f" of the {_mib(CARRY_LIMIT)} one call carries"
    )
    problems = [f for f in findings if f.status == "problem"]
    if total > CARRY_LIMIT:
        print("over the carry limit")
    return 1 if problems or total > CARRY_LIMIT else 0


if __name__ == "__main__":
    sys.exit(main())
