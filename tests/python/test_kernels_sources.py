"""The feed's request-time sources through the binding: user_profiles and fresh_topk against
their numpy definitions (and the profile against the hybrid's own content component), blend's
slot shares, the sources' names and config section, and every argument error named."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import feedrank

HOUR = 3_600_000
WORDS = ["news", "sport", "music", "art", "tech", "food", "film", "game"]


def posts_and_users(seed, n_users=25, n_posts=70):
    rng = np.random.default_rng(seed)
    x = sp.random(n_users, n_posts, density=0.08, random_state=rng, format="csr", dtype=np.float32)
    x.data[:] = rng.integers(0, 5, x.nnz)  # 0: a stored entry that is no engagement (hidden)
    docs = [" ".join(rng.choice(WORDS, rng.integers(1, 5))) for _ in range(n_posts)]
    tfidf = feedrank.TfidfVectorizer().fit_transform(docs)
    author = rng.integers(-1, n_users, n_posts)
    return rng, x, tfidf, author


def strongest(entries, k):
    """The k largest (key, value) pairs (ties: the lower key), by key."""
    return sorted(sorted(entries, key=lambda e: (-e[1], e[0]))[:k])


def numpy_profiles(x, tfidf, author, users, profile_terms, profile_authors):
    """profile.rs's definition, dense: per user (terms, authors) as lists of (index, weight)."""
    xd = x.toarray().astype(np.float64)
    td = tfidf.toarray().astype(np.float64)
    out = []
    for u in users:
        engaged = xd[u] > 0
        terms = []
        if engaged.any():
            mean = td[engaged].mean(axis=0)
            norm = np.linalg.norm(mean)
            if norm > 0:
                terms = [(t, mean[t] / norm) for t in np.flatnonzero(mean)]
        sums = {}
        for p in np.flatnonzero(engaged):
            if author[p] >= 0 and author[p] != u:
                sums[author[p]] = sums.get(author[p], 0.0) + xd[u, p]
        largest = max(sums.values(), default=0.0)
        authors = [(a, v / largest) for a, v in sums.items()]
        out.append((strongest(terms, profile_terms), strongest(authors, profile_authors)))
    return out


def csr_row(m, r):
    row = m.getrow(r)
    return list(zip(row.indices.tolist(), row.data.tolist()))


def assert_rows_close(got, want):
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-5, atol=1e-7)


# --- user_profiles ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed, profile_terms, profile_authors", [(0, 256, 32), (1, 3, 2), (2, 1, 1)])
def test_user_profiles_equal_their_numpy_definition(seed, profile_terms, profile_authors):
    _, x, tfidf, author = posts_and_users(seed)
    users = np.array([3, 0, 7, 7, 24])
    cfg = {"profile_terms": profile_terms, "profile_authors": profile_authors}
    got = feedrank.user_profiles(x, tfidf, author, users, cfg)
    terms, authors = got["terms"], got["authors"]
    assert terms.shape == (len(users), tfidf.shape[1]) and terms.dtype == np.float32
    assert authors.shape == (len(users), x.shape[0]) and authors.dtype == np.float32
    want = numpy_profiles(x, tfidf, author, users, profile_terms, profile_authors)
    for r, (want_terms, want_authors) in enumerate(want):
        assert_rows_close(csr_row(terms, r), want_terms)
        assert_rows_close(csr_row(authors, r), want_authors)
    # a cut profile keeps its weights as they were: no renormalization
    if profile_terms < tfidf.shape[1]:
        full = feedrank.user_profiles(x, tfidf, author, users)["terms"]
        for r in range(len(users)):
            for t, w in csr_row(terms, r):
                assert w == full[r, t]


def test_the_full_profile_gives_the_hybrids_content_component():
    """cos(stored profile, post) is the content component hybrid_topk reports, before the
    kernel's per-user min-max normalization (reproduced here)."""
    rng, x, tfidf, author = posts_and_users(5)
    n_users, n_posts = x.shape
    age, engagement = rng.uniform(0, 30, n_posts), rng.integers(0, 20, n_posts).astype(np.float64)
    users = np.arange(n_users)
    res = feedrank.hybrid_topk(x, tfidf, age, engagement, author, users, {"top_k": n_posts})
    profiles = feedrank.user_profiles(x, tfidf, author, users, {"profile_terms": tfidf.shape[1]})["terms"]
    rows = tfidf.toarray().astype(np.float64)
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-30)
    cosine = profiles.toarray().astype(np.float64) @ rows.T
    compared = 0
    for u in users:
        shown = [p for p in range(n_posts) if p not in x.getrow(u).indices and author[p] != u]
        lo, hi = cosine[u, shown].min(), cosine[u, shown].max()
        for slot, p in enumerate(res["indices"][u]):
            if p < 0:
                break
            want = (cosine[u, p] - lo) / (hi - lo) if hi > lo else 0.0
            assert abs(res["components"][u, slot, 1] - want) < 1e-4, (u, p)
            compared += 1
    assert compared > n_users * 10


