"""The hybrid's one parameter object through the binding (config=, the deprecated keywords), the
names the core owns, history_weights against its numpy definition, Ctrl-C during a long kernel,
and arrays read in place or converted."""

import os
import signal
import threading
import time

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import feedrank


def hybrid_inputs(seed, n_users=30, n_posts=60):
    rng = np.random.default_rng(seed)
    x = sp.random(n_users, n_posts, density=0.08, random_state=rng, format="csr", dtype=np.float32)
    x.data[:] = rng.integers(1, 4, x.nnz)
    docs = [" ".join(rng.choice(["news", "sport", "music", "art", "tech", "food"], 4)) for _ in range(n_posts)]
    tfidf = feedrank.TfidfVectorizer().fit_transform(docs)
    age = rng.uniform(0, 60, n_posts)
    eng = rng.integers(0, 50, n_posts).astype(np.float64)
    author = rng.integers(-1, n_users, n_posts)
    return x, tfidf, age, eng, author


def same_result(a, b):
    return all(np.array_equal(a[key], b[key]) for key in ("indices", "scores", "components"))


# --- config= --------------------------------------------------------------------------------


def test_config_is_none_a_partial_dict_or_a_whole_config():
    x, tfidf, age, eng, author = hybrid_inputs(1)
    users = np.arange(x.shape[0])
    by_default = feedrank.hybrid_topk(x, tfidf, age, eng, author, users)
    assert by_default["indices"].shape == (30, feedrank.default_config()["top_k"])
    whole = feedrank.hybrid_topk(x, tfidf, age, eng, author, users, feedrank.default_config())
    assert same_result(by_default, whole)
    # k is the config's top_k; fields left out keep their defaults
    top5 = feedrank.hybrid_topk(x, tfidf, age, eng, author, users, config={"top_k": 5})
    assert top5["indices"].shape == (30, 5)
    assert np.array_equal(top5["indices"], by_default["indices"][:, :5])
    tuned = feedrank.validate_config({"top_k": 5, "neighbors": 3, "recency_tau_days": 7.0})
    model = feedrank.HybridModel(x, tfidf, age, eng, author, tuned)
    assert same_result(model.topk(users), feedrank.hybrid_topk(x, tfidf, age, eng, author, users, tuned))


def test_bad_configs_name_the_field():
    x, tfidf, age, eng, author = hybrid_inputs(2)
    users = np.array([0])
    call = lambda cfg: feedrank.hybrid_topk(x, tfidf, age, eng, author, users, cfg)
    with pytest.raises(ValueError, match=r"^top_kk: unknown field"):
        call({"top_kk": 3})
    with pytest.raises(ValueError, match=r"^weights.fresh: unknown field"):
        call({"weights": {"fresh": 1.0}})
    with pytest.raises(ValueError, match=r"^neighbors:"):
        call({"neighbors": "many"})
    with pytest.raises(ValueError, match=r"^recency_tau_days: must be finite"):
        call({"recency_tau_days": float("nan")})
    with pytest.raises(ValueError, match=r"^bm25_k1: must be finite and >= 0"):
        call({"bm25_k1": -1.0})
    # before config=, the 7th argument was k: a number there is now a type error, not a top-k
    with pytest.raises(TypeError, match=r"^config: expected a dict"):
        call(10)
    with pytest.raises(TypeError, match=r"^config: expected a dict"):
        feedrank.HybridModel(x, tfidf, age, eng, author, [("top_k", 3)])


def test_validate_config_knows_the_bm25_settings():
    cfg = feedrank.default_config()
    assert (cfg["bm25_k1"], cfg["bm25_b"]) == (100.0, 0.8)
    assert feedrank.validate_config({"bm25_b": 0.5})["bm25_b"] == 0.5
    with pytest.raises(ValueError, match=r"^bm25_b: must be in \[0, 1\]"):
        feedrank.validate_config({"bm25_b": 1.5})
    # numpy scalars read like the Python numbers they stand for
    assert feedrank.validate_config({"top_k": np.int64(9), "ridge_l2": np.float32(2.5)})["top_k"] == 9


