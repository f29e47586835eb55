//! Wrappers of the weighting, similarity and recommending kernels: convert, run the kernel
//! (`run.rs`), convert back.

use feedrank_core::config::InteractionWeighting;
use feedrank_core::similarity::{self, TopKRows};
use feedrank_core::weighting;
use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::convert::{array2, csr_arg, csr_out, ids_1d, index_1d, order_keys_1d, positive};
use crate::error::value_error;
use crate::run::run_kernel;

pub fn weighting_arg(s: &str) -> PyResult<InteractionWeighting> {
    InteractionWeighting::parse(s).ok_or_else(|| {
        value_error(
            "weighting",
            format!(
                "must be one of {:?}, got {s:?}",
                InteractionWeighting::NAMES
            ),
        )
    })
}

fn topk_out<'py>(py: Python<'py>, t: TopKRows) -> PyResult<Bound<'py, PyTuple>> {
    let (rows, k) = (t.rows, t.k);
    PyTuple::new(
        py,
        [
            array2(py, t.indices, rows, k)?,
            array2(py, t.scores, rows, k)?,
        ],
    )
}

/// Interaction weighting of a users x items matrix as implicit's item-item recommenders apply
/// it: "none", "binary", "tfidf" (`tfidf_weight(X.T).T`), "bm25" (`bm25_weight(X.T, k1, b).T`).
///
/// >>> X = sp.csr_matrix(np.array([[3, 0], [1, 2]], dtype=np.float32))
/// >>> feedrank.weight_interactions(X, "binary").toarray()
/// array([[1., 0.],
///        [1., 1.]], dtype=float32)
#[pyfunction]
#[pyo3(signature = (interactions, weighting="none", k1=100.0, b=0.8))]
pub fn weight_interactions<'py>(
    py: Python<'py>,
    interactions: &Bound<'py, PyAny>,
    weighting: &str,
    k1: f32,
    b: f32,
) -> PyResult<Bound<'py, PyAny>> {
    let w = weighting_arg(weighting)?;
    let x = csr_arg("interactions", interactions)?;
    let x = x.view();
    let out = run_kernel(py, |_| weighting::weight_interactions(x, w, k1, b))?;
    csr_out(py, out)
}

/// The weight of each interaction within its user's own history: the user's n-th most recent
/// interaction (n = 0 for the latest; by time, then raw item id, then input order) weighs
/// `max(0.5 ** (n / half_life), 1e-6)`; `half_life` 0 gives every interaction weight 1.
/// `users` are integers, `timestamps` and `raw_items` integers or floats, one per interaction.
/// Returns float32, aligned with the input (the factor the pipeline and the evaluation multiply
/// interaction values by, `ScoringConfig.history_half_life`).
///
/// >>> feedrank.history_weights(np.array([0, 0, 0, 1]), np.array([30, 10, 20, 5]), np.array([1, 2, 3, 4]), 1.0)
/// array([1.  , 0.25, 0.5 , 1.  ], dtype=float32)
#[pyfunction]
pub fn history_weights<'py>(
    py: Python<'py>,
    users: &Bound<'py, PyAny>,
    timestamps: &Bound<'py, PyAny>,
    raw_items: &Bound<'py, PyAny>,
    half_life: f64,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let users = ids_1d("users", users)?;
    let timestamps = order_keys_1d("timestamps", timestamps)?;
    let raw_items = order_keys_1d("raw_items", raw_items)?;
    let (u, t, r): (&[i64], _, _) = (&users, timestamps.view(), raw_items.view());
    let w = run_kernel(py, |_| weighting::history_weights(u, t, r, half_life))?;
    Ok(PyArray1::from_vec(py, w))
}

/// Exact cosine top-k between the rows of `queries` and of `items` (or of `queries` itself,
/// without the pair (i, i) when `exclude_self`). Returns `(indices int64, scores float32)`, both
/// `n_queries x k`, by descending score, ties by lower index, padded with -1 / 0.0.
///
/// >>> X = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float32))
/// >>> idx, scores = feedrank.cosine_topk(X, k=2)
/// >>> idx
/// array([[ 1, -1],
///        [ 0, -1],
///        [-1, -1]])
#[pyfunction]
#[pyo3(signature = (queries, items=None, k=50, exclude_self=true))]
pub fn cosine_topk<'py>(
    py: Python<'py>,
    queries: &Bound<'py, PyAny>,
    items: Option<&Bound<'py, PyAny>>,
    k: i64,
    exclude_self: bool,
) -> PyResult<Bound<'py, PyTuple>> {
    let k = positive("k", k)?;
    let q = csr_arg("queries", queries)?;
    let it = items.map(|i| csr_arg("items", i)).transpose()?;
    let (q, it) = (q.view(), it.as_ref().map(|m| m.view()));
    let t = run_kernel(py, |cancel| {
        similarity::cosine_topk(q, it, k, exclude_self, cancel)
    })?;
    topk_out(py, t)
}

/// The top-k cosine neighbours of every item (columns of the users x items matrix, weighted by
/// `weighting`) as an items x items CSR, as implicit's `CosineRecommender.fit` (which keeps the
/// item itself: `exclude_self=False`).
///
/// >>> X = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float32))
/// >>> feedrank.item_neighbors(X, k=2).toarray()
/// array([[0., 1., 0.],
///        [1., 0., 0.],
///        [0., 0., 0.]], dtype=float32)
#[pyfunction]
#[pyo3(signature = (interactions, k=50, weighting="none", k1=100.0, b=0.8, exclude_self=true))]
pub fn item_neighbors<'py>(
    py: Python<'py>,
    interactions: &Bound<'py, PyAny>,
    k: i64,
    weighting: &str,
    k1: f32,
    b: f32,
    exclude_self: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let k = positive("k", k)?;
    let w = weighting_arg(weighting)?;
    let x = csr_arg("interactions", interactions)?;
    let x = x.view();
    let s = run_kernel(py, |cancel| {
        similarity::item_neighbors(x, k, w, k1, b, exclude_self, cancel)
    })?;
    csr_out(py, s)
}

/// Top-k items per user by `x_u · S` (S from `item_neighbors`), without the user's own items
/// when `exclude_interacted`. Returns `(indices int64, scores float32)`, `len(users) x k`.
///
/// >>> X = sp.csr_matrix(np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=np.float32))
/// >>> idx, scores = feedrank.recommend_items(X, feedrank.item_neighbors(X, k=2), np.array([0]), k=2)
/// >>> idx
/// array([[ 1, -1]])
#[pyfunction]
#[pyo3(signature = (interactions, item_neighbors, users, k=50, exclude_interacted=true))]
pub fn recommend_items<'py>(
    py: Python<'py>,
    interactions: &Bound<'py, PyAny>,
    item_neighbors: &Bound<'py, PyAny>,
    users: &Bound<'py, PyAny>,
    k: i64,
    exclude_interacted: bool,
) -> PyResult<Bound<'py, PyTuple>> {
    let k = positive("k", k)?;
    let x = csr_arg("interactions", interactions)?;
    let s = csr_arg("item_neighbors", item_neighbors)?;
    let users = index_1d("users", users, x.nrows())?;
    let (x, s) = (x.view(), s.view());
    let t = run_kernel(py, |cancel| {
        similarity::recommend_items(x, s, &users, k, exclude_interacted, cancel)
    })?;
    topk_out(py, t)
}
