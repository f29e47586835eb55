"""The EVAL.md protocol: split, metrics and the non-hybrid models, checked by hand and against a
direct Python implementation on MovieLens."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from feedrank import datasets, protocol

pytestmark = pytest.mark.fast


def _dataset(users, items, ts, n_users=None, n_items=None, raw=None) -> datasets.Dataset:
    users, items, ts = (np.asarray(a, np.int64) for a in (users, items, ts))
    n_users = n_users or int(users.max()) + 1
    n_items = n_items or int(items.max()) + 1
    return datasets.Dataset(
        name="toy", users=users, items=items, timestamps=ts,
        raw_items=items.copy() if raw is None else np.asarray(raw, np.int64),
        user_ids=[str(u) for u in range(n_users)], item_ids=[str(i) for i in range(n_items)],
        item_text=[""] * n_items,
    )


# --- metrics, by hand ---------------------------------------------------------------------------


def _split_with_test(test_rows: list[list[int]], n_items: int) -> protocol.Split:
    """A split whose test part is exactly test_rows (one user per row) and train is empty."""
    users = [u for u, row in enumerate(test_rows) for _ in row]
    items = [i for row in test_rows for i in row]
    d = _dataset(users, items, np.zeros(len(users)), n_users=len(test_rows), n_items=n_items)
    return protocol.Split(d, np.zeros(len(users), bool), np.ones(len(users), bool))


def test_metrics_match_hand_computed_values():
    # user 0: test {1, 5}, hits at ranks 1 and 3 of 10; user 1: test {7}, no hit;
    # user 2: 12 test items, hits at ranks 2 and 10.
    split = _split_with_test([[1, 5], [7], list(range(20, 32))], n_items=40)
    topk = np.array(
        [
            [1, 2, 5, 3, 4, 6, 8, 9, 10, 11],
            [0, 1, 2, 3, 4, 5, 6, 8, 9, 10],
            [0, 20, 1, 2, 3, 4, 5, 6, 8, 31],
        ],
        np.int64,
    )
    m = protocol.score_topk(topk, split)
    d = lambda r: 1 / math.log2(r + 1)  # noqa: E731
    ndcg0 = (d(1) + d(3)) / (d(1) + d(2))
    ndcg2 = (d(2) + d(10)) / sum(d(r) for r in range(1, 11))
    assert m["precision@10"] == pytest.approx((2 / 10 + 0 + 2 / 10) / 3)
    assert m["recall@10"] == pytest.approx((2 / 2 + 0 + 2 / 10) / 3)
    assert m["ndcg@10"] == pytest.approx((ndcg0 + 0 + ndcg2) / 3)
    # distinct recommended items: {0..6, 8..11, 20, 31} = 13 of 40
    assert m["coverage@10"] == pytest.approx(13 / 40)
    assert m["users"] == 3


def test_padding_counts_as_a_miss_and_rows_must_align():
    split = _split_with_test([[3]], n_items=5)
    m = protocol.score_topk(np.array([[-1, 3] + [-1] * 8], np.int64), split)
    assert m["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert m["coverage@10"] == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="^topk"):
        protocol.score_topk(np.zeros((2, 10), np.int64), split)


# --- split ---------------------------------------------------------------------------------------


def test_split_holds_out_the_latest_fifth_with_raw_id_ties():
    # user 0: 6 interactions -> ceil(1.2) = 2 held out; two share the last timestamp, and the
    # higher raw item id sorts last. user 1: 4 interactions -> stays in train, not evaluated.
    d = _dataset(
        users=[0] * 6 + [1] * 4,
        items=[0, 1, 2, 3, 4, 5, 0, 1, 2, 3],
        ts=[1, 2, 3, 4, 9, 9, 1, 2, 3, 4],
        raw=[10, 11, 12, 13, 99, 50, 10, 11, 12, 13],
    )
    s = protocol.temporal_split(d)
    # The last two by (timestamp, raw id): item 5 (t=9, raw 50), then item 4 (t=9, raw 99).
    assert set(s.test[0].indices.tolist()) == {4, 5}
    # With one held out, the tie is decided by the raw id: item 4 (raw 99) sorts last.
    one = protocol.Split(d, *(lambda t: (~t, t))(protocol._split_mask(d.users, d.items, d.timestamps, d.raw_items, 5, 0.1)))
    assert one.test[0].indices.tolist() == [4]
    assert s.test[1].nnz == 0 and s.train[1].nnz == 4
    assert s.eval_users.tolist() == [0]


def test_split_counts_and_disjointness_on_movielens(movielens_split):
    s = movielens_split
    # EVAL.md: every user evaluated; 80,419 train and 20,417 test interactions.
    assert (s.train.nnz, s.test.nnz, len(s.eval_users)) == (80_419, 20_417, 610)
    assert s.train.multiply(s.test).nnz == 0
    # and every held-out interaction is at or after the user's latest train interaction
    d = s.data
    last_train = np.zeros(d.n_users, np.int64)
    np.maximum.at(last_train, d.users[s.train_mask], d.timestamps[s.train_mask])
    assert (d.timestamps[s.test_mask] >= last_train[d.users[s.test_mask]]).all()


def test_validation_split_lies_inside_train(movielens_split):
    s = movielens_split
    v = s.validation()
    assert not (v.train_mask & s.test_mask).any() and not (v.test_mask & s.test_mask).any()
    assert (v.train_mask | v.test_mask).sum() == s.train_mask.sum()
    assert v.train.nnz + v.test.nnz == s.train.nnz


def test_u_data_format(tmp_path):
    rows = [(1, 10, 5, 100), (1, 11, 3, 101), (1, 12, 4, 102), (1, 13, 1, 103), (1, 14, 2, 104),
            (2, 10, 4, 100), (2, 11, 4, 200)]
    (tmp_path / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    (tmp_path / "u.genre").write_text("unknown|0\nAction|1\nComedy|2\n")
    (tmp_path / "u.item").write_text(
        "".join(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|0|{i % 2}|{1 - i % 2}\n" for i in range(10, 15)),
        encoding="latin-1",
    )
    d = datasets.load_movielens(tmp_path)
    assert (d.n_users, d.n_items, len(d.users)) == (2, 5, 7)
    assert d.item_text[0] == "Movie 10 (1995) Comedy" and d.item_text[1] == "Movie 11 (1995) Action"
    s = protocol.temporal_split(d)
    assert s.eval_users.tolist() == [0] and s.test[0].indices.tolist() == [4]


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="^dataset: .*neither ratings.csv nor u.data"):
        datasets.load_movielens(tmp_path)


# --- our metric code against a direct implementation, on MovieLens -------------------------------


def _direct_metrics(topk, test: sp.csr_matrix, n_items, k=10):
    p = r = n = 0.0
    seen: set[int] = set()
    for row in range(test.shape[0]):
        truth = set(test.indices[test.indptr[row] : test.indptr[row + 1]].tolist())
        recs = [int(x) for x in topk[row, :k] if x >= 0]
        seen.update(recs)
        hits = [1.0 if x in truth else 0.0 for x in recs]
        t = min(k, len(truth))
        p += sum(hits) / k
        r += sum(hits) / t
        n += sum(h / math.log2(i + 2) for i, h in enumerate(hits)) / sum(1 / math.log2(i + 2) for i in range(t))
    u = test.shape[0]
    return {"precision@10": p / u, "recall@10": r / u, "ndcg@10": n / u, "coverage@10": len(seen) / n_items}


@pytest.mark.parametrize("model", ["random", "popular"])
def test_metrics_equal_a_direct_python_implementation_on_movielens(movielens_split, model):
    s = movielens_split
    feats = protocol.features(s)
    topk = protocol.model_topk(model, s, feats, k=10, seed=3)
    got = protocol.score_topk(topk, s)
    want = _direct_metrics(topk, s.test[s.eval_users], s.data.n_items)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_popularity_reproduces_the_eval_md_baseline(movielens_split):
    s = movielens_split
    m = protocol.score_topk(protocol.model_topk("popular", s, protocol.features(s), k=10), s)
    assert round(m["ndcg@10"], 4) == 0.0885 and round(m["coverage@10"], 4) == 0.0101


def test_ranking_excludes_train_items_and_breaks_ties_by_lower_index(movielens_split):
    s = movielens_split
    feats = protocol.features(s)
    for model in ("random", "popular", "recent"):
        topk = protocol.model_topk(model, s, feats, k=20, seed=1)
        for row, u in enumerate(s.eval_users[:50]):
            train = set(s.train.indices[s.train.indptr[u] : s.train.indptr[u + 1]].tolist())
            assert not train & set(topk[row].tolist()), model
    # popular: equal counts are ranked by item index
    topk = protocol.model_topk("popular", s, feats, k=50)
    counts = feats.engagement
    for row in topk[:20]:
        keys = [(-counts[i], i) for i in row]
        assert keys == sorted(keys)


def test_random_model_is_deterministic_per_seed(movielens_split):
    s = movielens_split
    feats = protocol.features(s)
    a = protocol.model_topk("random", s, feats, k=10, seed=7)
    assert np.array_equal(a, protocol.model_topk("random", s, feats, k=10, seed=7))
    assert not np.array_equal(a, protocol.model_topk("random", s, feats, k=10, seed=8))


# --- the dense EASE reference ---------------------------------------------------------------------


def test_dense_ease_solves_the_constrained_ridge_regression():
    """EASE (Steck 2019): B minimizes ||X - XB||² + l2 ||B||² with diag(B) = 0, so (G + l2 I) B - G
    is diagonal (the constraint's multipliers) and B's diagonal is 0."""
    rng = np.random.default_rng(2)
    x = sp.csr_matrix((rng.random((40, 12)) < 0.3).astype(np.float32))
    b = protocol.ease_item_weights(x, 5.0)
    g = (x.T @ x).toarray().astype(np.float64)
    residual = (g + 5.0 * np.eye(12)) @ b - g
    assert np.allclose(residual - np.diag(np.diag(residual)), 0.0, atol=1e-9)
    assert np.diag(b).tolist() == [0.0] * 12


def test_ease_ranks_each_users_unseen_items_by_x_b_ties_to_the_lower_index():
    rng = np.random.default_rng(4)
    users = np.repeat(np.arange(30), 8)
    items = rng.integers(0, 15, users.size)
    d = _dataset(users, items, np.tile(np.arange(8), 30), n_items=16)  # item 15: never seen
    s = protocol.temporal_split(d)
    no_text = sp.csr_matrix((16, 1), dtype=np.float32)  # EASE reads no content
    topk = protocol.model_topk("ease", s, protocol.features(s, tfidf=no_text), k=20)
    b = protocol.ease_item_weights(s.train, protocol.EASE_L2)
    for row, u in enumerate(s.eval_users):
        scores = np.asarray(s.train[u] @ b).ravel()
        seen = set(s.train[u].indices.tolist())
        want = sorted((i for i in range(16) if i not in seen), key=lambda i: (-scores[i], i))
        assert topk[row, : len(want)].tolist() == want
        assert (topk[row, len(want):] == -1).all()


def test_ease_refuses_a_catalog_too_large_for_dense_matrices(monkeypatch):
    monkeypatch.setattr(protocol, "EASE_MAX_ITEMS", 10)
    with pytest.raises(ValueError, match="^models: ease"):
        protocol.ease_item_weights(sp.csr_matrix(np.eye(11, dtype=np.float32)))
