//! The TF-IDF vectorizer for Python: `feedrank.TfidfVectorizer` (python/feedrank/tfidf.py) wraps
//! the `TfidfModel` class defined here.

use feedrank_core::tfidf::{self, DocFreq, Norm, TfidfModel, TfidfParams};
use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString};

use crate::convert::csr_out;
use crate::error::{type_error, value_error, IntoPyResult};
use crate::run::{run_infallible, run_kernel};

/// Borrows the documents' text (no copy); the GIL may be released while the `&str`s are used
/// because Python strings are immutable and `docs` keeps them alive.
fn doc_strs<'a, 'py>(docs: &'a [Bound<'py, PyString>]) -> PyResult<Vec<&'a str>> {
    docs.iter()
        .enumerate()
        .map(|(i, s)| {
            s.to_str()
                .map_err(|e| value_error("docs", format!("document {i} is not valid text: {e}")))
        })
        .collect()
}

fn docs_arg<'py>(docs: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyString>>> {
    if docs.is_instance_of::<PyString>() {
        return Err(value_error(
            "docs",
            "expected an iterable of strings, got a single str",
        ));
    }
    let iter = docs
        .try_iter()
        .map_err(|_| type_error("docs", "expected an iterable of strings"))?;
    let mut out = Vec::new();
    for (i, d) in iter.enumerate() {
        let d = d?;
        match d.cast_into::<PyString>() {
            Ok(s) => out.push(s),
            Err(e) => {
                let name = e
                    .into_inner()
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default();
                return Err(type_error(
                    "docs",
                    format!("document {i} is a {name}, expected str"),
                ));
            }
        }
    }
    Ok(out)
}

fn doc_freq(arg: &str, obj: &Bound<'_, PyAny>) -> PyResult<DocFreq> {
    if obj.is_instance_of::<PyBool>() {
        return Err(type_error(arg, "must be an int or a float, got bool"));
    }
    if obj.is_instance_of::<PyInt>() {
        let v: i64 = obj.extract()?;
        if v < 0 {
            return Err(value_error(arg, format!("a count must be >= 0, got {v}")));
        }
        return Ok(DocFreq::Count(v as usize));
    }
    if obj.is_instance_of::<PyFloat>() {
        return Ok(DocFreq::Proportion(obj.extract()?));
    }
    Err(type_error(
        arg,
        "must be an int (documents) or a float (proportion)",
    ))
}

#[allow(clippy::too_many_arguments)]
fn params(
    min_df: &Bound<'_, PyAny>,
    max_df: &Bound<'_, PyAny>,
    max_features: Option<i64>,
    lowercase: bool,
    norm: Option<&str>,
    smooth_idf: bool,
    sublinear_tf: bool,
) -> PyResult<TfidfParams> {
    let norm = match norm {
        None => None,
        Some("l2") => Some(Norm::L2),
        Some("l1") => Some(Norm::L1),
        Some(other) => {
            return Err(value_error(
                "norm",
                format!("must be 'l2', 'l1' or None, got {other:?}"),
            ))
        }
    };
    let max_features = match max_features {
        None => None,
        Some(m) if m >= 1 => Some(m as usize),
        Some(m) => {
            return Err(value_error(
                "max_features",
                format!("must be >= 1 or None, got {m}"),
            ))
        }
    };
    let p = TfidfParams {
        min_df: doc_freq("min_df", min_df)?,
        max_df: doc_freq("max_df", max_df)?,
        max_features,
        lowercase,
        norm,
        smooth_idf,
        sublinear_tf,
    };
    p.validate().py()?;
    Ok(p)
}

/// A fitted TF-IDF vocabulary and idf (use `feedrank.TfidfVectorizer`).
///
/// >>> model, _ = feedrank._core.tfidf_fit_transform(["red apples", "red cars"], 1, 1.0)
/// >>> model.vocabulary()
/// {'apples': 0, 'cars': 1, 'red': 2}
#[pyclass(name = "TfidfModel", module = "feedrank._core", frozen)]
pub struct PyTfidfModel {
    inner: TfidfModel,
}

#[pymethods]
impl PyTfidfModel {
    fn transform<'py>(
        &self,
        py: Python<'py>,
        docs: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let owned = docs_arg(docs)?;
        let strs = doc_strs(&owned)?;
        let x = run_infallible(py, |_| self.inner.transform(&strs))?;
        csr_out(py, x)
    }

    /// The vocabulary as a dict term -> column.
    fn vocabulary<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (i, t) in self.inner.vocabulary.iter().enumerate() {
            d.set_item(t, i)?;
        }
        Ok(d)
    }

    fn feature_names(&self) -> Vec<String> {
        self.inner.vocabulary.clone()
    }

    fn idf<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        PyArray1::from_vec(py, self.inner.idf.clone())
    }

    fn n_features(&self) -> usize {
        self.inner.vocabulary.len()
    }

    fn to_json(&self) -> String {
        self.inner.to_json()
    }

    #[staticmethod]
    fn from_json(s: &str) -> PyResult<Self> {
        Ok(PyTfidfModel {
            inner: TfidfModel::from_json(s).py()?,
        })
    }

    /// The settings as JSON (for the Python wrapper's attributes).
    fn params_json(&self) -> String {
        serde_json::to_string(&self.inner.params).unwrap_or_default()
    }
}

/// Fits a vocabulary and idf on `docs` and returns `(model, X)`.
///
/// >>> model, X = feedrank._core.tfidf_fit_transform(["red apples", "red cars"], 1, 1.0)
/// >>> model.feature_names(), X.shape
/// (['apples', 'cars', 'red'], (2, 3))
#[pyfunction]
#[pyo3(signature = (docs, min_df, max_df, max_features=None, lowercase=true, norm=Some("l2"), smooth_idf=true, sublinear_tf=false))]
#[allow(clippy::too_many_arguments)]
pub fn tfidf_fit_transform<'py>(
    py: Python<'py>,
    docs: &Bound<'py, PyAny>,
    min_df: &Bound<'py, PyAny>,
    max_df: &Bound<'py, PyAny>,
    max_features: Option<i64>,
    lowercase: bool,
    norm: Option<&str>,
    smooth_idf: bool,
    sublinear_tf: bool,
) -> PyResult<(PyTfidfModel, Bound<'py, PyAny>)> {
    let p = params(
        min_df,
        max_df,
        max_features,
        lowercase,
        norm,
        smooth_idf,
        sublinear_tf,
    )?;
    let owned = docs_arg(docs)?;
    let strs = doc_strs(&owned)?;
    let (model, x) = run_kernel(py, |_| TfidfModel::fit_transform(&strs, p))?;
    Ok((PyTfidfModel { inner: model }, csr_out(py, x)?))
}

/// The tokens of `text` as the vectorizer sees them (lowercased, runs of >= 2 word characters).
///
/// >>> feedrank.tokenize("Rust makes Python fast, x!")
/// ['rust', 'makes', 'python', 'fast']
#[pyfunction]
#[pyo3(signature = (text, lowercase=true))]
pub fn tokenize(text: &str, lowercase: bool) -> Vec<String> {
    tfidf::tokenize(text, lowercase)
}
