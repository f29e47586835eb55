"""Faults injected into a private stack while the API serves load: Redis stopped, restarted,
flushed and frozen; PostgreSQL stopped and restarted. What must hold: no 5xx while PostgreSQL is
up; 503 within a bound while it is down; no accepted event lost, no retried event counted twice;
the service heals by itself.
"""

from __future__ import annotations

import time
import uuid

import psycopg
import requests

from .stack import Load, bearer, wait_until


def _stored_event_ids(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(
            "SELECT event_id FROM user_interactions WHERE event_id IS NOT NULL").fetchall()]


def _phase(load: Load, seconds: float, min_answers: int = 20) -> tuple[float, float]:
    t0 = time.monotonic()
    time.sleep(seconds)
    # On a loaded machine make sure the phase saw real traffic, not just wall time.
    if len(load.between(t0, time.monotonic())) < min_answers:
        load.wait_for(min_answers, timeout=60)
    return t0, time.monotonic()


def test_redis_stopped_restarted_flushed_and_frozen_under_load_serves_everything(fault_stack):
    s = fault_stack
    users = s.data.users
    for u in users:  # warm the cache: every user's recommendations written back to Redis
        assert requests.get(s.base + "/api/feeds", headers=bearer(u), timeout=10).status_code == 200
    keys = s.redis.client().keys(f"{s.prefix}recommendations:*")
    assert len(keys) == len(users)

    with Load(s.base, users, s.data.posts, threads=4, track_share=0.2) as load:
        phases = {"baseline": _phase(load, 2)}
        s.redis.stop()
        phases["redis down"] = _phase(load, 3)
        s.redis.start()  # nothing is kept on disk: it comes back empty
        phases["redis restarted (empty)"] = _phase(load, 3)
        s.redis.flush()
        phases["redis flushed"] = _phase(load, 3)
        s.redis.freeze()
        phases["redis frozen (SIGSTOP)"] = _phase(load, 3)
        s.redis.thaw()
        phases["redis back"] = _phase(load, 4)
    everything = load.outcomes
    report = {name: Load.summary(load.between(*span)) for name, span in phases.items()}
    print("\n".join(f"{k}: {dict(v)}" for k, v in report.items()))

    bad = [o for o in everything if o.status not in (200, 201)]
    assert not bad, f"{len(bad)} failed answers, e.g. {bad[:5]}\n{s.api.log()}"
    down = load.between(*phases["redis down"])
    assert down and all(o.source in ("db", "fallback") for o in down if o.kind == "feed")
    frozen = [o for o in load.between(*phases["redis frozen (SIGSTOP)"]) if o.kind == "feed"]
    # A test of the configured Redis timeout (REDIS_TIMEOUT_MS 200, then a 1 s circuit): 5 s is
    # a wide margin for a loaded machine, and a feed waiting on the frozen Redis never returns.
    print(f"slowest feed while Redis was frozen: {max(o.seconds for o in frozen):.2f} s")
    assert frozen and max(o.seconds for o in frozen) < 5.0, "a hung Redis must not hang the feed"
    # The cache refills by itself once Redis is back: the last phase is served from it again.
    back = [o for o in load.between(*phases["redis back"]) if o.kind == "feed"]
    assert any(o.source == "cache" for o in back), {o.source for o in back}
    wait_until("the recommendations entries are written back",
               lambda: len(s.redis.client().keys(f"{s.prefix}recommendations:*")) >= len(users) // 2,
               timeout=20)
    # Nothing accepted was lost, nothing stored twice.
    accepted = {o.event_id for o in everything if o.kind == "track" and o.status == 201}
    stored = _stored_event_ids(s.database_url)
    assert len(stored) == len(set(stored)), "duplicate event ids stored"
    assert accepted <= set(stored), f"{len(accepted - set(stored))} accepted events missing"
    assert len(accepted) > 10


