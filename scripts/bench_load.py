#!/usr/bin/env python3
"""Times `feedrank demo-data` bulk loads into a throw-away database (created, migrated, dropped).

    .venv/bin/python scripts/bench_load.py                      # 10,000,000 interactions
    .venv/bin/python scripts/bench_load.py --interactions 1000000

The target: 10,000,000 interactions in under 2 minutes on the project's 2-core machine. The
machine's load average is printed beside the figure, because other work on the same cores
changes it a lot; so is the CPU time the load itself used (this process, and the PostgreSQL
processes serving the throw-away database, sampled from /proc when the server is local), which
does not depend on what else runs.
"""

from __future__ import annotations

import argparse
import os
import resource
import threading
import time

from feedrank import db
from feedrank.cli import main as feedrank


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class ServerCpu(threading.Thread):
    """Samples the CPU time of every PostgreSQL process on one database (the loading backend and
    its parallel index-build workers) until stopped; keeps each process's last value."""

    def __init__(self, url: str, dbname: str):
        super().__init__(daemon=True)
        self.url, self.dbname, self.seen = url, dbname, {}
        self.done = threading.Event()

    def run(self) -> None:
        with db.connect(self.url, autocommit=True) as conn:
            while not self.done.wait(0.25):
                pids = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                    (self.dbname,),
                ).fetchall()
                for (pid,) in pids:
                    cpu = _cpu_seconds(pid)
                    if cpu is not None:
                        self.seen[pid] = cpu

    def total(self) -> float:
        return sum(self.seen.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--posts", type=int, default=200_000)
    parser.add_argument("--interactions", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with db.temporary_database(prefix="feedrank_bench") as url:
        load_before = os.getloadavg()[0]
        sampler = ServerCpu(db.with_database(url, "postgres"), db.database_name(url))
        sampler.start()
        client_before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        status = feedrank([
            "demo-data", "--database-url", url, "--seed", str(args.seed),
            "--users", str(args.users), "--posts", str(args.posts),
            "--interactions", str(args.interactions),
        ])
        elapsed = time.perf_counter() - started
        client_after = resource.getrusage(resource.RUSAGE_SELF)
        sampler.done.set()
        sampler.join()
        client_cpu = (client_after.ru_utime - client_before.ru_utime) + (
            client_after.ru_stime - client_before.ru_stime)
        with db.connect(url) as conn:
            rows, size = conn.execute(
                "SELECT count(*), pg_size_pretty(pg_total_relation_size('user_interactions')) "
                "FROM user_interactions").fetchone()
    print(f"bench-load: {rows:,} interactions loaded in {elapsed:.1f} s "
          f"({rows / elapsed:,.0f} rows/s; table with indexes {size}; "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; {os.cpu_count()} cores)")
    server = f"{sampler.total():.1f} s" if sampler.seen else "not measurable (server not local)"
    print(f"bench-load: CPU time used: client {client_cpu:.1f} s, PostgreSQL {server}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
