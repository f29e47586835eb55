"""The fast layer of the pipeline's tests (no service): pure functions, the asset functions called
directly on a small in-memory snapshot (as Dagster's own examples test assets), the scoring
resource, and the features-to-scores part of the graph materialized from a stored snapshot.

The snapshot: two topics (cooking, rust), six users, one of them new (cold start); user 0 hid a
cooking post, user 1 wrote a rust post that rust readers liked.
"""

import json
import math
from dataclasses import replace

import dagster as dg
import feedrank
import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from dagster_pipeline import assets
from dagster_pipeline.assets import (
    ROW_COLUMNS,
    build_assets,
    index_snapshot,
    interaction_values,
    post_features,
    recommendation_scores,
    shard_users,
    user_features,
    validate_scores,
)
from dagster_pipeline.io_manager import BundleIOManager, read_bundle, write_bundle
from dagster_pipeline.resources import ScoringResource
from dagster_pipeline.timing import Timer

pytestmark = pytest.mark.fast

DAY = 86400.0
SNAPSHOT_AT = 1_780_000_000.0
TYPES = list(feedrank.interaction_types())
USERS = ["u0", "u1", "u2", "u3", "u4", "u5"]  # u5: no interaction at all
COOKING = "garlic pasta sauce oven recipe"
RUST = "rust compiler borrow checker cargo"
# post id -> (author, days old, text); "stranger" is not a user of the snapshot
POSTS = {
    **{f"c{i}": ("u4", i, f"{COOKING} {i}") for i in range(6)},
    "r0": ("u1", 1, f"{RUST} mine"),
    **{f"r{i}": ("stranger", i, f"{RUST} {i}") for i in range(1, 6)},
}
# (user, post, type, days before the snapshot)
INTERACTIONS = [
    ("u0", "c0", "like", 5), ("u0", "c1", "like", 4), ("u0", "c2", "click", 3),
    ("u0", "c3", "view", 2), ("u0", "c3", "hide", 2),
    ("u2", "c0", "like", 5), ("u2", "c1", "share", 4), ("u2", "c2", "like", 3), ("u2", "c4", "like", 2),
    ("u2", "c3", "like", 1),
    ("u1", "r1", "like", 4), ("u1", "r2", "like", 3),
    ("u3", "r0", "share", 4), ("u3", "r1", "like", 3), ("u3", "r2", "like", 2), ("u3", "r3", "click", 1),
    ("u4", "r1", "view", 1),
]


def raw_snapshot() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The three frames as the snapshot's COPYs read them (ids, not indices)."""
    users = pl.DataFrame({"user_id": USERS, "shard_hash": [0, 1, 2, 3, 4, 5]}, schema={"user_id": pl.String, "shard_hash": pl.Int64})
    posts = pl.DataFrame(
        {
            "post_id": list(POSTS),
            "author_id": [a for a, _, _ in POSTS.values()],
            "created_at": [SNAPSHOT_AT - d * DAY for _, d, _ in POSTS.values()],
            "content": [t for _, _, t in POSTS.values()],
        }
    )
    interactions = pl.DataFrame(
        {
            "user_id": [u for u, _, _, _ in INTERACTIONS],
            "post_id": [p for _, p, _, _ in INTERACTIONS],
            "type": [TYPES.index(t) for _, _, t, _ in INTERACTIONS],
            "created_at": [SNAPSHOT_AT - d * DAY for *_, d in INTERACTIONS],
        },
        schema={"user_id": pl.String, "post_id": pl.String, "type": pl.Int8, "created_at": pl.Float64},
    )
    return users, posts, interactions


def snapshot_bundle() -> dict:
    users, posts, interactions = index_snapshot(*raw_snapshot())
    return {
        "users": users,
        "posts": posts,
        "interactions": interactions,
        "snapshot_at": SNAPSHOT_AT,
        "lookback_days": 30,
        "interaction_types": TYPES,
    }


def scoring(**overrides) -> ScoringResource:
    return ScoringResource(overrides={"top_k": 5, "neighbors": 3, **overrides})


