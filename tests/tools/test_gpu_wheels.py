"""The carried wheel set: trimming, the requirement check against the device image, the
carry limit, and its versions against the project's own pins. Built from small stand-in
wheels in a temporary cache: nothing is downloaded."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tools import gpu_wheels
from tools.gpu_wheels import Wheel
from tools.paths import REPO_ROOT


def make_wheel(folder: Path, name: str, version: str, files: dict[str, str], requires=()) -> Path:
    """A wheel whose RECORD lists every member, as real wheels do."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{name.replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    members = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {line}\n" for line in requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{member},,\n" for member in members) + f"{info}/RECORD,,\n"
    path = folder / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in members.items():
            archive.writestr(member, text)
        archive.writestr(f"{info}/RECORD", record)
    return path


BNB = gpu_wheels.WHEELS[0]


def test_bitsandbytes_keeps_only_its_cuda_13_and_cpu_libraries(tmp_path):
    source = make_wheel(
        tmp_path / "cache",
        "bitsandbytes",
        "0.50.2",
        {
            "bitsandbytes/__init__.py": "",
            "bitsandbytes/libbitsandbytes_cuda118.so": "x" * 1000,
            "bitsandbytes/libbitsandbytes_cuda126.so": "x" * 1000,
            "bitsandbytes/libbitsandbytes_cuda130.so": "gpu",
            "bitsandbytes/libbitsandbytes_cpu.so": "cpu",
        },
    )
    carried = gpu_wheels.trim(BNB, source, tmp_path / "carry")
    assert carried.path.name == source.name
    assert sorted(carried.dropped) == [
        "bitsandbytes/libbitsandbytes_cuda118.so",
        "bitsandbytes/libbitsandbytes_cuda126.so",
    ]
    with zipfile.ZipFile(carried.path) as archive:
        names = set(archive.namelist())
        record = archive.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    assert "bitsandbytes/libbitsandbytes_cuda130.so" in names
    assert "bitsandbytes/libbitsandbytes_cpu.so" in names
    assert not any("cuda118" in name or "cuda126" in name for name in names)
    assert "cuda118" not in record and "libbitsandbytes_cuda130.so" in record
    assert carried.size < carried.downloaded_bytes


def test_unsloth_loses_studio_only():
    unsloth = next(wheel for wheel in gpu_wheels.WHEELS if wheel.name == "unsloth")
    assert gpu_wheels.dropped(unsloth, "studio/frontend/index.js")
    assert not gpu_wheels.dropped(unsloth, "unsloth/models/llama.py")
    assert not gpu_wheels.dropped(unsloth, "unsloth-2026.10.7.dist-info/METADATA")


def test_requirements_are_read_for_python_3_12_on_linux_x86_64(tmp_path):
    path = make_wheel(
        tmp_path,
        "demo",
        "1.0",
        {},
        requires=(
            "numpy>=2",
            'mlx==0.32.4; sys_platform == "darwin"',
            'triton>=3; "linux" in sys_platform',
            'tomli; python_version < "3.11"',
            'pytest; extra == "test"',
        ),
    )
    names = [r.name for r in gpu_wheels.declared_requirements(path)]
    assert names == ["numpy", "triton"]


def test_each_requirement_is_met_unchecked_waived_or_a_problem():
    def reqs(*lines):
        return [Requirement(line) for line in lines]

    carried = {
        "trl": ("1.15.0", reqs("transformers>=4.56", "accelerate>=2.0", "rich", "xformers")),
        "unsloth": ("2026.10.7", reqs("trl<=1.15.0", "xformers>=0.0.27", "no-such-package")),
    }
    findings = {
        (f.wheel, f.requirement.split(">")[0].split("<")[0]): f.status
        for f in gpu_wheels.check_requirements(carried)
    }
    assert findings == {
        ("trl", "transformers"): "met",  # the image's 5.17.0
        ("trl", "accelerate"): "problem",  # the image has 1.15.0
        ("trl", "rich"): "unchecked",  # on the image, version not read
        ("trl", "xformers"): "problem",  # waived for Unsloth's own requirements only
        ("unsloth", "trl"): "met",  # carried
        ("unsloth", "xformers"): "waived",
        ("unsloth", "no-such-package"): "problem",
    }


