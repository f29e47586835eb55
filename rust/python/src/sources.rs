//! The feed's candidate sources for Python: the stored profiles the pipeline writes, the fresh
//! source over many users (the offline replay of what the API serves), the blend, the author cap
//! and the sources' names. Each is one call into the core: the API runs the same functions.

use feedrank_core::blend as core_blend;
use feedrank_core::config::Source;
use feedrank_core::diversify::{self as core_diversify, AUTHOR_CAP};
use feedrank_core::fresh::{self, PostArrays, UserRows};
use feedrank_core::profile;
use feedrank_core::sparse::from_sorted_rows;
use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::contracts::optional_config;
use crate::convert::{csr_arg, csr_out, floats_1d, ids_1d, index_1d, positive, topk_dict, Values};
use crate::error::{type_error, value_error};
use crate::run::run_kernel;

/// Each user's stored profile, as the pipeline writes it: `terms`, the hybrid's content profile
/// (the mean TF-IDF row of the posts the user engaged with, i.e. interaction value > 0, divided
/// by its L2 norm) cut to its `config["profile_terms"]` strongest terms, not renormalized; and
/// `authors`, the user's affinity to the authors of those posts (interaction values summed per
/// author, divided by the user's largest; their own posts and authors -1 skipped), cut to its
/// `config["profile_authors"]` strongest. `post_author` holds user indices (rows of
/// `interactions`) or -1. Returns a dict of two float32 CSR matrices, one row per user of
/// `users`: `terms` (users x terms of `post_tfidf`) and `authors` (users x rows of
/// `interactions`).
///
/// >>> X = sp.csr_matrix(np.array([[4, 1, 0], [0, 2, 3]], dtype=np.float32))
/// >>> T = feedrank.TfidfVectorizer().fit_transform(["red apples", "green apples", "red cars"])
/// >>> p = feedrank.user_profiles(X, T, np.array([1, -1, 0]), np.array([0, 1]))
/// >>> p["authors"].toarray()
/// array([[0., 1.],
///        [1., 0.]], dtype=float32)
/// >>> p["terms"].shape
/// (2, 4)
#[pyfunction]
#[pyo3(signature = (interactions, post_tfidf, post_author, users, config=None))]
pub fn user_profiles<'py>(
    py: Python<'py>,
    interactions: &Bound<'py, PyAny>,
    post_tfidf: &Bound<'py, PyAny>,
    post_author: &Bound<'py, PyAny>,
    users: &Bound<'py, PyAny>,
    config: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let config = optional_config(config)?;
    let x = csr_arg("interactions", interactions)?;
    let tfidf = csr_arg("post_tfidf", post_tfidf)?;
    let author = ids_1d("post_author", post_author)?;
    let users = index_1d("users", users, x.nrows())?;
    let (x, tfidf, author): (_, _, &[i64]) = (x.view(), tfidf.view(), &author);
    let (terms, authors) = run_kernel(py, |cancel| {
        let profiles = profile::user_profiles(x, tfidf, author, &users, &config, cancel)?;
        let terms = profiles
            .iter()
            .map(|p| {
                p.terms
                    .terms
                    .iter()
                    .copied()
                    .zip(p.terms.weights.iter().copied())
            })
            .map(|row| row.collect())
            .collect();
        let authors = profiles.into_iter().map(|p| p.authors).collect();
        Ok((
            from_sorted_rows(tfidf.ncols, terms),
            from_sorted_rows(x.nrows, authors),
        ))
    })?;
    let d = PyDict::new(py);
    d.set_item("terms", csr_out(py, terms)?)?;
    d.set_item("authors", csr_out(py, authors)?)?;
    Ok(d)
}

