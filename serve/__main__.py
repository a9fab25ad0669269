"""``python -m serve``: run Ouro on one machine (behind ``make run``).

    python -m serve --host 127.0.0.1 --port 8000 --data-dir .ouro
        [--base-model smollm2-135m] [--mlflow-uri URI] [--allow-unauthenticated]
        [--train-every 10m] [--config ouro.yaml] [--SETTING VALUE ...]

Starts a local Ray (bounded object store, no probe off the machine), builds or loads
the base model, deploys ``serve.app:build_app`` on HOST:PORT, prints the URL, and
shuts everything down on Ctrl-C or SIGTERM. Every OuroSettings field is a flag; settings
come from the flags > the --config YAML file > ``OURO_*`` environment variables >
defaults (API keys: OURO_API_KEYS, OURO_ADMIN_API_KEYS).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import httpx

from ouro.configuration import ConfigError, add_flags, as_environment, given_values, load_settings
from ouro.cpu_threads import configure_cpu_threads
from ouro.settings import OuroSettings
from serve.auth import ApiKeyAuth, UnauthenticatedStartupError, is_loopback_host
from serve.local_ray import keep_ray_on_loopback
from serve.logs import configure_logging
from serve.train_loop import TrainLoop, parse_duration, train_env

logger = logging.getLogger("serve.main")

APP_NAME = "ouro"
READY_TIMEOUT_S = 600.0
TRAIN_STOP_TIMEOUT_S = 5.0
"""How long shutdown waits for a training cycle in progress to end after its SIGTERM,
so that SIGTERM ends the whole run within 10 s."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m serve",
        description=__doc__.split("\n")[0],
        epilog="Settings: flags > --config YAML > OURO_<FIELD> environment variables > "
        "defaults; every setting is listed in docs/configuration.md.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--port", type=int, default=8000, help="Port to listen on.")
    parser.add_argument(
        "--config", type=Path, metavar="YAML", help="A YAML file of setting: value."
    )
    parser.add_argument(
        "--train-every",
        type=parse_duration,
        metavar="DURATION",
        help="Run a training cycle (python -m train_job run --auto-promote) every DURATION, "
        "e.g. 10m, as the CronJob does in a cluster.",
    )
    parser.add_argument(
        "--num-cpus", type=int, help="CPUs given to Ray (default: all of this machine's)."
    )
    parser.add_argument(
        "--object-store-mb", type=int, default=256, help="Ray object store size in MiB."
    )
    add_flags(parser, OuroSettings)
    return parser.parse_args(argv)


def settings_overrides(args: argparse.Namespace, num_cpus: int) -> dict:
    """OuroSettings overrides for the app: what the flags and the config file give, checked,
    with an absolute data dir.

    The replicas read the environment themselves and put these on top, so the flags and the
    file keep their precedence there too.
    """
    given = given_values(OuroSettings, args, args.config)
    settings = load_settings(OuroSettings, given)
    local = {"data_dir": settings.data_dir.resolve()}
    if "llm_num_cpus" not in settings.model_fields_set:
        local["llm_num_cpus"] = num_cpus  # one replica: give it every core
    return settings.model_copy(update=local).model_dump(mode="json", include={*given, *local})


def check_auth_policy(args: argparse.Namespace, overrides: dict) -> None:
    """Open (no key) only on loopback, or when told ``allow_unauthenticated``."""
    settings = OuroSettings(**overrides)
    if not ApiKeyAuth(settings.client_api_keys(), settings.admin_api_keys).open:
        return
    if is_loopback_host(args.host) or settings.allow_unauthenticated:
        overrides["allow_unauthenticated"] = True
        return
    raise UnauthenticatedStartupError(
        f"no API key is configured and {args.host} is not a loopback address: set "
        "OURO_API_KEYS / OURO_ADMIN_API_KEYS, or pass --allow-unauthenticated"
    )


def port_is_free(host: str, port: int) -> bool:
    """Whether HOST:PORT can be bound now (Serve's proxy would retry a busy port forever)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def wait_until_ready(base_url: str, stop: threading.Event) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and not stop.is_set():
        try:
            if httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        stop.wait(0.5)
    return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    num_cpus = args.num_cpus or os.cpu_count() or 1
    # Before torch starts (ouro-tiny is pretrained here), and inherited by Ray's workers.
    configure_cpu_threads(num_cpus)
    keep_ray_on_loopback()  # before anything imports ray
    try:
        overrides = settings_overrides(args, num_cpus)
        check_auth_policy(args, overrides)
    except (ConfigError, UnauthenticatedStartupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = OuroSettings(**overrides)
    configure_logging(settings.log_level)
    if not port_is_free(args.host, args.port):
        print(f"error: {args.host}:{args.port} is already in use", file=sys.stderr)
        return 2
    # Imported only now: the checks above answer in a moment, these take seconds.
    from ouro.models import resolve_base_model
    from ouro.registry import AdapterRegistry, RegistryUnavailableError

    try:
        # Creates the local store on first use, and checks a server is reachable.
        AdapterRegistry.from_settings(settings).snapshot()
    except RegistryUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Preparing the base model {settings.base_model} ...", flush=True)
    resolve_base_model(settings)  # converts or builds an embedded model once; replicas load it

    from ray import serve

    from serve.app import build_app
    from serve.local_ray import start_local_ray

    start_local_ray(
        settings.data_dir / "ray-home",
        num_cpus=num_cpus,
        object_store_memory=args.object_store_mb * 1024 * 1024,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which sets its own
        signal.signal(signum, lambda *_: stop.set())
    loop: TrainLoop | None = None
    try:
        print("Starting Ray Serve and loading the model in its replica ...", flush=True)
        # Serve's controller and proxy report each step of a deployment at INFO; a terminal
        # gets their warnings and errors only (all of it stays in the session's log files).
        quiet = {"log_level": "WARNING"}
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # this process: Serve's client
        serve.start(http_options={"host": args.host, "port": args.port}, logging_config=quiet)
        serve.run(build_app(overrides), name=APP_NAME, route_prefix="/", blocking=False)
        base_url = f"http://{args.host}:{args.port}"
        if not wait_until_ready(base_url, stop):
            if not stop.is_set():
                print("error: the app did not become ready; see the logs above", file=sys.stderr)
            return 1
        print(f"Ouro is serving at {base_url}/  (OpenAI base URL: {base_url}/v1)", flush=True)
        if args.train_every:
            loop = TrainLoop(
                args.train_every,
                settings.data_dir,
                base_url,
                env=train_env(as_environment(settings, overrides)),
                admin_key=settings.first_admin_key(),
                log_dir=settings.data_dir / "logs",
            )
            loop.start()
            print(f"Training every {args.train_every:g} s (log: {loop.log_dir})", flush=True)
        stop.wait()
        print("Shutting down ...", flush=True)
        return 0
    finally:
        # The training cycle (SIGTERM) and Ray stop side by side, to end within 10 s.
        stopping = None
        if loop is not None:
            stopping = threading.Thread(
                target=loop.stop, kwargs={"timeout_s": TRAIN_STOP_TIMEOUT_S}, daemon=True
            )
            stopping.start()
        # No serve.shutdown(): its graceful path waits up to 30 s for the controller.
        # This process started the local Ray, so ray.shutdown() ends every Ray process
        # of the run (controller, proxy and replicas included) within seconds.
        import ray

        ray.shutdown()
        if stopping is not None:
            stopping.join()


if __name__ == "__main__":
    sys.exit(main())
