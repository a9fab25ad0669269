"""A local Ray for one machine: bounded object store, no probe off the machine, and the
Serve settings the app is built for (``SERVE_ENV``).

Ray's dashboard looks for ``~/ray_bootstrap_config.yaml`` at start and, when it is
missing, probes the cloud metadata address (a link-local IP) to guess the cloud it runs
in, even with usage stats off. Ray's processes therefore get a HOME of their own (under
the data dir) holding that file with ``provider: {type: local}``. Only Ray's processes
see it: HOME is switched while Ray starts (they inherit it) and restored right after,
and the caches that would follow HOME (Hugging Face, torch, XDG) are pinned to where
they were.

Ray's token authentication (on by default) normally keeps its token in
``~/.ray/auth_token``; with HOME moved, and with a process that starts Ray more than
once (a test session), that file would differ between starts while Ray caches the
first token in the process. The token is therefore handed to Ray's processes in
``RAY_AUTH_TOKEN``, one random token per process. A one-machine run keeps Ray's default
protection (only processes given the token may join the cluster or submit work); Ray's
warning at every start that token authentication is on by default is therefore silenced
(setting ``RAY_AUTH_MODE=token`` instead would have to happen before ``ray`` is imported,
which reads it once).

Ray's own services (GCS, raylet, agents, workers) listen on loopback only: a one-machine
run never needs them reachable from elsewhere. Ray decides that once, when it is imported
(``ray_constants.ENABLE_RAY_CLUSTER``, the single-machine mode it uses on macOS and
Windows): with it off, the node's address is 127.0.0.1 and every gRPC server binds there.
So :func:`keep_ray_on_loopback` must run before anything imports ``ray``; Ray's processes
inherit the variable. Serve's HTTP proxy still listens where ``--host`` says.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

RAY_BOOTSTRAP_CONFIG = "ray_bootstrap_config.yaml"
LOCAL_PROVIDER = "provider:\n  type: local\n"
DEFAULT_OBJECT_STORE_BYTES = 256 * 1024 * 1024
RAY_TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"


SERVE_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
"""Ray Serve settings the app is built for, in the environment of Ray's processes (here for
a local Ray, in the Helm chart for a cluster). The LLM server's code runs on the replica's
own event loop, where Serve's direct ingress already reads and writes HTTP: no hop between
two loops per request and per streamed delta. That needs code that never blocks the loop:
the engine steps in a thread of its own, and slow work goes to worker threads."""

RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch between a cluster node (on: listen on the node's routable address and the
wildcard) and a single machine (off: loopback only)."""


def keep_ray_on_loopback() -> None:
    """Make every Ray service this process starts listen on 127.0.0.1 (before importing ray)."""
    if os.environ.get(RAY_CLUSTER_ENV) == "0":
        return
    if "ray" in sys.modules:
        logger.warning(
            "ray was imported before %s was set: its services may listen on every interface",
            RAY_CLUSTER_ENV,
        )
    os.environ[RAY_CLUSTER_ENV] = "0"


def prepare_ray_home(directory: Path) -> Path:
    """A HOME for Ray's processes, with the bootstrap file that stops the metadata probe."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RAY_BOOTSTRAP_CONFIG).write_text(LOCAL_PROVIDER, encoding="utf-8")
    return directory


@contextmanager
def ray_process_home(home: Path) -> Iterator[None]:
    """Processes started inside get ``home`` as HOME; caches stay where they were."""
    original = os.environ.copy()
    user_home = Path.home()
    cache = Path(os.environ.get("XDG_CACHE_HOME", user_home / ".cache"))
    pinned = {
        "XDG_CACHE_HOME": str(cache),
        "HF_HOME": str(cache / "huggingface"),
        "TORCH_HOME": str(cache / "torch"),
    }
    for name, value in pinned.items():
        os.environ.setdefault(name, value)
    os.environ["HOME"] = str(prepare_ray_home(home))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(original)


def start_local_ray(
    ray_home: Path,
    *,
    num_cpus: int | None = None,
    object_store_memory: int = DEFAULT_OBJECT_STORE_BYTES,
) -> Path:
    """Start a new local Ray instance (never join another one), on loopback only; returns
    its session dir."""
    keep_ray_on_loopback()
    import ray  # here: after keep_ray_on_loopback

    if not {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & set(os.environ):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    # Token authentication stays on, deliberately: Ray's warning at every start that it is
    # on by default says nothing a one-machine run has to act on.
    logging.getLogger(RAY_TOKEN_SETUP_LOGGER).setLevel(logging.ERROR)
    with ray_process_home(ray_home):
        for name, value in SERVE_ENV.items():  # Ray's processes inherit them
            os.environ.setdefault(name, value)
        context = ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count() or 1,
            object_store_memory=object_store_memory,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    session_dir = Path(context.address_info["session_dir"])
    logger.info("local Ray started: %s (HOME for its processes: %s)", session_dir, ray_home)
    return session_dir
