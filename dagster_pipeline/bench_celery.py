"""`python -m dagster_pipeline.bench --executor celery`: the graph on Celery against the multiprocess
executor, on the same data, and where the difference goes.

A throw-away database filled by `feedrank demo-data --synthetic`, a throw-away Dagster instance
(deploy/dagster.yaml on a database of its own), then two runs of the six assets with
`dagster asset materialize`, one after the other:

- multiprocess: each step a process on this machine, intermediate data in a local directory;
- celery: each step a task on RabbitMQ (a vhost of its own), run by ``--workers`` Celery workers
  (each with its own TMPDIR and DAGSTER_HOME), intermediate data on moto's S3 server (its own
  process on loopback).

From each run's event log, per step: *dispatch* (the executor hands the step over -> STEP_START:
a process start, or the broker's queue plus the worker's job reconstruction; split for Celery at
the worker's "Executing steps" event), *inputs* (loading the upstream bundles: the time before
each LOADED_INPUT event), *asset* (the asset's own ``duration_seconds``), *outputs* (the IO
manager's ``store_seconds``) and *events* (the rest of STEP_START -> STEP_SUCCESS: Dagster's
bookkeeping and event writes). The overhead of Celery is then the difference of the two runs,
split into broker (dispatch), object store (inputs + outputs) and Dagster events; what no step
covers (the executor's 1 s polling of results, the run's start and end) is shown apart.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

from dagster_pipeline.local_services import (
    VENV_BIN,
    broker_url,
    instance_url,
    rabbitmq_vhost,
    s3_server,
    stop,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS = ("user_interactions_snapshot", "post_features", "user_features", "serving_model",
          "recommendation_scores", "user_recommendations")
PARTS = ("dispatch", "inputs", "asset", "outputs", "events")


def _materialize(env: dict[str, str], run_config: Path, log: Path) -> tuple[str, float]:
    """One run of the six assets; returns (Dagster run id, wall seconds)."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(
            [str(VENV_BIN / "dagster"), "asset", "materialize", "-m", "dagster_pipeline.definitions",
             "--select", ",".join(ASSETS), "--config", str(run_config)],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    wall = time.perf_counter() - t0
    text = log.read_text()
    if done.returncode != 0:
        raise RuntimeError(f"the run failed; the end of {log}:\n{text[-4000:]}")
    (run_id,) = set(re.findall(r"- ([0-9a-f-]{36}) - \d+ - RUN_SUCCESS", text)) or {None}
    if run_id is None:
        raise RuntimeError(f"no RUN_SUCCESS in {log}")
    return run_id, wall


def step_parts(records) -> dict[str, dict[str, float]]:
    """Per step key: the seconds of each of PARTS (and ``broker``/``worker`` for Celery's
    dispatch), plus ``stored_bytes``, from one run's event log records."""
    by_step: dict[str, list] = {}
    for r in records:
        if r.dagster_event is not None and r.dagster_event.step_key:
            by_step.setdefault(r.dagster_event.step_key, []).append(r)
    out = {}
    for step, recs in by_step.items():
        recs.sort(key=lambda r: r.timestamp)
        t = {}
        loads = 0.0
        meta: dict = {}
        previous = None
        for r in recs:
            e = r.dagster_event
            kind, message = e.event_type_value, e.message or ""
            if kind == "STEP_WORKER_STARTING" or message.startswith("Submitting celery task"):
                t.setdefault("handed", r.timestamp)
            elif "in celery worker" in message:
                t.setdefault("worker", r.timestamp)
            elif kind == "STEP_START":
                t["start"] = r.timestamp
            elif kind == "LOADED_INPUT" and previous is not None:
                loads += r.timestamp - previous
            elif kind == "ASSET_MATERIALIZATION":
                meta.update({k: getattr(v, "value", v) for k, v in e.event_specific_data.materialization.metadata.items()})
            elif kind == "STEP_SUCCESS":
                t["end"] = r.timestamp
            previous = r.timestamp
        if "start" not in t or "end" not in t:
            continue
        inside = t["end"] - t["start"]
        asset = float(meta.get("duration_seconds", 0.0))
        store = float(meta.get("store_seconds", 0.0))
        parts = {
            "dispatch": t["start"] - t.get("handed", t["start"]),
            "inputs": loads,
            "asset": asset,
            "outputs": store,
            "events": max(inside - loads - asset - store, 0.0),
            "stored_bytes": float(meta.get("stored_bytes", 0)),
        }
        if "worker" in t:
            parts["broker"] = t["worker"] - t.get("handed", t["worker"])
            parts["worker"] = t["start"] - t["worker"]
        out[step] = parts
    return out


