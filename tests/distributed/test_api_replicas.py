"""Three ``feedrank-api`` replicas behind HAProxy on loopback (tests/distributed/replicas.py), one
PostgreSQL database made by the test, one Redis key prefix.

What each replica keeps in its own memory, and must forget when PostgreSQL says it changed
(api/src/invalidation.rs: one ``LISTEN`` connection per replica, to the primary): post bodies
(``POST_CACHE_TTL_SECS``, 60 s here) and the users it found without recommendations (600 s). The
Redis entries are shared by every replica and need no invalidation.

- **A new pipeline run**: the run is written with the pipeline's own function for it,
  ``dagster_pipeline.swap.write_run`` (COPY into the run's table, keys, ATTACH, flip to complete:
  what ``user_recommendations`` does for a shard), but not its Redis entries, so that each
  replica must learn of the run from its notification and read it from PostgreSQL (as when a
  user's entry has expired). Each replica was first asked for a user of its own and answered
  with the random fallback, remembering that user has no recommendations; after the run each
  replica must serve that user's recommendations from PostgreSQL (``source == "db"``).
- **A post edit** and **a post deletion** (plain SQL, as the application does): every replica had
  the post's body in memory; each must show the new text, then leave the deleted post out.

Each is checked on every replica directly and through the balancer (there: the answers of all
three replicas, told apart by HAProxy's ``X-Replica`` header). Visibility is polled every 10 ms
up to ``BOUND`` seconds after the write's commit returned: a correctness bound of the
invalidation, not a speed check. Without it the stale answer would last a TTL (60 s, 600 s), far
past the bound; with it the delay is a NOTIFY's delivery (milliseconds), and 5 s leaves room for a
loaded machine. The observed delays are printed (``pytest -s``) and summarized in docs/scaling.md.

- **Tracking** through the balancer, spread over all replicas: every event stored exactly once,
  whether it is retried against another replica afterwards or sent to all three at once.
- **A replica killed** (SIGKILL) while feed requests go through the balancer from
  ``LOAD_CLIENTS`` threads: at most the requests in flight on it fail (at most one per client;
  HAProxy retries a connection refused or an empty response on another replica, and its health
  checks take the dead one out), and every request after the kill is answered by the others.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import psycopg
import requests

from dagster_pipeline import swap
from dagster_pipeline.resources import PostgresResource
from dagster_pipeline.timing import Timer
from feedrank import db
from reliability.stack import bearer

from .replicas import Replicas, replicas, seed, wait_everywhere

BOUND = 5.0
N_REPLICAS = 3
N_POSTS = 60
TOP = 12
N_EVENTS = 30
LOAD_CLIENTS = 4
COLUMNS = ("user_id", "post_id", "score", "reason")
LOG = logging.getLogger("test_api_replicas")


def write_run(url: str, picks: dict[str, list[str]]) -> None:
    """A recommendation run through the pipeline's swap (PostgreSQL only; see the docstring)."""
    users = list(picks)

    def frame_of(lo: int, hi: int, timer: Timer) -> pl.DataFrame:
        rows = [(u, p, float(TOP - r), "similar_users") for u in users[lo:hi] for r, p in enumerate(picks[u])]
        return pl.DataFrame(rows, schema=list(COLUMNS), orient="row")

    written = swap.write_run(
        PostgresResource(database_url=url, copy_connections=1), shard="00-of-01", dagster_run_id="replicas-test",
        config={"top_k": TOP}, expires_after_hours=48, users=len(users), columns=COLUMNS,
        chunks=[(0, len(users))], frame_of=frame_of, log=LOG, timer=Timer(),
    )
    assert written.refused is None and written.rows == len(users) * TOP


def feed(base: str, user: str) -> tuple[dict, str]:
    r = requests.get(base + "/api/feeds", params={"limit": 50}, headers=bearer(user), timeout=10)
    assert r.status_code == 200, r.text
    return r.json(), r.headers.get("X-Replica", "")


def on_replicas(group: Replicas, user_of: dict[str, str], balancer_user: str, ok) -> dict:
    """The checks for ``wait_everywhere``: each replica directly with its user, and the balancer
    (true once the latest answer of every replica through it was true). ``ok(target, body)``."""
    targets = {}
    for name in group.names:
        def direct(name=name):
            body, _ = feed(group.base(name), user_of[name])
            return ok(name, body), summary(body)
        targets[name] = direct
    latest: dict[str, bool] = {}

    def through_balancer():
        body, replica = feed(group.balancer, balancer_user)
        latest[replica] = ok("balancer", body)
        return len(latest) == len(group.names) and all(latest.values()), f"{latest} last: {summary(body)}"

    targets["balancer"] = through_balancer
    return targets


def personalized(body: dict) -> set[str]:
    """The page's posts that came from the pipeline's list (the rest are other feed sources)."""
    return {p["id"] for p in body["posts"] if p["source"] == "personalized"}


def summary(body: dict) -> str:
    return f"source={body['metadata']['source']} posts={len(body['posts'])}"


def report(what: str, took: dict[str, float]) -> None:
    print(f"\n{what}: visible after " + ", ".join(f"{n} {1000 * t:.1f} ms" for n, t in took.items()))


