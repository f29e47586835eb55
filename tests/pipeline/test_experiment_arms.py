"""The pipeline computing each experiment arm's lists with the arm's configuration (issue 14, part
3), fast layer: ``recommendation_scores`` called directly on test_assets.py's small snapshot with
experiments running at its time. A ``config`` arm's users get exactly the lists of a model
prepared with the arm's configuration; everyone else gets what they get without experiments; one
model is prepared when no ``config`` arm changes anything. The services layer (a stored experiment
that no longer validates, the refresh) is in test_experiment_runs.py."""

import dagster as dg
import feedrank
import numpy as np
import polars as pl
import pytest
from test_assets import USERS, features, scoring

from dagster_pipeline import assets
from dagster_pipeline.arms import arm_config, plan_arms
from dagster_pipeline.timing import Timer

pytestmark = pytest.mark.fast

CONTENT_ONLY = {"weights": {"collaborative": 0.0, "content": 1.0, "recency": 0.0, "engagement": 0.0}, "top_k": 7}


def experiment(name: str, salt: str, arms: list[dict], starts_at: str = "2026-01-01T00:00:00Z") -> dict:
    return feedrank.validate_experiment({"name": name, "salt": salt, "starts_at": starts_at, "arms": arms})


def content_experiment(salt: str = "content-3") -> dict:
    """Half the users in a content-only arm that also widens the list (top_k 7 over the run's 5)."""
    return experiment(
        "content",
        salt,
        [
            {"name": "control", "share": 0.5, "kind": "config", "config": {}},
            {"name": "content_only", "share": 0.5, "kind": "config", "config": CONTENT_ONLY},
        ],
    )


def scored(resource, experiments: list[dict]) -> dg.MaterializeResult:
    posts, users = features(resource)
    users = {**users, "experiments": experiments}
    return assets.recommendation_scores(dg.build_asset_context(), resource, posts, users)


def arms_of(experiments: list[dict]) -> dict[str, str | None]:
    """Each user's applied arm, by the core's rule (``experiment:arm``, or None)."""
    table = feedrank.experiment_arms(experiments, USERS)
    out: dict[str, str | None] = {}
    for u, (row, applied) in enumerate(zip(table["arms"], table["applied"])):
        e = experiments[applied] if applied >= 0 else None
        out[USERS[u]] = None if e is None else f"{e['name']}:{e['arms'][row[applied]]['name']}"
    return out


def test_the_salt_splits_the_six_users_between_both_arms():
    # the tests below need users in each arm: this salt gives them
    arms = arms_of([content_experiment()])
    assert set(arms.values()) == {None, "content:content_only"}, arms


def test_a_config_arms_users_get_the_lists_of_the_arms_configuration_and_the_others_are_unchanged():
    resource = scoring()
    cfg = resource.scoring_config
    posts, users = features(resource)
    e = content_experiment()
    without = scored(resource, []).value
    result = scored(resource, [e])
    bundle = result.value
    assert [c.passed for c in result.check_results] == [True], result.check_results
    arm_cfg = arm_config(cfg, CONTENT_ONLY)
    assert arm_cfg["weights"] == CONTENT_ONLY["weights"] and arm_cfg["top_k"] == 7
    assert arm_cfg["neighbors"] == cfg["neighbors"], "the run's settings the arm does not set stay"
    arm_users = [u for u, a in arms_of([e]).items() if a == "content:content_only"]
    rows = [USERS.index(u) for u in arm_users]
    # the arm's users: exactly what a model prepared from the arm's configuration gives them
    expected = assets.prepare_model(arm_cfg, posts, users).topk(np.array(rows))
    assert bundle["indices"].shape == (len(USERS), 7)
    np.testing.assert_array_equal(bundle["indices"][rows], expected["indices"])
    np.testing.assert_array_equal(bundle["scores"][rows], expected["scores"])
    assert (bundle["indices"][rows] >= 0).sum(axis=1).max() == 7
    # content-only: the score is the content component
    valid = bundle["indices"][rows] >= 0
    np.testing.assert_allclose(bundle["scores"][rows][valid], bundle["components"][rows][valid][:, 1], rtol=1e-6)
    # everyone else: the lists they get without the experiment, 5 wide as the run says
    others = [i for i in range(len(USERS)) if i not in rows]
    np.testing.assert_array_equal(bundle["indices"][others, :5], without["indices"][others])
    np.testing.assert_array_equal(bundle["scores"][others, :5], without["scores"][others])
    assert (bundle["indices"][others, 5:] == -1).all()
    # what the run records, and the users it says it scored so
    assert bundle["experiments"]["content"]["arms"] == {"content_only": arm_cfg}
    assert bundle["experiments"]["content"]["definition"] == e
    assert result.metadata["experiment_arm_users"].value == {"content:content_only": len(rows)}


