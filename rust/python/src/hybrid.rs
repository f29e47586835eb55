//! The hybrid score for Python: `HybridModel` and `hybrid_topk`, configured by one
//! `ScoringConfig` (a dict, read and validated by the core), so that a new setting needs no
//! change here.

use std::ffi::CString;
use std::sync::Arc;

use feedrank_core::config::{ScoringConfig, COMPONENTS};
use feedrank_core::score::{HybridModel, Posts};
use pyo3::exceptions::PyDeprecationWarning;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMapping};

use crate::contracts::{config_from_dict, optional_config, parse_weights};
use crate::convert::{csr_arg, floats_1d, ids_1d, index_1d, topk_dict};
use crate::error::type_error;
use crate::run::run_kernel;

/// The keyword arguments `hybrid_topk` and `HybridModel` took before `config=`, and the
/// ScoringConfig field each one sets. They keep working for one release, with a
/// DeprecationWarning; this list only shrinks.
const DEPRECATED_KEYWORDS: [(&str, &str); 9] = [
    ("k", "top_k"),
    ("weights", "weights"),
    ("neighbors", "neighbors"),
    ("recency_tau_days", "recency_tau_days"),
    ("collaborative", "collaborative"),
    ("weighting", "weighting"),
    ("bm25_k1", "bm25_k1"),
    ("bm25_b", "bm25_b"),
    ("ridge_l2", "ridge_l2"),
];

/// The config of a hybrid call: `config` (None or a dict of ScoringConfig fields) with the
/// deprecated keyword arguments merged in (each with a DeprecationWarning), validated once.
fn hybrid_config(
    py: Python<'_>,
    config: Option<&Bound<'_, PyAny>>,
    deprecated: Option<&Bound<'_, PyDict>>,
) -> PyResult<ScoringConfig> {
    let kwargs = match deprecated {
        Some(d) if !d.is_empty() => d,
        _ => return optional_config(config),
    };
    let merged = PyDict::new(py);
    if let Some(c) = config {
        let c = c
            .cast::<PyMapping>()
            .map_err(|_| type_error("config", "expected a dict of ScoringConfig fields or None"))?;
        merged.update(c)?;
    }
    for (key, value) in kwargs.iter() {
        let key: String = key.extract()?;
        let Some(&(_, field)) = DEPRECATED_KEYWORDS.iter().find(|(old, _)| *old == key) else {
            return Err(type_error(
                &key,
                "unexpected keyword argument (the settings of the hybrid go in config=)",
            ));
        };
        let message = format!(
            "the keyword argument {key}= of hybrid_topk and HybridModel is deprecated and goes \
             away in the next release; pass config={{\"{field}\": ...}} instead"
        );
        PyErr::warn(
            py,
            &py.get_type::<PyDeprecationWarning>(),
            &CString::new(message)?,
            1,
        )?;
        if field == "weights" {
            // as before: 4 numbers in component order, or a dict of all four
            let w = parse_weights(&value)?;
            let d = PyDict::new(py);
            for (name, v) in COMPONENTS.iter().zip(w.as_array()) {
                d.set_item(name, v as f64)?;
            }
            merged.set_item(field, d)?;
        } else {
            merged.set_item(field, value)?;
        }
    }
    config_from_dict("config", &merged)
}

fn model_topk<'py>(
    py: Python<'py>,
    model: &HybridModel,
    users: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let users = index_1d("users", users, model.n_users())?;
    let res = run_kernel(py, |cancel| model.topk(&users, cancel))?;
    let shape = (users.len(), res.k);
    topk_dict(py, shape, res.indices, res.scores, res.components)
}

