"""Every COPY/ADD source of the Dockerfiles is in the build context (tools/docker_context.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.docker_context import check, copy_sources, exec_form, missing_sources
from tools.paths import DOCKERFILES, REPO_ROOT


def make_context(root: Path, dockerignore: str, dockerfile: str, files: list[str]) -> Path:
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x", encoding="utf-8")
    (root / ".dockerignore").write_text(dockerignore, encoding="utf-8")
    path = root / "Dockerfile.app"
    path.write_text(dockerfile, encoding="utf-8")
    return path


def test_shipped_dockerfiles_copy_only_what_their_context_holds() -> None:
    assert check() == []
    copied = {copy.source for dockerfile in DOCKERFILES for copy in copy_sources(dockerfile)}
    assert "requirements-embedded.txt" in copied  # the file the ignore file once left out


def test_a_copied_file_the_ignore_file_leaves_out_fails(tmp_path: Path) -> None:
    dockerfile = make_context(
        tmp_path,
        "*\n!app/\n!requirements.txt\n",
        "FROM python:3.11-slim\nCOPY requirements.txt requirements-extra.txt /tmp/\n"
        "COPY app/ /app/\n",
        ["requirements.txt", "requirements-extra.txt", "app/main.py"],
    )

    assert missing_sources(dockerfile, tmp_path) == [
        "Dockerfile.app:2: COPY requirements-extra.txt: "
        "left out of the build context by .dockerignore"
    ]


@pytest.mark.parametrize(
    ("instruction", "problem"),
    [
        ("COPY --from=build /opt/venv /opt/venv", None),  # another stage
        ("COPY --from=busybox:1.36 /bin/sh /bin/sh", None),  # another image
        ("ADD https://example.com/x.tar.gz /tmp/", None),
        ('COPY ["app/main.py", "/app/"]', None),
        ("COPY --chown=1000:1000 --chmod=644 app/ /app/", None),
        ("COPY app/*.py /app/", None),
        ("COPY ./app/main.py /app/", None),
        ("COPY app/keep/ /keep/", None),  # re-included below an ignored folder
        ("COPY app/*.txt /app/", "left out of the build context by .dockerignore"),
        ("COPY app/*.md /app/", "no such file in the build context"),
        ("COPY app/secret.txt /app/", "left out of the build context by .dockerignore"),
        ("COPY --chown=1000 secret/ /s/", "left out of the build context by .dockerignore"),
        ('COPY ["notes.md", "/app/"]', "no such file in the build context"),
        ("COPY ../outside.txt /app/", "outside the build context"),
    ],
)
def test_sources_are_read_as_docker_reads_them(
    tmp_path: Path, instruction: str, problem: str | None
) -> None:
    dockerfile = make_context(
        tmp_path,
        "# comment\napp/secret.txt\nsecret\napp/keep\n!app/keep/a\n",
        f"FROM python:3.11-slim AS build\nFROM python:3.11-slim\n{instruction}\n",
        ["app/main.py", "app/secret.txt", "app/keep/a", "secret/key"],
    )

    problems = missing_sources(dockerfile, tmp_path)

    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].endswith(problem), problems
        assert problems[0].startswith("Dockerfile.app:3: COPY ")


def test_a_dockerfile_s_own_ignore_file_wins(tmp_path: Path) -> None:
    dockerfile = make_context(tmp_path, "*\n", "FROM scratch\nCOPY app/ /app/\n", ["app/main.py"])
    assert missing_sources(dockerfile, tmp_path) != []

    (tmp_path / "Dockerfile.app.dockerignore").write_text("*\n!app/\n", encoding="utf-8")

    assert missing_sources(dockerfile, tmp_path) == []


def test_a_missing_dockerfile_is_reported(tmp_path: Path) -> None:
    assert check([tmp_path / "Dockerfile.gone"], tmp_path) == ["Dockerfile.gone missing"]


def test_the_training_image_runs_python_m_train_job() -> None:
    assert exec_form(REPO_ROOT / "Dockerfile.train", "ENTRYPOINT") == ["python", "-m", "train_job"]
