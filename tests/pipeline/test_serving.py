"""The serving model against real PostgreSQL and Redis (serving.py, migration V7): what a nightly
run publishes for the feed's request-time sources equals what the binding computes from the same
features, every run names its model, the Redis entries carry the same model and profiles, a
model no run names goes, and runs without a model (written before V7) are still fine."""

import logging
import uuid
from pathlib import Path

import dagster as dg
import feedrank
import numpy as np
import polars as pl
import psycopg
import pytest
from graph_runs import DemoData, materialize_all, metadata_of

from dagster_pipeline import swap
from dagster_pipeline.assets import build_assets
from dagster_pipeline.bulk import COPY_HEADER, COPY_TRAILER, Arrays, Scalars, binary_rows, uuid_values
from dagster_pipeline.checks import _compare, served
from dagster_pipeline.io_manager import read_bundle
from dagster_pipeline.timing import Timer


def _stored(resources: dict, asset: str) -> dict:
    return read_bundle(Path(resources["io_manager"].base_dir) / asset / "__all__")


def test_binary_copy_writes_every_value_bit_for_bit(fresh_database_url):
    """bulk.py's encoder against PostgreSQL itself: empty arrays, float32 edge values and uuids
    come back exactly."""
    floats = np.array([0.0, -0.0, 1e-45, 3.4028235e38, 0.1, -2.5, 1.0000001], np.float32)
    ids = [str(uuid.UUID(int=i * 0x1234567890ABCDEF)) for i in range(4)]
    offsets = np.array([0, 0, 3, 7])  # row 0 empty
    with psycopg.connect(fresh_database_url) as conn:
        conn.execute("CREATE TABLE t (n int8, id uuid, ints int4[], fs float4[], us uuid[])")
        columns = [
            Scalars.int8(np.array([1, -2, 2**40])),
            Scalars.uuid(ids[:3]),
            Arrays.int4(offsets, np.array([5, -1, 2**31 - 1, 0, 7, 8, 9], np.int32)),
            Arrays.float4(offsets, floats),
            Arrays.uuid(np.array([0, 4, 4, 4]), uuid_values(ids)),
        ]
        data, rows = binary_rows(columns, 0, 3)
        with conn.cursor().copy("COPY t FROM STDIN (FORMAT binary)") as copy:
            copy.write(COPY_HEADER + data + COPY_TRAILER)
        back = conn.execute("SELECT n, id::text, ints, fs, us::text[] FROM t ORDER BY n").fetchall()
    assert rows == 3
    by_n = {r[0]: r for r in back}
    assert by_n[1][1:] == (ids[0], [], [], ids)
    assert by_n[-2][2] == [5, -1, 2**31 - 1]
    got = np.array(by_n[-2][3] + by_n[2**40][3], np.float32)
    assert got.tobytes() == floats.tobytes(), "float4 values differ in some bit"
    assert by_n[2**40][2:] == ([0, 7, 8, 9], by_n[2**40][3], [])


