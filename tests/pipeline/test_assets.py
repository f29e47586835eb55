"""The fast layer of the pipeline's tests (no service): pure functions, the asset functions called
directly on a small in-memory snapshot (as Dagster's own examples test assets), the scoring
resource, and the features-to-scores part of the graph materialized from a stored snapshot.

The snapshot: two topics (cooking, rust), six users, one of them new (cold start); user 0 hid a
cooking post, user 1 wrote a rust post that rust readers liked.
"""

import json
import math

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
    snapshot, post_asset, user_asset, scores_asset, _ = build_assets()
    result = dg.materialize(
        [snapshot.to_source_asset(), post_asset, user_asset, scores_asset],
        resources={"io_manager": BundleIOManager(base_dir=str(tmp_path)), "scoring": scoring()},
    )
    assert result.success
    assert [c.passed for c in result.get_asset_check_evaluations()] == [True]
    scores = read_bundle(tmp_path / "recommendation_scores" / "__all__")
    assert scores["indices"].shape == (len(USERS), 5)
    assert isinstance(read_bundle(tmp_path / "user_features" / "__all__")["interactions"], sp.csr_matrix)
