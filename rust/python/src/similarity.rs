//! Wrappers of the similarity, weighting, recommending and hybrid kernels.

use std::collections::BTreeMap;
use std::sync::Arc;

use feedrank_core::config::InteractionWeighting;
use feedrank_core::score::{self, HybridParams, Posts};
use feedrank_core::similarity::{self, TopKRows};
use feedrank_core::sparse::Csr;
use feedrank_core::weighting;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::contracts::parse_weights;
use crate::convert::{array2, csr_arg, csr_out, floats_1d, ids_1d, index_1d, positive};
use crate::error::{type_error, value_error, IntoPyResult};

fn weighting_arg(s: &str) -> PyResult<InteractionWeighting> {
    match s {
        "none" => Ok(InteractionWeighting::None),
        "binary" => Ok(InteractionWeighting::Binary),
        "tfidf" => Ok(InteractionWeighting::Tfidf),
        "bm25" => Ok(InteractionWeighting::Bm25),
        other => Err(value_error(
            "weighting",
            format!("must be 'none', 'binary', 'tfidf' or 'bm25', got {other:?}"),
        )),
    }
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
    let out = py
        .detach(|| weighting::weight_interactions(x.view(), w, k1, b))
        .py()?;
    csr_out(py, out)
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
    let it: Option<Csr<f32>> = items.map(|i| csr_arg("items", i)).transpose()?;
    let t = py
        .detach(|| {
            similarity::cosine_topk(q.view(), it.as_ref().map(|m| m.view()), k, exclude_self)
        })
        .py()?;
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
    let s = py
        .detach(|| similarity::item_neighbors(x.view(), k, w, k1, b, exclude_self))
        .py()?;
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
    let users = index_1d("users", users, x.nrows)?;
    let t = py
        .detach(|| similarity::recommend_items(x.view(), s.view(), &users, k, exclude_interacted))
        .py()?;
    topk_out(py, t)
}

/// The arguments of [`hybrid_topk`] and [`PyHybridModel`] but `users`, parsed and prepared:
/// the model's one construction path.
#[allow(clippy::too_many_arguments)]
fn build_model(
    py: Python<'_>,
    interactions: &Bound<'_, PyAny>,
    post_tfidf: &Bound<'_, PyAny>,
    post_age_days: &Bound<'_, PyAny>,
    post_engagement: &Bound<'_, PyAny>,
    post_author: &Bound<'_, PyAny>,
    k: i64,
    weights: Option<&Bound<'_, PyAny>>,
    neighbors: i64,
    recency_tau_days: f32,
    collaborative: &str,
    weighting: &str,
    exclude: Option<&Bound<'_, PyAny>>,
    candidates: Option<&Bound<'_, PyAny>>,
    bm25_k1: f32,
    bm25_b: f32,
    item_neighbors: Option<&Bound<'_, PyAny>>,
    model_params: Option<&Bound<'_, PyDict>>,
) -> PyResult<score::HybridModel> {
    let k = positive("k", k)?;
    let neighbors = positive("neighbors", neighbors)?;
    let weights = match weights {
        Some(w) => parse_weights(w)?,
        None => Default::default(),
    };
    let weighting = weighting_arg(weighting)?;
    let mut extra: BTreeMap<String, f64> = BTreeMap::new();
    if let Some(d) = model_params {
        for (key, v) in d.iter() {
            let key: String = key.extract()?;
            let v: f64 = v
                .extract()
                .map_err(|_| type_error("model_params", format!("{key} must be a number")))?;
            extra.insert(key, v);
        }
    }
    let x = csr_arg("interactions", interactions)?;
    let tfidf = csr_arg("post_tfidf", post_tfidf)?;
    let age = floats_1d("post_age_days", post_age_days)?;
    let engagement = floats_1d("post_engagement", post_engagement)?;
    let author = ids_1d("post_author", post_author)?;
    let exclude = exclude.map(|e| csr_arg("exclude", e)).transpose()?;
    let item_nb = item_neighbors
        .map(|s| csr_arg("item_neighbors", s))
        .transpose()?;
    let candidates = candidates
        .map(|c| index_1d("candidates", c, x.ncols))
        .transpose()?;
    let collaborative = collaborative.to_string();
    py.detach(|| {
        let posts = Posts {
            tfidf: tfidf.view(),
            age_days: &age,
            engagement: &engagement,
            author: &author,
        };
        let params = HybridParams {
            k,
            weights,
            neighbors,
            recency_tau_days,
            collaborative: &collaborative,
            weighting,
            bm25_k1,
            bm25_b,
            model_params: &extra,
            item_neighbors: item_nb.as_ref().map(|s| s.view()),
        };
        score::HybridModel::new(Arc::new(x), &posts, &params, exclude, candidates.as_deref())
    })
    .py()
}

fn topk_dict<'py>(
    py: Python<'py>,
    model: &score::HybridModel,
    users: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let users = index_1d("users", users, model.n_users())?;
    let res = py.detach(|| model.topk(&users)).py()?;
    let (m, k) = (users.len(), res.k);
    let d = PyDict::new(py);
    d.set_item("indices", array2(py, res.indices, m, k)?)?;
    d.set_item("scores", array2(py, res.scores, m, k)?)?;
    let comps = array2(py, res.components, m * k, 4)?.call_method1("reshape", ((m, k, 4),))?;
    d.set_item("components", comps)?;
    Ok(d)
}