def _table(name: str, wall: float, steps: dict[str, dict[str, float]]) -> str:
    cols = [*PARTS, "MB stored"]
    lines = [f"{name}: {wall:.1f} s wall",
             "| step | " + " | ".join(f"{c} s" if c in PARTS else c for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for step in ASSETS:
        if step in steps:
            p = steps[step]
            lines.append(f"| {step} | " + " | ".join(f"{p[c]:.2f}" for c in PARTS) + f" | {p['stored_bytes'] / 1e6:,.1f} |")
    totals = {c: sum(p[c] for p in steps.values()) for c in PARTS}
    lines.append("| total (steps summed) | " + " | ".join(f"{totals[c]:.2f}" for c in PARTS) + " | |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    import dagster as dg
    import redis

    from feedrank import db

    prefix = f"feedrank_bench_{secrets.token_hex(4)}:"
    base_url = db.database_url()
    with ExitStack() as stack:
        url = stack.enter_context(db.temporary_database(prefix="feedrank_bench"))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="feedrank-bench-celery-")))
        instance_db = f"feedrank_bench_dagster_{secrets.token_hex(4)}"
        db.create_database(instance_db, base_url)
        stack.callback(db.drop_database, instance_db, base_url)
        s3 = stack.enter_context(s3_server(tmp))
        vhost = stack.enter_context(rabbitmq_vhost())
        bucket = s3.new_bucket()
        home = tmp / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text((REPO_ROOT / "deploy" / "dagster.yaml").read_text())

        print(f"==> demo-data --users {args.users} --posts {args.posts} --interactions {args.interactions}", flush=True)
        subprocess.run([sys.executable, "-m", "feedrank.cli", "demo-data", "--synthetic", "--seed", str(args.seed),
                        "--users", str(args.users), "--posts", str(args.posts),
                        "--interactions", str(args.interactions), "--database-url", url], check=True)
        run_config = tmp / "run.yaml"
        run_config.write_text(json.dumps({"resources": {"scoring": {"config": {"overrides": {"top_k": args.top_k}}}}}))
        env = {
            **os.environ, "PYTHONPATH": str(REPO_ROOT), "DAGSTER_HOME": str(home),
            "DAGSTER_POSTGRES_URL": instance_url(base_url, instance_db), "DATABASE_URL": url,
            "REDIS_URL": db.redis_url(), "REDIS_KEY_PREFIX": prefix,
        }
        env.pop("FEEDRANK_USER_SHARDS", None)
        env.pop("FEEDRANK_EXECUTOR", None)
        stack.callback(_delete_keys, redis.Redis.from_url(db.redis_url()), prefix)

        print("==> multiprocess executor, intermediate data on a local disk", flush=True)
        multi_env = {**env, "FEEDRANK_STORAGE_URL": str(tmp / "storage")}
        multi_run, multi_wall = _materialize_with(multi_env, run_config, tmp / "multiprocess.log")

        print(f"==> celery executor, {args.workers} workers, intermediate data on the S3 server", flush=True)
        celery_env = {**env, **s3.env(), "FEEDRANK_EXECUTOR": "celery", "FEEDRANK_CELERY_BROKER": broker_url(vhost),
                      "FEEDRANK_STORAGE_URL": f"s3://{bucket}/feedrank"}
        for i in range(args.workers):
            private = tmp / f"worker{i}"
            (private / "tmp").mkdir(parents=True)
            (private / "home").mkdir()
            (private / "home" / "dagster.yaml").write_text((home / "dagster.yaml").read_text())
            log = open(tmp / f"worker{i}.log", "wb")
            worker = subprocess.Popen(
                [str(VENV_BIN / "celery"), "-A", "dagster_pipeline.celery_worker", "worker", "-Q", "dagster",
                 "--concurrency", "1", "--prefetch-multiplier", "1", "-n", f"bench{i}@%h", "--loglevel", "INFO"],
                env={**celery_env, "TMPDIR": str(private / "tmp"), "DAGSTER_HOME": str(private / "home")},
                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
            log.close()
            stack.callback(stop, worker)
        celery_run, celery_wall = _materialize_with(celery_env, run_config, tmp / "celery.log")

        sizes = table_sizes(url)
        with mock.patch.dict(os.environ, DAGSTER_POSTGRES_URL=env["DAGSTER_POSTGRES_URL"]):
            with dg.DagsterInstance.from_config(str(home)) as instance:
                multi = step_parts(instance.all_logs(multi_run))
                celery = step_parts(instance.all_logs(celery_run))

    print()
    print(f"pipeline on {args.users:,} users, {args.posts:,} posts, {args.interactions:,} interactions, "
          f"top {args.top_k}; {args.workers} Celery workers on this machine")
    print(_table("multiprocess", multi_wall, multi))
    print(_table("celery", celery_wall, celery))
    report = overhead(multi_wall, multi, celery_wall, celery)
    print(
        f"celery overhead: {report['wall']:+.1f} s wall = broker {report['broker']:+.1f} s (dispatch: queue "
        f"{report['queue']:.1f} s + worker job load {report['worker_load']:.1f} s, against process starts), object store "
        f"{report['object_store']:+.1f} s, Dagster events {report['events']:+.1f} s, the assets' own work "
        f"{report['asset']:+.1f} s (the same code: the machine's load), not in any step "
        f"{report['unattributed']:+.1f} s (result polling, run start and end, steps overlapping)"
    )
    print("object store per asset (celery run: S3 on loopback; multiprocess: local disk):")
    for step in ASSETS:
        c, m = celery.get(step), multi.get(step)
        if c and m:
            print(f"  {step}: {c['stored_bytes'] / 1e6:,.1f} MB stored in {c['outputs']:.2f} s "
                  f"(local {m['outputs']:.2f} s); its inputs loaded in {c['inputs']:.2f} s (local {m['inputs']:.2f} s)")
    print("PostgreSQL, bytes per row with indexes (docs/scaling.md): " + ", ".join(
        f"{name} {v['bytes_per_row']:.0f} ({v['rows']:,} rows)" for name, v in sizes.items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "multiprocess": {"wall": multi_wall, "steps": multi},
                                               "celery": {"wall": celery_wall, "steps": celery},
                                               "overhead": report, "table_sizes": sizes}, indent=2))
    return 0