/// The fresh source for many users at once, as the API serves it one request at a time: one
/// pool of the posts at `now_ms` (those of the last `sources.fresh.window_hours`, at most
/// `sources.fresh.pool_size`, the newest), then per user the best `n` posts created in
/// `(after_ms[u], before_ms]`, scored by `weights.content` x cos(profile, post) +
/// `weights.recency` x exp(-age / `sources.fresh.recency_tau_hours`) + `weights.engagement` x
/// ln(1 + e) / ln(1 + the pool's largest e) + `sources.fresh.author_weight` x affinity.
/// `post_author` holds columns of `author_affinity` or -1; `post_created_ms`, `now_ms`,
/// `after_ms` (one per user) and `before_ms` are epoch milliseconds; `profiles` and
/// `author_affinity` have one row per user (what `user_profiles` returns); `exclude` (users x
/// posts CSR) holds the posts a user must not get (seen, hidden, their own). `n` defaults to
/// `sources.fresh.candidates`. Returns a dict: indices int64 [users, n] (-1 padded), scores
/// float32 [users, n], components float32 [users, n, 4] (content, recency, engagement, author)
/// and reasons, per user a list of the found posts' reasons (similar_content, fresh, popular,
/// liked_author).
///
/// >>> T = feedrank.TfidfVectorizer().fit_transform(["red apples", "green apples", "red cars"])
/// >>> hour = 3_600_000
/// >>> created, author, engagement = np.array([1, 2, 3]) * hour, np.array([0, 1, 0]), np.zeros(3)
/// >>> profiles = T[[2]]  # one user, whose profile is the third post's row
/// >>> affinity = sp.csr_matrix(np.array([[0.0, 1.0]], dtype=np.float32))  # who likes author 1
/// >>> r = feedrank.fresh_topk(T, created, author, engagement, 4 * hour, profiles, affinity, np.array([0]), 4 * hour, n=3)
/// >>> r["indices"]
/// array([[2, 1, 0]])
/// >>> r["reasons"]
/// [['similar_content', 'liked_author', 'fresh']]
#[pyfunction]
#[pyo3(signature = (
    post_tfidf, post_created_ms, post_author, post_engagement, now_ms, profiles,
    author_affinity, after_ms, before_ms, config=None, *, exclude=None, n=None
))]
#[allow(clippy::too_many_arguments)]
pub fn fresh_topk<'py>(
    py: Python<'py>,
    post_tfidf: &Bound<'py, PyAny>,
    post_created_ms: &Bound<'py, PyAny>,
    post_author: &Bound<'py, PyAny>,
    post_engagement: &Bound<'py, PyAny>,
    now_ms: i64,
    profiles: &Bound<'py, PyAny>,
    author_affinity: &Bound<'py, PyAny>,
    after_ms: &Bound<'py, PyAny>,
    before_ms: i64,
    config: Option<&Bound<'py, PyAny>>,
    exclude: Option<&Bound<'py, PyAny>>,
    n: Option<i64>,
) -> PyResult<Bound<'py, PyDict>> {
    let config = optional_config(config)?;
    let n = match n {
        None => config.sources.fresh.candidates,
        Some(n) => positive("n", n)?,
    };
    let tfidf = csr_arg("post_tfidf", post_tfidf)?;
    let created = ids_1d("post_created_ms", post_created_ms)?;
    let author = ids_1d("post_author", post_author)?;
    let engagement = floats_1d("post_engagement", post_engagement)?;
    let profiles = csr_arg("profiles", profiles)?;
    let affinity = csr_arg("author_affinity", author_affinity)?;
    let after = ids_1d("after_ms", after_ms)?;
    let exclude = exclude.map(|e| csr_arg("exclude", e)).transpose()?;
    let posts = PostArrays {
        tfidf: tfidf.view(),
        created_ms: &created,
        author: &author,
        engagement: &engagement,
    };
    let users = UserRows {
        profiles: profiles.view(),
        author_affinity: affinity.view(),
        after_ms: &after,
        exclude: exclude.as_ref().map(|e| e.view()),
    };
    let rows = run_kernel(py, |cancel| {
        fresh::batch_topk(&posts, &users, now_ms, before_ms, n, &config, cancel)
    })?;
    let shape = (rows.reasons.len(), n);
    let d = topk_dict(py, shape, rows.indices, rows.scores, rows.components)?;
    let reasons = PyList::empty(py);
    for row in rows.reasons {
        reasons.append(PyList::new(py, row.iter().map(|r| r.as_str()))?)?;
    }
    d.set_item("reasons", reasons)?;
    Ok(d)
}

