"""The experiment report against simulated traffic on the real stack (issue 14, "Proof without
real traffic"): synthetic demo data, a real pipeline run, the real API, scripts/simulate_experiment.py
driving simulated users whose clicks depend on what they are shown, with a planted lift for one arm.

What it protects: the report finds the planted lift (its interval is centred on it and the offline
resampling covers it in about 95% of seeds), personalization beats the random feed, and a split
broken on purpose (a share of one arm's users lost) fails the sample-ratio check while the intact
one passes.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import pytest

from feedrank import cli, db
from reliability.stack import AUTH_SECRET, REPO_ROOT, ApiServer
from system.test_feeds_from_a_pipeline_run import run_pipeline

pytestmark = pytest.mark.slow

DEMO = ["--users", "1000", "--posts", "3000", "--interactions", "60000", "--seed", "11"]


def simulator():
    spec = importlib.util.spec_from_file_location("simulate_experiment",
                                                  REPO_ROOT / "scripts" / "simulate_experiment.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_simulated_traffic_shows_the_planted_lift_and_a_broken_split(
    fresh_database_url, redis_prefix, api_binary
):
    url = fresh_database_url
    assert cli.main(["demo-data", "--synthetic", *DEMO, "--database-url", url]) == 0
    with tempfile.TemporaryDirectory(prefix="feedrank-sim-") as storage:
        run_pipeline(url, redis_prefix, Path(storage))
    sim = simulator()
    api = ApiServer(url, db.redis_url(), redis_prefix, api_binary)
    try:
        common = ["--api", api.base, "--database-url", url, "--api-bin", str(api_binary),
                  "--auth-secret", AUTH_SECRET,
                  "--users", "500", "--pages", "2", "--lift", "0.3"]
        intact = sim.simulate(sim.parse_args([*common, "--seed", "3", "--offline-seeds", "200"]))
        broken = sim.simulate(sim.parse_args([*common, "--seed", "4", "--drop", "0.5"]))
    finally:
        api.stop()

    for run in (intact, broken):  # the figures, for the log (pytest -s)
        print(json.dumps({k: v for k, v in run.items() if k != "report"}, default=str))
    report = intact["report"]
    assert intact["pages"] >= 900 and intact["events"] > 0, intact
    # every simulated page and attributed click is counted once
    arms = {a["arm"]: a for a in report["arms"]}
    assert sum(a["users"] for a in arms.values()) == intact["users"]
    assert sum(a["clicks"] for a in arms.values()) > 0
    # the planted lift: the estimate lies within 3.5 standard errors of it (a correct report
    # misses that 1 time in 2,000)
    t = intact["treatment_ctr_lift"]
    half = (t["ci"][1] - t["ci"][0]) / 2
    assert abs(t["relative"] - 0.3) < 3.5 * half / 1.96, t
    # personalization beats the random feed: the random arm's CTR lift is negative, surely
    assert intact["random_ctr_lift"]["ci"][1] < 0, intact["random_ctr_lift"]
    # 200 seeds: at a true 0.95, 176-199 covered but for about 1 run in 3,000 (a binomial
    # standard deviation is 3.1 seeds); an interval too narrow covers fewer, one too wide all 200
    coverage = intact["offline_coverage"]
    assert 176 <= coverage["covered"] <= 199, coverage
    assert intact["srm"]["passed"], intact["srm"]

    assert broken["dropped_treatment_users"] > 60, broken
    assert not broken["srm"]["passed"] and broken["srm"]["p_value"] < 0.001, broken["srm"]
