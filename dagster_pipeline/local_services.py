"""Services that the distributed tests and the Celery benchmark start on this machine for
themselves: moto's S3-compatible server (its own process on loopback), a RabbitMQ vhost of their own
and the URLs that point the pipeline at them. Nothing here runs in a deployment.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
RABBITMQ_PORT = 5672
S3_KEYS = {"AWS_ACCESS_KEY_ID": "feedrank-test", "AWS_SECRET_ACCESS_KEY": "feedrank-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}


def which(tool: str, why: str) -> str:
    """The path of ``tool`` (this environment's bin first); RuntimeError naming it when missing."""
    found = shutil.which(tool, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        raise RuntimeError(f"{tool} is missing: {why}")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, what: str, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}) before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{what} did not listen on {host}:{port} within {timeout} s")


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Stops ``proc`` and its process group (each process started here leads its own session)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
    except ProcessLookupError:
        pass


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    port: int

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The variables a process needs to reach it (``endpoint``: another address of it)."""
        return {**S3_KEYS, "AWS_ENDPOINT_URL_S3": endpoint or self.endpoint}

    def new_bucket(self) -> str:
        import boto3

        name = f"feedrank-test-{secrets.token_hex(4)}"
        client = boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"], region_name=S3_KEYS["AWS_DEFAULT_REGION"],
        )
        client.create_bucket(Bucket=name)
        return name


@contextmanager
def s3_server(log_dir: Path) -> Iterator[S3Server]:
    """moto's S3-compatible server in its own process on 127.0.0.1 (state in memory, gone after)."""
    binary = which("moto_server", "the S3-compatible server (pip: moto[server], in requirements-dev.txt)")
    port = free_port()
    with open(log_dir / "moto_server.log", "wb") as log:
        proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port("127.0.0.1", port, "moto_server", proc)
        yield S3Server(f"http://127.0.0.1:{port}", port)
    finally:
        stop(proc)


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A vhost of its own on the machine's RabbitMQ (``rabbitmqctl add_vhost``, the guest user
    allowed), deleted after; yields its name. The broker must answer on 127.0.0.1:5672."""
    ctl = which("rabbitmqctl", "a RabbitMQ vhost per test module / benchmark (apt: rabbitmq-server)")
    try:
        wait_for_port("127.0.0.1", RABBITMQ_PORT, "RabbitMQ", timeout=5)
    except TimeoutError:
        raise RuntimeError("RabbitMQ does not answer on 127.0.0.1:5672 (scripts/services.sh up starts it)") from None
    vhost = f"feedrank_test_{secrets.token_hex(4)}"
    run([ctl, "add_vhost", vhost])
    try:
        run([ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"])
        yield vhost
    finally:
        run([ctl, "delete_vhost", vhost])


def broker_url(vhost: str, host: str = "127.0.0.1") -> str:
    return f"pyamqp://guest:guest@{host}:{RABBITMQ_PORT}/{vhost}"


def instance_url(server_url: str, name: str) -> str:
    """The URL of database ``name`` on ``server_url``'s server as dagster-postgres takes it
    (SQLAlchemy with its psycopg2 driver: deploy/dagster.yaml says why)."""
    from feedrank import db

    url = db.with_database(server_url, name)
    return "postgresql+psycopg2://" + url.split("://", 1)[1]
