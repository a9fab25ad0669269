"""Ray Serve's HAProxy ingress on one machine: the stack and its clients in a private network.

In HAProxy mode (``RAY_SERVE_ENABLE_HA_PROXY=1``, what the Helm chart deploys) Ray Serve
starts HAProxy in front of replicas that serve HTTP themselves, instead of its Python proxy
actor. The replicas and HAProxy's API frontend listen where ``--host`` says, but HAProxy's
stats page (8404) and Prometheus endpoint (9101) bind every interface on fixed ports: Ray's
template decides, right for a pod, wrong for a shared machine. So the benchmark and the test
that run HAProxy mode here re-run themselves, stack and clients together, in a network
namespace of their own (``unshare --user --map-root-user --net``, loopback only): nothing
they start is reachable from outside, and the fixed ports collide with nothing. HAProxy's
files go to a fresh folder instead of Ray's default one, shared by every run on the machine.

    status = rerun_for_ingress(args.ingress, "loadtests.bench", argv)  # None: run here

Inside, :func:`main` brings the loopback interface up and runs the module as ``__main__``.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import runpy
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

INGRESSES = ("haproxy", "proxy")
"""``haproxy``: Ray Serve's HAProxy mode, as deployed; ``proxy``: Serve's Python proxy actor,
what ``python -m serve`` runs on a workstation."""
MARKER_ENV = "OURO_PRIVATE_NETWORK"
UNSHARE = ("unshare", "--user", "--map-root-user", "--net")
DRAINING_PERIOD_S = "2"
"""A replica in direct-ingress mode waits this long for load balancers before it stops
(Ray's default is 30 s, for HAProxy on other nodes); one machine needs no more."""
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def haproxy_env(folder: Path) -> dict[str, str]:
    """The environment that turns on Serve's HAProxy mode with HAProxy's files in ``folder``."""
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(folder / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(folder / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(folder / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(folder / "metrics.sock"),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": DRAINING_PERIOD_S,
    }


def current_ingress() -> str:
    """The ingress a stack started from this process gets: ``haproxy`` or ``proxy``."""
    return "haproxy" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "proxy"


def inside() -> bool:
    """Whether this process runs in the private network that :func:`main` set up."""
    return os.environ.get(MARKER_ENV) == "1"


def unavailable_reason() -> str | None:
    """Why no private network namespace can be made here, or None when one can."""
    if shutil.which(UNSHARE[0]) is None:
        return "the unshare command (util-linux) is not installed"
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"unprivileged network namespaces are not allowed: {probe.stderr.strip()}"
    return None


def rerun_in_private_network(module: str, argv: list[str]) -> int:
    """Run ``python -m module argv`` in a private network namespace with HAProxy mode on;
    its exit status. Raises RuntimeError when no namespace can be made here."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"HAProxy mode runs in a private network namespace here, but {reason}")
    with tempfile.TemporaryDirectory(prefix="ouro-haproxy-") as folder:
        env = {**os.environ, **haproxy_env(Path(folder)), MARKER_ENV: "1"}
        command = [*UNSHARE, sys.executable, "-m", __name__, module, *argv]
        return subprocess.run(command, env=env, check=False).returncode


def add_ingress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ingress",
        choices=INGRESSES,
        default="haproxy",
        help="haproxy: Ray Serve's HAProxy ingress, as the chart deploys it, in a private "
        "network namespace (default); proxy: Serve's Python proxy actor, as python -m serve "
        "runs on a workstation",
    )


def rerun_for_ingress(ingress: str, module: str, argv: list[str] | None) -> int | None:
    """For ``haproxy`` outside the private network: the exit status of ``python -m module``
    re-run inside it. None when the command runs in this process (``proxy``, or inside)."""
    if ingress != "haproxy" or inside():
        return None
    try:
        return rerun_in_private_network(module, sys.argv[1:] if argv is None else argv)
    except RuntimeError as exc:
        print(f"error: {exc}; --ingress proxy runs without one", file=sys.stderr)
        return 1


def loopback_up() -> None:
    """Bring ``lo`` up: a new network namespace starts with it down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))


def main() -> None:
    module, *argv = sys.argv[1:]
    loopback_up()
    sys.argv = [module, *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
