"""The sharded pipeline on Celery workers that are hosts of their own (cluster.py: each in its own
network namespace with its own address, reaching PostgreSQL, Redis, RabbitMQ and the S3 server
only through the network, with a private disk), the Dagster instance in PostgreSQL
(deploy/dagster.yaml) and the intermediate data on the S3 server:

- the result equals a multiprocess run of the same stored snapshot, and both workers ran steps;
- a worker killed (SIGKILL, the whole host) in the middle of a shard's write: the broker hands the
  step to the other worker, the run completes, the killed attempt's recommendation run is dropped,
  each shard has exactly one complete run, and a reader polling all along never sees a shard
  half-switched or a user without recommendations.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import psycopg
import pytest
from psycopg import sql

from dagster_pipeline.partitions import SHARD_HASH_SQL, shard_keys
from feedrank import cli, db

from dagster_pipeline.local_services import VENV_BIN, S3Server, broker_url, instance_url, stop

from .cluster import REPO_ROOT, Host, Network, network

SHARDS = 3
DEMO_ARGS = ["--users", "300", "--posts", "1500", "--interactions", "20000", "--seed", "7"]
UPSTREAM = "user_interactions_snapshot,post_features,user_features,serving_model"
DOWNSTREAM = "recommendation_scores,user_recommendations"
RUN_TIMEOUT = 900


@dataclass
class Deployment:
    """Everything a run needs, seen from the root namespace (``env``) and from a worker host
    (``host_env``: the same services at the network's gateway address)."""

    url: str  # the feedrank database
    env: dict[str, str]
    net: Network
    host_env: dict[str, str]
    home: Path

    def start_worker(self, host: Host) -> subprocess.Popen:
        env = {**self.host_env, "DATABASE_URL": self.host_env["DATABASE_URL"] + f"?application_name={host.name}"}
        proc = self.net.start(host, [
            str(VENV_BIN / "celery"), "-A", "dagster_pipeline.celery_worker", "worker", "-Q", "dagster",
            "--concurrency", "1", "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle",
            "-n", f"{host.name}@%h", "--loglevel", "INFO",
        ], env)
        deadline = time.monotonic() + 180
        while b" ready." not in host.log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery worker {host.name} did not start:\n{host.log.read_text()[-3000:]}")
            time.sleep(0.2)
        return proc

    def materialize(self, select: str, *extra: str, executor: str | None = "celery") -> subprocess.Popen:
        env = dict(self.env)
        if executor is None:
            env.pop("FEEDRANK_EXECUTOR")
        return subprocess.Popen(
            [str(VENV_BIN / "dagster"), "asset", "materialize", "-m", "dagster_pipeline.definitions",
             "--select", select, *extra],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, out[-6000:]
    return out


def _run_ids(log: str) -> set[str]:
    return set(re.findall(r"\b([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b - \d+ - RUN_SUCCESS", log))


def _at(url: str, host: str) -> str:
    return url.replace("127.0.0.1", host)


@pytest.fixture(scope="module")
def deployment(
    postgres_server_url, api_binary, s3: S3Server, vhost: str, instance_db: str, redis_client,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    scratch = tmp_path_factory.getbasetemp()  # hidden from the workers (their own tmpfs covers it)
    home = tmp_path_factory.mktemp("launcher_home")
    (home / "dagster.yaml").write_text((REPO_ROOT / "deploy" / "dagster.yaml").read_text())
    prefix = f"feedrank_test_{secrets.token_hex(6)}:"
    with db.temporary_database(postgres_server_url, prefix="feedrank_test_celery", binary=api_binary) as url, \
            network(2, scratch, [s3.port]) as net:
        assert cli.main(["demo-data", "--synthetic", *DEMO_ARGS, "--database-url", url]) == 0
        bucket = s3.new_bucket()
        common = {
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(REPO_ROOT),
            "FEEDRANK_USER_SHARDS": str(SHARDS),
            "FEEDRANK_EXECUTOR": "celery",
            "FEEDRANK_STORAGE_URL": f"s3://{bucket}/feedrank",
            "REDIS_KEY_PREFIX": prefix,
            "LANG": "C.UTF-8",
        }
        env = {**common, **s3.env(), "DAGSTER_HOME": str(home),
               "DAGSTER_POSTGRES_URL": instance_url(postgres_server_url, instance_db),
               "DATABASE_URL": url, "REDIS_URL": db.redis_url(), "FEEDRANK_CELERY_BROKER": broker_url(vhost)}
        host_env = {**common, **s3.env(_at(s3.endpoint, net.gateway)),
                    **{k: _at(env[k], net.gateway) for k in ("DAGSTER_POSTGRES_URL", "DATABASE_URL", "REDIS_URL")},
                    "FEEDRANK_CELERY_BROKER": broker_url(vhost, net.gateway)}
        dep = Deployment(url, env, net, host_env, home)
        try:
            for host in net.hosts:
                dep.start_worker(host)
            yield dep
        finally:
            keys = list(redis_client.scan_iter(match=prefix + "*", count=1000))
            if keys:
                redis_client.unlink(*keys)


def _instance_events(dep: Deployment, run_ids: set[str]) -> list:
    """The event log of ``run_ids`` from the instance's PostgreSQL storage."""
    import dagster as dg

    with mock.patch.dict(os.environ, DAGSTER_POSTGRES_URL=dep.env["DAGSTER_POSTGRES_URL"]):
        with dg.DagsterInstance.from_config(str(dep.home)) as instance:
            return [e for run_id in run_ids for e in instance.all_logs(run_id)]


def _worker_of_each_attempt(events) -> list[tuple[str, str]]:
    """(step, worker name) per Celery execution of a step, in order."""
    out = []
    for e in events:
        event = e.dagster_event
        if event and event.event_type_value == "ENGINE_EVENT" and "in celery worker" in (event.message or ""):
            worker = event.event_specific_data.metadata["Celery worker"]
            out.append((event.step_key, str(getattr(worker, "value", worker)).split("@")[0]))
    return out


def _readers_view(url: str) -> dict[str, list[tuple[str, float, int]]]:
    return db.current_recommendations(url)


def test_workers_reach_the_services_only_through_their_network(deployment: Deployment):
    net = deployment.net
    probe = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)"
    for host in net.hosts:
        here = net.in_host(host, [str(VENV_BIN / "python"), "-c", probe, "127.0.0.1", "5432"])
        assert here.returncode != 0 and "Connection refused" in here.stderr, "a host reached the root's loopback"
        there = net.in_host(host, [str(VENV_BIN / "python"), "-c", probe, net.gateway, "5432"])
        assert there.returncode == 0, there.stderr
        assert host.address in net.in_host(host, ["ip", "-4", "-o", "addr"]).stdout


def test_sharded_graph_on_two_celery_workers_equals_a_multiprocess_run(deployment: Deployment):
    dep = deployment
    logs = [finish(dep.materialize(UPSTREAM))]
    logs += [finish(p) for p in [dep.materialize(DOWNSTREAM, "--partition", k) for k in shard_keys(SHARDS)]]
    on_celery = _readers_view(dep.url)
    run_ids = set().union(*map(_run_ids, logs))
    assert len(run_ids) == 1 + SHARDS
    attempts = _worker_of_each_attempt(_instance_events(dep, run_ids))
    assert {step for step, _ in attempts} >= {"user_interactions_snapshot", "post_features", "user_features", "serving_model",
                                              "recommendation_scores", "user_recommendations"}
    assert {worker for _, worker in attempts} == {h.name for h in dep.net.hosts}, attempts

    with psycopg.connect(dep.url) as conn:
        n_users = conn.execute("SELECT count(*) FROM users").fetchone()[0]
    assert len(on_celery) == n_users

    # the same stored snapshot and features (on the S3 server), scored and written by the
    # multiprocess executor on this host
    for proc in [dep.materialize(DOWNSTREAM, "--partition", k, executor=None) for k in shard_keys(SHARDS)]:
        log = finish(proc)
        assert "in celery worker" not in log
    on_multiprocess = _readers_view(dep.url)
    assert set(on_multiprocess) == set(on_celery)
    celery_runs = {run for rows in on_celery.values() for _, _, run in rows}
    assert not celery_runs & {run for rows in on_multiprocess.values() for _, _, run in rows}
    for user, rows in on_celery.items():
        other = on_multiprocess[user]
        assert [p for p, _, _ in rows] == [p for p, _, _ in other], user
        assert [s for _, s, _ in rows] == pytest.approx([s for _, s, _ in other], rel=1e-5, abs=1e-6)


class Poller:
    """Reads what readers get, over and over, in a thread; records what breaks the swap's promise:
    a user without recommendations, or a recommendation run visible for part of its shard."""

    def __init__(self, url: str) -> None:
        self.url = url
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                sql.SQL("SELECT id::text, {} %% %s FROM users").format(sql.SQL(SHARD_HASH_SQL).format(col=sql.Identifier("id"))),
                (SHARDS,),
            ).fetchall()
        self.shard_users = [frozenset(u for u, s in rows if s == i) for i in range(SHARDS)]
        self.users = frozenset(u for u, _ in rows)
        self.polls = 0
        self.runs_seen: set[int] = set()
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop)

    def _loop(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                rows = conn.execute(
                    "SELECT u.id::text, r.run_id FROM users u JOIN user_recommendations r ON r.user_id = u.id "
                    "AND r.run_id = current_recommendation_run(u.id) AND r.expires_at > now() GROUP BY 1, 2"
                ).fetchall()
                by_run: dict[int, set[str]] = {}
                for user, run in rows:
                    by_run.setdefault(run, set()).add(user)
                served = {u for u, _ in rows}
                if served != self.users:
                    self.problems.append(f"poll {self.polls}: {len(self.users - served)} users without recommendations")
                for run, users in by_run.items():
                    if frozenset(users) not in self.shard_users:
                        self.problems.append(f"poll {self.polls}: run {run} serves {len(users)} users, not a whole shard")
                self.runs_seen |= set(by_run)
                self.polls += 1
                time.sleep(0.05)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)


