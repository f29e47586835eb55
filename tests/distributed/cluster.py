"""Hosts of their own on this machine, for the distributed tests: Celery workers each in its own
network namespace, with its own address and its own private disk (the S3 server and the RabbitMQ
vhost come from dagster_pipeline/local_services.py).

The network: a bridge in the root namespace (``10.231.K.1/24``) and, per worker, a namespace joined
to it by a veth pair (``10.231.K.10+i``). The services listen on 127.0.0.1 only, so ``socat``
forwarders listen on the bridge address and connect to them: a worker reaches PostgreSQL, Redis,
RabbitMQ and the S3 server through that network only (its own 127.0.0.1 has nothing).

The disk: each worker runs in a mount namespace of its own where a fresh tmpfs covers the test's
scratch directory (the launcher's DAGSTER_HOME and anything else a test writes there): its TMPDIR
and DAGSTER_HOME live in that tmpfs, so nothing passes between hosts through a shared directory.
The code (the repository and its .venv) stays visible, as the image of a real worker would be.

Missing tools (``ip``, ``socat``, ``rabbitmqctl``, ``moto_server``) or no root are failures with the
reason, never skips.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dagster_pipeline.local_services import RABBITMQ_PORT, run, stop, wait_for_port, which

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE_PORTS = {"postgres": 5432, "redis": 6379, "rabbitmq": RABBITMQ_PORT}


def require(tool: str, why: str) -> str:
    """The path of ``tool``; a test failure naming it (and what needs it) when it is missing."""
    try:
        return which(tool, why)
    except RuntimeError as e:
        pytest.fail(f"{e} (`make test-distributed` installs it)", pytrace=False)


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the distributed tests make network namespaces (ip netns), which needs root", pytrace=False)


# --- the network --------------------------------------------------------------------------------


@dataclass
class Host:
    """A worker host: a network namespace, its address, its log and (when started) its process."""

    name: str
    netns: str
    address: str
    log: Path
    proc: subprocess.Popen | None = None

    def exec_argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]


@dataclass
class Network:
    """The bridge, the hosts' namespaces and the forwarders to the services (see the module
    docstring). ``gateway`` is the address the hosts reach the services at."""

    tag: str
    gateway: str
    scratch: Path
    hosts: list[Host] = field(default_factory=list)
    forwarders: list[subprocess.Popen] = field(default_factory=list)

    def forward(self, port: int) -> None:
        """Connections to gateway:port reach 127.0.0.1:port."""
        proc = subprocess.Popen(
            ["socat", f"TCP-LISTEN:{port},bind={self.gateway},reuseaddr,fork", f"TCP:127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self.forwarders.append(proc)
        wait_for_port(self.gateway, port, f"socat forwarder of port {port}", proc, timeout=10)

    def start(self, host: Host, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        """Runs ``argv`` as ``host``: in its namespace, in a mount namespace where a private tmpfs
        hides the scratch directory; ``TMPDIR`` and ``DAGSTER_HOME`` are made inside it."""
        private = self.scratch / "private"
        script = (
            'set -e; mount -t tmpfs -o size=4g,mode=0700 feedrank-private "$SCRATCH"; '
            'mkdir -p "$TMPDIR" "$DAGSTER_HOME"; cp "$INSTANCE_YAML" "$DAGSTER_HOME/dagster.yaml"; exec "$@"'
        )
        full_env = {
            **env,
            "SCRATCH": str(self.scratch),
            "TMPDIR": str(private / "tmp"),
            "DAGSTER_HOME": str(private / "dagster_home"),
            "HOME": str(private),
            "INSTANCE_YAML": str(REPO_ROOT / "deploy" / "dagster.yaml"),
        }
        log = open(host.log, "ab")
        proc = subprocess.Popen(
            host.exec_argv(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]),
            env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO_ROOT,
        )
        log.close()
        host.proc = proc
        return proc

    def in_host(self, host: Host, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(host.exec_argv(argv), capture_output=True, text=True, timeout=timeout)


def _subnet_free(prefix: str) -> bool:
    addrs = run(["ip", "-o", "-4", "addr"]).stdout
    return f" {prefix}." not in addrs


@contextmanager
def network(hosts: int, scratch: Path, extra_ports: list[int]) -> Iterator[Network]:
    """``hosts`` namespaces on a bridge, with forwarders to the services and ``extra_ports``."""
    require_root()
    require("ip", "the network namespaces (apt: iproute2)")
    require("socat", "the forwarders from the namespaces' network to the services (apt: socat)")
    require("unshare", "each worker's private disk (apt: util-linux)")
    for _ in range(50):
        k = secrets.randbelow(250) + 1
        if _subnet_free(f"10.231.{k}"):
            break
    else:
        raise RuntimeError("no free 10.231.K.0/24 subnet for the test network")
    tag = secrets.token_hex(3)
    bridge = f"fr{tag}b"
    net = Network(tag, f"10.231.{k}.1", scratch)
    with ExitStack() as cleanup:
        run(["ip", "link", "add", bridge, "type", "bridge"])
        cleanup.callback(run, ["ip", "link", "del", bridge])
        run(["ip", "addr", "add", f"{net.gateway}/24", "dev", bridge])
        run(["ip", "link", "set", bridge, "up"])
        for i in range(hosts):
            ns, outer, inner = f"fr{tag}-{i}", f"fr{tag}h{i}", f"fr{tag}n{i}"
            run(["ip", "netns", "add", ns])
            cleanup.callback(run, ["ip", "netns", "del", ns])
            run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner])
            run(["ip", "link", "set", outer, "master", bridge, "up"])
            run(["ip", "link", "set", inner, "netns", ns])
            address = f"10.231.{k}.{10 + i}"
            for argv in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", inner, "name", "eth0"],
                         ["ip", "addr", "add", f"{address}/24", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"],
                         ["ip", "route", "add", "default", "via", net.gateway]):
                run(["ip", "netns", "exec", ns, *argv])
            net.hosts.append(Host(f"worker{i}", ns, address, scratch / f"worker{i}.log"))
        for port in [*SERVICE_PORTS.values(), *extra_ports]:
            net.forward(port)

        def stop_all() -> None:
            for host in net.hosts:
                if host.proc is not None:
                    stop(host.proc)
            for proc in net.forwarders:
                stop(proc)

        cleanup.callback(stop_all)
        yield net