def test_the_serving_model_is_what_the_binding_computes_and_every_run_names_it(
    demo_db: DemoData, pipeline_resources, redis_client
):
    result = materialize_all(pipeline_resources, top_k=20)
    assert result.success and all(c.passed for c in result.get_asset_check_evaluations())
    meta = metadata_of(result, "serving_model")
    posts, users = _stored(pipeline_resources, "post_features"), _stored(pipeline_resources, "user_features")
    cfg = feedrank.default_config()
    k = cfg["sources"]["because_you_liked"]["neighbors"]
    with psycopg.connect(demo_db.url) as conn:
        models = conn.execute(
            "SELECT id, config, tfidf, extract(epoch FROM snapshot_at)::float8 FROM recommendation_models"
        ).fetchall()
        run_models = conn.execute("SELECT DISTINCT model_id FROM recommendation_runs").fetchall()
        profiles = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT user_id::text, terms, weights, authors::text[], author_weights FROM user_profiles"
            ).fetchall()
        }
        neighbors = {
            r[0]: r[1:]
            for r in conn.execute("SELECT post_id::text, neighbors::text[], scores FROM post_neighbors").fetchall()
        }
    [(model_id, config, tfidf, snapshot_at)] = models
    assert run_models == [(model_id,)] and meta["model_id"] == model_id
    assert config == feedrank.validate_config(config) and config["top_k"] == 20
    assert snapshot_at == pytest.approx(users["snapshot_at"], abs=1e-3)
    # the fitted TF-IDF, as TfidfModel::from_json reads it: the same vectors as the run's
    assert tfidf == posts["vocabulary_json"]
    again = feedrank.TfidfVectorizer.from_json(tfidf).transform(posts_content(demo_db.url))
    assert abs(again - posts["tfidf"]).max() < 1e-6

    # every user with history has the binding's profile, bit for bit
    user_ids = users["user_ids"]["user_id"].to_list()
    with_history = np.flatnonzero(np.asarray(users["history_length"]) > 0)
    want = feedrank.user_profiles(users["interactions"], posts["tfidf"], posts["post_author"], with_history, config)
    assert set(profiles) == {user_ids[u] for u in with_history} and meta["profiles"] == len(profiles)
    for row, u in enumerate(with_history):
        terms, weights, authors, author_weights = profiles[user_ids[u]]
        t, a = want["terms"][row], want["authors"][row]
        assert terms == t.indices.tolist()
        assert np.array(weights, np.float32).tobytes() == t.data.tobytes()
        assert authors == [user_ids[i] for i in a.indices]
        assert np.array(author_weights, np.float32).tobytes() == a.data.tobytes()

    # every post with neighbours has the binding's k nearest, best first
    post_ids = posts["post_ids"]["post_id"].to_list()
    s = feedrank.item_neighbors(users["interactions"], k=k)
    has = np.flatnonzero(np.diff(s.indptr) > 0)
    assert set(neighbors) == {post_ids[p] for p in has} and meta["neighbor_lists"] == len(neighbors)
    for p in has[:: max(1, has.size // 200)]:
        ids, scores = neighbors[post_ids[p]]
        row = s[p]
        order = np.lexsort((row.indices, -row.data))
        assert ids == [post_ids[j] for j in row.indices[order]] and len(ids) <= k
        assert np.array(scores, np.float32).tobytes() == row.data[order].tobytes()
    assert meta["rows"] == len(profiles) + len(neighbors) and meta["bytes"] > 0 and meta["seconds"] > 0

    # each user's Redis entry names the model and carries their stored profile
    prefix = pipeline_resources["redis"].key_prefix
    with psycopg.connect(demo_db.url) as conn:
        for user_id in user_ids[:: max(1, len(user_ids) // 60)]:
            raw = redis_client.get(feedrank.recommendations_key(prefix, user_id))
            assert _compare(raw, served(conn, user_id)) is None
            entry = feedrank.decode_cache_entry(raw)
            assert entry["model_id"] == model_id
            assert (entry["profile"] is None) == (user_id not in profiles)


def posts_content(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT content FROM posts ORDER BY id").fetchall()]


def test_a_new_run_removes_the_model_no_run_names_any_more(demo_db: DemoData, pipeline_resources):
    materialize_all(pipeline_resources, top_k=10)
    result = materialize_all(pipeline_resources, top_k=10)
    assert metadata_of(result, "user_recommendations")["models_removed"] == 1
    with psycopg.connect(demo_db.url) as conn:
        models = conn.execute("SELECT id FROM recommendation_models").fetchall()
        run_models = conn.execute("SELECT DISTINCT model_id FROM recommendation_runs").fetchall()
        per_model = conn.execute(
            "SELECT (SELECT count(DISTINCT model_id) FROM user_profiles), (SELECT count(DISTINCT model_id) FROM post_neighbors)"
        ).fetchone()
    assert models == run_models and len(models) == 1
    assert per_model == (1, 1), "the old model's profiles and neighbours went with it"


def test_a_user_deleted_after_the_snapshot_is_left_out_of_the_model(demo_db: DemoData, pipeline_resources):
    """Deleted between the snapshot and the serving model's COPY: the COPY meets the foreign
    key, and is done again without that user."""
    upstream = ["user_interactions_snapshot", "post_features", "user_features"]
    assert dg.materialize(build_assets(), selection=upstream, resources=pipeline_resources).success
    users = _stored(pipeline_resources, "user_features")
    with_history = np.flatnonzero(np.asarray(users["history_length"]) > 0)
    gone = users["user_ids"]["user_id"][int(with_history[0])]
    with psycopg.connect(demo_db.url) as conn:
        conn.execute("DELETE FROM users WHERE id = %s", (gone,))
    result = dg.materialize(build_assets(), selection=["serving_model"], resources=pipeline_resources)
    assert result.success
    with psycopg.connect(demo_db.url) as conn:
        ids = {r[0] for r in conn.execute("SELECT user_id::text FROM user_profiles").fetchall()}
    assert gone not in ids and len(ids) == with_history.size - 1
    assert metadata_of(result, "serving_model")["profiles"] == len(ids)


def test_runs_without_a_model_are_served_checked_and_cleaned_up_as_before(demo_db: DemoData, pipeline_resources, redis_client):
    """A run written before migration V7 names no model (NULL): its readers get no model and no
    profile, the checks accept that, and the next run replaces it and removes it."""
    with psycopg.connect(demo_db.url) as conn:
        some_user, some_post = conn.execute(
            "SELECT u.id::text, p.id::text FROM users u, posts p WHERE p.user_id <> u.id LIMIT 1"
        ).fetchone()
    written = swap.write_run(
        pipeline_resources["postgres"], shard="00-of-01", dagster_run_id="before-v7", config={},
        expires_after_hours=48, users=1, columns=("user_id", "post_id", "score", "reason"), chunks=[(0, 1)],
        frame_of=lambda lo, hi, t: pl.DataFrame(
            {"user_id": [some_user], "post_id": [some_post], "score": [0.5], "reason": ["popular"]}
        ),
        log=logging.getLogger("test"), timer=Timer(),
    )
    entry = feedrank.encode_cache_entry(written.run.id, 0, [some_post], np.array([0.5]), np.array([[0, 0, 0, 1.0]]), (0.4, 0.3, 0.2, 0.1))
    with psycopg.connect(demo_db.url) as conn:
        expected = served(conn, some_user)
        assert expected["model_id"] is None and expected["profile"] is None
        assert _compare(entry, expected) is None
    result = materialize_all(pipeline_resources, top_k=10)
    assert result.success and all(c.passed for c in result.get_asset_check_evaluations())
    with psycopg.connect(demo_db.url) as conn:
        runs = conn.execute("SELECT model_id IS NOT NULL FROM recommendation_runs").fetchall()
    assert runs == [(True,)], "the run without a model was replaced and removed"