def test_postgres_stopped_answers_503_quickly_and_recovers_without_double_counting(fault_stack):
    s = fault_stack
    users = s.data.users
    for u in users:
        assert requests.get(s.base + "/api/feeds", headers=bearer(u), timeout=10).status_code == 200
    # A user the API has never seen (nothing of theirs cached in the process).
    with psycopg.connect(s.database_url, autocommit=True) as conn:
        newcomer = str(conn.execute(
            "INSERT INTO users (username) VALUES ('newcomer') RETURNING id").fetchone()[0])
    post = s.data.posts[0]
    retried = f"retry-{uuid.uuid4().hex}"
    done_before = f"done-{uuid.uuid4().hex}"
    r = requests.post(s.base + "/api/track", headers=bearer(users[0]), timeout=10,
                      json={"postId": post, "interactionType": "like", "eventId": done_before})
    assert r.status_code == 201
    first_id = r.json()["interactionId"]

    with Load(s.base, users, s.data.posts, threads=3, track_share=0.3) as load:
        _phase(load, 2)
        s.pg.stop("immediate")
        t_down = time.monotonic()
        # Feed of an uncached user, and tracking: 503 JSON within the configured pool timeout
        # (PG_POOL_TIMEOUT_MS 1000 here). The bound, 10 s, is a wide margin for a loaded machine;
        # without a pool timeout these requests would wait for PostgreSQL to come back.
        took = {}
        for params in ({}, {"refresh": "true"}):
            t0 = time.monotonic()
            r = requests.get(s.base + "/api/feeds", params=params, headers=bearer(newcomer),
                             timeout=30)
            took["feed" + (" refresh" if params else "")] = time.monotonic() - t0
            assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
        t0 = time.monotonic()
        r = requests.post(s.base + "/api/track", headers=bearer(users[1]), timeout=30,
                          json={"postId": post, "interactionType": "like", "eventId": retried})
        took["track"] = time.monotonic() - t0
        assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
        assert max(took.values()) < 10.0, took
        down = _phase(load, 3)
        s.pg.start()
        t_up = time.monotonic()
        # The service resumes by itself: the same retried request succeeds within seconds.
        def retry_ok():
            r = requests.post(s.base + "/api/track", headers=bearer(users[1]), timeout=10,
                              json={"postId": post, "interactionType": "like", "eventId": retried})
            return r if r.status_code == 201 else None
        ok = wait_until("tracking works again after PostgreSQL restarts", retry_ok, timeout=30,
                        every=0.2)
        recovered_after = time.monotonic() - t_up
        again = retry_ok()
        assert again.json()["interactionId"] == ok.json()["interactionId"]
        r = requests.post(s.base + "/api/track", headers=bearer(users[0]), timeout=10,
                          json={"postId": post, "interactionType": "like", "eventId": done_before})
        assert r.status_code == 201 and r.json()["interactionId"] == first_id
        after = _phase(load, 3)
    r = requests.get(s.base + "/api/feeds", headers=bearer(newcomer), timeout=10)
    assert r.status_code == 200, r.text
    print(f"PostgreSQL down {t_up - t_down:.1f} s; 503 answers after "
          f"{', '.join(f'{k} {v:.2f} s' for k, v in took.items())}; tracking recovered "
          f"{recovered_after:.2f} s after restart; during: {dict(Load.summary(load.between(*down)))}; "
          f"after: {dict(Load.summary(load.between(*after)))}")

    everything = load.outcomes
    assert all(o.status in (200, 201, 503) for o in everything), \
        {(o.kind, o.status, o.error) for o in everything if o.status not in (200, 201, 503)}
    during = load.between(*down)
    assert any(o.status == 503 for o in during if o.kind == "track")
    # (the same configured timeouts; 10 s, the load's client timeout: a wide margin)
    assert max(o.seconds for o in during) < 10.0, "a request hung while PostgreSQL was down"
    assert all(o.status in (200, 201) for o in load.between(*after)), "did not resume by itself"
    # Clients retry every 503'd event with the same event id: each is then stored exactly once.
    failed = [o for o in everything if o.kind == "track" and o.status != 201]
    for o in failed:
        r = requests.post(s.base + "/api/track", headers=bearer(o.user), timeout=10,
                          json={"postId": o.post, "interactionType": "view", "eventId": o.event_id})
        assert r.status_code == 201, r.text
    accepted = {o.event_id for o in everything if o.kind == "track" and o.status == 201}
    stored = _stored_event_ids(s.database_url)
    assert len(stored) == len(set(stored)), "an event id was stored twice"
    assert accepted | {o.event_id for o in failed} | {retried, done_before} <= set(stored)
    with psycopg.connect(s.database_url) as conn:
        n = conn.execute("SELECT count(*) FROM user_interactions WHERE event_id = %s",
                         (retried,)).fetchone()[0]
    assert n == 1