def features(resource: ScoringResource) -> tuple[dict, dict]:
    snap = snapshot_bundle()
    return post_features(resource, snap).value, user_features(resource, snap).value


def post_index(post_id: str) -> int:
    return list(POSTS).index(post_id)


# --- pure functions ---------------------------------------------------------------------------


def test_index_snapshot_maps_ids_to_row_numbers_and_drops_rows_naming_no_one():
    users, posts, interactions = raw_snapshot()
    extra = pl.DataFrame(
        {"user_id": ["ghost", "u0", "u0"], "post_id": ["c0", "nothing", "c5"], "type": [0, 0, None], "created_at": [0.0] * 3},
        schema=interactions.schema,
    )
    users, posts, inter = index_snapshot(users, posts, pl.concat([interactions, extra]))
    assert users["user_idx"].to_list() == list(range(len(USERS)))
    assert posts["post_idx"].to_list() == list(range(len(POSTS)))
    authors = dict(zip(posts["post_id"], posts["author_idx"]))
    assert authors["c0"] == USERS.index("u4") and authors["r0"] == USERS.index("u1") and authors["r1"] == -1
    # the unknown user, the unknown post and the unknown type are left out
    assert inter.height == len(INTERACTIONS)
    first = inter.row(0, named=True)
    assert (first["user_idx"], first["post_idx"], TYPES[first["type"]]) == (0, post_index("c0"), "like")


def test_interaction_values_are_the_configs_type_weights():
    snap = snapshot_bundle()
    cfg = feedrank.validate_config({"interaction_weights": {"like": 10.0, "share": 7.0}})
    values = interaction_values(snap, cfg)
    expected = [cfg["interaction_weights"][t] for _, _, t, _ in INTERACTIONS]
    assert values.tolist() == pytest.approx(expected)
    assert values[[t for _, _, t, _ in INTERACTIONS].index("hide")] == 0.0


def test_shard_users_splits_by_hash_modulo_the_shard_count():
    hashes = np.array([0, 1, 2, 3, 4, 5, 7])
    assert shard_users(hashes, "01-of-02").tolist() == [1, 3, 5, 6]
    assert shard_users(hashes, "00-of-01").tolist() == list(range(7))
    with pytest.raises(ValueError, match="^shard key"):
        shard_users(hashes, "2-of-2")


# --- the asset functions, called directly -----------------------------------------------------


def test_post_features_are_the_texts_tfidf_age_recency_and_weighted_engagement():
    resource = scoring(recency_tau_days=10.0)
    result = post_features(resource, snapshot_bundle())
    posts = result.value
    cfg = resource.scoring_config
    weights = cfg["interaction_weights"]
    c0 = post_index("c0")
    assert posts["engagement"][c0] == pytest.approx(weights["like"] * 2)  # liked by u0 and u2
    assert posts["engagement"][post_index("c5")] == 0.0
    assert posts["age_days"][c0] == pytest.approx(0.0) and posts["age_days"][post_index("c5")] == pytest.approx(5.0)
    assert posts["recency"][post_index("c5")] == pytest.approx(math.exp(-5.0 / 10.0), rel=1e-5)
    restored = feedrank.TfidfVectorizer.from_json(posts["vocabulary_json"])
    again = restored.transform([POSTS["r3"][2]]).toarray()
    assert np.allclose(again, posts["tfidf"][post_index("r3")].toarray(), atol=1e-6) and again.any()
    assert result.metadata["posts_without_interactions"].value == 3  # c5, r4, r5
    assert posts["post_author"].tolist()[: 7] == [USERS.index("u4")] * 6 + [USERS.index("u1")]