/// The hybrid top-k per user: collaborative, content, recency and engagement components, each
/// min-max normalized per user over the posts they may see, combined with `weights`. Excludes
/// posts the user interacted with (any stored entry), their own posts, `exclude` and posts
/// outside `candidates`. Extra keyword arguments are numeric settings of the collaborative model;
/// `item_neighbors` (from `feedrank.item_neighbors`) skips refitting `item_item`. Scoring users
/// in batches? Build a `HybridModel` once and call its `topk` per batch.
/// Returns a dict: indices int64 [m, k] (-1 padded), scores float32 [m, k], components
/// float32 [m, k, 4].
///
/// >>> X = sp.csr_matrix(np.array([[4, 1, 0, 0], [4, 1, 2, 0], [0, 0, 1, 6]], dtype=np.float32))
/// >>> T = feedrank.TfidfVectorizer().fit_transform(["red apples", "green apples", "red cars", "fast cars"])
/// >>> r = feedrank.hybrid_topk(X, T, np.array([1.0, 2, 3, 40]), np.array([9.0, 2, 3, 6]), np.array([-1, -1, -1, 2]), np.array([0]), k=2)
/// >>> r["indices"]
/// array([[2, 3]])
/// >>> r["components"].shape
/// (1, 2, 4)
#[pyfunction]
#[pyo3(signature = (
    interactions, post_tfidf, post_age_days, post_engagement, post_author, users, k=200,
    weights=None, neighbors=50, recency_tau_days=30.0, collaborative="user_user",
    weighting="none", exclude=None, candidates=None, bm25_k1=100.0, bm25_b=0.8,
    item_neighbors=None, **model_params
))]
#[allow(clippy::too_many_arguments)]
pub fn hybrid_topk<'py>(
    py: Python<'py>,
    interactions: &Bound<'py, PyAny>,
    post_tfidf: &Bound<'py, PyAny>,
    post_age_days: &Bound<'py, PyAny>,
    post_engagement: &Bound<'py, PyAny>,
    post_author: &Bound<'py, PyAny>,
    users: &Bound<'py, PyAny>,
    k: i64,
    weights: Option<&Bound<'py, PyAny>>,
    neighbors: i64,
    recency_tau_days: f32,
    collaborative: &str,
    weighting: &str,
    exclude: Option<&Bound<'py, PyAny>>,
    candidates: Option<&Bound<'py, PyAny>>,
    bm25_k1: f32,
    bm25_b: f32,
    item_neighbors: Option<&Bound<'py, PyAny>>,
    model_params: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyDict>> {
    let model = build_model(
        py,
        interactions,
        post_tfidf,
        post_age_days,
        post_engagement,
        post_author,
        k,
        weights,
        neighbors,
        recency_tau_days,
        collaborative,
        weighting,
        exclude,
        candidates,
        bm25_k1,
        bm25_b,
        item_neighbors,
        model_params,
    )?;
    topk_dict(py, &model, users)
}

/// `hybrid_topk` prepared once: the same arguments but `users`; `topk(users)` then scores any
/// batch of users without repeating the preparation (weighting, the collaborative model, the
/// per-post values), so a pipeline scoring users in batches builds one.
///
/// >>> X = sp.csr_matrix(np.array([[4, 1, 0, 0], [4, 1, 2, 0], [0, 0, 1, 6]], dtype=np.float32))
/// >>> T = feedrank.TfidfVectorizer().fit_transform(["red apples", "green apples", "red cars", "fast cars"])
/// >>> model = feedrank.HybridModel(X, T, np.array([1.0, 2, 3, 40]), np.array([9.0, 2, 3, 6]), np.array([-1, -1, -1, 2]), k=2)
/// >>> model.topk(np.array([0]))["indices"]
/// array([[2, 3]])
#[pyclass(name = "HybridModel", module = "feedrank._core", frozen)]
pub struct PyHybridModel {
    model: score::HybridModel,
}

#[pymethods]
impl PyHybridModel {
    #[new]
    #[pyo3(signature = (
        interactions, post_tfidf, post_age_days, post_engagement, post_author, k=200,
        weights=None, neighbors=50, recency_tau_days=30.0, collaborative="user_user",
        weighting="none", exclude=None, candidates=None, bm25_k1=100.0, bm25_b=0.8,
        item_neighbors=None, **model_params
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        interactions: &Bound<'_, PyAny>,
        post_tfidf: &Bound<'_, PyAny>,
        post_age_days: &Bound<'_, PyAny>,
        post_engagement: &Bound<'_, PyAny>,
        post_author: &Bound<'_, PyAny>,
        k: i64,
        weights: Option<&Bound<'_, PyAny>>,
        neighbors: i64,
        recency_tau_days: f32,
        collaborative: &str,
        weighting: &str,
        exclude: Option<&Bound<'_, PyAny>>,
        candidates: Option<&Bound<'_, PyAny>>,
        bm25_k1: f32,
        bm25_b: f32,
        item_neighbors: Option<&Bound<'_, PyAny>>,
        model_params: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let model = build_model(
            py,
            interactions,
            post_tfidf,
            post_age_days,
            post_engagement,
            post_author,
            k,
            weights,
            neighbors,
            recency_tau_days,
            collaborative,
            weighting,
            exclude,
            candidates,
            bm25_k1,
            bm25_b,
            item_neighbors,
            model_params,
        )?;
        Ok(PyHybridModel { model })
    }

    /// The hybrid top-k of `users` (row indices of `interactions`): the dict `hybrid_topk`
    /// returns.
    fn topk<'py>(
        &self,
        py: Python<'py>,
        users: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        topk_dict(py, &self.model, users)
    }

    /// Rows of `interactions` (valid user indices are `0..n_users`).
    #[getter]
    fn n_users(&self) -> usize {
        self.model.n_users()
    }
}
