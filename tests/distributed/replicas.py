"""The API as replicas on this machine, for the distributed tests: ``feedrank-api`` processes on
free loopback ports behind HAProxy (its own process, round robin, health checks on ``/healthz``),
each replica answering with an ``X-Replica`` header that names it (set by HAProxy), so that a test
knows which replica served a request that went through the balancer.

HAProxy missing is a failure naming it (``make test-distributed`` installs it), never a skip.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from dagster_pipeline.local_services import free_port, stop, wait_for_port
from feedrank import db
from reliability.stack import ApiServer

from .cluster import require


@dataclass
class Replicas:
    servers: list[ApiServer]
    balancer: str  # http://127.0.0.1:PORT

    @property
    def names(self) -> list[str]:
        return [f"r{i}" for i in range(len(self.servers))]

    def base(self, name: str) -> str:
        return self.servers[self.names.index(name)].base

    def logs(self) -> str:
        return "\n".join(f"--- {n} ---\n{s.log()}" for n, s in zip(self.names, self.servers))


def haproxy_config(port: int, backends: list[tuple[str, int]]) -> str:
    servers = "\n".join(
        f"  server {name} 127.0.0.1:{p} check inter 300ms fall 2 rise 1" for name, p in backends
    )
    # redispatch + retry-on conn-failure: a request that cannot connect to a replica taken down
    # goes to another one (health checks take it out of the rotation meanwhile).
    return f"""global
  maxconn 512
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  retries 2
  option redispatch
  retry-on conn-failure empty-response
frontend api
  bind 127.0.0.1:{port}
  default_backend replicas
backend replicas
  balance roundrobin
  option httpchk GET /healthz
  http-check expect status 200
  http-response set-header X-Replica %[srv_name]
{servers}
"""


@contextmanager
def replicas(count: int, database_url: str, redis_url: str, prefix: str, binary: Path, workdir: Path,
             **env: str) -> Iterator[Replicas]:
    """``count`` replicas of the API on one database and one Redis key prefix, behind HAProxy."""
    haproxy = require("haproxy", "the load balancer in front of the API replicas (apt: haproxy)")
    with ExitStack() as cleanup:
        servers: list[ApiServer] = []
        for _ in range(count):
            server = ApiServer(database_url, redis_url, prefix, binary, **env)
            cleanup.callback(server.stop)
            servers.append(server)
        port = free_port()
        config = workdir / "haproxy.cfg"
        config.write_text(haproxy_config(port, [(f"r{i}", s.port) for i, s in enumerate(servers)]))
        log = open(workdir / "haproxy.log", "wb")  # noqa: SIM115 - owned by the child process
        proc = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        cleanup.callback(stop, proc)
        wait_for_port("127.0.0.1", port, "haproxy", proc, timeout=20)
        group = Replicas(servers, f"http://127.0.0.1:{port}")
        # every replica in the rotation (health checks passed) before the test starts
        deadline = time.monotonic() + 30
        seen: set[str] = set()
        while seen != set(group.names):
            if time.monotonic() > deadline:
                raise TimeoutError(f"HAProxy did not route to every replica (saw {sorted(seen)})")
            r = requests.get(group.balancer + "/healthz", timeout=5)
            if r.ok:
                seen.add(r.headers.get("X-Replica", ""))
        yield group


def wait_everywhere(
    targets: dict[str, Callable[[], tuple[bool, str]]], bound: float, poll: float = 0.01
) -> dict[str, float]:
    """Polls every target in turn until each has answered true once (``(ok, what)``: ``what``
    describes the last answer for the failure message); returns the seconds each took, counted
    from the call. AssertionError naming the targets still false after ``bound`` seconds."""
    start = time.monotonic()
    took: dict[str, float] = {}
    last: dict[str, str] = {}
    while len(took) < len(targets):
        for name, check in targets.items():
            if name in took:
                continue
            ok, last[name] = check()
            if ok:
                took[name] = time.monotonic() - start
        if time.monotonic() - start > bound:
            missing = {n: last[n] for n in targets if n not in took}
            raise AssertionError(f"not visible within {bound} s on {sorted(missing)}: {missing}")
        time.sleep(poll)
    return took


def seed(url: str, readers: int, posts: int, authors: int = 6) -> tuple[list[str], list[str]]:
    """``readers`` users with no interactions (so no recommendations yet), and ``posts`` posts
    ``post 1``, ``post 2``, ... by ``authors`` other users in turn (any ``authors`` consecutive
    posts have different authors)."""
    with db.connect(url, autocommit=True) as conn:
        author_ids = [r[0] for r in conn.execute(
            "INSERT INTO users (username) SELECT 'author_' || i FROM generate_series(1, %s) i RETURNING id::text",
            (authors,),
        ).fetchall()]
        reader_ids = [r[0] for r in conn.execute(
            "INSERT INTO users (username) SELECT 'reader_' || i FROM generate_series(1, %s) i RETURNING id::text",
            (readers,),
        ).fetchall()]
        post_ids = [r[0] for r in conn.execute(
            "INSERT INTO posts (user_id, content) SELECT (%s::uuid[])[1 + i %% %s], 'post ' || i "
            "FROM generate_series(1, %s) i ORDER BY i RETURNING id::text",
            (author_ids, authors, posts),
        ).fetchall()]
    return reader_ids, post_ids
