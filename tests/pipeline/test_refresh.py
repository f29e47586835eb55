"""The incremental refresh (refresh.py) against real PostgreSQL and Redis, after a real nightly
run on the demo data: it recomputes the lists of exactly the users active since their list was
built (the others' rows untouched), never undoes a nightly run built from newer data, leaves no
run behind once superseded, and readers see the old list or the new one, each with its own
profile, never a mix. The sensor that starts it skips while the nightly graph runs."""

import threading
import time

import dagster as dg
import feedrank
import psycopg
import pytest
from dagster._core.test_utils import create_run_for_test
from graph_runs import DemoData, interact, materialize_all, materialize_refresh, metadata_of

from dagster_pipeline import assets
from dagster_pipeline.checks import _compare, served
from dagster_pipeline.definitions import JOB_NAME, REFRESH_JOB_NAME, build_definitions
from dagster_pipeline.partitions import REFRESH_SHARD
from feedrank import db

TOP_K = 20


def _rows(url: str, users: list[str]) -> dict[str, list[tuple]]:
    """Every stored row of ``users``, by user: (run, post, score), whatever the run."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT user_id::text, run_id, post_id::text, score FROM user_recommendations "
            "WHERE user_id = ANY(%s::uuid[]) ORDER BY user_id, run_id, post_id",
            (users,),
        ).fetchall()
    out: dict[str, list[tuple]] = {u: [] for u in users}
    for user_id, *row in rows:
        out[user_id].append(tuple(row))
    return out


def _runs(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT id, shard, status, model_id FROM recommendation_runs ORDER BY id").fetchall()


@pytest.fixture
def nightly(demo_db: DemoData, pipeline_resources) -> dict:
    """The demo data after one nightly run; its users' lists and the run."""
    assert materialize_all(pipeline_resources, top_k=TOP_K).success
    [(run_id, _, _, model_id)] = _runs(demo_db.url)
    return {"lists": db.current_recommendations(demo_db.url), "run_id": run_id, "model_id": model_id}


def test_the_refresh_recomputes_exactly_the_users_active_since_their_list(
    demo_db: DemoData, pipeline_resources, nightly, redis_client
):
    users = sorted(nightly["lists"])
    active, inactive = users[:7], users[7:]
    liked = interact(demo_db.url, active, "like")
    before = _rows(demo_db.url, inactive)
    with psycopg.connect(demo_db.url) as conn:
        profile_before = served(conn, active[0])["profile"]

    result = materialize_refresh(pipeline_resources)
    meta = metadata_of(result, "refreshed_recommendations")
    assert meta["users"] == meta["users_active"] == len(active)
    assert meta["model_id"] == nightly["model_id"]
    assert 0 <= meta["behind_seconds"]["max"] < 600, "the oldest unseen interaction is seconds old"
    assert meta["list_age_seconds"]["min"] > 0
    refresh_run = meta["recommendation_run"]
    assert _runs(demo_db.url) == [
        (nightly["run_id"], "00-of-01", "complete", nightly["model_id"]),
        (refresh_run, REFRESH_SHARD, "complete", nightly["model_id"]),
    ]

    now = db.current_recommendations(demo_db.url)
    prefix = pipeline_resources["redis"].key_prefix
    with psycopg.connect(demo_db.url) as conn:
        for user_id in active:
            items = now[user_id]
            assert len(items) == TOP_K and {run for _, _, run in items} == {refresh_run}
            assert not {p for p, _, _ in items} & set(liked[user_id]), "a post the user liked is not offered back"
            raw = redis_client.get(feedrank.recommendations_key(prefix, user_id))
            assert _compare(raw, served(conn, user_id)) is None, "the entry is the refreshed list, model and profile"
        assert served(conn, active[0])["profile"] != profile_before, "the profile takes in the new likes"
    # everyone else: the very same rows, of the nightly run only
    assert _rows(demo_db.url, inactive) == before
    assert all(now[u] == nightly["lists"][u] for u in inactive)

    # nobody active since: nothing to do, nothing written
    again = metadata_of(materialize_refresh(pipeline_resources), "refreshed_recommendations")
    assert again["users"] == 0 and "no user is active" in again["skipped"]
    assert len(_runs(demo_db.url)) == 2


def test_a_user_without_a_list_who_becomes_active_gets_one(demo_db: DemoData, pipeline_resources, nightly):
    with psycopg.connect(demo_db.url) as conn:
        newcomer = conn.execute("INSERT INTO users (username) VALUES ('newcomer') RETURNING id::text").fetchone()[0]
    interact(demo_db.url, [newcomer], "like")
    meta = metadata_of(materialize_refresh(pipeline_resources), "refreshed_recommendations")
    assert (meta["users"], meta["users_without_a_list"]) == (1, 1)
    assert len(db.current_recommendations(demo_db.url)[newcomer]) == TOP_K


