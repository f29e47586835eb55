#!/usr/bin/env python3
"""Questions `scripts/demo.sh` asks about the demo database and the running API.

Run with the project's virtual environment (it needs psycopg). Each subcommand prints one answer
on stdout and says what it found on stderr; exit status 0 means "yes", 1 "no", 2 an error.

  data-loaded              are there posts in DATABASE_URL? (then `feedrank demo-data` is skipped)
  recommendations-fresh    is there a complete recommendation run newer than every post and
                           younger than MAX_AGE_HOURS (default 24)? (then materializing is skipped)
  demo-user                the id of the user with the most current recommendations
  warm-feed URL TOKEN      asks GET URL until the answer comes from the cache (the first call after
                           a Redis restart is served from the database and written back), then
                           prints a JSON summary: source, total, first post id, first reasons
  describe-feed JSON       that summary as the lines `make demo` prints
  schedules DAGSTER_URL    waits for the code location to load in `dagster dev`, prints each
                           schedule and its status; 0 when all are RUNNING
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/feedrank"


def _connect():
    import psycopg

    url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    return psycopg.connect(url, connect_timeout=10)


def data_loaded() -> int:
    with _connect() as conn:
        (posts,) = conn.execute("SELECT count(*) FROM posts").fetchone()
        (users,) = conn.execute("SELECT count(*) FROM users").fetchone()
    print(posts)
    print(f"database has {users} users and {posts} posts", file=sys.stderr)
    return 0 if posts > 0 else 1


def recommendations_fresh() -> int:
    max_age_hours = float(os.environ.get("MAX_AGE_HOURS", "24"))
    with _connect() as conn:
        row = conn.execute(
            """
            SELECT max(completed_at),
                   (SELECT max(greatest(created_at, updated_at)) FROM posts),
                   now()
            FROM recommendation_runs WHERE status = 'complete'
            """
        ).fetchone()
        completed_at, newest_post, now = row
        live = 0
        if completed_at is not None:
            (live,) = conn.execute(
                "SELECT count(*) FROM user_recommendations WHERE expires_at > now()"
            ).fetchone()
    if completed_at is None:
        print("never")
        print("no complete recommendation run yet", file=sys.stderr)
        return 1
    age_h = (now - completed_at).total_seconds() / 3600
    print(f"{age_h:.1f}")
    if newest_post is not None and newest_post > completed_at:
        print("posts changed after the last complete run", file=sys.stderr)
        return 1
    if age_h > max_age_hours:
        print(f"the last complete run is {age_h:.1f} h old (> {max_age_hours} h)", file=sys.stderr)
        return 1
    if live == 0:
        print("the last run's recommendations have all expired", file=sys.stderr)
        return 1
    print(f"the last complete run is {age_h:.1f} h old, {live} live recommendations", file=sys.stderr)
    return 0


def demo_user() -> int:
    with _connect() as conn:
        row = conn.execute(
            """
            SELECT r.user_id
            FROM user_recommendations r
            JOIN recommendation_runs rr ON rr.id = r.run_id AND rr.status = 'complete'
            WHERE r.expires_at > now()
            GROUP BY r.user_id
            ORDER BY count(*) DESC, r.user_id
            LIMIT 1
            """
        ).fetchone()
    if row is None:
        print("no user has recommendations (did the pipeline run?)", file=sys.stderr)
        return 1
    print(row[0])
    return 0


def _get(url: str, token: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        body = e.read().decode("utf-8", "replace")
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, {"error": body}


def warm_feed(url: str, token: str) -> int:
    last: tuple[int, dict] = (0, {})
    for _ in range(5):
        last = _get(url, token)
        status, body = last
        if status == 200 and body.get("metadata", {}).get("source") == "cache":
            break
        time.sleep(0.3)
    status, body = last
    if status != 200:
        print(f"GET {url} answered {status}: {json.dumps(body)[:400]}", file=sys.stderr)
        return 2
    posts = body.get("posts", [])
    meta = body.get("metadata", {})
    summary = {
        "source": meta.get("source"),
        "total": meta.get("total"),
        "first_post_id": posts[0]["id"] if posts else None,
        "first": [
            {
                "id": p.get("id"),
                "reason": p.get("reason"),
                "score": p.get("score"),
                "author": (p.get("user") or {}).get("username"),
                "content": (p.get("content") or "")[:60],
            }
            for p in posts[:3]
        ],
    }
    print(json.dumps(summary))
    return 0 if meta.get("source") == "cache" and posts else 1


def describe_feed(summary_json: str) -> int:
    """The human-readable lines for a `warm-feed` summary."""
    s = json.loads(summary_json)
    print(f"      metadata.source = {s['source']!r}, total = {s['total']}")
    for p in s["first"]:
        score = "-" if p["score"] is None else f"{p['score']:.3f}"
        print(
            f"      {p['id']}  reason={p['reason']}  score={score}"
            f"  by @{p['author']}: {p['content']!r}"
        )
    return 0


SCHEDULES_QUERY = """
{ workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus
    locationOrLoadError {
      __typename
      ... on RepositoryLocation { repositories { name schedules {
          name cronSchedule executionTimezone scheduleState { status }
          futureTicks(limit: 1) { results { timestamp } } } } }
      ... on PythonError { message }
    } } } } }
