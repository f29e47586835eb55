#!/usr/bin/env python3
"""Times `feedrank demo-data` bulk loads into a throw-away database (created, migrated, dropped).

    .venv/bin/python scripts/bench_load.py                      # 10,000,000 interactions
    .venv/bin/python scripts/bench_load.py --interactions 1000000

The target: 10,000,000 interactions in under 2 minutes on the project's 2-core machine. The
machine's load average is printed beside the figure, because other work on the same cores
changes it a lot.
"""

from __future__ import annotations

import argparse
import os
import time

from feedrank import db
from feedrank.cli import main as feedrank


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--posts", type=int, default=200_000)
    parser.add_argument("--interactions", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with db.temporary_database(prefix="feedrank_bench") as url:
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        status = feedrank([
            "demo-data", "--database-url", url, "--seed", str(args.seed),
            "--users", str(args.users), "--posts", str(args.posts),
            "--interactions", str(args.interactions),
        ])
        elapsed = time.perf_counter() - started
        with db.connect(url) as conn:
            rows, size = conn.execute(
                "SELECT count(*), pg_size_pretty(pg_total_relation_size('user_interactions')) "
                "FROM user_interactions").fetchone()
    print(f"bench-load: {rows:,} interactions loaded in {elapsed:.1f} s "
          f"({rows / elapsed:,.0f} rows/s; table with indexes {size}; "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; {os.cpu_count()} cores)")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
