"""The API and the pipeline on a Redis Cluster: three ``redis-server --cluster-enabled yes`` on
loopback (free ports, slots spread by ``redis-cli --cluster create``, no replicas), started for
this module and stopped after it. ``REDIS_URL`` naming the three nodes, comma-separated, is how
both the API (api/src/redis_store.rs) and the pipeline (``RedisResource``) are told it is one.

A user's keys carry the user id as a hash tag (``feedrank_core::cache::user_key``), so each of
the API's per-user pipelines goes to one node; without it the client refuses them (keys in
different slots), and the feed would never be served from the cache.
"""

from __future__ import annotations

import logging
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import redis.cluster
import requests

import feedrank
from dagster_pipeline import swap
from dagster_pipeline.assets import write_cache
from dagster_pipeline.local_services import run, stop, wait_for_port
from dagster_pipeline.resources import PostgresResource, RedisResource
from dagster_pipeline.timing import Timer
from feedrank import db
from feedrank.config import load_config
from reliability.stack import ApiServer, bearer

from .cluster import require
from .replicas import seed

NODES = 3
TOP = 8
LOG = logging.getLogger("test_redis_cluster")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(n: int) -> list[int]:
    """``n`` free ports whose cluster bus ports (port + 10000) are free too."""
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < n:
        p = rng.randrange(20000, 30000)
        if p not in ports and _free(p) and _free(p + 10000):
            ports.append(p)
    return ports


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The cluster's URL for REDIS_URL: ``redis://127.0.0.1:P1,redis://127.0.0.1:P2,...``."""
    server = require("redis-server", "the Redis Cluster nodes (apt: redis-server)")
    cli = require("redis-cli", "creating the Redis Cluster (apt: redis-tools)")
    workdir = tmp_path_factory.mktemp("redis-cluster")
    ports = cluster_ports(NODES)
    with ExitStack() as cleanup:
        for port in ports:
            node_dir = workdir / str(port)
            node_dir.mkdir()
            log = open(node_dir / "redis.log", "wb")  # noqa: SIM115 - owned by the child process
            proc = subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(node_dir / "nodes.conf"), "--dir", str(node_dir),
                 "--save", "", "--appendonly", "no"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
            log.close()
            cleanup.callback(stop, proc)
            wait_for_port("127.0.0.1", port, f"redis-server (cluster node) on {port}", proc, timeout=20)
        run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
             "--cluster-yes"], timeout=60)
        run([cli, "--cluster", "check", f"127.0.0.1:{ports[0]}"], timeout=30)
        # `--cluster create` returns once the slots are assigned, but each node says the cluster is
        # down until the gossip has reached it: writes before that fail with CLUSTERDOWN.
        for port in ports:
            wait_for_cluster_ok(port)
        client = redis.cluster.RedisCluster(host="127.0.0.1", port=ports[0])
        assert len(client.get_primaries()) == NODES
        client.close()
        yield ",".join(f"redis://127.0.0.1:{p}" for p in ports)


def wait_for_cluster_ok(port: int, timeout: float = 60.0) -> None:
    """Waits until the node on ``port`` reports ``cluster_state:ok`` (a readiness wait of the set-up)."""
    node = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + timeout
    try:
        while node.cluster("info").get("cluster_state") != "ok":
            if time.monotonic() > deadline:
                raise AssertionError(f"the cluster node on {port} never reported cluster_state:ok")
            time.sleep(0.1)
    finally:
        node.close()


def pipeline_write(url: str, redis_res: RedisResource, users: list[str], posts: list[str]) -> int:
    """A run as the pipeline writes one: ``swap.write_run`` into PostgreSQL, then its Redis
    writer (``write_cache``) on the same lists; returns the run id. Each user's list: TOP
    consecutive posts (no author more than twice)."""
    picks = {u: [posts[(i + j) % len(posts)] for j in range(TOP)] for i, u in enumerate(users)}
    post_index = {p: i for i, p in enumerate(posts)}
    written = swap.write_run(
        PostgresResource(database_url=url, copy_connections=1), shard="00-of-01", dagster_run_id="cluster-test",
        config={"top_k": TOP}, expires_after_hours=48, users=len(users),
        columns=("user_id", "post_id", "score", "reason"), chunks=[(0, len(users))],
        frame_of=lambda lo, hi, timer: pl.DataFrame(
            [(u, p, float(TOP - r), "similar_users") for u in users[lo:hi] for r, p in enumerate(picks[u])],
            schema=["user_id", "post_id", "score", "reason"], orient="row"),
        log=LOG, timer=Timer(),
    )
    assert written.refused is None
    bundle = {
        "config": load_config(),
        "post_ids": pl.DataFrame({"post_id": posts}),
        "user_ids": pl.DataFrame({"user_id": users}),
        "user_idx": np.arange(len(users)),
        "indices": np.array([[post_index[p] for p in picks[u]] for u in users], dtype=np.int64),
        "scores": np.tile(np.arange(TOP, 0, -1, dtype=np.float32), (len(users), 1)),
        "components": np.full((len(users), TOP, 4), 0.5, dtype=np.float32),
    }
    cached = write_cache(redis_res, bundle, written.run.id, int(written.run.generated_at), 3600, Timer())
    assert cached == len(users)
    return written.run.id