def test_user_features_weigh_each_interaction_by_its_type_and_the_recency_of_the_users_history():
    resource = scoring(history_half_life=1.0)
    users = user_features(resource, snapshot_bundle()).value
    x, weights = users["interactions"], resource.scoring_config["interaction_weights"]
    u0 = USERS.index("u0")
    # u0's history, newest first: c3 (view, then hide: weight 0), c2 (click), c1, c0 (likes)
    newest_first = {"c3": 0, "c2": 2, "c1": 3, "c0": 4}
    assert x[u0, post_index("c2")] == pytest.approx(weights["click"] * 0.5 ** newest_first["c2"])
    assert x[u0, post_index("c0")] == pytest.approx(weights["like"] * 0.5 ** newest_first["c0"])
    assert x[u0, post_index("c3")] == pytest.approx(weights["view"] * 0.5 ** 1)
    assert users["hidden"].nnz == 1 and users["hidden"][u0, post_index("c3")] == 1.0
    assert users["history_length"][USERS.index("u5")] == 0
    flat = user_features(scoring(), snapshot_bundle()).value["interactions"]
    assert flat[u0, post_index("c0")] == pytest.approx(weights["like"])  # half-life 0: no decay


def test_scores_exclude_hidden_and_own_posts_and_cold_start_users_get_fresh_and_popular_posts():
    resource = scoring()
    posts, users = features(resource)
    result = recommendation_scores(dg.build_asset_context(), resource, posts, users)
    assert [c.passed for c in result.check_results] == [True]
    bundle = result.value
    idx = bundle["indices"]
    assert idx.shape == (len(USERS), 5) and bundle["shard"] == "00-of-01"
    recommended = {USERS[u]: {list(POSTS)[p] for p in row if p >= 0} for u, row in zip(bundle["user_idx"], idx)}
    assert "c3" not in recommended["u0"], "u0 hid c3"
    assert "c4" in recommended["u0"], "u2, u0's nearest user, liked c4"
    assert "r0" not in recommended["u1"], "r0 is u1's own post"
    assert "r3" in recommended["u1"]
    cold = USERS.index("u5")
    comps = bundle["components"][cold][idx[cold] >= 0]
    assert len(comps) == 5 and (comps[:, :2] == 0).all(), "no history: no collaborative or content score"
    assert result.metadata["cold_start_users"].value == 1
    assert result.metadata["users_covered"].value == len(USERS)


def test_a_shard_partition_scores_only_its_users():
    resource = scoring()
    posts, users = features(resource)
    context = dg.build_asset_context(partition_key="01-of-02")
    bundle = recommendation_scores(context, resource, posts, users).value
    assert bundle["shard"] == "01-of-02"
    assert bundle["user_ids"]["user_id"].to_list() == ["u1", "u3", "u5"]


def test_validate_scores_names_each_broken_invariant():
    resource = scoring()
    posts, users = features(resource)
    bundle = recommendation_scores(dg.build_asset_context(), resource, posts, users).value
    weights = resource.scoring_config["weights"]
    ok, facts = validate_scores(bundle, posts["post_author"], users["hidden"], weights)
    assert ok and set(facts.values()) == {0}

    def broken(change) -> dict:
        b = {**bundle, "indices": bundle["indices"].copy(), "scores": bundle["scores"].copy()}
        change(b)
        ok, facts = validate_scores(b, posts["post_author"], users["hidden"], weights)
        assert not ok
        return {k: v for k, v in facts.items() if v}

    u0, u1 = USERS.index("u0"), USERS.index("u1")
    assert broken(lambda b: b["indices"].__setitem__((u1, 0), post_index("r0"))) == {"own_posts": 1}
    assert broken(lambda b: b["indices"].__setitem__((u0, 0), post_index("c3"))) == {"hidden_posts": 1}
    assert broken(lambda b: b["indices"].__setitem__((u0, 1), b["indices"][u0, 0])) == {"duplicate_posts": 1}
    assert broken(lambda b: b["scores"].__setitem__((u0, 0), np.nan)) == {"non_finite": 1}
    assert broken(lambda b: b["scores"].__setitem__((u0, 0), sum(weights.values()) + 1)) == {"scores_out_of_range": 1}


