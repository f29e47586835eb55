"""The short versions of ``make fuzz-api`` and ``make soak`` that ``make test`` runs: the same
drivers (fuzz_api_run.py, soak_run.py) with a small budget, held to the same verdicts.
"""

from __future__ import annotations

from pathlib import Path

from . import fuzz_api_run, soak_run


def test_short_schemathesis_run_gets_no_5xx_and_no_answer_off_the_schema(api_binary: Path):
    report = fuzz_api_run.run(max_examples=25, workers=1, seed_value=8, binary=api_binary)
    print(report["schemathesis_tail"])
    assert report["schemathesis_exit"] == 0, report["schemathesis_tail"]
    assert report["server_errors"] == 0, report["responses_by_status"]
    for route in fuzz_api_run.FUZZED_ROUTES:
        assert report["requests_by_route"].get(route, 0) >= 25, report["requests_by_route"]


def test_short_soak_loses_no_accepted_event_across_a_redis_restart(api_binary: Path):
    report = soak_run.run(seconds=20, connections=16, users=200, binary=api_binary)
    print(report)
    assert report["problems"] == []
    assert report["accepted_missing"] == 0 and report["duplicate_event_ids"] == 0
    # Both routes were exercised; how many requests a 20 s run gets through is speed, which
    # depends on the machine's load and belongs to `make soak`'s report, not to a verdict.
    assert report["events_accepted"] > 0
    assert report["by_route_and_status"].get("GET /api/feeds 200", 0) > 0
    assert report["redis_restarted_at_s"] < report["seconds"]
