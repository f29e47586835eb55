"""``experiment_report`` and its check ``experiment_sample_ratio``: the asset function called with
a partition's context against a real, migrated database (served pages written by hand), and its
chart and markdown (fast)."""

from datetime import datetime, timezone

import dagster as dg
import feedrank
import psycopg
import pytest

from dagster_pipeline.experiments import (
    build_experiment_report_asset,
    experiment_report,
    experiments_of_day,
    lift_chart,
    markdown,
)
from dagster_pipeline.resources import PostgresResource
from feedrank.experiment_report import summarize

DAY = "2026-12-01"
START = datetime(2026, 12, 1, 6, tzinfo=timezone.utc)


def add_experiment(conn, name: str, starts_at: datetime | None, stopped_at: datetime | None = None) -> None:
    definition = feedrank.validate_experiment({
        "name": name, "salt": f"{name}-salt", "starts_at": None if starts_at is None else starts_at.isoformat(),
        "arms": [{"name": "control", "share": 0.5, "kind": "random"}, {"name": "treat", "share": 0.5, "kind": "random"}],
    })
    conn.execute(
        "INSERT INTO experiments (name, salt, definition, starts_at, stopped_at) VALUES (%s, %s, %s, %s, %s)",
        (name, f"{name}-salt", psycopg.types.json.Jsonb(definition), starts_at, stopped_at),
    )


def add_pages(conn, name: str, control_users: int, treat_users: int, served_at: datetime) -> None:
    """One page of two posts (personalized, fresh) per user; every control user clicks the first
    post, every other treatment user too."""
    conn.execute("SELECT served_pages_maintain(%s, 2, 3650)", (served_at.date(),))
    author = conn.execute("INSERT INTO users (username) VALUES (%s) RETURNING id", (f"author_{name}",)).fetchone()[0]
    post = conn.execute("INSERT INTO posts (user_id) VALUES (%s) RETURNING id", (author,)).fetchone()[0]
    conn.execute(
        "WITH u AS (INSERT INTO users (username) SELECT %(name)s || '#' || i FROM generate_series(1, %(n)s) i "
        "RETURNING id, split_part(username, '#', 2)::int AS i), "
        "p AS (INSERT INTO served_pages (request_id, user_id, first_position, post_ids, source_codes, reason_codes, arms, served_at) "
        "SELECT gen_random_uuid(), id, 0, %(posts)s, '\\x0102', '\\x0000', "
        "ARRAY[%(name)s || CASE WHEN i <= %(control)s THEN ':control' ELSE ':treat' END], %(at)s FROM u "
        "RETURNING request_id, user_id, arms) "
        "INSERT INTO user_interactions (user_id, post_id, interaction_type, created_at, request_id, position) "
        "SELECT p.user_id, %(post)s, 'click', %(at)s, p.request_id, 0 FROM p JOIN u ON u.id = p.user_id "
        "WHERE p.arms[1] LIKE '%%:control' OR u.i %% 2 = 0",
        {"name": name, "n": control_users + treat_users, "control": control_users,
         "posts": post.bytes * 2, "post": post, "at": served_at},
    )


@pytest.fixture
def postgres(fresh_database_url):
    return PostgresResource(database_url=fresh_database_url)


def materialize_day(postgres: PostgresResource, day: str = DAY) -> dg.MaterializeResult:
    return experiment_report(dg.build_asset_context(partition_key=day), postgres)


def test_the_days_report_covers_each_experiment_that_ran_that_day(postgres):
    with psycopg.connect(postgres.database_url, autocommit=True) as conn:
        add_experiment(conn, "balanced", START)
        add_pages(conn, "balanced", 200, 200, START.replace(hour=9))
        add_experiment(conn, "later", datetime(2026, 12, 2, 1, tzinfo=timezone.utc))
        add_experiment(conn, "stopped_before", datetime(2026, 11, 1, tzinfo=timezone.utc),
                       stopped_at=datetime(2026, 11, 30, tzinfo=timezone.utc))
        add_experiment(conn, "draft", None)
        assert experiments_of_day(conn, START.replace(hour=0), datetime(2026, 12, 2, tzinfo=timezone.utc)) == ["balanced"]
    result = materialize_day(postgres)
    md = result.metadata
    assert md["experiments"].value == 1
    [report] = md["report"].value
    assert report["window"]["until"] == "2026-12-02T00:00:00+00:00"
    assert [(a["users"], a["impressions"], a["clicks"]) for a in report["arms"]] == [(200, 400, 200), (200, 400, 100)]
    assert md["balanced/treat/ctr_relative_lift"].value == pytest.approx(-0.5)
    assert "| control | 50% | 200 | 400 | 200 | 0.5000 |" in md["balanced"].value
    assert md["chart"].value.startswith("![relative lifts with 95% CIs](data:image/png;base64,")
    [check] = result.check_results
    assert check.check_name == "experiment_sample_ratio" and check.passed
    assert check.severity == dg.AssetCheckSeverity.ERROR


def test_the_sample_ratio_check_fails_on_a_broken_split(postgres):
    with psycopg.connect(postgres.database_url, autocommit=True) as conn:
        add_experiment(conn, "balanced", START)
        add_pages(conn, "balanced", 300, 300, START.replace(hour=9))
        add_experiment(conn, "broken", START)
        add_pages(conn, "broken", 10000, 9000, START.replace(hour=10))  # the treatment lost 10%
    [check] = materialize_day(postgres).check_results
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert set(check.metadata["failed"].value) == {"broken"}


def test_a_run_of_the_partition_records_the_report_and_the_failed_check(postgres):
    with psycopg.connect(postgres.database_url, autocommit=True) as conn:
        add_experiment(conn, "broken", START)
        add_pages(conn, "broken", 10000, 9000, START.replace(hour=10))
    with dg.instance_for_test() as instance:
        result = dg.materialize([build_experiment_report_asset()], partition_key=DAY, instance=instance,
                                resources={"postgres": postgres}, raise_on_error=False)
        [materialization] = result.asset_materializations_for_node("experiment_report")
        assert materialization.partition == DAY
        assert materialization.metadata["broken/treat/ctr_relative_lift"].value == pytest.approx(-0.5, abs=0.01)
        [evaluation] = result.get_asset_check_evaluations()
        assert evaluation.check_name == "experiment_sample_ratio" and not evaluation.passed
        assert evaluation.severity == dg.AssetCheckSeverity.ERROR


def test_a_day_without_experiments_materializes_an_empty_report(postgres):
    result = materialize_day(postgres)
    assert result.metadata["experiments"].value == 0 and result.check_results[0].passed


@pytest.mark.fast
def test_the_markdown_and_chart_of_a_report_without_traffic():
    experiment = {"name": "quiet", "salt": "q", "arms": [{"name": "control", "share": 0.5}, {"name": "treat", "share": 0.5}]}
    report = summarize(experiment, {}, {"from": "a", "until": "b", "pre_period": None})
    text = markdown(report)
    assert "| treat | ctr | – | – | – | – | – | control: 0 user(s): needs at least 2 |" in text
    assert lift_chart([report])[:8] == b"\x89PNG\r\n\x1a\n"