def test_the_retrieval_settings_round_trip_and_bad_values_name_the_field():
    cfg = feedrank.default_config()
    assert cfg["retrieval"] == {"mode": "exhaustive", "budget": 2000, "collaborative": 1000, "content": 1000,
                                "content_terms": 8, "posting_limit": 500, "prior": 60000}
    tuned = feedrank.validate_config({"retrieval": {"mode": "candidates", "posting_limit": np.int64(50)}})
    assert tuned["retrieval"] == {**cfg["retrieval"], "mode": "candidates", "posting_limit": 50}
    assert feedrank.validate_config(tuned) == tuned
    with pytest.raises(ValueError, match=r"^retrieval.content_terms: must be >= 1, got 0"):
        feedrank.validate_config({"retrieval": {"content_terms": 0}})
    with pytest.raises(ValueError, match=r"^retrieval.mode: unknown variant `all`"):
        feedrank.validate_config({"retrieval": {"mode": "all"}})
    assert cfg["content_normalization"] == "min_max"
    assert feedrank.validate_config({"content_normalization": "cosine"})["content_normalization"] == "cosine"
    with pytest.raises(ValueError, match=r"^content_normalization: unknown variant `max`"):
        feedrank.validate_config({"content_normalization": "max"})
    with pytest.raises(ValueError, match=r"^retrieval.budgit: unknown field"):
        feedrank.validate_config({"retrieval": {"budgit": 3}})
    with pytest.raises(ValueError, match=r"^retrieval.budget: must be >= top_k \(300\) in candidates mode, got 200"):
        feedrank.validate_config({"top_k": 300, "retrieval": {"mode": "candidates", "budget": 200}})
    x, tfidf, age, eng, author = hybrid_inputs(7)
    with pytest.raises(ValueError, match=r"^retrieval.prior: must be >= 1, got 0"):
        feedrank.HybridModel(x, tfidf, age, eng, author, {"retrieval": {"prior": 0}})


def test_candidates_covering_every_post_score_as_the_exhaustive_path():
    x, tfidf, age, eng, author = hybrid_inputs(8)
    users = np.arange(x.shape[0])
    every = dict.fromkeys(("budget", "collaborative", "content", "content_terms", "posting_limit", "prior"), 10**6)
    for model in feedrank.collaborative_models():
        cfg = {"collaborative": model, "top_k": 20}
        exhaustive = feedrank.HybridModel(x, tfidf, age, eng, author, cfg).topk(users)
        candidates = feedrank.HybridModel(
            x, tfidf, age, eng, author, {**cfg, "retrieval": {"mode": "candidates", **every}}
        ).topk(users)
        assert same_result(candidates, exhaustive), model
        small = feedrank.HybridModel(
            x, tfidf, age, eng, author, {**cfg, "retrieval": {"mode": "candidates", "budget": 20, "prior": 5}}
        ).topk(users)
        assert small["indices"].shape == exhaustive["indices"].shape


# --- the keyword arguments before config= (one release) -------------------------------------

DEFAULT_WEIGHTS = (0.4, 0.3, 0.2, 0.1)
DEPRECATED = [
    # keyword, value, the config it stands for, the config the call starts from
    ("k", 7, {"top_k": 7}, None),
    ("weights", (0.1, 0.6, 0.2, 0.1), {"weights": {"collaborative": 0.1, "content": 0.6, "recency": 0.2,
                                                   "engagement": 0.1}}, None),
    ("neighbors", 2, {"neighbors": 2}, None),
    ("recency_tau_days", 3.0, {"recency_tau_days": 3.0}, None),
    ("collaborative", "item_item", {"collaborative": "item_item"}, None),
    ("weighting", "bm25", {"weighting": "bm25"}, None),
    ("bm25_k1", 0.5, {"weighting": "bm25", "bm25_k1": 0.5}, {"weighting": "bm25"}),
    ("bm25_b", 0.1, {"weighting": "bm25", "bm25_b": 0.1}, {"weighting": "bm25"}),
    ("ridge_l2", 0.5, {"collaborative": "ridge", "ridge_l2": 0.5}, {"collaborative": "ridge"}),
]


@pytest.mark.parametrize("keyword, value, meant, start", DEPRECATED, ids=[d[0] for d in DEPRECATED])
def test_each_old_keyword_still_works_with_a_deprecation_warning(keyword, value, meant, start):
    x, tfidf, age, eng, author = hybrid_inputs(3)
    users = np.arange(x.shape[0])
    field = "top_k" if keyword == "k" else keyword
    with pytest.warns(DeprecationWarning, match=rf'^the keyword argument {keyword}= .*config=\{{"{field}": \.\.\.\}}'):
        old = feedrank.hybrid_topk(x, tfidf, age, eng, author, users, start, **{keyword: value})
    new = feedrank.hybrid_topk(x, tfidf, age, eng, author, users, meant)
    assert same_result(old, new)
    # and the keyword did change something (it is not silently dropped)
    assert not same_result(new, feedrank.hybrid_topk(x, tfidf, age, eng, author, users, start))


