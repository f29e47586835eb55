"""The time-cut protocol (feedrank.timecut): the replay serves at t only what was known at t, its
blend is feedrank.blend of the sources, nightly_only cannot reach a post born after the cut, the
sources keep the API's filters, the metrics and their errors on a hand-made case, shares chosen
on validation only, the MovieLens cut of EVAL.md, and the command line."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import scipy.sparse as sp

import feedrank
from feedrank import timecut

pytestmark = pytest.mark.fast

HOUR = timecut.HOUR_MS


@pytest.fixture(scope="module")
def log() -> timecut.EventLog:
    return timecut.synthetic_log(seed=3, users=300, posts=3_000, interactions=40_000)


@pytest.fixture(scope="module")
def config() -> dict:
    return feedrank.default_config()


@pytest.fixture(scope="module")
def test_window(log) -> timecut.Window:
    return timecut.windows(log)[1]


@pytest.fixture(scope="module")
def result(log, test_window, config) -> timecut.ReplayResult:
    return timecut.replay(log, test_window, config)


def _active_users(log: timecut.EventLog, before_ms: int) -> np.ndarray:
    return np.unique(log.user[log.time_ms < before_ms])


def _perturbed(log: timecut.EventLog, after_ms: int, seed: int) -> timecut.EventLog:
    """``log`` with every event after ``after_ms`` moved to another user, post, type and time
    (still after it), and every post created after it rewritten and re-dated (still after it)."""
    rng = np.random.default_rng(seed)
    late = log.time_ms > after_ms
    n = int(late.sum())
    user, post, kind, time = log.user.copy(), log.post.copy(), log.kind.copy(), log.time_ms.copy()
    user[late] = rng.integers(0, log.n_users, n)
    post[late] = rng.integers(0, log.n_posts, n)
    kind[late] = rng.integers(0, len(timecut.INTERACTION_TYPES), n)
    time[late] = np.sort(rng.integers(after_ms + 1, log.end_ms, n))
    unborn = np.flatnonzero(log.post_created_ms > after_ms)
    created = log.post_created_ms.copy()
    created[unborn] = rng.integers(after_ms + 1, log.end_ms, len(unborn))
    text = list(log.post_text)
    for p in unborn:
        text[p] = f"rewritten words {rng.integers(1_000_000)} brandnew"
    return dataclasses.replace(log, user=user, post=post, kind=kind, time_ms=time, post_created_ms=created,
                               post_text=text)


def _served(log, window, config, users, t):
    rp = timecut.Replay(log, window, config, users)
    sources = rp.sources(t, users)
    return sources, timecut.blend_lists(sources, [0.4, 0.3, 0.15, 0.15], log.post_author)[0]


# --- what the replay may read -------------------------------------------------------------------


def test_the_list_served_at_t_ignores_every_event_and_post_after_t(log, test_window, config):
    t = test_window.cut_ms + 7 * HOUR
    users = _active_users(log, t)
    before, served = _served(log, test_window, config, users, t)
    after, served_after = _served(_perturbed(log, t, seed=1), test_window, config, users, t)
    assert np.array_equal(served, served_after)
    for a, b in zip(before, after):
        for name in timecut.BLENDED:
            assert np.array_equal(a[name], b[name]), name
    # the check can fail: the same perturbation from the cut on changes what is served at t
    _, served_early = _served(_perturbed(log, test_window.cut_ms, seed=1), test_window, config, users, t)
    assert not np.array_equal(served, served_early)


def test_a_serve_time_before_the_cut_is_refused(log, test_window, config):
    rp = timecut.Replay(log, test_window, config, np.array([0]))
    with pytest.raises(ValueError, match="^t_ms:"):
        rp.sources(test_window.cut_ms - 1, [0])


# --- the blend and the sources ------------------------------------------------------------------


def test_the_list_scored_is_feedrank_blend_of_the_source_lists_under_the_author_cap(log, result):
    shares = [0.6, 0.2, 0.1, 0.1]
    lists, slot_sources = result.served(shares)
    capped = 0
    for row, row_sources, sources in zip(lists, slot_sources, result.sources):
        ordered = [sources[name] for name in timecut.BLENDED]
        src, idx = feedrank.blend(ordered, np.array(shares, np.float32), sum(len(x) for x in ordered))
        want, want_sources, per_author = [], [], {}
        for s, i in zip(src, idx):  # the API's cap: an author's 4th post is passed over
            a = log.post_author[ordered[s][i]]
            per_author[a] = per_author.get(a, 0) + 1
            if per_author[a] <= feedrank.AUTHOR_CAP and len(want) < 10:
                want.append(ordered[s][i])
                want_sources.append(s)
            capped += per_author[a] == feedrank.AUTHOR_CAP + 1 and len(want) < 10
        assert row[: len(want)].tolist() == want and (row[len(want) :] == -1).all()
        assert row_sources[: len(want)].tolist() == want_sources
    assert capped > 0  # the data has authors the cap holds back
    rep = timecut.report(result, shares)
    blend_row = next(r for r in rep["rows"] if r["feed"] == "blend")
    bulk = feedrank.ranking_metrics(lists, result.truth, k=10, n_items=result.n_posts)
    assert blend_row["ndcg"]["mean"] == pytest.approx(bulk["ndcg"], abs=1e-9)
    assert blend_row["recall"]["mean"] == pytest.approx(bulk["recall"], abs=1e-9)
    # personalized alone is nightly_only, slot for slot; without a cap, the blend's first 10
    assert np.array_equal(result.served([1, 0, 0, 0])[0], result.nightly_only())
    uncapped = timecut.blend_lists(result.sources, shares, log.post_author, author_cap=10)[0]
    for row, sources in zip(uncapped[:200], result.sources):
        ordered = [sources[name] for name in timecut.BLENDED]
        src, idx = feedrank.blend(ordered, np.array(shares, np.float32), 10)
        assert row.tolist() == [ordered[s][i] for s, i in zip(src, idx)]


def test_nightly_only_cannot_recommend_a_post_born_after_the_cut(log, result):
    nightly = result.nightly_only()
    listed = nightly[nightly >= 0]
    assert len(listed) and (log.post_created_ms[listed] < result.window.cut_ms).all()
    assert result.fresh_truth.nnz > 0
    rep = timecut.report(result)
    rows = {r["feed"]: r for r in rep["rows"]}
    assert rows["nightly_only"]["fresh_recall"]["mean"] == 0.0
    assert rows["blend"]["fresh_recall"]["mean"] > 0.0


def test_every_source_keeps_the_apis_filters(log, test_window, config, result):
    t = test_window.cut_ms + 12 * HOUR
    users = _active_users(log, t)[:80]
    rp = timecut.Replay(log, test_window, config, users)
    touches = timecut.FirstTouches.of(log)
    cfg = config["sources"]
    for u, lists in zip(users, rp.sources(t, users)):
        seen = touches.seen(int(u), t)
        own = np.flatnonzero(log.post_author == u)
        for name, ids in lists.items():
            assert not np.isin(ids, seen).any() and not np.isin(ids, own).any(), name
            assert len(np.unique(ids)) == len(ids), name
        born = log.post_created_ms[lists["fresh"]]
        assert ((born >= test_window.cut_ms) & (born <= t)).all()
        assert len(lists["fresh"]) <= cfg["fresh"]["candidates"]
        assert len(lists["trending"]) <= cfg["trending"]["candidates"]
        assert len(lists["because_you_liked"]) <= cfg["because_you_liked"]["candidates"]
        assert (log.post_created_ms[lists["personalized"]] < test_window.cut_ms).all()


def test_because_you_liked_offers_the_neighbours_of_the_latest_likes_since_the_cut(log, test_window, config):
    t = test_window.end_ms - 1
    live = (log.time_ms >= test_window.cut_ms) & (log.time_ms <= t) & np.isin(log.kind, timecut._LIKES)
    likers = np.unique(log.user[live])[:40]
    rp = timecut.Replay(log, test_window, config, likers)
    per_like = config["sources"]["because_you_liked"]["per_like"]
    nb = rp.nightly.neighbors
    offered = 0
    for u, lists in zip(likers, rp.sources(t, likers)):
        liked = log.post[live & (log.user == u)]
        neighbours = np.unique(np.concatenate([nb.indices[nb.indptr[p] : nb.indptr[p + 1]] for p in liked]))
        got = lists["because_you_liked"]
        assert np.isin(got, neighbours).all()
        assert len(got) <= per_like * min(len(np.unique(liked)), config["sources"]["because_you_liked"]["likes"])
        offered += len(got)
    assert offered > 0


def test_trending_counts_weighted_events_of_the_window_decayed_by_bucket_age():
    # one post, events of weight 1 (view) and 4 (like) in three 10-minute buckets
    minute = 60_000
    times = np.array([5, 25, 26, 55]) * minute
    log = timecut.EventLog(
        name="toy", n_users=2, user=np.array([0, 1, 0, 1]), post=np.zeros(4, np.int64),
        kind=np.array([0, 2, 0, 0], np.int8), time_ms=times, post_created_ms=np.array([0]),
        post_author=np.array([-1]), post_text=["a post"], end_ms=2 * HOUR,
    )
    config = feedrank.validate_config(
        {"sources": {"trending": {"window_hours": 1, "bucket_minutes": 10, "half_life_hours": 0.5}}})
    rp = timecut.Replay(log, timecut.Window("test", HOUR, 2 * HOUR, HOUR), config, np.array([0]))
    # at minute 55 the buckets 0..5 are read; bucket 5 is current (age 0), 2 is 3 buckets old, 0 five
    live, decayed = rp.engagement(55 * minute)
    assert live[0] == pytest.approx(1 + 4 + 1 + 1)
    half = lambda buckets: 0.5 ** (buckets * 10 / 30)  # noqa: E731
    assert decayed[0] == pytest.approx(1 * half(5) + (4 + 1) * half(3) + 1 * half(0))
    # at minute 54 the event of minute 55 has not happened; at 65 the bucket of minute 5 has left
    assert rp.engagement(54 * minute)[0][0] == pytest.approx(6)
    assert rp.engagement(65 * minute)[0][0] == pytest.approx(6)


def test_the_oracle_ranks_only_posts_born_by_t_the_user_has_not_seen(log, result):
    assert result.oracle is not None and result.oracle.shape == (len(result.user), 10)
    touches = timecut.FirstTouches.of(log)
    for r in range(0, len(result.user), 37):
        row = result.oracle[r][result.oracle[r] >= 0]
        t = int(result.t_ms[r])
        assert (log.post_created_ms[row] <= t).all()
        assert not np.isin(row, touches.seen(int(result.user[r]), t)).any()
    # it is the ceiling: the generator's own chances rank far above what is served
    rows = {r["feed"]: r for r in timecut.report(result)["rows"]}
    assert rows["oracle"]["ndcg"]["mean"] > 2 * rows["blend"]["ndcg"]["mean"]


# --- metrics --------------------------------------------------------------------------------------


def _hand_made_result() -> timecut.ReplayResult:
    """Three pairs of two users over 6 posts; posts 4 and 5 are born after the cut."""
    n_posts = 6
    truth_rows = [[0, 4], [1], [5, 2]]
    rows = [r for r, row in enumerate(truth_rows) for _ in row]
    cols = [p for row in truth_rows for p in row]
    truth = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(3, n_posts))
    born_after = np.array([0, 0, 0, 0, 1, 1], np.float32)
    fresh = sp.csr_matrix(truth.multiply(born_after[None, :]))
    fresh.eliminate_zeros()
    # orthogonal topics: posts 0, 1 on "a", 2, 3 on "b", 4, 5 on "c"
    tfidf = sp.csr_matrix(np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], np.float32))
    empty = np.zeros(0, np.int64)
    personalized = [np.array([4, 0, 1]), np.array([2, 3]), np.array([1])]
    sources = [{"personalized": p, "fresh": empty, "because_you_liked": empty, "trending": empty} for p in personalized]
    return timecut.ReplayResult(
        log_name="toy", window=timecut.Window("test", 0, 10, 1), config=feedrank.default_config(),
        users_qualified=2, user=np.array([0, 0, 1]), t_ms=np.array([0, 1, 0]), truth=truth, fresh_truth=fresh,
        sources=sources, oracle=None, tfidf=tfidf, post_author=np.arange(n_posts),
    )


def test_metrics_and_their_errors_on_a_hand_made_case():
    res = _hand_made_result()
    m = timecut.pair_metrics(res.nightly_only(), res)
    # pair 0: truth {0, 4}, list 4 0 1: hits at ranks 1 and 2; pair 1: truth {1}, list 2 3: none;
    # pair 2: truth {2, 5}, list 1: none
    assert m["ndcg"].tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert m["recall"].tolist() == pytest.approx([1.0, 0.0, 0.0])
    # fresh truth: pair 0 {4} (hit), pair 1 none (not counted), pair 2 {5} (missed)
    assert m["fresh_recall"][[0, 2]].tolist() == pytest.approx([1.0, 0.0]) and np.isnan(m["fresh_recall"][1])
    # 4 0 1: of three pairs only (0, 1) shares a topic: 1 - 1/3; 2 3: one pair, same topic: 0; 1: NaN
    assert m["diversity"][:2].tolist() == pytest.approx([1 - 1 / 3, 0.0]) and np.isnan(m["diversity"][2])
    rep = timecut.report(res, [1, 0, 0, 0])
    nightly = rep["rows"][0]
    assert nightly["feed"] == "nightly_only" and rep["pairs"] == 3 and rep["pairs_with_fresh_truth"] == 2
    # mean 1/3 over user 0's pairs (1, 0) and user 1's (0): residual sums 1/3 and -1/3
    assert nightly["ndcg"]["mean"] == pytest.approx(1 / 3)
    assert nightly["ndcg"]["se"] == pytest.approx(math.sqrt(2 / 1 * (1 / 9 + 1 / 9)) / 3)
    assert nightly["fresh_recall"]["n"] == 2 and nightly["diversity"]["n"] == 2
    blend = rep["rows"][1]
    assert blend["ndcg_change"]["relative"] == pytest.approx(0.0) and blend["slots"]["personalized"] == 1.0


# --- choosing shares -----------------------------------------------------------------------------


def test_shares_are_chosen_on_the_validation_window_only(log, config):
    valid_window, test_window = timecut.windows(log)
    grid = [(1, 0, 0, 0), (0.6, 0.2, 0.1, 0.1), (0.3, 0.5, 0.1, 0.1)]
    chosen = timecut.search_shares(timecut.replay(log, valid_window, config, oracle=False), grid=grid)
    again = timecut.search_shares(
        timecut.replay(_perturbed(log, test_window.cut_ms, seed=2), valid_window, config, oracle=False), grid=grid)
    assert chosen["chosen"] == again["chosen"] and chosen["trials"] == again["trials"]
    # the rule: within 2% of nightly_only's NDCG, the highest fresh-item recall
    allowed = [t for t in chosen["trials"] if t["ndcg"] >= 0.98 * chosen["nightly_ndcg"]]
    assert chosen["chosen"] == max(allowed, key=lambda t: (t["fresh_recall"], t["ndcg"]))
    assert chosen["trials"][0]["fresh_recall"] == 0.0


def test_share_grid_sums_to_one_and_keeps_personalized():
    grid = timecut.share_grid(0.25)
    assert (0.25, 0.25, 0.25, 0.25) in grid and (1.0, 0.0, 0.0, 0.0) in grid
    assert all(math.isclose(sum(s), 1.0) and s[0] > 0 for s in grid)
    assert len(grid) == len(set(grid)) == 20  # 4 + 3 + ... compositions of 4 quarters, personalized >= 1


# --- MovieLens and the command line ----------------------------------------------------------------


def test_movielens_cut_is_eval_mds(movielens_path):
    log = timecut.movielens_log(movielens_path)
    valid, test = timecut.windows(log)
    assert test.step_ms == timecut.DAY_MS and valid.end_ms == test.cut_ms
    assert int((log.post_created_ms >= test.cut_ms).sum()) == 1138
    res = timecut.replay(log, test, feedrank.default_config())
    assert len(np.unique(res.user)) == 27 and res.oracle is None
    # a rating >= 4 is a like
    assert set(np.unique(log.kind).tolist()) == {timecut.INTERACTION_TYPES.index(t) for t in ("view", "like")}


def test_cli_time_cut_prints_the_table_and_writes_json(tmp_path, capsys):
    from feedrank.cli import main

    out = tmp_path / "timecut.json"
    status = main(["evaluate", "--protocol", "time-cut", "--synthetic", "--users", "200", "--posts", "1500",
                   "--interactions", "20000", "--search-shares", "--json", str(out), "--quiet"])
    assert status == 0
    table = capsys.readouterr().out
    assert "validation window" in table and "test window" in table
    assert "| nightly_only |" in table and "| blend 0.6/0.2/0.1/0.1 |" in table and "| oracle |" in table
    doc = json.loads(out.read_text())
    assert doc["protocol"] == "time-cut"
    assert [r["feed"] for r in doc["test"]["rows"]] == ["nightly_only", "blend", "blend_chosen", "oracle"]
    chosen = doc["validation"]["chosen"]["shares"]
    assert doc["test"]["rows"][2]["shares"] == dict(zip(timecut.BLENDED, chosen))
    assert main(["evaluate", "--protocol", "time-cut"]) == 2
    assert "dataset:" in capsys.readouterr().err
    assert main(["evaluate", "--synthetic"]) == 2