def test_rows_of_a_shard_are_one_per_recommendation_with_its_reason():
    resource = scoring()
    posts, users = features(resource)
    bundle = recommendation_scores(dg.build_asset_context(), resource, posts, users).value
    frame = assets._rows_frame(bundle, 0, 2, Timer())
    assert tuple(frame.columns) == ROW_COLUMNS
    valid = bundle["indices"][:2] >= 0
    assert frame.height == int(valid.sum())
    first = frame.row(0, named=True)
    assert (first["user_id"], first["post_id"]) == ("u0", list(POSTS)[bundle["indices"][0, 0]])
    assert first["score"] == pytest.approx(float(bundle["scores"][0, 0]))
    reasons = feedrank.reasons(bundle["components"][0][valid[0]], resource.scoring_config["weights"])
    assert frame.filter(pl.col("user_id") == "u0")["reason"].to_list() == reasons


# --- the scoring resource ---------------------------------------------------------------------


def test_the_scoring_resource_lays_overrides_over_the_config_file_over_the_defaults(tmp_path):
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"top_k": 7, "collaborative": "ridge", "weights": {"content": 0.9, "recency": 0.0}}))
    cfg = ScoringResource(config_path=str(path), overrides={"top_k": 9, "weights": {"recency": 0.3}}).scoring_config
    defaults = feedrank.default_config()
    assert cfg["top_k"] == 9 and cfg["collaborative"] == "ridge"
    assert cfg["weights"] == {**defaults["weights"], "content": pytest.approx(0.9), "recency": pytest.approx(0.3)}
    assert cfg["lookback_days"] == defaults["lookback_days"]
    assert ScoringResource().scoring_config == defaults


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"overrides": {"weights": {"collaborative": 0, "content": 0, "recency": 0, "engagement": 0}}}, "weights"),
        ({"overrides": {"weights": {"content": float("nan")}}}, "weights"),
        ({"overrides": {"weights": {"novelty": 1.0}}}, "novelty"),
        ({"overrides": {"interaction_weights": {"like": -1.0}}}, "interaction_weights"),
        ({"overrides": {"top_k": 0}}, "top_k"),
        ({"overrides": {"top_kk": 3}}, "top_kk"),
        ({"batch_size": 0}, "batch_size"),
        ({"config_path": "/nonexistent/scoring.json"}, "config_path"),
    ],
)
def test_the_scoring_resource_names_a_bad_field(settings, field):
    with pytest.raises(ValueError, match=field):
        ScoringResource(**settings).resolve()


def test_the_scoring_resource_documents_every_scoring_config_field():
    described = ScoringResource.model_fields["overrides"].description
    assert all(name in described for name in feedrank.default_config())


# --- features and scores as a graph, from a stored snapshot ----------------------------------


def test_features_and_scores_materialize_from_a_stored_snapshot(tmp_path):
    """The snapshot as the bundle IO manager stores it (what the first step writes); the next
    three steps run as a Dagster graph, with their blocking check."""
    write_bundle(tmp_path / "user_interactions_snapshot" / "__all__", snapshot_bundle())
    snapshot, post_asset, user_asset, _, scores_asset, _ = build_assets()
    result = dg.materialize(
        [snapshot.to_source_asset(), post_asset, user_asset, scores_asset],
        resources={"io_manager": BundleIOManager(base_dir=str(tmp_path)), "scoring": scoring()},
    )
    assert result.success
    assert [c.passed for c in result.get_asset_check_evaluations()] == [True]
    scores = read_bundle(tmp_path / "recommendation_scores" / "__all__")
    assert scores["indices"].shape == (len(USERS), 5)
    assert isinstance(read_bundle(tmp_path / "user_features" / "__all__")["interactions"], sp.csr_matrix)


# --- the serving model's pieces (serving.py, bulk.py) -----------------------------------------