# --- fresh_topk ----------------------------------------------------------------------------------

FRESH_REASONS = ["similar_content", "fresh", "popular", "liked_author"]


def numpy_fresh(tfidf, created, author, engagement, now, profiles, affinity, after, before, cfg, exclude, n):
    """fresh.rs's definition, dense: per user [(post, score, components, reason)], best first."""
    w, f = cfg["weights"], cfg["sources"]["fresh"]
    weights = np.array([w["content"], w["recency"], w["engagement"], f["author_weight"]])
    rows = tfidf.toarray().astype(np.float64)
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-30)
    newest_first = np.lexsort((np.arange(len(created)), -created))
    in_window = [p for p in newest_first if created[p] > now - f["window_hours"] * HOUR]
    pool = in_window[: f["pool_size"]]
    e = np.maximum(engagement.astype(np.float64), 0)
    e_max = e[pool].max() if pool else 0.0
    recency = np.exp(-np.maximum(now - created, 0) / (f["recency_tau_hours"] * HOUR))
    eng = np.log1p(e) / np.log1p(e_max) if e_max > 0 else np.zeros_like(e)
    out = []
    for u in range(profiles.shape[0]):
        content = np.clip(rows @ profiles.getrow(u).toarray().ravel(), 0, 1)
        aff_row = np.minimum(affinity.getrow(u).toarray().ravel(), 1)
        excluded = set(exclude.getrow(u).indices.tolist()) if exclude is not None else set()
        found = []
        for rank, p in enumerate(pool):
            if not (after[u] < created[p] <= before) or p in excluded:
                continue
            comps = np.array([content[p], recency[p], eng[p], aff_row[author[p]] if author[p] >= 0 else 0.0])
            found.append((-(weights @ comps), rank, p, comps))
        found.sort(key=lambda t: (t[0], t[1]))
        out.append([(p, -s, c, FRESH_REASONS[int(np.argmax(weights * c))]) for s, _, p, c in found[:n]])
    return out


def fresh_inputs(seed, n_users=12):
    rng, x, tfidf, author = posts_and_users(seed, n_users=n_users)
    n_posts = tfidf.shape[0]
    now = 1_700_000_000_000
    created = now - rng.choice(np.arange(1, 60 * 60), n_posts, replace=False).astype(np.int64) * 60_000
    engagement = rng.integers(0, 30, n_posts).astype(np.float64)
    users = np.arange(n_users)
    stored = feedrank.user_profiles(x, tfidf, author, users)
    after = now - rng.integers(1, 50, n_users) * HOUR
    exclude = sp.random(n_users, n_posts, density=0.1, random_state=rng, format="csr", dtype=np.float32)
    return tfidf, created, author, engagement, now, stored["terms"], stored["authors"], after, exclude


@pytest.mark.parametrize("seed, fresh", [(0, {}), (1, {"pool_size": 30, "window_hours": 20}), (2, {"author_weight": 2.0})])
def test_fresh_topk_equals_its_numpy_definition(seed, fresh):
    tfidf, created, author, engagement, now, profiles, affinity, after, exclude = fresh_inputs(seed)
    cfg = feedrank.validate_config({"sources": {"fresh": fresh}})
    before = now - HOUR  # the replay's request time may precede the pool's snapshot
    n = 15
    got = feedrank.fresh_topk(
        tfidf, created, author, engagement, now, profiles, affinity, after, before, cfg, exclude=exclude, n=n
    )
    users = profiles.shape[0]
    assert got["indices"].shape == (users, n) and got["indices"].dtype == np.int64
    assert got["scores"].shape == (users, n) and got["scores"].dtype == np.float32
    assert got["components"].shape == (users, n, 4) and got["components"].dtype == np.float32
    want = numpy_fresh(tfidf, created, author, engagement, now, profiles, affinity, after, before, cfg, exclude, n)
    found = 0
    for u in range(users):
        row = [p for p in got["indices"][u] if p >= 0]
        assert len(row) == len(want[u]) and len(got["reasons"][u]) == len(row)
        assert all(p == -1 for p in got["indices"][u][len(row):])
        np.testing.assert_allclose(got["scores"][u, : len(row)], [s for _, s, _, _ in want[u]], atol=1e-5)
        for slot, p in enumerate(row):
            # the scores agree; the post at each slot is the brute force's unless two scores tie
            w_post, w_score, w_comps, w_reason = want[u][slot]
            if p != w_post:
                assert abs(w_score - got["scores"][u, slot]) < 1e-5
                continue
            np.testing.assert_allclose(got["components"][u, slot], w_comps, atol=1e-5)
            assert got["reasons"][u][slot] == w_reason
            found += 1
    assert found > users * 5