def test_the_refresh_refuses_to_undo_a_nightly_run_built_from_newer_data(
    demo_db: DemoData, pipeline_resources, nightly, redis_client, monkeypatch
):
    """A nightly run completes while the refresh computes (after the refresh's snapshot): the
    refresh writes nothing, and its users get the nightly list, which knows their activity."""
    users = sorted(nightly["lists"])[:5]
    interact(demo_db.url, users, "share")
    snapshot = assets.user_interactions_snapshot

    def snapshot_then_a_nightly_run(scoring, postgres):
        taken = snapshot(scoring, postgres)
        monkeypatch.setattr(assets, "user_interactions_snapshot", snapshot)  # the nightly's own
        time.sleep(0.01)  # the nightly's snapshot is strictly newer
        assert materialize_all(pipeline_resources, top_k=TOP_K).success
        return taken

    monkeypatch.setattr(assets, "user_interactions_snapshot", snapshot_then_a_nightly_run)
    meta = metadata_of(materialize_refresh(pipeline_resources), "refreshed_recommendations")
    # (refused as it starts its run: the nightly's clean-up removed the model it built on)
    assert "a newer run replaced it" in meta["refused"] and meta["users"] == 0 and meta["cached_users"] == 0
    runs = _runs(demo_db.url)
    newer_nightly = [r for r in runs if r[1] == "00-of-01" and r[2] == "complete"]
    assert len(newer_nightly) == 1 and newer_nightly[0][0] > nightly["run_id"]
    assert not [r for r in runs if r[1] == REFRESH_SHARD and r[2] == "complete"]
    now = db.current_recommendations(demo_db.url)
    prefix = pipeline_resources["redis"].key_prefix
    for user_id in users:
        assert {run for _, _, run in now[user_id]} == {newer_nightly[0][0]}
        entry = feedrank.decode_cache_entry(redis_client.get(feedrank.recommendations_key(prefix, user_id)))
        assert entry["run_id"] == newer_nightly[0][0]


def test_a_nightly_run_being_written_with_newer_data_also_wins(demo_db: DemoData, pipeline_resources, nightly):
    """The nightly run's row exists (building) with a newer snapshot: the refresh steps aside."""
    interact(demo_db.url, sorted(nightly["lists"])[:3], "like")
    with psycopg.connect(demo_db.url) as conn:
        conn.execute(
            "INSERT INTO recommendation_runs (status, shard, config) VALUES ('building', '00-of-01', "
            "jsonb_build_object('snapshot_at', extract(epoch FROM now()) + 3600))"
        )
    meta = metadata_of(materialize_refresh(pipeline_resources), "refreshed_recommendations")
    assert "newer snapshot" in meta["refused"]
    assert db.current_recommendations(demo_db.url) == nightly["lists"]


def test_refresh_runs_are_removed_once_no_user_is_served_from_them(demo_db: DemoData, pipeline_resources, nightly):
    a, b, c = sorted(nightly["lists"])[:3]
    interact(demo_db.url, [a, b], "like")
    first = metadata_of(materialize_refresh(pipeline_resources), "refreshed_recommendations")["recommendation_run"]
    interact(demo_db.url, [b, c], "click")
    second = metadata_of(materialize_refresh(pipeline_resources), "refreshed_recommendations")
    assert second["users"] == 2, "a was not active again"
    rows = _rows(demo_db.url, [a, b, c])
    # b's rows of the first refresh went (b is served the second); a still has them
    assert {r[0] for r in rows[a]} == {nightly["run_id"], first}
    assert {r[0] for r in rows[b]} == {nightly["run_id"], second["recommendation_run"]}
    interact(demo_db.url, [a], "view")
    third = metadata_of(materialize_refresh(pipeline_resources), "refreshed_recommendations")
    assert third["runs_removed"] == 1, "the first refresh serves nobody now"
    assert [r[0] for r in _runs(demo_db.url)] == [nightly["run_id"], second["recommendation_run"], third["recommendation_run"]]

    # the next nightly run serves everyone: every refresh run and the old model go
    result = materialize_all(pipeline_resources, top_k=TOP_K)
    assert result.success and all(c.passed for c in result.get_asset_check_evaluations())
    runs = _runs(demo_db.url)
    assert len(runs) == 1 and runs[0][1] == "00-of-01" and runs[0][3] != nightly["model_id"]
    with psycopg.connect(demo_db.url) as conn:
        assert conn.execute("SELECT count(*) FROM recommendation_models").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM user_recommendations_default").fetchone()[0] == 0