def test_a_row_in_the_binary_copy_format_is_what_postgresql_documents():
    """One row (int8 7, an empty int4[], float4[] {1.5}, a uuid): field count, then per field its
    length and bytes; an array is ndim, has-nulls, element OID, then per dimension its length and
    lower bound, then each element's length and value (sql-copy.html, array_send)."""
    from dagster_pipeline.bulk import Arrays, Scalars, binary_rows

    uid = "00000000-0000-0000-0000-0000000000ff"
    data, rows = binary_rows(
        [
            Scalars.int8(np.array([7])),
            Arrays.int4(np.array([0, 0]), np.zeros(0, np.int32)),
            Arrays.float4(np.array([0, 1]), np.array([1.5], np.float32)),
            Scalars.uuid([uid]),
        ],
        0,
        1,
    )
    be = lambda fmt, *v: np.array(v, fmt).tobytes()  # noqa: E731
    expected = (
        be(">i2", 4)
        + be(">i4", 8) + be(">i8", 7)
        + be(">i4", 12) + be(">i4", 0, 0, 23)  # empty: no dimension
        + be(">i4", 28) + be(">i4", 1, 0, 700, 1, 1) + be(">i4", 4) + be(">f4", 1.5)
        + be(">i4", 16) + bytes(15) + b"\xff"
    )
    assert (data, rows) == (expected, 1)


def test_neighbours_are_kept_best_first_ties_by_the_lower_post():
    from dagster_pipeline.serving import best_first

    m = sp.csr_matrix(np.array([[0, 0.2, 0.9, 0.2], [0, 0, 0, 0], [0.5, 0.7, 0, 0]], np.float32))
    b = best_first(m)
    assert b.indices[b.indptr[0] : b.indptr[1]].tolist() == [2, 1, 3]
    assert b.data[b.indptr[0] : b.indptr[1]].tolist() == pytest.approx([0.9, 0.2, 0.2])
    assert b.indptr[2] - b.indptr[1] == 0
    assert b.indices[b.indptr[2] :].tolist() == [1, 0]


def _stored_profiles(resource):
    from dagster_pipeline.serving import StoredProfiles

    posts, users = features(resource)
    with_history = np.flatnonzero(users["history_length"] > 0)
    return posts, users, with_history, StoredProfiles.compute(with_history, users, posts, resource.scoring_config)


def test_stored_profiles_are_the_bindings_profiles_of_every_user_with_history():
    from dagster_pipeline.bulk import uuid_values

    resource = scoring(profile_terms=3, profile_authors=1)
    posts, users, with_history, profiles = _stored_profiles(resource)
    want = feedrank.user_profiles(
        users["interactions"], posts["tfidf"], posts["post_author"], with_history, resource.scoring_config
    )
    assert "u5" not in [USERS[u] for u in profiles.users], "u5 has no history: no profile"
    assert profiles.users.tolist() == with_history.tolist()
    assert (profiles.terms != want["terms"]).nnz == 0 and (profiles.authors != want["authors"]).nnz == 0
    assert np.diff(profiles.terms.indptr).max() == 3 and np.diff(profiles.authors.indptr).max() == 1
    # the table's columns are the same numbers, the ids as 16-byte uuids (the snapshot's ids are
    # uuids in PostgreSQL; here they are made up)
    user_uuids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(len(USERS))]
    ids = uuid_values(user_uuids)
    as_uuids = replace(profiles, user_ids=pl.DataFrame({"user_id": user_uuids}))
    columns, n = as_uuids.columns(model_id=9)
    assert n == with_history.size
    model, user, terms, weights, authors, author_weights = columns
    assert model.values.tolist() == [9] * n
    assert [bytes(x) for x in user.values] == [bytes(ids[u]) for u in with_history]
    assert np.array_equal(terms.offsets, want["terms"].indptr) and np.array_equal(terms.values, want["terms"].indices)
    assert np.array_equal(weights.values, want["terms"].data)
    assert np.array_equal(authors.offsets, want["authors"].indptr)
    assert [bytes(x) for x in authors.values] == [bytes(ids[a]) for a in want["authors"].indices]
    assert np.array_equal(author_weights.values, want["authors"].data)
    # a mask keeps some of them (users deleted since the snapshot are left out so)
    _, kept = as_uuids.columns(model_id=9, keep=np.arange(n) % 2 == 0)
    assert kept == (n + 1) // 2