def test_fresh_topk_defaults_to_the_configs_candidates_and_scores_new_posts_only():
    tfidf, created, author, engagement, now, profiles, affinity, after, _ = fresh_inputs(3)
    got = feedrank.fresh_topk(tfidf, created, author, engagement, now, profiles, affinity, after, now)
    assert got["indices"].shape[1] == feedrank.default_config()["sources"]["fresh"]["candidates"]
    small = feedrank.fresh_topk(
        tfidf, created, author, engagement, now, profiles, affinity, after, now, {"sources": {"fresh": {"candidates": 4}}}
    )
    assert small["indices"].shape[1] == 4
    assert np.array_equal(small["indices"], got["indices"][:, :4])
    for u, row in enumerate(got["indices"]):
        assert all(after[u] < created[p] <= now for p in row if p >= 0)
    # after everything: nothing
    none = feedrank.fresh_topk(tfidf, created, author, engagement, now, profiles, affinity, after * 0 + now, now)
    assert (none["indices"] == -1).all() and none["reasons"] == [[] for _ in after]


def test_a_liked_author_and_the_users_topic_lift_a_post():
    """A user who reads about cars and likes author 1: among three posts of the last
    milliseconds, without engagement, the newest comes last, and the reasons say why."""
    tfidf = feedrank.TfidfVectorizer().fit_transform(["cars engines", "gardens flowers", "cooking bread"])
    now = 1_700_000_000_000
    created = np.array([now - 3, now - 2, now - 1])
    profiles = tfidf[[0]]
    affinity = sp.csr_matrix(np.array([[0.0, 0.8]], dtype=np.float32))
    cfg = {"weights": {"collaborative": 0.4, "content": 0.3, "recency": 0.1, "engagement": 0.1}}
    got = feedrank.fresh_topk(
        tfidf, created, np.array([0, 1, 0]), np.zeros(3), now, profiles, affinity, np.array([0]), now, cfg
    )
    assert got["indices"][0, :3].tolist() == [0, 1, 2]
    assert got["reasons"] == [["similar_content", "liked_author", "fresh"]]


