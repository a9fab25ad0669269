"""The local stack the benchmark runs against: ``python -m serve`` on a fresh data dir.

- The base model is built (ouro-tiny) or resolved once into the *default* data dir's model
  cache (``OURO_DATA_DIR`` or ./.ouro), so repeated runs, and ``make run``, share it.
- Everything else is fresh per run under a temporary data dir: the local MLflow store
  (sqlite), the adapter cache, the feedback ledger, Ray's HOME.
- Adapter versions are LoRA adapters with random non-zero weights
  (``loadtests.bench_engine.make_adapters``), logged and registered the way the training
  job does it (``train_job.register.CycleRun`` + ``AdapterRegistry.register_adapter``).
- ``python -m serve`` runs in its own process group (in this session) and is stopped
  with SIGTERM (its clean shutdown of Serve and Ray), then anything of it still alive
  is killed by pid.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from loadtests.bench_engine import make_adapters
from ouro.errors import OuroError
from ouro.models import resolve_base_model
from ouro.registry import ADAPTER_ARTIFACT_PATH, TAG_BASE_MODEL, AdapterRegistry
from ouro.settings import OuroSettings
from train_job.register import CycleRun

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "ouro-bench"
READY_TIMEOUT_S = 900.0
"""Ray and the model start slowly on two cores shared with other work."""
STOP_TIMEOUT_S = 90.0
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
}
"""Nothing the benchmark starts may reach a hub or phone home."""


class StackError(OuroError):
    """The local stack could not be started."""


def offline_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the offline switches (and ``extra``) set."""
    return {**os.environ, **OFFLINE_ENV, **(extra or {})}


def free_port() -> int:
    """A TCP port nothing listens on right now on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def replica_threads() -> int:
    """Torch threads of the LLM replica that ``python -m serve`` starts: OURO_LLM_NUM_CPUS
    when set, else every core. The in-process engine uses as many, for a fair comparison."""
    configured = os.environ.get("OURO_LLM_NUM_CPUS")
    return max(1, int(float(configured))) if configured else os.cpu_count() or 1


def prepare_base_model(base_model: str | None) -> Path | str:
    """The base model, built or resolved in the default data dir's model cache."""
    overrides = {"base_model": base_model} if base_model else {}
    resolved = resolve_base_model(OuroSettings(**overrides))
    return Path(resolved) if Path(resolved).exists() else resolved


def register_adapter_dir(
    registry: AdapterRegistry,
    settings: OuroSettings,
    model_dir: Path | str,
    adapter_dir: Path,
    run_name: str,
) -> int:
    """Log ``adapter_dir`` as a run's artifacts and register it in ``registry`` (shared or
    a scope's), as the training job does; returns the version."""
    run = CycleRun.start(
        registry,
        EXPERIMENT,
        settings.local_artifacts_dir,
        run_name=run_name,
        tags={"ouro.bench": "true", **({"ouro.scope": registry.scope} if registry.scope else {})},
    )
    run.log_artifacts(adapter_dir, ADAPTER_ARTIFACT_PATH)
    run.end("FINISHED")
    return registry.register_adapter(
        run.run_id,
        f"{run.artifact_uri}/{ADAPTER_ARTIFACT_PATH}",
        {TAG_BASE_MODEL: str(model_dir), "ouro.bench": "true"},
    )


def register_adapters(
    settings: OuroSettings, model_dir: Path | str, work_dir: Path, count: int
) -> dict[int, Path]:
    """``count`` random LoRA adapters registered as versions 1..count; version -> local dir."""
    registry = AdapterRegistry.from_settings(settings)
    versions: dict[int, Path] = {}
    for index, path in enumerate(make_adapters(str(model_dir), work_dir, count).values()):
        version = register_adapter_dir(
            registry, settings, model_dir, path, run_name=f"bench-adapter-{index}"
        )
        versions[version] = path
    logger.info("registered adapter versions %s", sorted(versions))
    return versions


@dataclass(frozen=True)
class ServeProcess:
    """A running ``python -m serve``."""

    base_url: str
    client_key: str
    admin_key: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def refresh_registry(self, timeout_s: float = 60.0) -> dict:
        """``POST /admin/registry/refresh``: every replica re-reads the registry now."""
        response = httpx.post(
            f"{self.base_url}/admin/registry/refresh",
            headers={"Authorization": f"Bearer {self.admin_key}"},
            timeout=timeout_s,
        )
        response.raise_for_status()
        return response.json()