/// The hybrid top-k per user: collaborative, content, recency and engagement components, each
/// min-max normalized per user over the posts they may see, combined with the config's
/// weights. Excludes posts the user interacted with (any stored entry), their own posts,
/// `exclude` and posts outside `candidates`. `config` is None (the defaults) or a dict of
/// ScoringConfig fields (missing ones take their defaults, e.g. `{"top_k": 20}`, or what
/// `feedrank.default_config()` returns); k is `config["top_k"]`. `item_neighbors` (from
/// `feedrank.item_neighbors`) skips refitting `item_item`. Scoring users in batches? Build a
/// `HybridModel` once and call its `topk` per batch. `{"retrieval": {"mode": "candidates"}}`
/// scores only each user's retrieved candidates (the core's `retrieval.rs`: bounded cost,
/// approximate content normalization).
/// Returns a dict: indices int64 [m, k] (-1 padded), scores float32 [m, k], components
/// float32 [m, k, 4].
///
/// >>> X = sp.csr_matrix(np.array([[4, 1, 0, 0], [4, 1, 2, 0], [0, 0, 1, 6]], dtype=np.float32))
/// >>> T = feedrank.TfidfVectorizer().fit_transform(["red apples", "green apples", "red cars", "fast cars"])
/// >>> r = feedrank.hybrid_topk(X, T, np.array([1.0, 2, 3, 40]), np.array([9.0, 2, 3, 6]), np.array([-1, -1, -1, 2]), np.array([0]), {"top_k": 2})
/// >>> r["indices"]
/// array([[2, 3]])
/// >>> r["components"].shape
/// (1, 2, 4)
#[pyfunction]
#[pyo3(signature = (
    interactions, post_tfidf, post_age_days, post_engagement, post_author, users, config=None,
    *, exclude=None, candidates=None, item_neighbors=None, **deprecated
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
    config: Option<&Bound<'py, PyAny>>,
    exclude: Option<&Bound<'py, PyAny>>,
    candidates: Option<&Bound<'py, PyAny>>,
    item_neighbors: Option<&Bound<'py, PyAny>>,
    deprecated: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyDict>> {
    let prepared = PyHybridModel::new(
        py,
        interactions,
        post_tfidf,
        post_age_days,
        post_engagement,
        post_author,
        config,
        exclude,
        candidates,
        item_neighbors,
        deprecated,
    )?;
    model_topk(py, &prepared.model, users)
}

/// `hybrid_topk` prepared once: the same arguments but `users`; `topk(users)` then scores any
/// batch of users without repeating the preparation (weighting, the collaborative model, the
/// per-post values), so a pipeline scoring users in batches builds one.
///
/// >>> X = sp.csr_matrix(np.array([[4, 1, 0, 0], [4, 1, 2, 0], [0, 0, 1, 6]], dtype=np.float32))
/// >>> T = feedrank.TfidfVectorizer().fit_transform(["red apples", "green apples", "red cars", "fast cars"])
/// >>> model = feedrank.HybridModel(X, T, np.array([1.0, 2, 3, 40]), np.array([9.0, 2, 3, 6]), np.array([-1, -1, -1, 2]), {"top_k": 2})
/// >>> model.topk(np.array([0]))["indices"]
/// array([[2, 3]])
#[pyclass(name = "HybridModel", module = "feedrank._core", frozen)]
pub struct PyHybridModel {
    model: HybridModel,
}

#[pymethods]
impl PyHybridModel {
    #[new]
    #[pyo3(signature = (
        interactions, post_tfidf, post_age_days, post_engagement, post_author, config=None,
        *, exclude=None, candidates=None, item_neighbors=None, **deprecated
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        interactions: &Bound<'_, PyAny>,
        post_tfidf: &Bound<'_, PyAny>,
        post_age_days: &Bound<'_, PyAny>,
        post_engagement: &Bound<'_, PyAny>,
        post_author: &Bound<'_, PyAny>,
        config: Option<&Bound<'_, PyAny>>,
        exclude: Option<&Bound<'_, PyAny>>,
        candidates: Option<&Bound<'_, PyAny>>,
        item_neighbors: Option<&Bound<'_, PyAny>>,
        deprecated: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let config = hybrid_config(py, config, deprecated)?;
        // The model outlives the call, so it keeps its own copy of each matrix (one copy, made
        // here); the per-post arrays are only read while it is built.
        let x = csr_arg("interactions", interactions)?.into_owned();
        let tfidf = Arc::new(csr_arg("post_tfidf", post_tfidf)?.into_owned());
        let age = floats_1d("post_age_days", post_age_days)?;
        let engagement = floats_1d("post_engagement", post_engagement)?;
        let author = ids_1d("post_author", post_author)?;
        let exclude = exclude
            .map(|e| csr_arg("exclude", e).map(|m| m.into_owned()))
            .transpose()?;
        let item_neighbors = item_neighbors
            .map(|s| csr_arg("item_neighbors", s).map(|m| m.into_owned()))
            .transpose()?;
        let candidates = candidates
            .map(|c| index_1d("candidates", c, x.ncols))
            .transpose()?;
        let posts = Posts {
            tfidf,
            age_days: &age,
            engagement: &engagement,
            author: &author,
        };
        let model = run_kernel(py, |cancel| {
            HybridModel::new(
                Arc::new(x),
                &posts,
                &config,
                exclude,
                candidates.as_deref(),
                item_neighbors,
                cancel,
            )
        })?;
        Ok(PyHybridModel { model })
    }

    /// The hybrid top-k of `users` (row indices of `interactions`): the dict `hybrid_topk`
    /// returns.
    fn topk<'py>(
        &self,
        py: Python<'py>,
        users: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        model_topk(py, &self.model, users)
    }

    /// Rows of `interactions` (valid user indices are `0..n_users`).
    #[getter]
    fn n_users(&self) -> usize {
        self.model.n_users()
    }
}
