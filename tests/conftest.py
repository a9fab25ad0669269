"""Suite-wide set-up: no traffic off the machine, and the shared fixture plugins.

Fixture modules live in tests/fixtures/ and are registered here automatically, so each
area of the suite can add its own without editing this file.
"""

import os
from pathlib import Path

from serve.local_ray import keep_ray_on_loopback

# Before anything imports transformers, TRL, MLflow or Ray: never reach a hub or phone home.
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[_name] = _value
# Tests run servers, training and the test process side by side on two cores: one torch
# thread each avoids oversubscription (10-50x slowdowns were measured without it).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The Ray instances tests start listen on loopback only, like `python -m serve`'s.
keep_ray_on_loopback()

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"

pytest_plugins = sorted(
    f"tests.fixtures.{path.stem}"
    for path in (Path(__file__).parent / "fixtures").glob("*.py")
    if path.stem != "__init__"
)
