"""feedrank.TfidfVectorizer equals scikit-learn's TfidfVectorizer (same vocabulary, idf and
matrix within 1e-6), on random Unicode corpora and on MovieLens titles, genres and tags, with
every option; with `max_features` wherever no two terms tie in corpus count at the cut (at a tie
feedrank keeps the earlier term, scikit-learn an arbitrary one: tested explicitly below)."""

import csv
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer as SkTfidf

import feedrank

MOVIELENS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "movielens-latest-small"

# Pieces that stress the tokenizer: scripts with and without case, digits of other scripts,
# combining marks (not \w), the final-sigma rule, dotted capital I, underscores, apostrophes.
PIECES = [
    "hello", "World", "ΟΔΟΣ", "Σ", "ΣΑΣ.", "ὈΔΥΣΣΕΎΣ", "İstanbul", "straße", "ǅemal", "ﬁne",
    "東京タワー", "٣٤٥", "१२३", "e\u0301te\u0301", "क्षत्रिय", "_x_", "a", "Ⅻ", "①②", "don't",
    "x\u200dy", "ΑΣ\u0345", "Ꭰꭰ", "𝒜𝒷", "ǈ", "ϴ", "Å", "K", "Ω",
]


def random_corpus(rng: np.random.Generator, n_docs: int) -> list[str]:
    docs = []
    for _ in range(n_docs):
        parts = []
        for _ in range(rng.integers(0, 12)):
            r = rng.random()
            if r < 0.4:
                parts.append(PIECES[rng.integers(len(PIECES))])
            elif r < 0.8:
                # random code points from the whole range (surrogates excluded)
                cps = rng.integers(0x20, 0x30000, size=rng.integers(1, 6))
                parts.append("".join(chr(c) for c in cps if not 0xD800 <= c <= 0xDFFF))
            else:
                parts.append("".join(chr(c) for c in rng.integers(0x20, 0x250, size=rng.integers(1, 8))))
        sep = [" ", "", ", ", "\t", "-", "\u3000"][rng.integers(6)]
        docs.append(sep.join(parts))
    return docs


def assert_same(docs, **params):
    ours = feedrank.TfidfVectorizer(**params)
    theirs = SkTfidf(**params)
    x = ours.fit_transform(docs)
    y = theirs.fit_transform(docs)
    assert ours.vocabulary_ == theirs.vocabulary_
    assert list(ours.get_feature_names_out()) == list(theirs.get_feature_names_out())
    np.testing.assert_allclose(ours.idf_, theirs.idf_, rtol=0, atol=1e-12)
    assert x.shape == y.shape
    assert x.dtype == np.float64
    assert x.has_sorted_indices
    assert abs(x - y).max() <= 1e-6 if x.nnz or y.nnz else True
    return ours, theirs


@pytest.mark.parametrize("seed", range(8))
def test_random_unicode_corpora_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    docs = random_corpus(rng, 300)
    ours, theirs = assert_same(docs)
    new = random_corpus(rng, 50)
    assert abs(ours.transform(new) - theirs.transform(new)).max() <= 1e-6


@pytest.mark.parametrize(
    "params",
    [
        dict(min_df=2),
        dict(max_df=0.5),
        dict(min_df=0.01, max_df=40),
        dict(sublinear_tf=True),
        dict(smooth_idf=False),
        dict(norm="l1"),
        dict(norm=None),
        dict(lowercase=False),
    ],
)
def test_options_equal_sklearn(params):
    docs = random_corpus(np.random.default_rng(11), 400)
    assert_same(docs, **params)


def test_max_features_ties_at_the_cut_go_to_the_earlier_term():
    # Corpus counts: aa 3; bb, cc, dd 2 each (first seen in the order dd, cc, bb); ee 1.
    docs = ["dd cc bb aa", "aa dd cc bb ee", "aa"]
    kept = lambda n: list(feedrank.TfidfVectorizer(max_features=n).fit(docs).get_feature_names_out())  # noqa: E731
    # the cut falls inside the bb/cc/dd tie: the earlier terms (code-point order) are kept,
    # whatever order the documents show them in
    assert kept(2) == ["aa", "bb"]
    assert kept(3) == ["aa", "bb", "cc"]
    # the cut falls between counts 2 and 1: no tie, so scikit-learn keeps the same terms
    ours, _ = assert_same(docs, max_features=4)
    assert list(ours.get_feature_names_out()) == ["aa", "bb", "cc", "dd"]


