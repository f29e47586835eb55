"""`make bench-pipeline`: the whole graph on a large synthetic data set, timed per asset.

    python -m dagster_pipeline.bench [--users 100000] [--posts 200000] [--interactions 5000000]
                                     [--top-k 200] [--config PATH] [--refresh-users N] [--json PATH]
                                     [--executor celery --workers 2]

(``--executor celery``: the graph on Celery against the multiprocess executor, bench_celery.py.)

A throw-away database (created, migrated with `feedrank-api migrate`, dropped afterwards) is
filled by `feedrank demo-data --synthetic`; then each asset is materialized in its own process
(`dg.materialize` with the asset selected, its inputs read from the bundle IO manager), so that
each asset's peak RSS is its own (``os.wait4``). The Redis keys go under a bench-only prefix,
deleted afterwards.

The table splits each asset's time into the kinds its metadata reports (``seconds_by_kind``):
feedrank kernels (rust), polars/numpy/scipy calls (native), PostgreSQL/Redis (io), and the rest,
Python glue. "process" is the step process's wall time, including Python and Dagster start-up.

``--growth 30000,100000,300000``: the graph at each of those user counts in turn (posts 2x and
interactions 50x the users, each size in a process and a database of its own, its results in
``artifacts/bench-pipeline-<users>.json``), then a table of the whole graph's time, the scoring
asset's, and peak RSS by size, with the growth exponent of each time (time ~ users^e; issue 17).
``--config docs/configs/candidates.json`` scores with the candidate path (any ScoringConfig file;
``top_k`` is ``--top-k``'s).

``--refresh-users N``: after the graph, N random users each like a post (now), and the
incremental refresh (``refreshed_recommendations``, refresh.py) runs in a process of its own, as
the sensor's run would: its end-to-end time (process start to exit) is the issue's "refresh of
1,000 active users out of 100,000 under 60 s". The bench checks that it refreshed exactly N users.
"""

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from feedrank import growth

ASSETS = (
    "user_interactions_snapshot",
    "post_features",
    "user_features",
    "serving_model",
    "recommendation_scores",
    "user_recommendations",
)
# Materialized too, but reported apart: not part of the design's graph (the offline quality of the
# run's configuration on the same data, issue 6).
EXTRA = ("recommendation_quality",)
REFRESH = "refreshed_recommendations"


def _step(args: argparse.Namespace) -> int:
    """Child: materialize one asset, write its metadata as JSON."""
    import dagster as dg

    from dagster_pipeline.assets import build_assets
    from dagster_pipeline.io_manager import BundleIOManager
    from dagster_pipeline.quality import build_quality_asset
    from dagster_pipeline.refresh import build_refresh_asset
    from dagster_pipeline.resources import AlertNotifier, PostgresResource, RedisResource, ScoringResource
    from feedrank import db

    t0 = time.perf_counter()
    result = dg.materialize(
        [*build_assets(None), build_quality_asset(None), build_refresh_asset(None)],
        selection=[args.asset],
        resources={
            "postgres": PostgresResource(database_url=db.database_url()),
            "redis": RedisResource(redis_url=db.redis_url(), key_prefix=args.prefix),
            "notifier": AlertNotifier(),
            "io_manager": BundleIOManager(base_dir=args.storage),
            "scoring": ScoringResource(config_path=args.config, overrides={"top_k": args.top_k}),
        },
    )
    run_seconds = time.perf_counter() - t0
    meta = {}
    for event in result.get_asset_materialization_events():
        meta = {k: v.value for k, v in event.materialization.metadata.items()}
    meta["run_seconds"] = run_seconds
    Path(args.out).write_text(json.dumps(meta, default=str))
    return 0


def _config_args(args: argparse.Namespace) -> list[str]:
    """``--config`` for a child process, when the run has one."""
    return ["--config", args.config] if args.config else []


