"""Simulated traffic for an experiment (issue 14): proof of the report without real users.

Drives a running feedrank API with simulated users and reads the experiment report back:

1. creates and starts an experiment of three arms (``feedrank experiments``): ``control`` and
   ``treatment`` (both ``config`` arms with the run's configuration, so both serve the same kind of
   lists) and ``random`` (the seeded random feed, the design's Phase 1 baseline);
2. each simulated user asks for ``--pages`` feed pages and reads every post served: a click with
   probability ``base_ctr x (0.1 + 0.9 x affinity of the user to the post's topic)``, times
   ``1 + lift`` in the treatment arm (the planted, known lift); a clicked post is liked with
   probability ``like_given_click``. Events go to ``POST /api/track/batch`` with the page's
   ``requestId`` and the post's ``position`` (attributed events);
3. waits until the served log holds every page, then runs the report
   (``feedrank.experiment_report.report``, the same numbers as ``feedrank experiments report``).

A user's affinity to a topic is what their stored history says (their click/like/share events by
the topic of the post, smoothed), and a post's topic is read from its text (the synthetic demo
data writes every post from one topic's vocabulary, ``feedrank/topics.json``): so the personalized
arms, which rank by that history, should beat ``random``, while ``treatment`` over ``control`` is
exactly the planted lift in expectation (the same lists, clicks scaled by ``1 + lift``).

``--drop F`` breaks the split on purpose: that share of the treatment arm's users never ask for a
feed (as a client bug that loses one arm's traffic would), which the report's sample-ratio check
must catch.

``--offline-seeds N`` then measures the interval's coverage: the pages served online are kept,
and for N seeds the users' arms (a new salt each) and clicks are drawn again from the same model;
the share of seeds whose 95% interval for the treatment's CTR lift covers the planted lift is
printed (about 0.95 is right).

Against ``make demo`` (API on 8080, its AUTH_SECRET in .data/demo/auth_secret):

    AUTH_SECRET=$(cat .data/demo/auth_secret) .venv/bin/python scripts/simulate_experiment.py \\
        --api http://127.0.0.1:8080 --users 600 --lift 0.2 --offline-seeds 200
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import requests

import feedrank
from feedrank import cli, db, experiment_report
from feedrank.demo_data import TOPICS

ARMS = ("control", "treatment", "random")
CHECKOUT_API_BIN = Path(__file__).resolve().parents[1] / "target" / "release" / "feedrank-api"
ENGAGED = ("click", "like", "share")


@dataclass
class Population:
    """The simulated users (their ids and topic affinities) and the topic of every post."""

    users: list[str]
    affinity: np.ndarray  # (users, topics), each row's maximum 1
    post_topic: dict[str, int]

    def click_probability(self, user: int, posts: list[str], base_ctr: float, lift: float) -> np.ndarray:
        topics = np.array([self.post_topic.get(p, -1) for p in posts])
        aff = np.where(topics >= 0, self.affinity[user, np.maximum(topics, 0)], 0.0)
        return np.clip(base_ctr * (0.1 + 0.9 * aff) * (1.0 + lift), 0.0, 1.0)


def topic_of(text: str, words: dict[str, int]) -> int:
    """The topic whose vocabulary most of the text's words come from (-1: none)."""
    counts = np.zeros(len(TOPICS))
    for token in re.findall(r"[a-z0-9]+", text.lower()):
        t = words.get(token)
        if t is not None:
            counts[t] += 1
    return int(counts.argmax()) if counts.any() else -1