def test_runs_edits_and_deletions_reach_every_replica_and_tracking_is_stored_once(
    fresh_database_url, redis_prefix, api_binary, tmp_path: Path
):
    url = fresh_database_url
    readers, posts = seed(url, readers=6, posts=N_POSTS)
    edited, deleted = posts[0], posts[1]
    with replicas(N_REPLICAS, url, db.redis_url(), redis_prefix, api_binary, tmp_path,
                  POST_CACHE_TTL_SECS="60") as group:
        try:
            user_of = dict(zip(group.names, readers))
            balancer_user = readers[N_REPLICAS]
            tracker = readers[N_REPLICAS + 1]

            # 1. every replica remembers its user (and the balancer's) has no recommendations
            for name in group.names:
                for user in (user_of[name], balancer_user):
                    body, _ = feed(group.base(name), user)
                    assert body["metadata"]["source"] == "fallback", summary(body)

            # two posts of each author: the diversity re-ranking keeps all of them on the page
            picks = {u: posts[:TOP] for u in readers}
            write_run(url, picks)
            first_answer: dict[str, str] = {}

            def recommended(target: str, body: dict) -> bool:
                if body["metadata"]["source"] == "fallback":
                    return False
                # the run's posts, blended with the request-time sources and the fallback after them
                assert personalized(body) == set(picks[readers[0]]), summary(body)
                first_answer.setdefault(target, body["metadata"]["source"])
                return True

            targets = on_replicas(group, user_of, balancer_user, recommended)
            report("new run", wait_everywhere(targets, BOUND))
            # read from PostgreSQL by each replica itself: its "no recommendations" was forgotten
            assert {n: first_answer[n] for n in group.names} == {n: "db" for n in group.names}, first_answer

            # 2. every replica has the post's body in memory (the cached path), then it is edited
            for name in group.names:
                body, _ = feed(group.base(name), user_of[name])
                assert body["metadata"]["source"] == "cache", summary(body)
                assert any(p["id"] == edited and p["content"] == "post 1" for p in body["posts"])
            with db.connect(url, autocommit=True) as conn:
                conn.execute("UPDATE posts SET content = 'edited', updated_at = now() WHERE id = %s", (edited,))

            def shows_edit(target: str, body: dict) -> bool:
                return any(p["id"] == edited and p["content"] == "edited" for p in body["posts"])

            report("post edit", wait_everywhere(on_replicas(group, user_of, balancer_user, shows_edit), BOUND))

            # 3. the deletion
            with db.connect(url, autocommit=True) as conn:
                conn.execute("DELETE FROM posts WHERE id = %s", (deleted,))

            def without_deleted(target: str, body: dict) -> bool:
                ids = {p["id"] for p in body["posts"]}
                return body["metadata"]["source"] == "cache" and edited in ids and deleted not in ids

            report("post deletion",
                   wait_everywhere(on_replicas(group, user_of, balancer_user, without_deleted), BOUND))

            # 4. tracking through the balancer: N events over all replicas, then retries
            assert_tracked_once(group, url, tracker, posts[2:])

            # 5. a replica killed under load
            assert_kill_costs_at_most_in_flight(group, balancer_user)
        except BaseException:
            print(group.logs())
            raise


def assert_tracked_once(group: Replicas, url: str, user: str, posts: list[str]) -> None:
    def track(base: str, event_id: str, post: str) -> tuple[str, str]:
        r = requests.post(base + "/api/track", headers=bearer(user), timeout=10,
                          json={"postId": post, "interactionType": "view", "eventId": event_id})
        assert r.status_code in (200, 201), r.text
        return r.json()["interactionId"], r.headers.get("X-Replica", "")

    events = [(f"ev-{uuid.uuid4()}", posts[i % len(posts)]) for i in range(N_EVENTS)]
    stored: dict[str, tuple[str, str]] = {}
    for event_id, post in events[:20]:
        stored[event_id] = track(group.balancer, event_id, post)
    served_by = {replica for _, replica in stored.values()}
    assert served_by == set(group.names), f"the balancer used only {served_by}"

    # retried against every replica but the one that stored it: the same interaction
    for event_id, post in events[:10]:
        interaction, replica = stored[event_id]
        for name in group.names:
            if name != replica:
                again, _ = track(group.base(name), event_id, post)
                assert again == interaction, (event_id, name)
    # new events sent to all three replicas at once: one of the racing inserts stores it
    with ThreadPoolExecutor(N_REPLICAS) as pool:
        for event_id, post in events[20:]:
            answers = list(pool.map(lambda n, e=event_id, p=post: track(group.base(n), e, p)[0], group.names))
            assert len(set(answers)) == 1, (event_id, answers)
            stored[event_id] = (answers[0], "")
    # and everything retried through the balancer
    for event_id, post in events:
        assert track(group.balancer, event_id, post)[0] == stored[event_id][0]

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT event_id, count(*) FROM user_interactions WHERE user_id = %s GROUP BY event_id", (user,)
        ).fetchall()
    assert sorted(rows) == sorted((e, 1) for e, _ in events), rows


def assert_kill_costs_at_most_in_flight(group: Replicas, user: str) -> None:
    """Feed requests through the balancer from LOAD_CLIENTS threads; the last replica killed
    after a second of it, the load going on two more."""
    victim = group.names[-1]
    answers: list[tuple[int, str]] = []  # in the order they completed: (status, 0 for an error; replica)
    stop = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    r = session.get(group.balancer + "/api/feeds", params={"limit": 20}, headers=bearer(user),
                                    timeout=10)
                    answers.append((r.status_code, r.headers.get("X-Replica", "")))
                except requests.RequestException:
                    answers.append((0, ""))

    threads = [threading.Thread(target=client) for _ in range(LOAD_CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    before = len(answers)
    group.servers[-1].proc.kill()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(15)
    failed = [a for a in answers if a[0] != 200]
    print(f"\nreplica killed: {before} requests before, {len(answers) - before} after, {len(failed)} failed")
    assert {r for _, r in answers[:before]} == set(group.names), "the load reached every replica first"
    # each client had at most one request in flight on it when it died
    assert len(failed) <= LOAD_CLIENTS, failed
    last = answers[-20:]
    assert len(answers) - before > 20 and all(a[0] == 200 and a[1] != victim for a in last), last