def test_fresh_topk_names_bad_arguments():
    tfidf, created, author, engagement, now, profiles, affinity, after, exclude = fresh_inputs(4)

    def call(**changed):
        args = dict(
            post_tfidf=tfidf, post_created_ms=created, post_author=author, post_engagement=engagement,
            now_ms=now, profiles=profiles, author_affinity=affinity, after_ms=after, before_ms=now,
        )
        args.update(changed)
        return feedrank.fresh_topk(**args)

    with pytest.raises(ValueError, match=r"^profiles: has 3 columns, expected one per term"):
        call(profiles=sp.csr_matrix((len(after), 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"^author_affinity: has 2 rows"):
        call(author_affinity=affinity[:2])
    with pytest.raises(ValueError, match=r"^after_ms: has length 1"):
        call(after_ms=after[:1])
    with pytest.raises(TypeError, match=r"^post_created_ms: expected an integer array"):
        call(post_created_ms=created.astype(np.float64))
    with pytest.raises(ValueError, match=r"^post_created_ms: has length 2"):
        call(post_created_ms=created[:2])
    with pytest.raises(ValueError, match=r"^post_engagement: must be finite and >= 0"):
        call(post_engagement=-engagement - 1)
    with pytest.raises(ValueError, match=r"^post_author: must be -1 or a column of author_affinity"):
        call(post_author=author + affinity.shape[1])
    with pytest.raises(ValueError, match=r"^exclude: must be users x posts"):
        call(exclude=exclude[:, :5])
    with pytest.raises(ValueError, match=r"^n: must be >= 1, got 0"):
        call(n=0)
    with pytest.raises(ValueError, match=r"^sources.fresh.pool_size: must be >= 1, got 0"):
        call(config={"sources": {"fresh": {"pool_size": 0}}})
    with pytest.raises(TypeError, match=r"^post_tfidf: expected a CSR matrix"):
        call(post_tfidf="posts")


def test_user_profiles_names_bad_arguments():
    _, x, tfidf, author = posts_and_users(6)
    users = np.array([0, 1])
    with pytest.raises(ValueError, match=r"^post_tfidf: has 3 rows, expected one per post"):
        feedrank.user_profiles(x, tfidf[:3], author, users)
    with pytest.raises(ValueError, match=r"^post_author: must be -1 or a user index in 0..25"):
        feedrank.user_profiles(x, tfidf, author + 25, users)
    with pytest.raises(ValueError, match=r"^post_author: has length 1"):
        feedrank.user_profiles(x, tfidf, author[:1], users)
    with pytest.raises(ValueError, match=r"^users: index 25 out of range"):
        feedrank.user_profiles(x, tfidf, author, np.array([25]))
    with pytest.raises(ValueError, match=r"^profile_authors: must be >= 1, got 0"):
        feedrank.user_profiles(x, tfidf, author, users, {"profile_authors": 0})
    with pytest.raises(TypeError, match=r"^config: expected a dict"):
        feedrank.user_profiles(x, tfidf, author, users, 5)


# --- blend ---------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=5),
    shares=st.lists(st.floats(0, 5, width=32), min_size=5, max_size=5),
    max_len=st.integers(0, 150),
)
def test_blend_holds_each_share_within_one_slot_and_keeps_each_lists_order(lengths, shares, max_len):
    lists = [np.arange(n, dtype=np.int64) + 1000 * s for s, n in enumerate(lengths)]
    shares = shares[: len(lists)]
    source, index = feedrank.blend(lists, shares, max_len)
    assert source.dtype == np.int64 and index.dtype == np.int64
    available = sum(n for n, s in zip(lengths, shares) if s > 0)
    assert len(source) == min(available, max_len)
    total = sum(shares)
    counts = np.zeros(len(lists))
    for slot, s in enumerate(source):
        counts[s] += 1
        if any(share > 0 and counts[i] >= lengths[i] for i, share in enumerate(shares)):
            break  # a source ran dry: its slots go to the others
        assert np.all(np.abs(counts - (slot + 1) * np.array(shares) / total) <= 1 + 1e-9)
    for s in range(len(lists)):
        assert index[source == s].tolist() == list(range((source == s).sum()))


def test_blend_places_a_post_once_and_a_minus_one_ends_a_list():
    personalized = np.array([5, 6, 7, 8])
    fresh = np.array([6, 9, -1, -1])  # a padded top-k row
    source, index = feedrank.blend([personalized, fresh], [1.0, 1.0], 10)
    ids = [[personalized, fresh][s][i] for s, i in zip(source, index)]
    assert ids == [5, 6, 7, 9, 8]
    # a share of 0 turns a source off
    source, _ = feedrank.blend([personalized, fresh], [1.0, 0.0], 10)
    assert source.tolist() == [0, 0, 0, 0]


def test_blend_names_bad_arguments():
    a = np.array([1, 2])
    with pytest.raises(ValueError, match=r"^shares: must be finite and >= 0, got -1"):
        feedrank.blend([a, a], [1.0, -1.0], 3)
    with pytest.raises(ValueError, match=r"^shares: has 1 values for 2 sources"):
        feedrank.blend([a, a], [1.0], 3)
    with pytest.raises(ValueError, match=r"^shares: values must be finite"):
        feedrank.blend([a], [float("nan")], 3)
    with pytest.raises(ValueError, match=r"^max_len: must be >= 0, got -1"):
        feedrank.blend([a], [1.0], -1)
    with pytest.raises(TypeError, match=r"^lists: expected a sequence of integer arrays"):
        feedrank.blend(3, [1.0], 3)
    with pytest.raises(TypeError, match=r"^lists: expected an integer array"):
        feedrank.blend([np.array([0.5])], [1.0], 3)


# --- the author cap ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    authors=st.lists(st.integers(-1, 6), max_size=80),
    window=st.integers(1, 12),
    cap=st.integers(1, 4),
    max_out=st.integers(0, 90),
)
def test_diversify_caps_every_window_while_others_wait_keeps_each_authors_order_and_every_post(
    authors, window, cap, max_out
):
    a = np.array(authors, np.int64)
    full = feedrank.diversify(a, window, cap)
    assert full.dtype == np.int64 and sorted(full.tolist()) == list(range(len(a)))  # every post, once
    left = set(range(len(a)))
    for j, p in enumerate(full.tolist()):
        before = a[full[max(0, j - window + 1) : j]]

        def at_cap(x: int) -> bool:  # nobody's posts (-1) are never capped
            return x >= 0 and (before == x).sum() >= cap

        if at_cap(a[p]):  # only when every post left is by an author at the cap
            assert all(at_cap(a[q]) for q in left), (j, full.tolist())
        left.remove(p)
    for x in set(authors):
        mine = [p for p in full.tolist() if a[p] == x]
        assert mine == sorted(mine)
    # a prefix is the full result's, stopping early only where only authors at the cap are left
    part = feedrank.diversify(a, window, cap, max_out).tolist()
    assert part == full[: len(part)].tolist() and len(part) <= max_out
    if len(part) < min(max_out, len(a)):
        q = full[len(part)]
        assert (a[full[max(0, len(part) - window + 1) : len(part)]] == a[q]).sum() >= cap