def _materialize_with(env: dict[str, str], run_config: Path, log: Path) -> tuple[str, float]:
    run_id, wall = _materialize(env, run_config, log)
    print(f"    {wall:.1f} s (run {run_id}, log {log.name})", flush=True)
    return run_id, wall


def overhead(multi_wall: float, multi: dict, celery_wall: float, celery: dict) -> dict[str, float]:
    """Celery's extra seconds against the multiprocess run, by where they went (steps summed)."""
    total = lambda steps, *parts: sum(p.get(k, 0.0) for p in steps.values() for k in parts)  # noqa: E731
    wall = celery_wall - multi_wall
    broker = total(celery, "dispatch") - total(multi, "dispatch")
    store = total(celery, "inputs", "outputs") - total(multi, "inputs", "outputs")
    events = total(celery, "events") - total(multi, "events")
    asset = total(celery, "asset") - total(multi, "asset")
    return {"wall": wall, "broker": broker, "queue": total(celery, "broker"), "worker_load": total(celery, "worker"),
            "object_store": store, "events": events, "asset": asset,
            "unattributed": wall - broker - store - events - asset}


def table_sizes(url: str) -> dict[str, dict[str, float]]:
    """Rows and bytes per row (heap, indexes, TOAST) of the tables that grow with the user base:
    the served recommendations (the current run's partition) and the interactions."""
    import psycopg

    with psycopg.connect(url) as conn:
        (run_id,) = conn.execute("SELECT max(id) FROM recommendation_runs WHERE status = 'complete'").fetchone()
        out = {}
        for name, table in (("user_recommendations", f"user_recommendations_run_{run_id}"),
                            ("user_interactions", "user_interactions")):
            rows, size = conn.execute(
                f"SELECT (SELECT count(*) FROM {table}), pg_total_relation_size('{table}')"  # noqa: S608 - our names
            ).fetchone()
            out[name] = {"rows": int(rows), "bytes_per_row": size / max(rows, 1)}
    return out


def _delete_keys(client, prefix: str) -> None:
    keys = list(client.scan_iter(match=prefix + "*", count=10_000))
    for i in range(0, len(keys), 10_000):
        client.unlink(*keys[i : i + 10_000])
    client.close()