def test_the_cache_entry_carries_the_model_and_the_stored_profile_and_round_trips():
    resource = scoring(profile_terms=4)
    posts, users, with_history, profiles = _stored_profiles(resource)
    profile_of = profiles.for_cache(USERS)
    assert profile_of(USERS.index("u5")) is None
    u0 = USERS.index("u0")
    p = profile_of(u0)
    row = list(with_history).index(u0)
    assert p["terms"].tolist() == profiles.terms[row].indices.tolist()
    assert p["authors"] == ["u4"], "u0 engaged with u4's cooking posts"
    raw = feedrank.encode_cache_entry(5, 1_780_000_000, ["c4"], np.array([0.5]), np.zeros((1, 4)), (0.4, 0.3, 0.2, 0.1), model_id=12, profile=p)
    back = feedrank.decode_cache_entry(raw)
    assert (back["v"], back["run_id"], back["model_id"]) == (2, 5, 12)
    assert back["profile"]["terms"] == p["terms"].tolist() and back["profile"]["authors"] == ["u4"]
    # float32 through JSON and back, bit for bit
    assert np.array_equal(np.asarray(back["profile"]["weights"], np.float32), p["weights"])
    assert np.array_equal(np.asarray(back["profile"]["author_weights"], np.float32), p["author_weights"])
    plain = feedrank.decode_cache_entry(feedrank.encode_cache_entry(5, 0, [], np.zeros(0), np.zeros((0, 4)), (1, 0, 0, 0)))
    assert plain["model_id"] is None and plain["profile"] is None
    # an entry a pipeline of format 1 wrote still reads, without model or profile
    old = feedrank.decode_cache_entry(b'{"v":1,"run_id":3,"generated_at":0,"items":[]}')
    assert (old["v"], old["model_id"], old["profile"]) == (1, None, None)


@pytest.mark.parametrize(
    ("profile", "error", "message"),
    [
        ({"terms": [1], "weights": [0.5], "authors": []}, ValueError, r'^profile: missing "author_weights"'),
        ({"terms": [1], "weights": [0.5], "authors": [], "author_weights": [], "extra": 1}, ValueError, r"^profile: unknown key"),
        ({"terms": [1, 2], "weights": [0.5], "authors": [], "author_weights": []}, ValueError, r"^profile.weights: has 1 values for 2 terms"),
        ({"terms": [-1], "weights": [0.5], "authors": [], "author_weights": []}, ValueError, r"^profile.terms: must be term indices >= 0"),
        ({"terms": [1], "weights": [np.nan], "authors": [], "author_weights": []}, ValueError, r"^profile.weights: values must be finite"),
        ({"terms": [], "weights": [], "authors": [7], "author_weights": [1.0]}, TypeError, r"^profile.authors: expected a sequence of str"),
        ([1, 2], TypeError, r"^profile: expected a dict"),
    ],
)
def test_a_bad_profile_is_refused_naming_the_field(profile, error, message):
    with pytest.raises(error, match=message):
        feedrank.encode_cache_entry(1, 0, [], np.zeros(0), np.zeros((0, 4)), (1, 0, 0, 0), model_id=1, profile=profile)


def test_post_features_in_a_given_vocabulary_are_that_fits_transform():
    """The refresh vectorizes posts in its base model's vocabulary: terms the model never saw are
    left out, the idf is the model's."""
    resource = scoring()
    snap = snapshot_bundle()
    fitted_on = feedrank.TfidfVectorizer().fit(["garlic pasta", "rust cargo compiler"])
    posts = assets.compute_post_features(resource.scoring_config, snap, tfidf_json=fitted_on.to_json()).value
    want = fitted_on.transform(snap["posts"]["content"].to_list())
    assert posts["tfidf"].shape == (len(POSTS), 5)
    assert np.allclose(posts["tfidf"].toarray(), want.toarray(), atol=1e-7)
    assert posts["vocabulary_json"] == fitted_on.to_json()
