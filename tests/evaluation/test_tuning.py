"""The ridge model, the hybrid wiring, tuning on validation only, the quality bar of issue 6 and
the determinism of the whole evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

import feedrank
import feedrank.tune as tn
from feedrank import datasets, evaluate, protocol
from feedrank.config import load_config

# A reduced search (the full one takes minutes): still every collaborative model, the history
# recency on/off and one value per other component.
TINY_GRID = {
    "user_user": {"neighbors": [50], "weighting": ["none"]},
    "item_item": {"neighbors": [50], "weighting": ["none"]},
    "ridge": {"neighbors": [50], "ridge_l2": [100.0]},
    "history_half_life": [0.0, 10.0],
    "content": [0.1],
    "recency": [0.1],
    "recency_tau_days": [30.0],
    "engagement": [0.1],
}


@pytest.fixture(scope="module")
def tuned(movielens_split):
    return tn.tune(movielens_split, grid=TINY_GRID)


# --- the ridge model ------------------------------------------------------------------------------


def test_ridge_with_every_item_as_neighbour_equals_dense_ease():
    rng = np.random.default_rng(5)
    x = (rng.random((60, 8)) < 0.6).astype(np.float32)
    x[:, :] = np.maximum(x, np.eye(60, 8, dtype=np.float32))  # every item seen at least once
    lam = 3.0
    s = feedrank.ridge_item_neighbors(sp.csr_matrix(x), neighbors=7, l2=lam).toarray()
    assert np.allclose(s, protocol.ease_item_weights(sp.csr_matrix(x), lam), atol=1e-4)


def test_ridge_keeps_k_regressors_per_item_and_names_bad_arguments():
    rng = np.random.default_rng(1)
    x = sp.csr_matrix((rng.random((200, 40)) < 0.2).astype(np.float32))
    s = feedrank.ridge_item_neighbors(x, neighbors=5, l2=10.0)
    assert s.shape == (40, 40) and (np.diff(s.tocsc().indptr) <= 5).all()
    assert s.diagonal().tolist() == [0.0] * 40
    with pytest.raises(ValueError, match="^neighbors"):
        feedrank.ridge_item_neighbors(x, neighbors=0)
    with pytest.raises(ValueError, match="^l2"):
        feedrank.ridge_item_neighbors(x, neighbors=5, l2=-1.0)
    with pytest.raises(ValueError, match="^interactions"):
        feedrank.ridge_item_neighbors(-x, neighbors=5)


def test_hybrid_ridge_slot_ranks_as_the_ridge_model_alone(movielens_split):
    s = movielens_split
    feats = protocol.features(s)
    x = feats.interactions(s.data.n_users, s.data.n_items, 10.0)
    users = s.eval_users[:100]
    cfg = protocol.single_component("collaborative", collaborative="ridge", weighting="binary", neighbors=30,
                              ridge_l2=50.0, history_half_life=10.0)
    via_hybrid = protocol.hybrid_ranking(s, feats, cfg, users, 10)
    model = feedrank.ridge_item_neighbors(s.train, neighbors=30, l2=50.0)
    alone, _ = feedrank.recommend_items(x, model, users, k=10)
    assert np.array_equal(via_hybrid, alone)


# --- tuning ---------------------------------------------------------------------------------------


def _perturbed(split: protocol.Split, seed: int) -> protocol.Split:
    """The same data set with every held-out interaction moved to another item and time."""
    d = split.data
    rng = np.random.default_rng(seed)
    items, ts = d.items.copy(), d.timestamps.copy()
    t = split.test_mask
    items[t] = rng.integers(0, d.n_items, t.sum())
    ts[t] = ts[t] + rng.integers(1, 10**7, t.sum())
    other = datasets.Dataset(d.name, d.users, items, ts, d.raw_items, d.user_ids, d.item_ids, d.item_text)
    return protocol.Split(other, split.train_mask, t)


def test_tuning_never_reads_the_test_part(movielens_split, tuned):
    changed = _perturbed(movielens_split, seed=11)
    assert (changed.test != movielens_split.test).nnz > 0
    again = tn.tune(changed, grid=TINY_GRID)
    assert again["config"] == tuned["config"]
    assert [t["ndcg"] for t in again["trials"]] == [t["ndcg"] for t in tuned["trials"]]


def test_tuned_config_is_one_the_pipeline_accepts(tuned, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(tuned["config"]))
    cfg = load_config(path)
    assert cfg == feedrank.validate_config(cfg) == tuned["config"]
    assert abs(sum(cfg["weights"].values()) - 1.0) < 1e-5


def test_issue_quality_bar_on_movielens(movielens_split, tuned):
    """Issue 6: tuned hybrid NDCG@10 >= 0.129 and coverage@10 >= 0.06 (test part, tuned on
    validation only, here even with the reduced grid); the default-weight hybrid at least
    matches the design's components taken alone."""
    s = movielens_split
    feats = protocol.features(s)
    score = lambda m, **kw: protocol.score_topk(protocol.model_topk(m, s, feats, k=10, **kw), s)  # noqa: E731
    best = score("hybrid_tuned", tuned=tuned["config"])
    assert best["ndcg@10"] >= 0.129 and best["coverage@10"] >= 0.06, best
    default = score("hybrid_default")["ndcg@10"]
    for component in ("user_user", "content", "recent", "popular"):
        assert default >= score(component)["ndcg@10"], component