"""


def schedules(dagster_url: str, timeout_s: float = 120) -> int:
    """Waits until the code location has loaded in the running Dagster, then prints one line per
    schedule (`schedule NAME is STATUS (CRON TZ, next tick ISO)`); 0 when every one is RUNNING."""
    import datetime as dt

    deadline = time.monotonic() + timeout_s
    body = json.dumps({"query": SCHEDULES_QUERY}).encode()
    last = "no answer"
    while time.monotonic() < deadline:
        req = urllib.request.Request(
            f"{dagster_url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                data = json.loads(resp.read())["data"]["workspaceOrError"]
        except (urllib.error.URLError, OSError, KeyError, ValueError) as e:
            last = str(e)
            time.sleep(1)
            continue
        entries = data.get("locationEntries") or []
        if not entries or any(e["loadStatus"] != "LOADED" for e in entries):
            last = "the code location is still loading"
            time.sleep(1)
            continue
        lines, ok = [], True
        for entry in entries:
            loc = entry["locationOrLoadError"]
            if loc["__typename"] != "RepositoryLocation":
                print(f"code location {entry['name']} failed to load: {loc.get('message')}",
                      file=sys.stderr)
                return 1
            for repo in loc["repositories"]:
                for sch in repo["schedules"]:
                    status = sch["scheduleState"]["status"]
                    ticks = sch["futureTicks"]["results"]
                    nxt = (
                        dt.datetime.fromtimestamp(ticks[0]["timestamp"], dt.timezone.utc)
                        .strftime("%Y-%m-%d %H:%M UTC")
                        if ticks
                        else "none"
                    )
                    lines.append(
                        f"schedule {sch['name']} is {status} "
                        f"({sch['cronSchedule']} {sch['executionTimezone']}, next tick {nxt})"
                    )
                    ok = ok and status == "RUNNING"
        if not lines:
            print("the code location has no schedule", file=sys.stderr)
            return 1
        print("\n".join(lines))
        return 0 if ok else 1
    print(f"Dagster at {dagster_url}: {last} after {timeout_s:.0f} s", file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    try:
        if cmd == "data-loaded" and not args:
            return data_loaded()
        if cmd == "recommendations-fresh" and not args:
            return recommendations_fresh()
        if cmd == "demo-user" and not args:
            return demo_user()
        if cmd == "warm-feed" and len(args) == 2:
            return warm_feed(args[0], args[1])
        if cmd == "describe-feed" and len(args) == 1:
            return describe_feed(args[0])
        if cmd == "schedules" and len(args) == 1:
            return schedules(args[0])
    except Exception as e:  # noqa: BLE001 - the shell script prints this and stops
        print(f"demo_state.py {cmd}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(f"demo_state.py: unknown command or wrong arguments: {' '.join(argv)}", file=sys.stderr)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
