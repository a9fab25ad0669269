"""MkDocs hooks: repository files the pages link to, and Sphinx roles in docstrings.

The guides link to a few files that live outside ``docs/`` (the benchmark's plot and
results, the chart's, the kustomize base's and the load tests' READMEs). They are added to
the site at their repository paths, so ``loadtests/results/bench.png`` in a page is the
file ``make bench`` writes, nothing is copied into ``docs/``, and ``mkdocs build --strict``
still fails when one of them is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

REPO_FILES = (
    "charts/ouro/README.md",
    "k8s/README.md",
    "loadtests/README.md",
    "loadtests/results/bench.png",
    "loadtests/results/canary.json",
    "loadtests/results/decode_length.json",
    "loadtests/results/latest.json",
    "loadtests/results/personal.json",
    "loadtests/results/replica_profile.json",
)
# ":class:`X`" as mkdocstrings renders it: the role's name before an inline code span.
SPHINX_ROLE = re.compile(r":(?:class|mod|func|meth|attr|data|exc|obj):(?=<code>)")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    root = Path(config.config_file_path).parent
    for path in REPO_FILES:
        files.append(File.generated(config, path, abs_src_path=str(root / path)))
    return files


def on_page_content(html: str, **kwargs: object) -> str:
    return SPHINX_ROLE.sub("", html)
