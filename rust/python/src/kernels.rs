//! Wrappers of the compute kernels: convert, release the GIL, call the core, convert back.

use feedrank_core::metrics::{self, TopKLists};
use feedrank_core::shuffle as core_shuffle;
use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::convert::{csr_arg, ids_2d};
use crate::error::{type_error, value_error};
use crate::run::{run_infallible, run_kernel};

fn seed_arg(seed: &Bound<'_, PyAny>) -> PyResult<u64> {
    if let Ok(s) = seed.extract::<u64>() {
        return Ok(s);
    }
    match seed.extract::<i64>() {
        Ok(s) => Err(value_error("seed", format!("must be in 0..2**64, got {s}"))),
        Err(_) => Err(type_error("seed", "must be an int")),
    }
}

macro_rules! shuffle_as {
    ($py:expr, $arr:expr, $seed:expr, $t:ty) => {{
        // a copy on purpose: the input is not modified
        let mut v: Vec<$t> = $arr.extract::<PyReadonlyArray1<$t>>()?.as_array().to_vec();
        let seed = $seed;
        run_infallible($py, |_| core_shuffle::shuffle(&mut v, seed))?;
        return Ok(PyArray1::from_vec($py, v).into_any());
    }};
}

/// A shuffled copy of a 1-D array (Fisher-Yates, deterministic per seed; the input is not
/// modified). The same seed always gives the same order, so a shuffled feed can be paged.
///
/// >>> feedrank.shuffle(np.array([10, 20, 30, 40]), seed=1)
/// array([10, 40, 20, 30])
#[pyfunction]
pub fn shuffle<'py>(
    py: Python<'py>,
    ids: &Bound<'py, PyAny>,
    seed: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let seed = seed_arg(seed)?;
    let np = py.import("numpy")?;
    if !ids.is_instance(&np.getattr("ndarray")?)? {
        return Err(type_error("ids", "expected a numpy array"));
    }
    let ndim: usize = ids.getattr("ndim")?.extract()?;
    if ndim != 1 {
        return Err(value_error(
            "ids",
            format!("expected a 1-D array, got {ndim}-D"),
        ));
    }
    let dtype = ids.getattr("dtype")?;
    let kind: String = dtype.getattr("kind")?.extract()?;
    let size: usize = dtype.getattr("itemsize")?.extract()?;
    match (kind.as_str(), size) {
        ("i", 8) => shuffle_as!(py, ids, seed, i64),
        ("i", 4) => shuffle_as!(py, ids, seed, i32),
        ("u", 8) => shuffle_as!(py, ids, seed, u64),
        ("u", 4) => shuffle_as!(py, ids, seed, u32),
        ("f", 8) => shuffle_as!(py, ids, seed, f64),
        ("f", 4) => shuffle_as!(py, ids, seed, f32),
        _ => {
            // Any other dtype: the same permutation applied by numpy indexing.
            let n: usize = ids.len()?;
            let perm = run_infallible(py, |_| core_shuffle::permutation(n, seed))?;
            ids.get_item(PyArray1::from_vec(py, perm))
        }
    }
}

/// A permutation of `0..n` as int64 (the order `shuffle` gives `arange(n)`).
///
/// >>> feedrank.permutation(5, seed=1)
/// array([3, 0, 4, 1, 2])
#[pyfunction]
pub fn permutation<'py>(
    py: Python<'py>,
    n: i64,
    seed: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let seed = seed_arg(seed)?;
    if n < 0 {
        return Err(value_error("n", format!("must be >= 0, got {n}")));
    }
    let v = run_infallible(py, |_| core_shuffle::permutation(n as usize, seed))?;
    Ok(PyArray1::from_vec(py, v))
}

fn n_items_arg(n_items: Option<i64>, default: usize) -> PyResult<usize> {
    match n_items {
        None => Ok(default),
        Some(n) if n >= 1 => Ok(n as usize),
        Some(n) => Err(value_error("n_items", format!("must be >= 1, got {n}"))),
    }
}