/// The blend of several sources' ranked lists into one feed of at most `max_len` slots, as the
/// API serves it: each list (int64 ids, best first; a -1 ends it, as in the padded top-k rows)
/// gets slots in proportion to its share (a proportionate-fair schedule: over any prefix within
/// one slot of its share), keeps its own order, and an id offered twice is placed once; a list
/// that runs dry leaves its slots to the others, a share of 0 takes none. Returns two int64
/// arrays: each slot's list and the position in that list.
///
/// >>> source, index = feedrank.blend([np.array([10, 11, 12, 13]), np.array([11, 20, -1])], [3.0, 1.0], 6)
/// >>> source  # 11 is placed once: the second list goes on with 20
/// array([0, 0, 1, 0, 0])
/// >>> index
/// array([0, 1, 1, 2, 3])
#[pyfunction]
pub fn blend<'py>(
    py: Python<'py>,
    lists: &Bound<'py, PyAny>,
    shares: &Bound<'py, PyAny>,
    max_len: i64,
) -> PyResult<Bound<'py, PyTuple>> {
    let items = lists
        .try_iter()
        .map_err(|_| type_error("lists", "expected a sequence of integer arrays"))?;
    let lists: Vec<Values<i64>> = items
        .map(|item| ids_1d("lists", &item?))
        .collect::<PyResult<_>>()?;
    let shares = floats_1d("shares", shares)?;
    if max_len < 0 {
        return Err(value_error(
            "max_len",
            format!("must be >= 0, got {max_len}"),
        ));
    }
    let cut: Vec<&[i64]> = lists
        .iter()
        .map(|l| match l.iter().position(|&id| id < 0) {
            Some(end) => &l[..end],
            None => &l[..],
        })
        .collect();
    let shares: &[f32] = &shares;
    let slots = run_kernel(py, |_| core_blend::blend(&cut, shares, max_len as usize))?;
    let source = slots.iter().map(|s| s.source as i64).collect();
    let index = slots.iter().map(|s| s.index as i64).collect();
    PyTuple::new(
        py,
        [
            PyArray1::from_vec(py, source),
            PyArray1::from_vec(py, index),
        ],
    )
}

/// The author cap a feed page goes through, as the API applies it: no author has more than `cap`
/// posts in any `window` consecutive posts (the API's window is the page's `limit`) while another
/// author's post is left, and a post passed over moves down as little as it can. `authors`
/// (int64): each post's author, in feed order; a negative author is nobody's and never capped.
/// `cap` defaults to `AUTHOR_CAP` (the API's default). Returns the positions (int64) of the posts
/// in their new order: all of them when `max_out` is None (when only authors at the cap are left,
/// their posts follow in order: the cap never ends a feed), else the first `max_out`, or fewer
/// where only authors at the cap are left (a longer list, as the API's fallback after its blend,
/// would place another author's post there).
///
/// >>> feedrank.diversify(np.array([7, 7, 7, 8, 7, 9]), window=4, cap=2)
/// array([0, 1, 3, 5, 2, 4])
#[pyfunction]
#[pyo3(signature = (authors, window, cap = AUTHOR_CAP as i64, max_out = None))]
pub fn diversify<'py>(
    py: Python<'py>,
    authors: &Bound<'py, PyAny>,
    window: i64,
    cap: i64,
    max_out: Option<i64>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let authors = ids_1d("authors", authors)?;
    let window = positive("window", window)?;
    let cap = positive("cap", cap)?;
    let max_out = match max_out {
        None => None,
        Some(m) if m >= 0 => Some(m as usize),
        Some(m) => return Err(value_error("max_out", format!("must be >= 0, got {m}"))),
    };
    // nobody's posts each get a key of their own: (true, position)
    let keyed: Vec<(bool, i64)> = authors
        .iter()
        .enumerate()
        .map(|(i, &a)| if a < 0 { (true, i as i64) } else { (false, a) })
        .collect();
    let positions: Vec<usize> = (0..keyed.len()).collect();
    let author = |&i: &usize| keyed[i];
    let placed = match max_out {
        None => core_diversify::diversify(positions, author, window, cap),
        Some(m) => core_diversify::diversify_prefix(positions, author, window, cap, m),
    };
    Ok(PyArray1::from_vec(
        py,
        placed.into_iter().map(|i| i as i64).collect(),
    ))
}

/// The feed's sources, in the core's order (`Source`): the names a response's `source` field
/// and the config's `sources.blend` shares use (`fallback` has no share: it takes what the
/// others leave).
///
/// >>> feedrank.source_names()
/// ('personalized', 'fresh', 'because_you_liked', 'trending', 'fallback')
#[pyfunction]
pub fn source_names(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
    PyTuple::new(py, Source::NAMES)
}