def test_the_nightly_runs_checks_accept_users_a_refresh_serves_since(demo_db: DemoData, pipeline_resources, nightly):
    """Run on their own (from the UI) after a refresh, the nightly run's checks count a user the
    refresh serves as served, and compare the Redis entry with the refreshed list."""
    interact(demo_db.url, sorted(nightly["lists"])[:10], "like")
    assert materialize_refresh(pipeline_resources).success
    from dagster_pipeline.checks import ALL_CHECKS

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*assets.build_assets(), *ALL_CHECKS],
            selection=dg.AssetSelection.checks_for_assets("user_recommendations"),
            resources=pipeline_resources,
            instance=instance,
        )
    evaluations = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert evaluations and all(evaluations.values()), evaluations


def test_readers_see_the_old_list_or_the_new_one_each_with_its_profile(demo_db: DemoData, pipeline_resources, nightly):
    """While the refresh writes, a reader asks for a user's list and profile in one statement
    (as the API's database path would): always TOP_K rows of one run, and for each run always
    the same profile."""
    users = sorted(nightly["lists"])[:40]
    interact(demo_db.url, users, "like")
    seen: dict[tuple[str, int], set] = {}
    problems: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        with psycopg.connect(demo_db.url, autocommit=True) as conn:
            while not stop.is_set():
                for user in users[:10]:
                    rows = conn.execute(
                        "SELECT r.run_id, (SELECT p.terms FROM user_profiles p JOIN recommendation_runs rr "
                        "ON rr.model_id = p.model_id WHERE rr.id = r.run_id AND p.user_id = r.user_id) "
                        "FROM user_recommendations r WHERE r.user_id = %s "
                        "AND r.run_id = current_recommendation_run(%s) AND r.expires_at > now()",
                        (user, user),
                    ).fetchall()
                    if len(rows) != TOP_K or len({r[0] for r in rows}) != 1:
                        problems.append(f"{user}: {len(rows)} rows of runs {({r[0] for r in rows})}")
                        continue
                    seen.setdefault((user, rows[0][0]), set()).add(tuple(rows[0][1] or ()))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        refresh_run = metadata_of(materialize_refresh(pipeline_resources), "refreshed_recommendations")["recommendation_run"]
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert not problems, problems[:5]
    assert all(len(profiles) == 1 for profiles in seen.values()), "a run was read with two profiles"
    runs = {run for _, run in seen}
    assert runs <= {nightly["run_id"], refresh_run} and refresh_run in runs


# --- the sensor --------------------------------------------------------------------------------


def _evaluate_sensor(instance, resources):
    sensor = build_definitions(None).get_sensor_def("refresh_active_users")
    with dg.build_sensor_context(instance=instance, resources={"postgres": resources["postgres"]}) as context:
        return sensor.evaluate_tick(context)


def test_the_sensor_asks_for_a_refresh_only_when_someone_was_active_and_nothing_runs(
    demo_db: DemoData, pipeline_resources, nightly
):
    with dg.instance_for_test() as instance:
        tick = _evaluate_sensor(instance, pipeline_resources)
        assert not tick.run_requests and "no user was active" in tick.skip_message
        interact(demo_db.url, sorted(nightly["lists"])[:2], "like")
        tick = _evaluate_sensor(instance, pipeline_resources)
        assert len(tick.run_requests) == 1 and tick.run_requests[0].tags["feedrank/active_users"] == "2"
        # the nightly job in progress: skipped, whatever the activity
        nightly_run = create_run_for_test(instance, job_name=JOB_NAME, status=dg.DagsterRunStatus.STARTED)
        tick = _evaluate_sensor(instance, pipeline_resources)
        assert not tick.run_requests and nightly_run.run_id in tick.skip_message
        instance.report_run_canceled(nightly_run)
        # another refresh in progress: skipped too
        create_run_for_test(instance, job_name=REFRESH_JOB_NAME, status=dg.DagsterRunStatus.STARTED)
        assert not _evaluate_sensor(instance, pipeline_resources).run_requests


def test_the_sensor_waits_for_a_first_nightly_model(demo_db: DemoData, pipeline_resources):
    interact(demo_db.url, [_any_user(demo_db.url)], "like")
    with dg.instance_for_test() as instance:
        tick = _evaluate_sensor(instance, pipeline_resources)
    assert not tick.run_requests and "serving model" in tick.skip_message
    meta = metadata_of(materialize_refresh(pipeline_resources), "refreshed_recommendations")
    assert meta["users"] == 0 and "serving model" in meta["skipped"]


def _any_user(url: str) -> str:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT id::text FROM users LIMIT 1").fetchone()[0]