def test_old_keywords_of_the_model_and_old_weight_forms():
    x, tfidf, age, eng, author = hybrid_inputs(4)
    users = np.arange(x.shape[0])
    with pytest.warns(DeprecationWarning, match=r'^the keyword argument k= of hybrid_topk and HybridModel'):
        model = feedrank.HybridModel(x, tfidf, age, eng, author, k=4)
    assert model.topk(users)["indices"].shape == (30, 4)
    as_dict = dict(zip(feedrank.component_names(), (0.1, 0.6, 0.2, 0.1)))
    with pytest.warns(DeprecationWarning):
        a = feedrank.hybrid_topk(x, tfidf, age, eng, author, users, weights=as_dict)
    with pytest.warns(DeprecationWarning):
        b = feedrank.hybrid_topk(x, tfidf, age, eng, author, users, weights=(0.1, 0.6, 0.2, 0.1))
    assert same_result(a, b)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match=r"^weights: expected 4 weights"):
        feedrank.hybrid_topk(x, tfidf, age, eng, author, users, weights=(1, 2))
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match=r"^top_k: must be >= 1"):
        feedrank.hybrid_topk(x, tfidf, age, eng, author, users, k=0)


def test_an_unknown_keyword_is_a_type_error_naming_it():
    x, tfidf, age, eng, author = hybrid_inputs(5)
    with pytest.raises(TypeError, match=r"^lookback: unexpected keyword argument"):
        feedrank.hybrid_topk(x, tfidf, age, eng, author, np.array([0]), lookback=3)
    with pytest.raises(TypeError, match=r"^top_k: unexpected keyword argument"):
        feedrank.HybridModel(x, tfidf, age, eng, author, top_k=3)


# --- names the Python side never retypes ----------------------------------------------------


def test_the_core_names_its_enums_and_fields():
    cfg = feedrank.default_config()
    assert feedrank.interaction_types() == tuple(cfg["interaction_weights"])
    assert feedrank.component_names() == tuple(cfg["weights"])
    assert cfg["collaborative"] in feedrank.collaborative_models()
    assert cfg["weighting"] in feedrank.weighting_names()
    for model in feedrank.collaborative_models():
        assert feedrank.validate_config({"collaborative": model})["collaborative"] == model
    for weighting in feedrank.weighting_names():
        assert feedrank.validate_config({"weighting": weighting})["weighting"] == weighting
        feedrank.weight_interactions(sp.eye(3, format="csr"), weighting)


# --- history_weights: the numpy definition it replaces, bit for bit --------------------------


def numpy_history_weights(users, timestamps, raw_items, half_life):
    """The evaluation's definition before it moved into the core (python/feedrank/evaluate.py)."""
    w = np.ones(len(users), np.float32)
    if half_life == 0 or len(users) == 0:
        return w
    order = np.lexsort((raw_items, timestamps, users))
    u = users[order]
    counts = np.bincount(u)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    from_end = counts[u] - 1 - (np.arange(len(u)) - starts[u])
    w[order] = np.maximum(np.power(0.5, from_end / half_life), 1e-6).astype(np.float32)
    return w


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 40), st.integers(0, 9)), max_size=80),
    half_life=st.one_of(st.just(0.0), st.floats(0.05, 50.0)),
    float_times=st.booleans(),
)
def test_history_weights_equal_the_numpy_definition(rows, half_life, float_times):
    a = np.array(rows, np.int64).reshape(-1, 3)
    users, ts, raw = a[:, 0], a[:, 1], a[:, 2]
    if float_times:
        ts = ts * 0.5 + 1.7e9  # epoch seconds, as the pipeline reads them
    got = feedrank.history_weights(users, ts, raw, half_life)
    assert got.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), numpy_history_weights(users, ts, raw, half_life).view(np.uint32))


def test_history_weights_at_the_pipelines_scale_and_dtypes():
    rng = np.random.default_rng(0)
    n = 300_000
    users = rng.integers(0, 5_000, n).astype(np.int32)  # the pipeline's user_idx
    ts = 1.7e9 + rng.integers(0, 30 * 86_400, n).astype(np.float64)
    raw = rng.integers(0, 50_000, n).astype(np.int32)
    for half_life in (0.5, 3.0, 7.25, 40.0):
        got = feedrank.history_weights(users, ts, raw, half_life)
        want = numpy_history_weights(users.astype(np.int64), ts, raw, half_life)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_history_weights_name_bad_arguments():
    users, ts = np.array([0, 0]), np.array([1, 2])
    with pytest.raises(ValueError, match=r"^half_life: must be finite and >= 0"):
        feedrank.history_weights(users, ts, ts, -1.0)
    with pytest.raises(ValueError, match=r"^timestamps: has length 1"):
        feedrank.history_weights(users, ts[:1], ts, 1.0)
    with pytest.raises(ValueError, match=r"^timestamps: must not be NaN"):
        feedrank.history_weights(users, np.array([1.0, np.nan]), ts, 1.0)
    with pytest.raises(TypeError, match=r"^users:"):
        feedrank.history_weights(np.array([0.5, 1.0]), ts, ts, 1.0)
    with pytest.raises(TypeError, match=r"^raw_items:"):
        feedrank.history_weights(users, ts, np.array(["a", "b"]), 1.0)