fn metrics_dict<'py>(py: Python<'py>, m: &metrics::RankingMetrics) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("precision", m.precision)?;
    d.set_item("recall", m.recall)?;
    d.set_item("ndcg", m.ndcg)?;
    d.set_item("coverage", m.coverage)?;
    d.set_item("users", m.users)?;
    Ok(d)
}

/// precision@k, recall@k, NDCG@k and coverage@k as shared/EVAL.md defines them. `topk` rows
/// are aligned with `test` rows (-1 pads); users with an empty test row are skipped.
///
/// >>> test = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 0]], dtype=np.float32))
/// >>> feedrank.ranking_metrics(np.array([[1, 2], [2, 1]]), test, k=2)
/// {'precision': 0.25, 'recall': 0.5, 'ndcg': 0.5, 'coverage': 0.6666666666666666, 'users': 2}
#[pyfunction]
#[pyo3(signature = (topk, test, k=10, n_items=None))]
pub fn ranking_metrics<'py>(
    py: Python<'py>,
    topk: &Bound<'py, PyAny>,
    test: &Bound<'py, PyAny>,
    k: i64,
    n_items: Option<i64>,
) -> PyResult<Bound<'py, PyDict>> {
    let (items, n_users, width) = ids_2d("topk", topk)?;
    let test = csr_arg("test", test)?;
    let n_items = n_items_arg(n_items, test.ncols())?;
    if k < 1 {
        return Err(value_error("k", format!("must be >= 1, got {k}")));
    }
    let lists = TopKLists {
        items: &items,
        n_users,
        width,
    };
    let test = test.view();
    let m = run_kernel(py, |_| {
        metrics::ranking_metrics(lists, test, k as usize, n_items)
    })?;
    metrics_dict(py, &m)
}

/// Metrics at each cutoff of `ks`: a dict of arrays (precision, recall, ndcg, coverage, k).
///
/// >>> test = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 0]], dtype=np.float32))
/// >>> feedrank.metrics_at_k(np.array([[1, 2], [2, 1]]), test, ks=[1, 2])["precision"]
/// array([0.5 , 0.25])
#[pyfunction]
#[pyo3(signature = (topk, test, ks, n_items=None))]
pub fn metrics_at_k<'py>(
    py: Python<'py>,
    topk: &Bound<'py, PyAny>,
    test: &Bound<'py, PyAny>,
    ks: Vec<i64>,
    n_items: Option<i64>,
) -> PyResult<Bound<'py, PyDict>> {
    let (items, n_users, width) = ids_2d("topk", topk)?;
    let test = csr_arg("test", test)?;
    let n_items = n_items_arg(n_items, test.ncols())?;
    if let Some(&bad) = ks.iter().find(|&&k| k < 1) {
        return Err(value_error(
            "ks",
            format!("every k must be >= 1, got {bad}"),
        ));
    }
    let ks_u: Vec<usize> = ks.iter().map(|&k| k as usize).collect();
    let lists = TopKLists {
        items: &items,
        n_users,
        width,
    };
    let test = test.view();
    let ms = run_kernel(py, |_| metrics::metrics_at_k(lists, test, &ks_u, n_items))?;
    let d = PyDict::new(py);
    d.set_item("k", PyArray1::from_vec(py, ks))?;
    d.set_item(
        "precision",
        PyArray1::from_vec(py, ms.iter().map(|m| m.precision).collect()),
    )?;
    d.set_item(
        "recall",
        PyArray1::from_vec(py, ms.iter().map(|m| m.recall).collect()),
    )?;
    d.set_item(
        "ndcg",
        PyArray1::from_vec(py, ms.iter().map(|m| m.ndcg).collect()),
    )?;
    d.set_item(
        "coverage",
        PyArray1::from_vec(py, ms.iter().map(|m| m.coverage).collect()),
    )?;
    d.set_item("users", ms.first().map(|m| m.users).unwrap_or(0))?;
    Ok(d)
}