def test_a_rows_reason_uses_the_users_own_weights():
    resource = scoring()
    bundle = scored(resource, [content_experiment()]).value
    frame = assets._rows_frame(bundle, 0, len(USERS), Timer())
    weights, config_of = assets._weights_of_users(bundle)
    assert len(weights) == 2 and set(config_of.tolist()) == {0, 1}
    for u, user in enumerate(USERS):
        valid = bundle["indices"][u] >= 0
        expected = feedrank.reasons(bundle["components"][u][valid], weights[config_of[u]])
        assert frame.filter(frame["user_id"] == user)["reason"].to_list() == expected, user
    # content-only: a post with any content score is recommended for its content
    for u in np.flatnonzero(config_of == 1):
        valid = bundle["indices"][u] >= 0
        content = bundle["components"][u][valid][:, 1] > 0
        reasons = np.array(frame.filter(frame["user_id"] == USERS[u])["reason"].to_list())
        assert content.any() and set(reasons[content]) == {"similar_content"}, USERS[u]


def test_an_earlier_experiments_sources_arm_keeps_its_users_from_a_later_config_arm():
    resource = scoring()
    mix = experiment(
        "mix",
        "mix-1",
        [
            {"name": "fresh_only", "share": 0.5, "kind": "sources", "sources": {"fresh": 1}},
            {"name": "control", "share": 0.5, "kind": "config", "config": {}},
        ],
        starts_at="2025-12-01T00:00:00Z",
    )
    experiments = [content_experiment(), mix]
    arms = arms_of(experiments)
    assert "mix:fresh_only" in arms.values() and "content:content_only" in arms.values(), arms
    plan = plan_arms(experiments, resource.scoring_config, pl.Series("user_id", USERS))
    for u, user in enumerate(USERS):
        assert plan.config_of[u] == (1 if arms[user] == "content:content_only" else 0), (user, arms[user])
    # the run records both: the API needs every running experiment to replay the rule
    assert set(plan.record) == {"content", "mix"} and plan.record["mix"]["arms"] == {}


def test_without_a_config_arm_that_changes_anything_one_model_is_prepared(monkeypatch):
    resource = scoring()
    prepared = []
    real = assets.prepare_model
    monkeypatch.setattr(assets, "prepare_model", lambda cfg, *a: prepared.append(cfg) or real(cfg, *a))
    controls = experiment(
        "controls",
        "c-1",
        [
            {"name": "a", "share": 0.5, "kind": "config", "config": {}},
            {"name": "random", "share": 0.5, "kind": "random"},
        ],
    )
    without = scored(resource, []).value
    result = scored(resource, [controls])
    assert len(prepared) == 2, "one model per run, as without experiments"
    np.testing.assert_array_equal(result.value["indices"], without["indices"])
    assert result.metadata["experiment_arm_users"].value == {}
    # an arm whose override resolves to the run's own configuration shares the run's model
    same = experiment(
        "same",
        "s-1",
        [
            {"name": "a", "share": 0.5, "kind": "config", "config": {"top_k": 5}},
            {"name": "b", "share": 0.5, "kind": "config", "config": {"top_k": 5, "neighbors": 3}},
        ],
    )
    prepared.clear()
    scored(resource, [same])
    assert len(prepared) == 1