def test_diversify_passes_over_a_full_author_and_brings_the_post_back_when_the_window_moves():
    # the docstring's example, step by step: the third 7 waits until the first leaves the window
    assert feedrank.diversify(np.array([7, 7, 7, 8, 7, 9]), window=4, cap=2).tolist() == [0, 1, 3, 5, 2, 4]
    # the API's default cap, on a page of 10: an author's fourth post comes after the others, and
    # when only theirs are left it follows anyway (the whole list); a prefix stops there
    assert feedrank.AUTHOR_CAP == 3
    assert feedrank.diversify(np.array([1, 1, 1, 1, 2, 3]), window=10).tolist() == [0, 1, 2, 4, 5, 3]
    assert feedrank.diversify(np.array([1, 1, 1, 1, 2, 3]), window=10, max_out=10).tolist() == [0, 1, 2, 4, 5]


def test_diversify_names_bad_arguments():
    a = np.array([1, 2])
    with pytest.raises(ValueError, match=r"^window: must be >= 1, got 0"):
        feedrank.diversify(a, 0)
    with pytest.raises(ValueError, match=r"^cap: must be >= 1, got 0"):
        feedrank.diversify(a, 3, 0)
    with pytest.raises(ValueError, match=r"^max_out: must be >= 0, got -1"):
        feedrank.diversify(a, 3, 1, -1)
    with pytest.raises(TypeError, match=r"^authors: expected an integer array"):
        feedrank.diversify(np.array([0.5]), 3)
    with pytest.raises(ValueError, match=r"^authors: "):
        feedrank.diversify(np.zeros((2, 2), np.int64), 3)


# --- names and the config section ---------------------------------------------------------------


def test_the_source_names_are_the_blends_keys_and_the_fallback():
    cfg = feedrank.default_config()
    assert feedrank.source_names() == (*cfg["sources"]["blend"], "fallback")


def test_the_sources_section_and_its_errors_name_the_nested_field():
    sources = feedrank.default_config()["sources"]
    assert sources == {
        "blend": {"personalized": 0.6, "fresh": 0.2, "because_you_liked": 0.1, "trending": 0.1},
        "fresh": {"window_hours": 48, "pool_size": 20000, "candidates": 100, "author_weight": 0.3,
                  "recency_tau_hours": 24.0},
        "because_you_liked": {"likes": 10, "per_like": 5, "neighbors": 20, "candidates": 50},
        "trending": {"window_hours": 6, "half_life_hours": 2.0, "bucket_minutes": 10, "candidates": 50},
    }
    cfg = feedrank.default_config()
    assert (cfg["profile_terms"], cfg["profile_authors"]) == (256, 32)
    tuned = feedrank.validate_config({"sources": {"trending": {"candidates": 7}}})
    assert tuned["sources"]["trending"]["candidates"] == 7 and tuned["sources"]["fresh"] == sources["fresh"]
    with pytest.raises(ValueError, match=r"^sources.fresh.window_hours: must be >= 1, got 0"):
        feedrank.validate_config({"sources": {"fresh": {"window_hours": 0}}})
    with pytest.raises(ValueError, match=r"^sources.blend.fresh: must be finite and >= 0"):
        feedrank.validate_config({"sources": {"blend": {"fresh": -1}}})
    with pytest.raises(ValueError, match=r"^sources.blend: at least one share must be > 0"):
        feedrank.validate_config({"sources": {"blend": dict.fromkeys(sources["blend"], 0)}})
    with pytest.raises(ValueError, match=r"^sources.trending.half_lif: unknown field"):
        feedrank.validate_config({"sources": {"trending": {"half_lif": 1}}})