@contextmanager
def serve_process(
    settings: OuroSettings,
    model_dir: Path | str,
    log_path: Path,
    *,
    named_keys: dict[str, str] | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[ServeProcess]:
    """``python -m serve`` on 127.0.0.1:<free port> with fresh API keys; stopped on exit.

    ``named_keys`` (name -> key) are client keys besides the fresh one (each name is a
    personal scope); ``extra_env`` adds ``OURO_*`` settings.
    """
    port = free_port()
    client_key = "bench-client-" + secrets.token_urlsafe(12)
    admin_key = "bench-admin-" + secrets.token_urlsafe(12)
    command = [
        sys.executable,
        "-m",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(settings.data_dir),
        "--base-model",
        str(model_dir),
        "--mlflow-uri",
        settings.tracking_uri,
    ]
    client_keys = [client_key, *(f"{name}:{key}" for name, key in (named_keys or {}).items())]
    env = offline_env(
        {
            "OURO_API_KEYS": ",".join(client_keys),
            "OURO_ADMIN_API_KEYS": admin_key,
            **(extra_env or {}),
        }
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        # A process group of its own: Ctrl-C in the terminal reaches only the harness,
        # which then stops the server in order. The same session, though: Linux shares
        # CPU fairly between sessions (autogroups) first, so a server in a session of its
        # own would get more of a busy machine than the in-process engine it is
        # compared with.
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    stack = ServeProcess(f"http://127.0.0.1:{port}", client_key, admin_key, process, log_path)
    try:
        _wait_ready(stack)
        yield stack
    finally:
        _stop(process)


def _wait_ready(stack: ServeProcess) -> None:
    started = time.monotonic()
    while time.monotonic() - started < READY_TIMEOUT_S:
        if stack.process.poll() is not None:
            raise StackError(f"python -m serve exited early:\n{stack.log_tail()}")
        try:
            if httpx.get(f"{stack.base_url}/readyz", timeout=5).status_code == 200:
                logger.info(
                    "Ouro ready at %s after %.0f s", stack.base_url, time.monotonic() - started
                )
                return
        except httpx.TransportError:
            pass
        time.sleep(1.0)
    raise StackError(f"python -m serve not ready in {READY_TIMEOUT_S:.0f} s:\n{stack.log_tail()}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (python -m serve then shuts Serve and Ray down), then kill what is left."""
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("python -m serve did not stop in %.0f s: killing it", STOP_TIMEOUT_S)
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
    leftovers = [p for p in descendants if p.is_running()]
    for child in leftovers:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    if leftovers:
        logger.info("killed %d leftover processes of python -m serve", len(leftovers))


def replica_processes(stack: ServeProcess, replica_name: str = "LLMServer") -> list[psutil.Process]:
    """The Serve replica processes of ``replica_name`` under python -m serve."""
    return [
        child
        for child in psutil.Process(stack.process.pid).children(recursive=True)
        if replica_name in child.name()
    ]


class PeakMemory:
    """Samples the LLM server replicas' resident memory in a thread; ``peak_mib`` after."""

    def __init__(self, stack: ServeProcess, interval_s: float = 0.25) -> None:
        self._processes = replica_processes(stack)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.peak_mib = 0.0

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            total = 0
            for process in self._processes:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.peak_mib = max(self.peak_mib, total / 2**20)
            if self._stop.wait(self._interval_s):
                return


def match_replica_niceness(stack: ServeProcess, replica_name: str = "LLMServer") -> int:
    """Give every thread of this process the LLM replica's niceness; returns it.

    Ray starts its workers at niceness 15, so on cores shared with other work the Serve
    stack would get less CPU than an in-process engine at niceness 0. The comparison
    is only fair at equal priority. (On Linux each thread has its own niceness.)
    """
    replicas = replica_processes(stack, replica_name)
    if not replicas:
        raise StackError(f"no {replica_name} replica among the processes of python -m serve")
    niceness = replicas[0].nice()
    for thread in psutil.Process().threads():
        if os.getpriority(os.PRIO_PROCESS, thread.id) < niceness:
            os.setpriority(os.PRIO_PROCESS, thread.id, niceness)
    return niceness


def cpu_seconds_by_process(stack: ServeProcess) -> dict[str, float]:
    """CPU time (user + system) used so far by each process of python -m serve, by name.

    Differences of two readings say where the CPU went while the stack did some work,
    whatever else the machine was running.
    """
    prefix = "ray::ServeReplica:"
    totals: dict[str, float] = {}
    root = psutil.Process(stack.process.pid)
    for process in (root, *root.children(recursive=True)):
        try:
            times = process.cpu_times()
            name = "python -m serve" if process.pid == root.pid else process.name()
        except psutil.NoSuchProcess:
            continue
        name = name.removeprefix(prefix).split(".", 1)[0]
        totals[name] = totals.get(name, 0.0) + times.user + times.system
    return totals
