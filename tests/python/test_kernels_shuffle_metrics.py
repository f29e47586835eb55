"""shuffle/permutation and the EVAL.md ranking metrics, against direct Python implementations."""

import math

import numpy as np
import pytest
import scipy.sparse as sp

import feedrank


def test_shuffle_is_a_deterministic_permutation_keeping_dtype():
    for dtype in (np.int64, np.int32, np.uint64, np.float32, np.float64):
        ids = np.arange(1000, dtype=dtype) * 3
        a = feedrank.shuffle(ids, seed=7)
        assert a.dtype == ids.dtype
        assert np.array_equal(np.sort(a), ids)
        assert np.array_equal(a, feedrank.shuffle(ids, seed=7))
        assert not np.array_equal(a, feedrank.shuffle(ids, seed=8))
        # the input is not modified
        assert np.array_equal(ids, np.arange(1000, dtype=dtype) * 3)


def test_shuffle_equals_indexing_by_permutation():
    ids = np.arange(50, dtype=np.int64) + 1000
    perm = feedrank.permutation(50, 123)
    assert perm.dtype == np.int64
    assert np.array_equal(feedrank.shuffle(ids, 123), ids[perm])
    strings = np.array([f"s{i}" for i in range(50)])
    assert np.array_equal(feedrank.shuffle(strings, 123), strings[perm])


def test_shuffle_pages_without_repeats():
    order = feedrank.permutation(10_000, 99)
    pages = [order[i : i + 100] for i in range(0, 10_000, 100)]
    assert len(np.unique(np.concatenate(pages))) == 10_000


def test_shuffle_positions_are_uniform():
    # value 0's final position over many seeds: chi-square with 9 dof, 0.999 quantile 27.9
    counts = np.zeros(10)
    for seed in range(5000):
        counts[int(np.argmax(feedrank.permutation(10, seed) == 0))] += 1
    chi2 = ((counts - 500) ** 2 / 500).sum()
    assert chi2 < 27.9


def test_shuffle_bad_arguments():
    with pytest.raises(ValueError, match=r"^seed:"):
        feedrank.shuffle(np.arange(3), -1)
    with pytest.raises(TypeError, match=r"^seed:"):
        feedrank.shuffle(np.arange(3), "x")
    with pytest.raises(TypeError, match=r"^ids:"):
        feedrank.shuffle([1, 2, 3], 1)
    with pytest.raises(ValueError, match=r"^ids:"):
        feedrank.shuffle(np.zeros((2, 2)), 1)
    with pytest.raises(ValueError, match=r"^n:"):
        feedrank.permutation(-1, 1)


def reference_metrics(topk, test_rows, k, n_items):
    """EVAL.md, written out directly."""
    p = r = n = 0.0
    users = 0
    seen = set()
    for row, truth in zip(topk, test_rows):
        if not truth:
            continue
        users += 1
        recs = [int(x) for x in row[:k] if x >= 0]
        seen.update(recs)
        hits = [i for i, item in enumerate(row[:k]) if item >= 0 and item in truth]
        t = min(k, len(truth))
        p += len(hits) / k
        r += len(hits) / t
        dcg = sum(1 / math.log2(i + 2) for i in hits)
        idcg = sum(1 / math.log2(i + 2) for i in range(t))
        n += dcg / idcg
    return dict(
        precision=p / max(users, 1),
        recall=r / max(users, 1),
        ndcg=n / max(users, 1),
        coverage=len(seen) / n_items,
        users=users,
    )


@pytest.mark.parametrize("seed", range(5))
def test_ranking_metrics_equal_a_direct_implementation(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items, width = 60, 40, 20
    topk = np.stack([rng.permutation(n_items)[:width] for _ in range(n_users)]).astype(np.int64)
    topk[rng.random(topk.shape) < 0.1] = -1
    test_rows = [set(rng.choice(n_items, rng.integers(0, 8), replace=False).tolist()) for _ in range(n_users)]
    rows = [sorted(s) for s in test_rows]
    test = sp.csr_matrix(
        (
            np.ones(sum(map(len, rows))),
            np.concatenate([np.array(r, dtype=np.int64) for r in rows]),
            np.cumsum([0] + [len(r) for r in rows]),
        ),
        shape=(n_users, n_items),
    )
    for k in (1, 5, 10, 20):
        got = feedrank.ranking_metrics(topk, test, k=k)
        want = reference_metrics(topk, test_rows, k, n_items)
        assert got["users"] == want["users"]
        for key in ("precision", "recall", "ndcg", "coverage"):
            assert got[key] == pytest.approx(want[key], abs=1e-12), key
    curves = feedrank.metrics_at_k(topk, test, ks=[1, 5, 10])
    assert curves["ndcg"][1] == pytest.approx(reference_metrics(topk, test_rows, 5, n_items)["ndcg"])
    assert list(curves["k"]) == [1, 5, 10]


def test_ranking_metrics_bad_arguments():
    topk = np.array([[0, 1]], dtype=np.int64)
    test = sp.csr_matrix(np.array([[1.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"^k: must be >= 1"):
        feedrank.ranking_metrics(topk, test, k=0)
    with pytest.raises(ValueError, match=r"^k: must be <="):
        feedrank.ranking_metrics(topk, test, k=3)
    with pytest.raises(TypeError, match=r"^topk:"):
        feedrank.ranking_metrics(topk.astype(np.float64), test, k=1)
    with pytest.raises(ValueError, match=r"^test:"):
        feedrank.ranking_metrics(np.zeros((2, 2), dtype=np.int64), test, k=1)
    with pytest.raises(ValueError, match=r"^topk:"):
        feedrank.ranking_metrics(np.array([[7, 0]]), test, k=1)
    with pytest.raises(TypeError, match=r"^test:"):
        feedrank.ranking_metrics(topk, "nope", k=1)
    with pytest.raises(ValueError, match=r"^n_items:"):
        feedrank.ranking_metrics(topk, test, k=1, n_items=0)
