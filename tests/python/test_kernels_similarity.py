"""cosine_topk, item_neighbors, recommend_items, weight_interactions and hybrid_topk against
numpy/scipy brute force (and implicit's weighting functions), plus their argument errors."""

import numpy as np
import pytest
import scipy.sparse as sp
from implicit.nearest_neighbours import bm25_weight, tfidf_weight

import feedrank


def random_csr(rng, rows, cols, density, values=(1, 4)):
    m = sp.random(rows, cols, density=density, random_state=rng, format="csr", dtype=np.float32)
    m.data[:] = rng.integers(*values, m.nnz)
    return m


def dense_cosine(a, b):
    a = np.asarray(a.todense(), np.float64)
    b = np.asarray(b.todense(), np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = (a @ b.T) / np.outer(na, nb)
    return np.nan_to_num(c)


def check_topk(idx, scores, full, k, exclude=None):
    """idx/scores equal the brute-force top-k of `full` up to float ties."""
    for q in range(full.shape[0]):
        row = full[q].copy()
        if exclude is not None:
            row[exclude[q]] = 0
        order = np.lexsort((np.arange(len(row)), -row))
        want = [(j, row[j]) for j in order if abs(row[j]) > 1e-6][:k]
        got = [(j, s) for j, s in zip(idx[q], scores[q]) if j >= 0]
        assert len(got) == len(want), q
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
        for j, s in got:
            assert abs(row[j] - s) < 1e-5
        assert all(j == -1 for j in idx[q][len(got):])


@pytest.mark.parametrize("seed", range(4))
def test_cosine_topk_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    q = random_csr(rng, 40, 30, 0.15)
    q.data = q.data * rng.choice([-1.0, 1.0], q.nnz).astype(np.float32)
    items = random_csr(rng, 55, 30, 0.1)
    idx, sc = feedrank.cosine_topk(q, items, k=7)
    assert idx.shape == (40, 7) and idx.dtype == np.int64 and sc.dtype == np.float32
    check_topk(idx, sc, dense_cosine(q, items), 7)
    # queries vs themselves, self excluded
    idx, sc = feedrank.cosine_topk(q, k=5)
    full = dense_cosine(q, q)
    np.fill_diagonal(full, 0)
    check_topk(idx, sc, full, 5)
    assert np.all(sc <= 1.0 + 1e-6) and np.all(sc >= -1.0 - 1e-6)


def test_item_neighbors_and_recommendations_equal_brute_force():
    rng = np.random.default_rng(7)
    x = random_csr(rng, 120, 50, 0.08)
    s = feedrank.item_neighbors(x, k=6)
    full = dense_cosine(x.T.tocsr(), x.T.tocsr())
    np.fill_diagonal(full, 0)
    dense_s = np.asarray(s.todense())
    for i in range(50):
        nz = np.flatnonzero(dense_s[i])
        want = np.sort(full[i][full[i] > 1e-6])[::-1][:6]
        np.testing.assert_allclose(np.sort(dense_s[i][nz])[::-1], want, atol=1e-5)
    users = np.arange(120)
    idx, sc = feedrank.recommend_items(x, s, users, k=8)
    scores = np.asarray((x @ s).todense(), np.float64)
    interacted = [x[u].indices for u in users]
    check_topk(idx, sc, scores, 8, exclude=interacted)
    for u in users:
        assert not set(idx[u][idx[u] >= 0]) & set(interacted[u])


def test_weighting_equals_implicit():
    rng = np.random.default_rng(3)
    x = random_csr(rng, 90, 40, 0.1)
    tf = tfidf_weight(x.T.tocsr()).T.tocsr()
    bm = bm25_weight(x.T.tocsr(), K1=100, B=0.8).T.tocsr()
    assert abs(feedrank.weight_interactions(x, "tfidf") - tf).max() < 1e-5
    assert abs(feedrank.weight_interactions(x, "bm25") - bm).max() < 1e-4
    assert set(feedrank.weight_interactions(x, "binary").data) == {1.0}
    assert abs(feedrank.weight_interactions(x, "none") - x).max() == 0


def reference_hybrid(x, tfidf, age, eng, author, users, k, w, neighbors, tau, exclude=None):
    """The design's hybrid with user-user collaborative filtering, in dense numpy."""
    xd = np.asarray(x.todense(), np.float64)
    n_users, n_posts = xd.shape
    ucos = dense_cosine(x, x)
    np.fill_diagonal(ucos, 0)
    pcos_rows = np.asarray(tfidf.todense(), np.float64)
    rec = np.exp(-age / tau)
    en = np.log1p(eng)
    out = []
    for u in users:
        sims = ucos[u]
        order = np.lexsort((np.arange(n_users), -sims))
        nb = [v for v in order if sims[v] > 0][:neighbors]
        collab = sum(sims[v] * xd[v] for v in nb) if nb else np.zeros(n_posts)
        engaged = [p for p in x[u].indices if xd[u, p] > 0]
        if engaged:
            prof = pcos_rows[engaged].mean(axis=0)
            num = pcos_rows @ prof
            den = np.linalg.norm(pcos_rows, axis=1) * np.linalg.norm(prof)
            content = np.where(den > 0, num / np.where(den > 0, den, 1), 0)
        else:
            content = np.zeros(n_posts)
        comps = np.stack([collab, content, rec, en], axis=1)
        ok = np.ones(n_posts, bool)
        ok[x[u].indices] = False
        ok[author == u] = False
        if exclude is not None:
            ok[exclude[u].indices] = False
        c = comps[ok]
        lo, hi = c.min(axis=0), c.max(axis=0)
        norm = np.where(hi > lo, (comps - lo) / np.where(hi > lo, hi - lo, 1), 0)
        score = norm @ np.asarray(w)
        score[~ok] = -np.inf
        order = np.lexsort((np.arange(n_posts), -score))[: min(k, ok.sum())]
        out.append((order, score[order], norm[order], score))
    return out


def hybrid_inputs(seed):
    rng = np.random.default_rng(seed)
    n_users, n_posts = 30, 60
    x = random_csr(rng, n_users, n_posts, 0.08)
    docs = [" ".join(rng.choice(["news", "sport", "music", "art", "tech", "food", "travel"], 4)) for _ in range(n_posts)]
    tfidf = feedrank.TfidfVectorizer().fit_transform(docs)
    age = rng.uniform(0, 60, n_posts)
    eng = rng.integers(0, 50, n_posts).astype(np.float64)
    author = rng.integers(-1, n_users, n_posts)
    return x, tfidf, age, eng, author


@pytest.mark.parametrize("seed", range(3))
def test_hybrid_equals_a_dense_reference(seed):
    x, tfidf, age, eng, author = hybrid_inputs(seed)
    users = np.arange(x.shape[0])
    w = (0.4, 0.3, 0.2, 0.1)
    cfg = {"top_k": 10, "weights": dict(zip(feedrank.component_names(), w)), "neighbors": 5}
    res = feedrank.hybrid_topk(x, tfidf, age, eng, author, users, cfg)
    assert res["indices"].shape == (30, 10) and res["components"].shape == (30, 10, 4)
    ref = reference_hybrid(x, tfidf, age, eng, author, users, 10, w, 5, 30.0)
    for u, (order, score, norm, every_score) in zip(users, ref):
        got = res["indices"][u]
        n = len(order)
        assert np.all(got[n:] == -1)
        np.testing.assert_allclose(res["scores"][u][:n], score, atol=1e-4)
        np.testing.assert_allclose(res["components"][u][:n], norm, atol=1e-4)
        # the same posts up to float ties: each returned post has the reference's score for it,
        # and a post that only one side returns scores like the last post returned (a tie at the cut)
        np.testing.assert_allclose(every_score[got[:n]], res["scores"][u][:n], atol=1e-4)
        for p in set(got[:n]) ^ set(order):
            assert abs(every_score[p] - score[-1]) < 1e-4, (u, p, every_score[p], score[-1])
        # exclusions hold
        assert not set(got) & set(x[u].indices)
        assert not np.any(author[got[got >= 0]] == u)
        # scores are the combine() of the components
        np.testing.assert_allclose(res["components"][u] @ np.array(w, np.float32), res["scores"][u], atol=1e-5)


def test_hybrid_exclude_candidates_and_item_item():
    x, tfidf, age, eng, author = hybrid_inputs(9)
    users = np.array([0, 3, 5])
    hidden = sp.csr_matrix((np.ones(3), ([0, 3, 5], [1, 2, 3])), shape=x.shape)
    cands = np.arange(0, 60, 2)
    res = feedrank.hybrid_topk(x, tfidf, age, eng, author, users,
                               {"top_k": 50, "collaborative": "item_item", "weighting": "bm25"},
                               exclude=hidden, candidates=cands)
    for r, u in enumerate(users):
        got = res["indices"][r][res["indices"][r] >= 0]
        assert set(got) <= set(cands)
        assert hidden[u].indices[0] not in got
    # a user with no history still gets fresh/popular posts
    empty = sp.csr_matrix(x.shape, dtype=np.float32)
    res = feedrank.hybrid_topk(empty, tfidf, age, eng, np.full(60, -1), np.array([0]), {"top_k": 5})
    assert np.all(res["components"][0][:, :2] == 0)
    assert np.all(res["indices"][0] >= 0)


def test_a_prepared_model_scores_batches_exactly_like_one_call():
    """HybridModel is what the pipeline builds once and asks per batch: any batching, order or
    repetition of users gives each user the very result of hybrid_topk (the kernel scores users
    in blocks of 32, so batches here cross and split blocks)."""
    x, tfidf, age, eng, author = hybrid_inputs(4)
    hidden = sp.csr_matrix((np.ones(4), ([0, 3, 5, 7], [1, 2, 3, 4])), shape=x.shape)
    cfg = {"top_k": 7, "neighbors": 4,
           "weights": {"collaborative": 0.5, "content": 0.2, "recency": 0.2, "engagement": 0.1}}
    users = np.arange(x.shape[0])
    whole = feedrank.hybrid_topk(x, tfidf, age, eng, author, users, cfg, exclude=hidden)
    model = feedrank.HybridModel(x, tfidf, age, eng, author, cfg, exclude=hidden)
    assert model.n_users == x.shape[0]
    order = np.random.default_rng(0).choice(users, 70)
    for batch in (np.array_split(order, 5), [order]):
        for part in batch:
            got = model.topk(part)
            for key in ("indices", "scores", "components"):
                np.testing.assert_array_equal(got[key], whole[key][part])
    with pytest.raises(ValueError, match=r"^users: index"):
        model.topk(np.array([x.shape[0]]))
    with pytest.raises(ValueError, match=r"^top_k: must be >= 1"):
        feedrank.HybridModel(x, tfidf, age, eng, author, {"top_k": 0})


def test_bad_arguments_name_the_argument():
    x, tfidf, age, eng, author = hybrid_inputs(1)
    users = np.array([0, 1])
    call = lambda **kw: feedrank.hybrid_topk(**{**dict(interactions=x, post_tfidf=tfidf, post_age_days=age,
                                                      post_engagement=eng, post_author=author, users=users), **kw})
    call()
    with pytest.raises(ValueError, match=r"^top_k: must be >= 1"):
        call(config={"top_k": 0})
    with pytest.raises(ValueError, match=r"^users: index"):
        call(users=np.array([-1]))
    with pytest.raises(ValueError, match=r"^users: index"):
        call(users=np.array([99]))
    with pytest.raises(TypeError, match=r"^users:"):
        call(users=np.array([0.5]))
    with pytest.raises(ValueError, match=r"^post_age_days: values must be finite"):
        call(post_age_days=np.where(np.arange(60) == 3, np.nan, age))
    with pytest.raises(ValueError, match=r"^post_age_days: must be finite and >= 0"):
        call(post_age_days=-age)
    with pytest.raises(ValueError, match=r"^post_engagement: has length"):
        call(post_engagement=eng[:5])
    with pytest.raises(TypeError, match=r"^post_engagement:"):
        call(post_engagement=eng.astype(np.int64))
    with pytest.raises(ValueError, match=r"^post_author:"):
        call(post_author=np.full(60, 1000))
    with pytest.raises(ValueError, match=r"^post_tfidf: has"):
        call(post_tfidf=tfidf[:10])
    with pytest.raises(ValueError, match=r"^interactions: values must be finite"):
        bad = x.copy(); bad.data[0] = np.inf
        call(interactions=bad)
    with pytest.raises(ValueError, match=r"^weights: content weight must be finite"):
        call(config={"weights": {"content": -1.0}})
    with pytest.raises(ValueError, match=r"^collaborative: unknown variant `nope`"):
        call(config={"collaborative": "nope"})
    with pytest.raises(ValueError, match=r"^weighting:"):
        call(config={"weighting": "nope"})
    with pytest.raises(ValueError, match=r"^exclude: must have the shape"):
        call(exclude=sp.csr_matrix((2, 2)))
    with pytest.raises(ValueError, match=r"^candidates:"):
        call(candidates=np.array([600]))
    with pytest.raises(ValueError, match=r"^recency_tau_days:"):
        call(config={"recency_tau_days": 0.0})
    with pytest.raises(ValueError, match=r"^bm25_b:"):
        call(config={"weighting": "bm25", "bm25_b": 2.0})
    with pytest.raises(ValueError, match=r"^k: must be >= 1"):
        feedrank.cosine_topk(x, k=0)
    with pytest.raises(ValueError, match=r"^items: has"):
        feedrank.cosine_topk(x, sp.csr_matrix((3, 7)))
    with pytest.raises(TypeError, match=r"^queries:"):
        feedrank.cosine_topk(np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"^item_neighbors:"):
        feedrank.recommend_items(x, sp.csr_matrix((3, 3)), users)
    # tuple form and int data are accepted
    t = (x.indptr, x.indices, x.data.astype(np.int64), x.shape)
    assert np.array_equal(feedrank.cosine_topk(t, k=3)[0], feedrank.cosine_topk(x, k=3)[0])


def test_hybrid_item_item_with_precomputed_neighbors_equals_refitting():
    x, tfidf, age, eng, author = hybrid_inputs(4)
    users = np.arange(x.shape[0])
    for weighting in ("none", "bm25"):
        cfg = {"top_k": 10, "neighbors": 5, "collaborative": "item_item", "weighting": weighting}
        fitted = feedrank.hybrid_topk(x, tfidf, age, eng, author, users, cfg)
        s = feedrank.item_neighbors(x, k=5, weighting=weighting)
        given = feedrank.hybrid_topk(x, tfidf, age, eng, author, users, cfg, item_neighbors=s)
        assert np.array_equal(fitted["indices"], given["indices"])
        np.testing.assert_allclose(fitted["scores"], given["scores"], atol=1e-6)
    with pytest.raises(ValueError, match=r"^item_neighbors: must be items x items"):
        feedrank.hybrid_topk(x, tfidf, age, eng, author, users, {"collaborative": "item_item"},
                             item_neighbors=sp.csr_matrix((3, 3), dtype=np.float32))