def _stand_in_cache(folder: Path) -> None:
    for wheel in gpu_wheels.WHEELS:
        make_wheel(folder, wheel.name, wheel.version, {f"{wheel.name}/__init__.py": ""})


def test_the_set_is_built_offline_from_the_cache_and_stale_wheels_leave(tmp_path, capsys):
    _stand_in_cache(tmp_path / "cache")
    dest = tmp_path / "carry"
    make_wheel(dest, "trl", "1.16.0", {})  # another version: two would stop the install
    code = gpu_wheels.main(["--offline", "--cache", str(tmp_path / "cache"), "--dest", str(dest)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert len(list(dest.glob("*.whl"))) == len(gpu_wheels.WHEELS)
    assert not (dest / "trl-1.16.0-py3-none-any.whl").exists()
    assert re.search(
        r"wheels [\d.]+ MiB \+ working tree [\d.]+ MiB = [\d.]+ MiB of the 64.0", printed
    )


def test_over_the_carry_limit_fails(tmp_path, monkeypatch, capsys):
    _stand_in_cache(tmp_path / "cache")
    monkeypatch.setattr(gpu_wheels, "CARRY_LIMIT", 1)
    code = gpu_wheels.main(
        ["--offline", "--cache", str(tmp_path / "cache"), "--dest", str(tmp_path / "carry")]
    )
    assert code == 1
    assert "over the carry limit" in capsys.readouterr().out


def test_offline_without_a_cached_wheel_says_which(tmp_path):
    with pytest.raises(FileNotFoundError, match="bitsandbytes 0.50.2"):
        gpu_wheels.build(tmp_path / "carry", tmp_path / "empty", offline=True)


def _pins(path: Path) -> dict[str, str]:
    return {
        canonicalize_name(name): version
        for name, version in re.findall(
            r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;#\\]+)", path.read_text(), re.M
        )
    }


def test_the_set_matches_the_projects_pins_and_the_device_image():
    """The Unsloth-bound packages at the GPU images' pins (requirements-gpu.txt), the rest
    at the CPU stack's (requirements.txt); the image's transformers is the one both the
    GPU pins and Unsloth accept."""
    carried = {canonicalize_name(w.name): w.version for w in gpu_wheels.WHEELS}
    assert len(carried) == len(gpu_wheels.WHEELS)  # one version of each
    gpu = _pins(REPO_ROOT / "requirements-gpu.txt")
    cpu = _pins(REPO_ROOT / "requirements.txt")
    for name in ("unsloth", "unsloth-zoo", "trl", "datasets"):
        assert carried[name] == gpu[name], name
    for name in ("bitsandbytes", "peft", "pydantic", "pydantic-settings"):
        assert carried[name] == cpu[name], name
    assert gpu_wheels.DEVICE_IMAGE_VERSIONS["transformers"] == gpu["transformers"]
    assert not set(carried) & set(gpu_wheels.DEVICE_IMAGE_VERSIONS)  # nothing shadows those
    assert not set(carried) & gpu_wheels.UNSLOTH_OPTIONAL


def test_target_flags_name_the_devices_python():
    flags = gpu_wheels.target_flags()
    assert flags[flags.index("--python-version") + 1] == "3.12"
    assert "--only-binary=:all:" in flags and "manylinux_2_28_x86_64" in flags


def test_wheel_drop_patterns_are_honest():
    kept = Wheel("x", "1", "", drop=("x/lib_*",), keep=("x/lib_a*",))
    assert gpu_wheels.dropped(kept, "x/lib_b.so")
    assert not gpu_wheels.dropped(kept, "x/lib_a.so")
    assert not gpu_wheels.dropped(kept, "x/core.py")
