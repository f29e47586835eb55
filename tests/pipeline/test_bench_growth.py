"""`make bench-pipeline GROWTH=...`'s table (dagster_pipeline.bench.growth_table): the exponents it
prints are those of the times it is given (issue 17's growth bar is read off them)."""

import math

from dagster_pipeline.bench import ASSETS, EXTRA, growth_table


def _run(users: int, scoring: float, other: float) -> dict:
    rows = [{"asset": a, "process": other, "duration": other, "rss": users * 1024} for a in ASSETS + EXTRA]
    for r in rows:
        if r["asset"] == "recommendation_scores":
            r["process"] = r["duration"] = scoring
    return {"args": {"users": users, "posts": 2 * users, "interactions": 50 * users}, "rows": rows}


def test_growth_table_prints_each_times_exponent_between_sizes_and_from_first_to_last():
    # scoring ~ users^2, the other assets ~ users^1; the extra asset (quality) is left out
    runs = [_run(n, scoring=(n / 1000) ** 2, other=n / 1000) for n in (1000, 10_000, 100_000)]
    lines = growth_table(runs).splitlines()
    assert lines[2].startswith("| 1,000 x 2,000 x 50,000 | 6.0 | 1.0 | 1.0 |")
    assert lines[3].startswith("| 10,000 x 20,000 x 500,000 | 150.0 | 100.0 | 10.0 |")
    # whole graph: 5 linear assets + scoring, 6 -> 150 -> 10,500 s
    assert lines[3].endswith(f"| {math.log(150 / 6) / math.log(10):.2f} / 2.00 |")
    assert lines[-1].endswith("/ 2.00 |") and lines[-1].startswith("| first to last |")