def test_a_worker_killed_mid_write_hands_its_step_to_the_other_and_no_shard_is_written_twice(
    deployment: Deployment, hold_load_rows
):
    dep = deployment
    if len(_readers_view(dep.url)) == 0:  # run alone: the previous test left no served set
        finish(dep.materialize(UPSTREAM))
        for proc in [dep.materialize(DOWNSTREAM, "--partition", k) for k in shard_keys(SHARDS)]:
            finish(proc)
    # After 100 rows of a shard's COPY are in its load table, uncommitted, a trigger waits on an
    # advisory lock the test holds: the kill lands inside the write.
    held = hold_load_rows(dep.url, "n % 1000 = 100")
    procs: list[subprocess.Popen] = []
    try:
        with Poller(dep.url) as poller:
            procs = [dep.materialize(DOWNSTREAM, "--partition", k) for k in shard_keys(SHARDS)]

            deadline = time.monotonic() + RUN_TIMEOUT
            while not (blocked := held.blocked()):
                assert time.monotonic() < deadline, "no shard's COPY reached the held lock"
                assert all(p.poll() is None for p in procs), "a run ended before its write was held"
                time.sleep(0.2)
            _, worker_name, query = blocked
            killed_run = int(re.search(r"user_recommendations_run_(\d+)", query).group(1))
            with psycopg.connect(dep.url) as c:
                shard, dagster_run_id, status = c.execute(
                    "SELECT shard, dagster_run_id, status FROM recommendation_runs WHERE id = %s", (killed_run,)
                ).fetchone()
            assert status == "building"
            (victim,) = [h for h in dep.net.hosts if h.name == worker_name]
            stop(victim.proc, signal.SIGKILL)  # the whole host: celery's main process and its pool child
            held.release()  # the survivor's writes go on
            logs = [finish(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        held.release()

    assert not poller.problems, poller.problems[:5]
    assert poller.polls > 10 and len(poller.runs_seen) > SHARDS, "the poller did not see the runs switch"
    with psycopg.connect(dep.url) as c:
        left = c.execute("SELECT status FROM recommendation_runs WHERE id = %s", (killed_run,)).fetchone()
        assert left is None or left[0] == "failed", f"the killed attempt's run is {left}"
        assert c.execute("SELECT to_regclass(%s)", (f"user_recommendations_run_{killed_run}",)).fetchone()[0] is None
        complete = c.execute(
            "SELECT shard, count(*), array_agg(dagster_run_id) FROM recommendation_runs "
            "WHERE status = 'complete' GROUP BY shard ORDER BY shard"
        ).fetchall()
    run_ids = set().union(*map(_run_ids, logs))
    assert [(s, n) for s, n, _ in complete] == [(k, 1) for k in shard_keys(SHARDS)]
    assert {ids[0] for _, _, ids in complete} == run_ids, "a shard is served by a run of before the kill"
    assert dagster_run_id in run_ids and shard in shard_keys(SHARDS)

    attempts = [w for step, w in _worker_of_each_attempt(_instance_events(dep, {dagster_run_id}))
                if step == "user_recommendations"]
    survivor = next(h.name for h in dep.net.hosts if h is not victim)
    assert attempts == [victim.name, survivor], f"the write's attempts ran on {attempts}"
    assert len(_readers_view(dep.url)) == len(poller.users)

    dep.start_worker(victim)  # the host comes back for the tests after this one