def test_max_features_equals_sklearn_unless_terms_tie_at_the_cut():
    """feedrank's rule: the `max_features` terms of highest corpus count (the count matrix summed
    over documents, after min_df/max_df), ties at the cut to the earlier term in code-point
    order. scikit-learn ranks with an unstable argsort, so at such a tie it may keep other terms
    of the same count; with no tie at the cut both keep the same terms and give the same matrix."""
    from sklearn.feature_extraction.text import CountVectorizer

    rng = np.random.default_rng(16)
    words = [f"w{i:02d}" for i in range(30)] + ["ΣΑΣ", "straße", "東京", "é_x"]
    outcomes = {"tie": 0, "no tie": 0}
    for case in range(160):
        if case % 2:
            docs = random_corpus(rng, 60)
        else:
            docs = [" ".join(rng.choice(words, rng.integers(1, 9))) for _ in range(40)]
        counts = CountVectorizer().fit(docs)
        total = np.asarray(counts.transform(docs).sum(axis=0)).ravel()
        count = {t: int(total[i]) for t, i in counts.vocabulary_.items()}
        limit = int(rng.integers(1, len(count)))
        ranked = sorted(count, key=lambda t: (-count[t], t))
        ours = feedrank.TfidfVectorizer(max_features=limit).fit(docs)
        assert sorted(ours.vocabulary_) == sorted(ranked[:limit]), case
        if count[ranked[limit - 1]] != count[ranked[limit]]:
            outcomes["no tie"] += 1
            assert_same(docs, max_features=limit)
        else:
            outcomes["tie"] += 1
            theirs = SkTfidf(max_features=limit).fit(docs)
            # scikit-learn's pick differs at most among the tied terms: same counts kept
            assert sorted(count[t] for t in theirs.vocabulary_) == sorted(count[t] for t in ours.vocabulary_)
    assert min(outcomes.values()) >= 20, outcomes  # both kinds of cut were exercised


def test_tokenizer_matches_the_regex():
    import re

    pattern = re.compile(r"(?u)\b\w\w+\b")
    for doc in random_corpus(np.random.default_rng(5), 500):
        assert feedrank.tokenize(doc) == pattern.findall(doc.lower())
        assert feedrank.tokenize(doc, lowercase=False) == pattern.findall(doc)


def read_csv(name):
    with open(MOVIELENS / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_movielens_titles_genres_and_tags_equal_sklearn():
    movies = read_csv("movies.csv")
    tags = read_csv("tags.csv")
    titles = [m["title"] for m in movies]
    genres = [m["genres"].replace("|", " ") for m in movies]
    by_movie: dict[str, list[str]] = {}
    for t in tags:
        by_movie.setdefault(t["movieId"], []).append(t["tag"])
    combined = [
        f"{m['title']} {m['genres'].replace('|', ' ')} {' '.join(by_movie.get(m['movieId'], []))}"
        for m in movies
    ]
    for docs in (titles, genres, [t["tag"] for t in tags], combined):
        assert_same(docs)


def test_json_round_trip_keeps_the_fitted_state():
    docs = random_corpus(np.random.default_rng(3), 100)
    v = feedrank.TfidfVectorizer(min_df=2, sublinear_tf=True).fit(docs)
    w = feedrank.TfidfVectorizer.from_json(v.to_json())
    assert w.vocabulary_ == v.vocabulary_
    assert w.min_df == 2 and w.sublinear_tf is True
    assert abs(w.transform(docs) - v.transform(docs)).max() == 0
    with pytest.raises(ValueError, match=r"^s:"):
        feedrank.TfidfVectorizer.from_json('{"format": "other"}')


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match=r"^docs: expected an iterable of strings"):
        feedrank.TfidfVectorizer().fit("one string")
    with pytest.raises(TypeError, match=r"^docs: document 1 is a int"):
        feedrank.TfidfVectorizer().fit(["ok", 3])
    with pytest.raises(ValueError, match=r"^docs: empty vocabulary"):
        feedrank.TfidfVectorizer().fit(["a", "b"])
    with pytest.raises(ValueError, match=r"^norm:"):
        feedrank.TfidfVectorizer(norm="l3").fit(["aa"])
    with pytest.raises(ValueError, match=r"^max_df:"):
        feedrank.TfidfVectorizer(max_df=1.5).fit(["aa"])
    with pytest.raises(ValueError, match=r"^max_df: max_df corresponds to < documents than min_df"):
        feedrank.TfidfVectorizer(min_df=5).fit(["aa bb", "cc"])
    with pytest.raises(ValueError, match=r"^min_df: After pruning, no terms remain"):
        feedrank.TfidfVectorizer(min_df=2).fit(["aa bb", "cc"])
    with pytest.raises(TypeError, match=r"^min_df:"):
        feedrank.TfidfVectorizer(min_df="2").fit(["aa"])
    with pytest.raises(ValueError, match=r"^max_features:"):
        feedrank.TfidfVectorizer(max_features=0).fit(["aa"])
    with pytest.raises(ValueError, match="not fitted"):
        feedrank.TfidfVectorizer().transform(["aa"])