def load_population(conn: psycopg.Connection, n_users: int, rng: np.random.Generator) -> Population:
    """``n_users`` users with history (drawn with ``rng``), their affinities, and every post's topic."""
    words = {w.replace("-", ""): t for t, ws in enumerate(TOPICS.values()) for w in ws}
    words.update({w: t for t, ws in enumerate(TOPICS.values()) for w in ws})
    post_topic = {str(pid): topic_of(content, words)
                  for pid, content in conn.execute("SELECT id, content FROM posts")}
    engaged = conn.execute(
        "SELECT user_id::text, post_id::text FROM user_interactions WHERE interaction_type = ANY(%s)",
        (list(ENGAGED),),
    ).fetchall()
    history: dict[str, np.ndarray] = {}
    for user, post in engaged:
        t = post_topic.get(post, -1)
        if t >= 0:
            history.setdefault(user, np.zeros(len(TOPICS)))[t] += 1
    candidates = sorted(u for u, h in history.items() if h.sum() >= 3)
    if len(candidates) < n_users:
        raise ValueError(f"users: {n_users} asked, only {len(candidates)} users have 3 or more "
                         "engaged events (load more demo data)")
    users = [candidates[i] for i in rng.choice(len(candidates), n_users, replace=False)]
    counts = np.array([history[u] for u in users]) + 0.2  # smoothed: every topic a little
    affinity = counts / counts.max(axis=1, keepdims=True)
    return Population(users, affinity, post_topic)


def tokens(api_bin: Path, users: list[str], auth_secret: str) -> dict[str, str]:
    """Development tokens from ``feedrank-api token``, signed with the API's AUTH_SECRET."""
    args = [str(api_bin), "token", "--ttl", "7200"]
    for u in users:
        args += ["--user", u]
    done = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, AUTH_SECRET=auth_secret))
    if done.returncode != 0:
        raise RuntimeError(f"feedrank-api token failed: {done.stderr.strip()[-500:]}")
    minted = done.stdout.split()
    if len(minted) != len(users):
        raise RuntimeError(f"feedrank-api token printed {len(minted)} tokens for {len(users)} users")
    return dict(zip(users, minted))


