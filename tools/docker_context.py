"""Is every file the Dockerfiles COPY or ADD in the build context ``.dockerignore`` leaves?

hadolint reads a Dockerfile alone and cannot see this; ``docker build`` fails at the first
COPY whose source the ignore file leaves out. No Docker engine runs here, so this check
uses the same pieces offline: dockerfile-parse reads each Dockerfile, and the docker SDK's
own implementation of ``.dockerignore`` (``docker.utils.build.exclude_paths``) computes the
files ``docker build .`` would send. A step of ``python -m tools.chart_check``; also

    python -m tools.docker_context

Sources that do not come from the context are skipped: another stage or image
(``--from=``), a URL or git repository (ADD) and a heredoc.
"""

from __future__ import annotations

import fnmatch
import io
import json
import posixpath
import re
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser

from tools.paths import DOCKERFILES, REPO_ROOT

_REMOTE_PREFIXES = ("http://", "https://", "git@", "git://")
_WILDCARDS = frozenset("*?[")
_FLAGS = re.compile(r"(?:\s*--\S+)*\s*")


@dataclass(frozen=True)
class CopySource:
    """One source path of a COPY or ADD instruction, as written after variable expansion."""

    instruction: str
    line: int
    source: str


def ignore_file(dockerfile: Path, context: Path) -> Path:
    """The ignore file BuildKit reads: ``<Dockerfile>.dockerignore`` beside it wins."""
    own = dockerfile.with_name(dockerfile.name + ".dockerignore")
    return own if own.exists() else context / ".dockerignore"


def ignore_patterns(path: Path) -> list[str]:
    """The patterns of an ignore file, read as the docker SDK's ``build()`` reads them."""
    if not path.exists():
        return []
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def build_context(dockerfile: Path, context: Path) -> set[str]:
    """Relative POSIX paths (files and folders) that ``docker build`` sends for this Dockerfile."""
    patterns = ignore_patterns(ignore_file(dockerfile, context))
    # exclude_paths appends to the list it is given, and always keeps the Dockerfile itself.
    dockerfile_name = dockerfile.resolve().relative_to(context.resolve()).as_posix()
    return {
        Path(path).as_posix() for path in exclude_paths(str(context), patterns, dockerfile_name)
    }


def _instructions(dockerfile: Path) -> list[dict]:
    return DockerfileParser(fileobj=io.BytesIO(dockerfile.read_bytes())).structure


def exec_form(dockerfile: Path, instruction: str) -> list[str]:
    """The last ENTRYPOINT or CMD of a Dockerfile, in exec form (what a pod's ``command``
    and ``args`` replace)."""
    (*_, last) = [i for i in _instructions(dockerfile) if i["instruction"] == instruction]
    command = json.loads(last["value"])
    if not (isinstance(command, list) and all(isinstance(part, str) for part in command)):
        raise ValueError(f"{dockerfile.name}: {instruction} is not in exec form: {last['value']}")
    return command


def copy_sources(dockerfile: Path) -> list[CopySource]:
    """Every COPY/ADD source that is read from the build context."""
    sources = []
    for instruction in _instructions(dockerfile):
        name = instruction["instruction"]
        if name not in ("COPY", "ADD"):
            continue
        flags, arguments = _split_arguments(instruction["value"])
        if any(flag.startswith("--from=") for flag in flags):
            continue  # another stage or image, not the context
        for source in arguments[:-1]:  # the last argument is the destination
            if source.startswith("<<") or source.startswith(_REMOTE_PREFIXES):
                continue
            sources.append(CopySource(name, instruction["startline"] + 1, source))
    return sources


def _split_arguments(value: str) -> tuple[list[str], list[str]]:
    """(--flags, paths) of a COPY/ADD line, in shell form or JSON (exec) form."""
    flags = _FLAGS.match(value)
    rest = value[flags.end() :]
    if rest.startswith("["):
        try:
            return flags.group(0).split(), [str(word) for word in json.loads(rest)]
        except json.JSONDecodeError:
            pass  # Docker reads a malformed JSON array as shell form
    return flags.group(0).split(), shlex.split(rest)


def missing_sources(dockerfile: Path, context: Path = REPO_ROOT) -> list[str]:
    """One line per COPY/ADD source absent from the build context; empty when it builds."""
    included = build_context(dockerfile, context)
    ignore_name = ignore_file(dockerfile, context).name
    problems = []
    for copy in copy_sources(dockerfile):
        where = f"{dockerfile.name}:{copy.line}: {copy.instruction} {copy.source}"
        path = posixpath.normpath(copy.source.lstrip("/"))
        if path == ".." or path.startswith("../"):
            problems.append(f"{where}: outside the build context")
        elif "$" in path:
            problems.append(f"{where}: a variable with no value (ARG/ENV default)")
        elif not _in_context(path, included):
            why = (
                f"left out of the build context by {ignore_name}"
                if _on_disk(path, context)
                else "no such file in the build context"
            )
            problems.append(f"{where}: {why}")
    return problems


def _in_context(path: str, included: set[str]) -> bool:
    if path == ".":
        return bool(included)
    if _WILDCARDS.isdisjoint(path):
        return path in included or any(p.startswith(path + "/") for p in included)
    # Docker matches wildcards like Go's filepath.Match: `*` stays within one path element.
    parts = path.split("/")
    return any(
        len(candidate) == len(parts)
        and all(fnmatch.fnmatchcase(c, p) for c, p in zip(candidate, parts, strict=True))
        for candidate in (p.split("/") for p in included)
    )


def _on_disk(path: str, context: Path) -> bool:
    if _WILDCARDS.isdisjoint(path):
        return (context / path).exists()
    return any(context.glob(path))


def check(dockerfiles: Iterable[Path] = DOCKERFILES, context: Path = REPO_ROOT) -> list[str]:
    """Problems of every Dockerfile built from ``context``; empty when all of them build."""
    problems = []
    for dockerfile in dockerfiles:
        if not dockerfile.exists():
            problems.append(f"{dockerfile.name} missing")
            continue
        problems += missing_sources(dockerfile, context)
    return problems


def main() -> int:
    problems = check()
    for problem in problems:
        print(problem)
    names = ", ".join(path.name for path in DOCKERFILES)
    print(f"{'FAIL' if problems else 'PASS'} build context of {names}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
