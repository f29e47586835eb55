"""The pipeline computing each experiment arm's lists (issue 14, part 3) against real PostgreSQL
and Redis, on the demo data: a nightly run and the incremental refresh score the users of a
running experiment's ``config`` arm with its configuration and record what they applied; a stored
experiment that no longer validates fails the run, naming it and the field, with nothing
written. The fast layer is test_experiment_arms.py."""

import json

import feedrank
import psycopg
from graph_runs import DemoData, interact, materialize_all, materialize_refresh, run_failure
from psycopg.types.json import Jsonb

from feedrank.cli import main

TOP_K = 20
CONTENT_ONLY = {"weights": {"collaborative": 0.0, "content": 1.0, "recency": 0.0, "engagement": 0.0}}
EXPERIMENT = {
    "name": "content",
    "salt": "content-runs-1",
    "arms": [
        {"name": "control", "share": 0.5, "kind": "config", "config": {}},
        {"name": "content_only", "share": 0.5, "kind": "config", "config": CONTENT_ONLY},
    ],
}


def start_experiment(url: str, tmp_path, experiment: dict) -> None:
    """Through the CLI, as an operator does: create, then start (starts_at = now)."""
    path = tmp_path / f"{experiment['name']}.json"
    path.write_text(json.dumps(experiment))
    assert main(["experiments", "create", "--database-url", url, str(path)]) == 0
    assert main(["experiments", "start", "--database-url", url, experiment["name"]]) == 0


def rows_by_user(url: str, run_id: int) -> dict[str, list[tuple[float, float, str]]]:
    """Run ``run_id``'s rows, by user: (score, content_score, reason)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT user_id::text, score, content_score, reason FROM user_recommendations WHERE run_id = %s",
            (run_id,),
        ).fetchall()
    out: dict[str, list[tuple[float, float, str]]] = {}
    for user, *row in rows:
        out.setdefault(user, []).append(tuple(row))
    return out


def run_config(url: str, run_id: int) -> dict:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT config FROM recommendation_runs WHERE id = %s", (run_id,)).fetchone()[0]


def newest_run(url: str, shard_like: str = "%") -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT max(id) FROM recommendation_runs WHERE status = 'complete' AND shard LIKE %s", (shard_like,)
        ).fetchone()[0]


def in_arm(users: list[str]) -> set[str]:
    """The users the core's rule gives the content-only arm."""
    definition = feedrank.validate_experiment({**EXPERIMENT, "starts_at": "2026-01-01T00:00:00Z"})
    table = feedrank.experiment_arms([definition], users)
    return {u for u, a in zip(users, table["applied"]) if a == 0}


def assert_content_only_exactly_for(rows: dict[str, list[tuple]], arm_users: set[str]) -> None:
    """Content-only weights make a row's score its content component: exactly the arm's users'
    rows are so (another user's list blends the other components in somewhere)."""
    for user, user_rows in rows.items():
        content_only = all(abs(score - content) < 1e-5 for score, content, _ in user_rows)
        if user in arm_users:
            assert content_only, (user, user_rows[:3])
        elif any(score > 1e-5 for score, _, _ in user_rows):
            assert not content_only, (user, user_rows[:3])


def test_a_nightly_run_and_a_refresh_score_a_config_arms_users_with_its_configuration(
    demo_db: DemoData, pipeline_resources, tmp_path
):
    start_experiment(demo_db.url, tmp_path, EXPERIMENT)
    assert materialize_all(pipeline_resources, top_k=TOP_K).success
    nightly = newest_run(demo_db.url)
    rows = rows_by_user(demo_db.url, nightly)
    arm_users = in_arm(sorted(rows))
    assert 0 < len(arm_users) < len(rows)
    assert_content_only_exactly_for(rows, arm_users)
    # the run's record: the experiment and the arm's resolved configuration
    record = run_config(demo_db.url, nightly)["experiments"]["content"]
    assert record["definition"]["salt"] == EXPERIMENT["salt"]
    assert record["arms"]["content_only"]["weights"] == CONTENT_ONLY["weights"]
    assert record["arms"]["content_only"]["top_k"] == TOP_K, "the run's own settings under the arm's"
    # the refresh follows the same rule
    active = sorted(arm_users)[:3] + sorted(set(rows) - arm_users)[:3]
    interact(demo_db.url, active, "like")
    assert materialize_refresh(pipeline_resources).success
    refresh = newest_run(demo_db.url, "refresh")
    refreshed = rows_by_user(demo_db.url, refresh)
    assert set(refreshed) == set(active)
    assert_content_only_exactly_for(refreshed, arm_users)
    assert "content_only" in run_config(demo_db.url, refresh)["experiments"]["content"]["arms"]


def test_a_stored_experiment_that_no_longer_validates_fails_the_run_naming_it_and_its_field(
    demo_db: DemoData, pipeline_resources
):
    # stored before the field was restricted (the CLI refuses it now): the row as the CLI writes it
    definition = {
        **EXPERIMENT,
        "name": "old",
        "starts_at": "2026-01-01T00:00:00+00:00",
        "ends_at": None,
        "arms": [EXPERIMENT["arms"][0], {**EXPERIMENT["arms"][1], "config": {"lookback_days": 7}}],
    }
    with psycopg.connect(demo_db.url) as conn:
        conn.execute(
            "INSERT INTO experiments (name, salt, definition, starts_at) VALUES (%s, %s, %s, %s)",
            ("old", EXPERIMENT["salt"], Jsonb(definition), definition["starts_at"]),
        )
    result = materialize_all(pipeline_resources, top_k=TOP_K, raise_on_error=False)
    assert not result.success
    error = run_failure(result)
    assert "experiment 'old'" in error and "arms[1].config.lookback_days: a config arm cannot set" in error, error
    with psycopg.connect(demo_db.url) as conn:
        assert conn.execute("SELECT count(*) FROM recommendation_runs").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM recommendation_models").fetchone()[0] == 0