# --- Ctrl-C ----------------------------------------------------------------------------------


def interrupted(call, after):
    """Runs `call` with SIGINT sent to this process `after` seconds in; returns (raised
    KeyboardInterrupt, seconds taken)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(after, os.kill, (os.getpid(), signal.SIGINT))
    start = time.perf_counter()
    timer.start()
    try:
        call()
        stopped = False
    except KeyboardInterrupt:
        stopped = True
    finally:
        elapsed = time.perf_counter() - start
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGINT, previous)
    return stopped, elapsed


def long_inputs():
    rng = np.random.default_rng(11)
    x = sp.random(6_000, 3_000, density=0.02, random_state=rng, format="csr", dtype=np.float32)
    x.data[:] = 1.0
    return x


@pytest.mark.parametrize("kernel", ["item_neighbors", "hybrid_topk"])
def test_ctrl_c_interrupts_a_long_kernel(kernel):
    x = long_inputs()
    if kernel == "item_neighbors":
        call = lambda: feedrank.item_neighbors(x, k=100)
        small = lambda: feedrank.item_neighbors(x[:50], k=5)
    else:
        n_posts = x.shape[1]
        rng = np.random.default_rng(1)
        tfidf = sp.random(n_posts, 2_000, density=0.01, random_state=rng, format="csr", dtype=np.float32)
        age, eng = rng.uniform(0, 30, n_posts), rng.uniform(0, 9, n_posts)
        model = feedrank.HybridModel(x, tfidf, age, eng, np.full(n_posts, -1), {"top_k": 50})
        call = lambda: model.topk(np.arange(x.shape[0]))
        small = lambda: model.topk(np.arange(5))
    start = time.perf_counter()
    call()
    uninterrupted = time.perf_counter() - start
    stopped, elapsed = interrupted(call, after=uninterrupted / 10)
    assert stopped, "the call returned instead of raising KeyboardInterrupt"
    # it stopped well before it would have finished
    assert elapsed < 0.7 * uninterrupted, (elapsed, uninterrupted)
    # and nothing is left behind: the next call runs as usual
    small()


# --- arrays read in place or converted: the same results whatever the layout -----------------


def test_every_input_layout_gives_the_same_result():
    x, tfidf, age, eng, author = hybrid_inputs(6)
    users = np.arange(x.shape[0])
    want = feedrank.hybrid_topk(x, tfidf, age.astype(np.float32), eng.astype(np.float32), author, users)
    # float64 and strided (non-contiguous) per-post arrays, int32 ids, int64 indices, unsorted rows
    strided_age = np.repeat(age.astype(np.float32), 2)[::2]
    assert not strided_age.flags.c_contiguous
    x64 = sp.csr_matrix((x.data.astype(np.float64), x.indices.astype(np.int64), x.indptr.astype(np.int64)),
                        shape=x.shape)
    shuffled = x.copy()
    for r in range(shuffled.shape[0]):
        a, b = shuffled.indptr[r], shuffled.indptr[r + 1]
        shuffled.indices[a:b] = shuffled.indices[a:b][::-1].copy()
        shuffled.data[a:b] = shuffled.data[a:b][::-1].copy()
    shuffled.has_sorted_indices = False
    for xs, a, e, au in [
        (x64, age, eng, author.astype(np.int32)),
        (shuffled, strided_age, eng.astype(np.float32), author),
        ((x.indptr, x.indices, x.data, x.shape), age, eng, author),
    ]:
        got = feedrank.hybrid_topk(xs, tfidf, a, e, au, users.astype(np.int32))
        assert same_result(got, want)
    # a Fortran-ordered matrix is read in row order
    comps = np.asfortranarray(want["components"][0])
    assert feedrank.reasons(comps, DEFAULT_WEIGHTS) == feedrank.reasons(np.ascontiguousarray(comps), DEFAULT_WEIGHTS)