def _run_child(argv: list[str]) -> tuple[int, float, int]:
    """Runs a child process; returns (exit status, wall seconds, peak RSS bytes)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss * 1024


def _make_active(url: str, users: int) -> list[str]:
    """``users`` random users with history each like a post they are not the author of, now."""
    import psycopg

    with psycopg.connect(url) as conn:
        return [
            r[0]
            for r in conn.execute(
                # numbered after the draw, so that the n-th user meets the n-th post
                "WITH u AS (SELECT id, row_number() OVER () AS n FROM (SELECT id FROM "
                "(SELECT DISTINCT user_id AS id FROM user_interactions) d ORDER BY random() LIMIT %s) s), "
                "p AS (SELECT id, user_id, row_number() OVER () AS n FROM "
                "(SELECT id, user_id FROM posts ORDER BY random() LIMIT %s) q) "
                "INSERT INTO user_interactions (user_id, post_id, interaction_type) "
                "SELECT u.id, p.id, 'like' FROM u JOIN p ON p.n = u.n "
                "RETURNING user_id::text",
                (users, users),
            ).fetchall()
        ]


def _run_step(args: argparse.Namespace, asset: str, tmp: str, prefix: str) -> tuple[float, int, dict]:
    """``asset`` materialized in a process of its own: (wall seconds, peak RSS bytes, its
    materialization's metadata)."""
    out = Path(tmp) / f"{asset}.json"
    code, wall, rss = _run_child(
        [sys.executable, "-m", "dagster_pipeline.bench", "--step", asset,
         "--storage", str(Path(tmp) / "storage"), "--prefix", prefix,
         "--out", str(out), "--top-k", str(args.top_k), *_config_args(args)]
    )
    if code != 0:
        raise RuntimeError(f"bench-pipeline: {asset} failed (exit {code})")
    return wall, rss, json.loads(out.read_text())


def _refresh(args: argparse.Namespace, url: str, tmp: str, prefix: str) -> dict:
    """The refresh of ``args.refresh_users`` active users, in a process of its own."""
    active = _make_active(url, args.refresh_users)
    print(f"==> {REFRESH} ({len(active)} users made active)", flush=True)
    wall, rss, meta = _run_step(args, REFRESH, tmp, prefix)
    if meta.get("users") != len(set(active)):
        raise RuntimeError(f"bench-pipeline: the refresh covered {meta.get('users')} users, expected {len(set(active))}")
    print(f"    {wall:.1f} s, peak RSS {rss / 2**20:,.0f} MiB", flush=True)
    return {"process": wall, "rss": rss, "users": meta["users"], "metadata": meta}


def _growth(args: argparse.Namespace) -> int:
    """``--growth``: the graph at each size, one child process each, then the growth table."""
    runs = []
    for users, posts, interactions in (growth.size(int(x)) for x in args.growth.split(",")):
        out = Path(f"artifacts/bench-pipeline-{users}.json")
        cmd = [sys.executable, "-W", "ignore", "-m", "dagster_pipeline.bench", "--users", str(users),
               "--posts", str(posts), "--interactions", str(interactions), "--top-k", str(args.top_k),
               "--seed", str(args.seed), "--json", str(out), *_config_args(args)]
        print(f"==> growth: {' '.join(cmd[3:])}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            print(f"bench-pipeline: the run at {users:,} users failed", file=sys.stderr)
            return 1
        runs.append(json.loads(out.read_text()))
    print()
    print(growth_table(runs))
    return 0


def growth_table(runs: list[dict]) -> str:
    """The graph at several sizes (each a ``--json`` result), smallest first: the whole graph's time
    (the step processes, end to end), the scoring asset's (``recommendation_scores``, inside the
    asset), the writing asset's and peak RSS, and the growth exponent e of the two times from the
    previous size and from the first (time ~ users^e), as a markdown table."""

    def times(run: dict) -> tuple[int, float, float, float, int]:
        rows = {r["asset"]: r for r in run["rows"] if r["asset"] in ASSETS}
        return (run["args"]["users"], sum(r["process"] for r in rows.values()),
                rows["recommendation_scores"]["duration"], rows["user_recommendations"]["duration"],
                max(r["rss"] for r in rows.values()))

    def exponent(a: tuple, b: tuple, i: int) -> str:
        return f"{growth.exponent(a[0], a[i], b[0], b[i]):.2f}"

    sizes = [times(r) for r in runs]
    lines = ["| users x posts x interactions | whole graph s | scoring s | writing s | peak RSS GiB "
             "| exponent whole graph / scoring |",
             "|---|---:|---:|---:|---:|---|"]
    for i, (run, t) in enumerate(zip(runs, sizes)):
        a = run["args"]
        exponents = f"{exponent(sizes[i - 1], t, 1)} / {exponent(sizes[i - 1], t, 2)}" if i else ""
        lines.append(f"| {a['users']:,} x {a['posts']:,} x {a['interactions']:,} | {t[1]:.1f} | {t[2]:.1f} "
                     f"| {t[3]:.1f} | {t[4] / 2**30:.2f} | {exponents} |")
    if len(sizes) > 2:
        lines.append(f"| first to last | | | | | {exponent(sizes[0], sizes[-1], 1)} / "
                     f"{exponent(sizes[0], sizes[-1], 2)} |")
    return "\n".join(lines)


def _fmt_row(cells: list[str], widths: list[int]) -> str:
    return "| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"


def _table(rows: list[dict]) -> str:
    header = ["asset", "process s", "in asset s", "rust s", "native s", "io s", "glue s", "peak RSS MiB"]
    body = [
        [
            r["asset"],
            f"{r['process']:.1f}",
            f"{r['duration']:.1f}",
            f"{r['kinds'].get('rust', 0):.1f}",
            f"{r['kinds'].get('native', 0):.1f}",
            f"{r['kinds'].get('io', 0):.1f}",
            f"{r['kinds'].get('glue', 0):.1f}",
            f"{r['rss'] / 2**20:,.0f}",
        ]
        for r in rows
    ]
    tot = {k: sum(r["kinds"].get(k, 0) for r in rows) for k in ("rust", "native", "io", "glue")}
    body.append(
        [
            "total",
            f"{sum(r['process'] for r in rows):.1f}",
            f"{sum(r['duration'] for r in rows):.1f}",
            *(f"{tot[k]:.1f}" for k in ("rust", "native", "io", "glue")),
            f"{max(r['rss'] for r in rows) / 2**20:,.0f} (max)",
        ]
    )
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
    lines = [_fmt_row(header, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [_fmt_row(b, widths) for b in body]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dagster_pipeline.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--posts", type=int, default=200_000)
    parser.add_argument("--interactions", type=int, default=5_000_000)
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--config", default=None,
                        help="a ScoringConfig JSON file for the run (e.g. docs/configs/candidates.json); top_k is --top-k's")
    parser.add_argument("--refresh-users", type=int, default=0, help="then refresh this many active users")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--growth", default=None, metavar="USERS,USERS,...",
                        help="the graph at each of these user counts (posts 2x, interactions 50x), then the growth table")
    parser.add_argument("--executor", choices=("in-process", "celery"), default="in-process",
                        help="in-process: each asset in its own process, timed (default); celery: the graph "
                        "on Celery workers against the multiprocess executor (bench_celery.py)")
    parser.add_argument("--workers", type=int, default=2, help="Celery workers (with --executor celery)")
    parser.add_argument("--step", dest="asset", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--storage", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.config:
        # checked here, before any data is made; the step processes read it by absolute path
        from feedrank.config import load_config

        args.config = str(Path(args.config).resolve())
        load_config(args.config)
    if args.asset:
        return _step(args)
    if args.growth:
        return _growth(args)
    if args.executor == "celery":
        from dagster_pipeline import bench_celery

        return bench_celery.main(args)

    import redis

    from feedrank import db

    prefix = f"feedrank_bench_{secrets.token_hex(4)}:"
    rows: list[dict] = []
    with db.temporary_database(prefix="feedrank_bench") as url, tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, DATABASE_URL=url)
        os.environ["DATABASE_URL"] = url
        print(f"==> demo-data --users {args.users} --posts {args.posts} --interactions {args.interactions}", flush=True)
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "feedrank.cli", "demo-data", "--synthetic", "--seed", str(args.seed),
             "--users", str(args.users), "--posts", str(args.posts),
             "--interactions", str(args.interactions), "--database-url", url],
            check=True,
            env=env,
        )
        print(f"    loaded in {time.perf_counter() - t0:.1f} s", flush=True)
        refresh = None
        try:
            for asset in ASSETS + EXTRA:
                print(f"==> {asset}", flush=True)
                try:
                    wall, rss, meta = _run_step(args, asset, tmp, prefix)
                except RuntimeError as e:
                    print(e, file=sys.stderr)
                    return 1
                rows.append(
                    {
                        "asset": asset,
                        "process": wall,
                        "duration": float(meta.get("duration_seconds", 0.0)),
                        "kinds": meta.get("seconds_by_kind", {}),
                        "rss": rss,
                        "steps": meta.get("step_durations", ""),
                        "metadata": {k: v for k, v in meta.items() if k not in ("step_durations",)},
                    }
                )
                print(f"    {wall:.1f} s, peak RSS {rss / 2**20:,.0f} MiB", flush=True)
            if args.refresh_users:
                refresh = _refresh(args, url, tmp, prefix)
        finally:
            client = redis.Redis.from_url(db.redis_url())
            keys = list(client.scan_iter(match=prefix + "*", count=10_000))
            for i in range(0, len(keys), 10_000):
                client.unlink(*keys[i : i + 10_000])
            client.close()
    extra = [r for r in rows if r["asset"] in EXTRA]
    rows = [r for r in rows if r["asset"] not in EXTRA]
    table = _table(rows)
    in_assets = sum(r["duration"] for r in rows)
    glue = sum(r["kinds"].get("glue", 0) for r in rows)
    print()
    print(f"pipeline on {args.users:,} users, {args.posts:,} posts, {args.interactions:,} interactions, top {args.top_k}")
    print(table)
    for r in rows:
        steps = [line for line in str(r["steps"]).splitlines()[2:]]
        print(f"  {r['asset']}: " + "; ".join(" ".join(c.strip() for c in line.strip("|").split("|")) for line in steps))
    print(
        f"end to end: {sum(r['process'] for r in rows):.1f} s in step processes "
        f"({in_assets:.1f} s inside the assets); Python glue {glue:.1f} s = "
        f"{100 * glue / max(in_assets, 1e-9):.1f}% of the asset time; peak RSS "
        f"{max(r['rss'] for r in rows) / 2**30:.2f} GiB"
    )
    for r in extra:
        print(
            f"outside the design's graph: {r['asset']} {r['process']:.1f} s "
            f"({r['duration']:.1f} s inside), peak RSS {r['rss'] / 2**20:,.0f} MiB; "
            f"ndcg@10 {r['metadata'].get('ndcg@10', '?')}, users evaluated "
            f"{r['metadata'].get('users_evaluated', '?')}"
        )
    if refresh is not None:
        meta = refresh["metadata"]
        print(
            f"incremental refresh: {refresh['users']:,} active users of {args.users:,}: "
            f"{refresh['process']:.1f} s end to end ({meta.get('seconds', 0):.1f} s inside the asset; "
            f"by kind {meta.get('seconds_by_kind')}), peak RSS {refresh['rss'] / 2**20:,.0f} MiB; "
            f"they were {meta.get('behind_seconds', {}).get('max', '?')} s behind at most"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "rows": rows + extra, "refresh": refresh}, indent=2, default=str)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