@dataclass
class Served:
    """What the simulation saw online: per user, the arm and the pages (request id, first
    position, post ids)."""

    arm: dict[int, str] = field(default_factory=dict)
    pages: dict[int, list[tuple[str, int, list[str]]]] = field(default_factory=dict)
    events: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def create_experiment(database_url: str, name: str, salt: str, shares: tuple[float, float, float]) -> None:
    definition = {
        "name": name,
        "salt": salt,
        "arms": [
            {"name": "control", "share": shares[0], "kind": "config", "config": {}},
            {"name": "treatment", "share": shares[1], "kind": "config", "config": {}},
            {"name": "random", "share": shares[2], "kind": "random"},
        ],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(definition, f)
    try:
        for argv in (["create", f.name], ["start", name]):
            if cli.main(["experiments", *argv, "--database-url", database_url]) != 0:
                raise RuntimeError(f"feedrank experiments {argv[0]} failed")
    finally:
        os.unlink(f.name)


def drive_user(api: str, token: str, i: int, pop: Population, experiment: str, served: Served,
               args: argparse.Namespace, rng: np.random.Generator) -> None:
    """One simulated user: ``args.pages`` pages, events for what they click or like."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    offset = 0
    for _ in range(args.pages):
        # While one request reloads the experiments, the API serves the others with those it read
        # before (api/src/memo.rs, Refreshed): a page without the new experiment's label is not
        # part of it (the report does not count it), and the user asks again.
        for attempt in range(100):
            r = session.get(api + "/api/feeds", params={"limit": args.limit, "offset": offset}, timeout=60)
            r.raise_for_status()
            body = r.json()
            meta = body["metadata"]
            arm = next((a["arm"] for a in meta.get("arms", []) if a["experiment"] == experiment), None)
            if arm is not None:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"user {pop.users[i]} has no arm of {experiment}: {meta.get('arms')}")
        posts = [p["id"] for p in body["posts"]]
        with served.lock:
            served.arm[i] = arm
            served.pages.setdefault(i, []).append((meta["requestId"], meta["offset"], posts))
        if not posts:
            break
        lift = args.lift if arm == "treatment" else 0.0
        clicks = rng.random(len(posts)) < pop.click_probability(i, posts, args.base_ctr, lift)
        likes = clicks & (rng.random(len(posts)) < args.like_given_click)
        events = []
        for j in np.flatnonzero(clicks):
            kinds = ("click", "like") if likes[j] else ("click",)
            events += [{"postId": posts[j], "interactionType": k, "requestId": meta["requestId"],
                        "position": meta["offset"] + int(j), "eventId": str(uuid.uuid4())} for k in kinds]
        for start in range(0, len(events), 100):
            t = session.post(api + "/api/track/batch", json={"events": events[start:start + 100]}, timeout=60)
            t.raise_for_status()
            accepted = t.json()["accepted"]
            if accepted != len(events[start:start + 100]):
                raise RuntimeError(f"track/batch accepted {accepted} of {len(events[start:start + 100])}")
        with served.lock:
            served.events += len(events)
        offset += len(posts)


def wait_for_served_log(database_url: str, served: Served, timeout: float = 60.0) -> None:
    """Until every page the simulation saw is in the served log (it is written in the background)."""
    ids = [rid for pages in served.pages.values() for rid, _, _ in pages]
    deadline = time.monotonic() + timeout
    with psycopg.connect(database_url) as conn:
        while True:
            (n,) = conn.execute("SELECT count(*) FROM served_pages WHERE request_id = ANY(%s::uuid[])",
                                (ids,)).fetchone()
            if n >= len(ids):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the served log holds {n} of {len(ids)} pages after {timeout:.0f} s")
            time.sleep(0.5)


def offline_coverage(pop: Population, served: Served, args: argparse.Namespace) -> dict[str, Any]:
    """The 95% interval's coverage of the planted lift over ``args.offline_seeds`` seeds: the
    personalized pages served online (control and treatment users), arms drawn again with a new
    salt per seed and clicks drawn again from the same model, analysed by the report's own
    functions."""
    personalized = [i for i, a in served.arm.items() if a in ("control", "treatment")]
    probs = [np.concatenate([pop.click_probability(i, posts, args.base_ctr, 0.0)
                             for _, _, posts in served.pages[i]]) for i in personalized]
    covered, rel = 0, []
    for seed in range(args.offline_seeds):
        rng = np.random.default_rng(10_000 + seed)
        salt = f"coverage-{seed}"
        treated = np.array([feedrank.assign_arm(salt, pop.users[i], [0.5, 0.5]) == 1 for i in personalized])
        clicks = np.array([(rng.random(p.size) < np.clip(p * (1 + args.lift * t), 0, 1)).sum()
                           for p, t in zip(probs, treated)], np.float64)
        imps = np.array([p.size for p in probs], np.float64)
        lift = experiment_report.compare(experiment_report.ratio_estimate(clicks[~treated], imps[~treated]),
                                         experiment_report.ratio_estimate(clicks[treated], imps[treated]))
        lo, hi = lift["relative_ci"]
        covered += lo <= args.lift <= hi
        rel.append(lift["relative"])
    return {"seeds": args.offline_seeds, "covered": covered, "coverage": covered / args.offline_seeds,
            "mean_relative_lift": float(np.mean(rel)), "planted_lift": args.lift}


def simulate(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    with psycopg.connect(args.database_url) as conn:
        pop = load_population(conn, args.users, rng)
    name = args.experiment or f"sim_{args.seed}_{uuid.uuid4().hex[:6]}"
    create_experiment(args.database_url, name, f"{name}-salt", (0.4, 0.4, 0.2))
    minted = tokens(Path(args.api_bin), pop.users, args.auth_secret)
    # The treatment users a broken client loses: known only once the arm is served, so a
    # dropped user's arm comes from the core's assignment, the same the API makes.
    salt, shares = f"{name}-salt", [0.4, 0.4, 0.2]
    dropped = {i for i, u in enumerate(pop.users)
               if ARMS[feedrank.assign_arm(salt, u, shares)] == "treatment" and rng.random() < args.drop}
    served = Served()
    seeds = rng.integers(0, 2**63, len(pop.users))
    started = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as pool:
        futures = [pool.submit(drive_user, args.api, minted[u], i, pop, name, served, args,
                               np.random.default_rng(seeds[i]))
                   for i, u in enumerate(pop.users) if i not in dropped]
        for f in futures:
            f.result()
    seconds = time.monotonic() - started
    wait_for_served_log(args.database_url, served)
    with psycopg.connect(args.database_url) as conn:
        report = experiment_report.report(conn, name)
    # stopped, so that a later simulation against the same API is not split by this one too
    if cli.main(["experiments", "stop", name, "--database-url", args.database_url]) != 0:
        raise RuntimeError(f"feedrank experiments stop {name} failed")
    treatment = next(x for x in report["lifts"] if x["arm"] == "treatment" and x["metric"] == "ctr")
    random_arm = next(x for x in report["lifts"] if x["arm"] == "random" and x["metric"] == "ctr")
    lo, hi = treatment["relative_ci"]
    out = {
        "experiment": name,
        "users": len(pop.users) - len(dropped),
        "dropped_treatment_users": len(dropped),
        "pages": sum(len(p) for p in served.pages.values()),
        "events": served.events,
        "seconds": round(seconds, 1),
        "planted_lift": args.lift,
        "treatment_ctr_lift": {"relative": treatment["relative"], "ci": [lo, hi],
                               "covers_planted": bool(lo <= args.lift <= hi)},
        "random_ctr_lift": {"relative": random_arm["relative"], "ci": random_arm["relative_ci"]},
        "srm": {"p_value": report["srm"]["p_value"], "passed": report["srm"]["passed"],
                "users": report["srm"]["users"]},
        "report": report,
    }
    if args.offline_seeds:
        out["offline_coverage"] = offline_coverage(pop, served, args)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api", default="http://127.0.0.1:8080", help="the API's base URL")
    p.add_argument("--database-url", default=db.database_url(), help="the API's PostgreSQL")
    p.add_argument("--api-bin", default=os.environ.get("FEEDRANK_API_BIN", str(CHECKOUT_API_BIN)),
                   help="feedrank-api (default: $FEEDRANK_API_BIN, else this checkout's release build; mints the users' tokens, "
                   "so AUTH_SECRET must be the API's)")
    p.add_argument("--auth-secret", default=os.environ.get("AUTH_SECRET"),
                   help="the API's AUTH_SECRET (default: $AUTH_SECRET)")
    p.add_argument("--experiment", default=None, help="experiment name (default: sim_<seed>_<random>)")
    p.add_argument("--users", type=int, default=600)
    p.add_argument("--pages", type=int, default=2, help="feed pages per user")
    p.add_argument("--limit", type=int, default=50, help="posts per page")
    p.add_argument("--base-ctr", type=float, default=0.08, help="click probability at full affinity")
    p.add_argument("--like-given-click", type=float, default=0.3)
    p.add_argument("--lift", type=float, default=0.2, help="the treatment's planted relative click lift")
    p.add_argument("--drop", type=float, default=0.0,
                   help="share of treatment users whose traffic is lost (a broken split)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--offline-seeds", type=int, default=0, help="seeds for the coverage measurement")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the whole result, report included")
    args = p.parse_args(argv)
    for name in ("users", "pages", "limit", "concurrency"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    for name in ("base_ctr", "like_given_click", "drop"):
        if not 0 <= getattr(args, name) <= 1:
            p.error(f"--{name.replace('_', '-')} must be in [0, 1]")
    if not args.auth_secret:
        p.error("--auth-secret (or AUTH_SECRET) is required: the users' tokens are signed with it")
    if args.lift <= -1:
        p.error("--lift must be > -1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = simulate(args)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    t, r = out["treatment_ctr_lift"], out["random_ctr_lift"]
    print(f"experiment {out['experiment']}: {out['users']} users ({out['dropped_treatment_users']} "
          f"treatment users dropped), {out['pages']} pages, {out['events']} events in {out['seconds']} s")
    print(f"treatment CTR lift {t['relative']:+.3f}, 95% CI [{t['ci'][0]:+.3f}, {t['ci'][1]:+.3f}]; "
          f"planted {out['planted_lift']:+.3f}: {'covered' if t['covers_planted'] else 'NOT covered'}")
    print(f"random CTR lift {r['relative']:+.3f}, 95% CI [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]")
    s = out["srm"]
    print(f"sample ratio check: users {s['users']}, p = {s['p_value']:.3g}: {'passed' if s['passed'] else 'FAILED'}")
    if "offline_coverage" in out:
        c = out["offline_coverage"]
        print(f"coverage over {c['seeds']} seeds: {c['covered']}/{c['seeds']} = {c['coverage']:.3f} "
              f"(mean relative lift {c['mean_relative_lift']:+.3f}, planted {c['planted_lift']:+.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