def test_the_pipeline_writes_and_the_api_serves_and_tracks_through_a_redis_cluster(
    redis_cluster, fresh_database_url, redis_prefix, api_binary
):
    url = fresh_database_url
    users, posts = seed(url, readers=8, posts=32)
    redis_res = RedisResource(redis_url=redis_cluster, key_prefix=redis_prefix)
    client = redis_res.client()
    assert isinstance(client, redis.cluster.RedisCluster)
    try:
        run_id = pipeline_write(url, redis_res, users, posts)
        # the entries are spread over the nodes (one slot per user)
        slots = {client.keyslot(feedrank.recommendations_key(redis_prefix, u)) for u in users}
        owners = {client.get_node_from_key(feedrank.recommendations_key(redis_prefix, u)).name for u in users}
        assert len(slots) == len(users) and len(owners) > 1, owners

        api = ApiServer(url, redis_cluster, redis_prefix, api_binary)
        try:
            ready = requests.get(api.base + "/readyz", timeout=10)
            assert ready.status_code == 200 and ready.json()["redis"] == "ok", ready.text
            for user in users:
                body = feed(api, user)
                assert body["metadata"]["source"] == "cache", (user, body["metadata"], api.log())
                entry = feedrank.decode_cache_entry(client.get(feedrank.recommendations_key(redis_prefix, user)))
                assert entry["run_id"] == run_id
                # the entry's posts in its order (the fallback fills the page after them)
                from_entry = [p["id"] for p in body["posts"] if p["source"] == "personalized"]
                assert from_entry == [i["post_id"] for i in entry["items"]]

            # tracking: stored, mirrored into the user's seen and hidden keys on the cluster; a
            # hide also drops the user's entry (same pipeline, same slot)
            user = users[0]
            shown = [p["id"] for p in feed(api, user)["posts"]]
            track(api, user, shown[0], "view")
            track(api, user, shown[1], "hide")
            seen = client.zrange(api_key(redis_prefix, "seen", user), 0, -1)
            hidden = client.smembers(api_key(redis_prefix, "hidden", user))
            assert {m.decode() for m in seen} >= {shown[0], shown[1]} and {m.decode() for m in hidden} == {shown[1]}
            assert not client.exists(feedrank.recommendations_key(redis_prefix, user))
            with db.connect(url) as conn:
                stored = conn.execute("SELECT count(*) FROM user_interactions WHERE user_id = %s", (user,)).fetchone()
            assert stored == (2,)

            # the next feed is read from PostgreSQL without the hidden post, and written back
            body = feed(api, user)
            assert body["metadata"]["source"] == "db" and shown[1] not in {p["id"] for p in body["posts"]}
            assert client.exists(feedrank.recommendations_key(redis_prefix, user))
            assert feed(api, user)["metadata"]["source"] == "cache"
        finally:
            api.stop()
    finally:
        for key in client.scan_iter(match=redis_prefix + "*"):
            client.delete(key)
        client.close()


def api_key(prefix: str, kind: str, user: str) -> str:
    """One of the API's own keys of a user (api/src/redis_store.rs)."""
    return f"{prefix}{kind}:{{{user}}}"


def feed(api: ApiServer, user: str) -> dict:
    r = requests.get(api.base + "/api/feeds", params={"limit": 50}, headers=bearer(user), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def track(api: ApiServer, user: str, post: str, kind: str) -> None:
    r = requests.post(api.base + "/api/track", headers=bearer(user), timeout=10,
                      json={"postId": post, "interactionType": kind})
    assert r.status_code in (200, 201), r.text