def test_evaluation_is_deterministic_per_seed(movielens, tuned):
    models = ["random", "popular", "item_item", "hybrid_default", "hybrid_tuned"]
    strip = lambda r: [{k: v for k, v in row.items() if k != "seconds"} for row in r["rows"]]  # noqa: E731
    a = evaluate.evaluate(movielens, models=models, config=tuned["config"], seed=4)
    b = evaluate.evaluate(movielens, models=models, config=tuned["config"], seed=4)
    assert strip(a) == strip(b) and a["curves"] == b["curves"]
    c = evaluate.evaluate(movielens, models=["random"], seed=5)
    assert strip(c)[0] != strip(a)[0]


def test_cli_evaluate_writes_table_json_and_chart(tmp_path, tuned, capsys, movielens_path):
    from feedrank.cli import main

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(tuned["config"]))
    out, chart = tmp_path / "eval.json", tmp_path / "eval.png"
    status = main(["evaluate", str(movielens_path), "--models", "popular,hybrid_tuned", "--config", str(cfg),
                   "--json", str(out), "--chart", str(chart), "--quiet"])
    assert status == 0
    table = capsys.readouterr().out
    assert "| hybrid_tuned |" in table and "| popular |" in table
    doc = json.loads(out.read_text())
    assert doc["users_evaluated"] == 610 and [r["model"] for r in doc["rows"]] == ["popular", "hybrid_tuned"]
    assert set(doc["rows"][0]) == {"model", "precision@10", "recall@10", "ndcg@10", "coverage@10", "seconds"}
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["evaluate", str(tmp_path), "--models", "popular"]) == 2


def test_recommendation_quality_holds_out_each_users_latest_day(movielens, tmp_path):
    q = protocol.recommendation_quality(movielens, feedrank.default_config(), holdout_days=1.0)
    assert q["users"] > 100 and q["report"]["users_evaluated"] == q["users"]
    assert 0.0 < q["ndcg@10"] < 1.0 and 0.0 < q["coverage@10"] <= 1.0
    curve = q["report"]["curves"]["current_config"]
    assert curve["k"] == list(range(1, 51)) and curve["ndcg"][9] == pytest.approx(q["ndcg@10"])
    chart = tmp_path / "q.png"
    evaluate.write_chart(q["report"], chart)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="^holdout_days"):
        protocol.recommendation_quality(movielens, feedrank.default_config(), holdout_days=0)
