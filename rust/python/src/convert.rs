//! Argument conversion: numpy arrays and CSR-like objects in, numpy arrays and CSR out.
//!
//! Dense ids accept int64 and int32 (and Python sequences of ints); dense values accept float32
//! and float64. Sparse inputs are `scipy.sparse` matrices/arrays (converted to CSR when they are
//! another format), any object with `indptr, indices, data, shape`, or a tuple
//! `(indptr, indices, data, shape)`; their data may be any real or boolean dtype. Every error
//! starts with the argument's name.

use feedrank_core::sparse::Csr;
use ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::error::{type_error, value_error, IntoPyResult};

fn numpy(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    py.import("numpy")
}

/// `obj` as a numpy array (sequences go through `numpy.asarray`), with its dtype kind and size.
fn as_ndarray<'py>(
    arg: &str,
    obj: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, char, usize)> {
    let py = obj.py();
    let np = numpy(py)?;
    let arr = if obj.is_instance(&np.getattr("ndarray")?)? {
        obj.clone()
    } else {
        np.call_method1("asarray", (obj,)).map_err(|_| {
            type_error(
                arg,
                format!("expected a numpy array, got {}", type_name(obj)),
            )
        })?
    };
    let dtype = arr.getattr("dtype")?;
    let kind: String = dtype.getattr("kind")?.extract()?;
    let itemsize: usize = dtype.getattr("itemsize")?.extract()?;
    Ok((arr, kind.chars().next().unwrap_or('?'), itemsize))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "object".into())
}

fn dtype_str(arr: &Bound<'_, PyAny>) -> String {
    arr.getattr("dtype")
        .and_then(|d| d.str())
        .map(|s| s.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn check_ndim(arg: &str, arr: &Bound<'_, PyAny>, ndim: usize) -> PyResult<()> {
    let got: usize = arr.getattr("ndim")?.extract()?;
    if got != ndim {
        let shape = arr.getattr("shape")?.str()?.to_string();
        return Err(value_error(
            arg,
            format!("expected a {ndim}-D array, got shape {shape}"),
        ));
    }
    Ok(())
}

/// A 1-D integer array (int64 or int32; any integer dtype from a Python sequence) as `i64`.
pub fn ids_1d(arg: &str, obj: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
    let (arr, kind, size) = as_ndarray(arg, obj)?;
    check_ndim(arg, &arr, 1)?;
    match (kind, size) {
        ('i', 8) => Ok(arr.extract::<PyReadonlyArray1<i64>>()?.as_array().to_vec()),
        ('i', 4) => Ok(arr
            .extract::<PyReadonlyArray1<i32>>()?
            .as_array()
            .iter()
            .map(|&x| x as i64)
            .collect()),
        _ => Err(type_error(
            arg,
            format!(
                "expected an int64 or int32 array, got dtype {}",
                dtype_str(&arr)
            ),
        )),
    }
}

/// 1-D ids that must all lie in `0..n`, as `usize`.
pub fn index_1d(arg: &str, obj: &Bound<'_, PyAny>, n: usize) -> PyResult<Vec<usize>> {
    let ids = ids_1d(arg, obj)?;
    if let Some(&bad) = ids.iter().find(|&&x| x < 0 || x as u64 >= n as u64) {
        return Err(value_error(arg, format!("index {bad} out of range 0..{n}")));
    }
    Ok(ids.into_iter().map(|x| x as usize).collect())
}

/// A 1-D float array (float32 or float64) as `f32`, checked finite.
pub fn floats_1d(arg: &str, obj: &Bound<'_, PyAny>) -> PyResult<Vec<f32>> {
    let (arr, kind, size) = as_ndarray(arg, obj)?;
    check_ndim(arg, &arr, 1)?;
    let v: Vec<f32> = match (kind, size) {
        ('f', 4) => arr.extract::<PyReadonlyArray1<f32>>()?.as_array().to_vec(),
        ('f', 8) => arr
            .extract::<PyReadonlyArray1<f64>>()?
            .as_array()
            .iter()
            .map(|&x| x as f32)
            .collect(),
        _ => {
            return Err(type_error(
                arg,
                format!(
                    "expected a float32 or float64 array, got dtype {}",
                    dtype_str(&arr)
                ),
            ))
        }
    };
    if let Some(x) = v.iter().find(|x| !x.is_finite()) {
        return Err(value_error(
            arg,
            format!("values must be finite, found {x}"),
        ));
    }
    Ok(v)
}

/// A 2-D float array (float32 or float64) as row-major `f32` plus its shape, checked finite.
pub fn floats_2d(arg: &str, obj: &Bound<'_, PyAny>) -> PyResult<(Vec<f32>, usize, usize)> {
    let (arr, kind, size) = as_ndarray(arg, obj)?;
    check_ndim(arg, &arr, 2)?;
    let (v, shape): (Vec<f32>, [usize; 2]) = match (kind, size) {
        ('f', 4) => {
            let a = arr.extract::<PyReadonlyArray2<f32>>()?;
            let s = a.shape();
            (a.as_array().iter().copied().collect(), [s[0], s[1]])
        }
        ('f', 8) => {
            let a = arr.extract::<PyReadonlyArray2<f64>>()?;
            let s = a.shape();
            (
                a.as_array().iter().map(|&x| x as f32).collect(),
                [s[0], s[1]],
            )
        }
        _ => {
            return Err(type_error(
                arg,
                format!(
                    "expected a float32 or float64 array, got dtype {}",
                    dtype_str(&arr)
                ),
            ))
        }
    };
    if let Some(x) = v.iter().find(|x| !x.is_finite()) {
        return Err(value_error(
            arg,
            format!("values must be finite, found {x}"),
        ));
    }
    Ok((v, shape[0], shape[1]))
}

/// A 2-D integer array (int64/int32) as row-major `i64` plus its shape.
pub fn ids_2d(arg: &str, obj: &Bound<'_, PyAny>) -> PyResult<(Vec<i64>, usize, usize)> {
    let (arr, kind, size) = as_ndarray(arg, obj)?;
    check_ndim(arg, &arr, 2)?;
    match (kind, size) {
        ('i', 8) => {
            let a = arr.extract::<PyReadonlyArray2<i64>>()?;
            let s = a.shape();
            Ok((a.as_array().iter().copied().collect(), s[0], s[1]))
        }
        ('i', 4) => {
            let a = arr.extract::<PyReadonlyArray2<i32>>()?;
            let s = a.shape();
            Ok((a.as_array().iter().map(|&x| x as i64).collect(), s[0], s[1]))
        }
        _ => Err(type_error(
            arg,
            format!(
                "expected an int64 or int32 array, got dtype {}",
                dtype_str(&arr)
            ),
        )),
    }
}

fn index_array(arg: &str, what: &str, obj: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
    let (arr, kind, size) = as_ndarray(arg, obj)?;
    check_ndim(arg, &arr, 1)?;
    match (kind, size) {
        ('i', 8) => Ok(arr.extract::<PyReadonlyArray1<i64>>()?.as_array().to_vec()),
        ('i', 4) => Ok(arr
            .extract::<PyReadonlyArray1<i32>>()?
            .as_array()
            .iter()
            .map(|&x| x as i64)
            .collect()),
        ('u', _) | ('i', _) => {
            let a = arr.call_method1("astype", ("int64",))?;
            Ok(a.extract::<PyReadonlyArray1<i64>>()?.as_array().to_vec())
        }
        _ => Err(type_error(
            arg,
            format!(
                "{what} must be an integer array, got dtype {}",
                dtype_str(&arr)
            ),
        )),
    }
}

/// A CSR-like argument as an owned [`Csr`] with f32 values (finite), sorted indices.
pub fn csr_arg(arg: &'static str, obj: &Bound<'_, PyAny>) -> PyResult<Csr<f32>> {
    let (indptr, indices, data, shape) = if let Ok(t) = obj.cast::<PyTuple>() {
        if t.len() != 4 {
            return Err(type_error(
                arg,
                "a tuple must be (indptr, indices, data, shape)",
            ));
        }
        (
            t.get_item(0)?,
            t.get_item(1)?,
            t.get_item(2)?,
            t.get_item(3)?,
        )
    } else {
        let mut m = obj.clone();
        if let Ok(fmt) = m.getattr("format") {
            let fmt: String = fmt.extract().unwrap_or_default();
            if fmt != "csr" && m.hasattr("tocsr")? {
                m = m.call_method0("tocsr")?;
            }
        }
        let get = |name: &str| {
            m.getattr(name).map_err(|_| {
                type_error(
                    arg,
                    format!(
                        "expected a CSR matrix (scipy.sparse.csr_matrix, an object with indptr, \
                         indices, data, shape, or a tuple of them), got {}",
                        type_name(obj)
                    ),
                )
            })
        };
        (get("indptr")?, get("indices")?, get("data")?, get("shape")?)
    };
    let shape: (i64, i64) = shape
        .extract()
        .map_err(|_| type_error(arg, "shape must be a pair of ints"))?;
    if shape.0 < 0 || shape.1 < 0 || shape.1 > u32::MAX as i64 {
        return Err(value_error(arg, format!("invalid shape {shape:?}")));
    }
    let (nrows, ncols) = (shape.0 as usize, shape.1 as usize);
    let indptr = index_array(arg, "indptr", &indptr)?;
    let indices = index_array(arg, "indices", &indices)?;
    if indptr.iter().any(|&x| x < 0) {
        return Err(value_error(arg, "indptr has negative entries"));
    }
    if let Some(&bad) = indices.iter().find(|&&x| x < 0 || x >= ncols as i64) {
        return Err(value_error(
            arg,
            format!("column index {bad} out of range for {ncols} columns"),
        ));
    }
    let (darr, kind, size) = as_ndarray(arg, &data)?;
    check_ndim(arg, &darr, 1)?;
    let data: Vec<f32> = match (kind, size) {
        ('f', 4) => darr.extract::<PyReadonlyArray1<f32>>()?.as_array().to_vec(),
        ('f', 8) => darr
            .extract::<PyReadonlyArray1<f64>>()?
            .as_array()
            .iter()
            .map(|&x| x as f32)
            .collect(),
        ('f', _) | ('i', _) | ('u', _) | ('b', _) => {
            let a = darr.call_method1("astype", ("float32",))?;
            a.extract::<PyReadonlyArray1<f32>>()?.as_array().to_vec()
        }
        _ => {
            return Err(type_error(
                arg,
                format!(
                    "data must be a real or boolean array, got dtype {}",
                    dtype_str(&darr)
                ),
            ))
        }
    };
    if let Some(x) = data.iter().find(|x| !x.is_finite()) {
        return Err(value_error(
            arg,
            format!("values must be finite, found {x}"),
        ));
    }
    Csr::from_parts(
        arg,
        nrows,
        ncols,
        indptr.into_iter().map(|x| x as usize).collect(),
        indices.into_iter().map(|x| x as u32).collect(),
        data,
    )
    .py()
}

/// A CSR result: `scipy.sparse.csr_matrix` when scipy is installed, else the tuple
/// `(indptr, indices, data, shape)`. Indices are int32 unless they do not fit.
pub fn csr_out<'py, T: numpy::Element + Copy + Default + Send + Sync>(
    py: Python<'py>,
    m: feedrank_core::sparse::Csr<T>,
) -> PyResult<Bound<'py, PyAny>> {
    let small = m.nnz() <= i32::MAX as usize && m.ncols <= i32::MAX as usize;
    let (indptr, indices): (Bound<'py, PyAny>, Bound<'py, PyAny>) = if small {
        (
            PyArray1::from_vec(py, m.indptr.iter().map(|&x| x as i32).collect()).into_any(),
            PyArray1::from_vec(py, m.indices.iter().map(|&x| x as i32).collect()).into_any(),
        )
    } else {
        (
            PyArray1::from_vec(py, m.indptr.iter().map(|&x| x as i64).collect()).into_any(),
            PyArray1::from_vec(py, m.indices.iter().map(|&x| x as i64).collect()).into_any(),
        )
    };
    let data = m.data.into_pyarray(py).into_any();
    let shape = (m.nrows, m.ncols);
    match py.import("scipy.sparse") {
        Ok(sp) => {
            let kwargs = PyDict::new(py);
            kwargs.set_item("shape", shape)?;
            kwargs.set_item("copy", false)?;
            sp.getattr("csr_matrix")?
                .call(((data, indices, indptr),), Some(&kwargs))
        }
        Err(_) => Ok(PyTuple::new(
            py,
            [indptr, indices, data, shape.into_pyobject(py)?.into_any()],
        )?
        .into_any()),
    }
}

/// A row-major `rows x cols` vector as a 2-D numpy array.
pub fn array2<'py, T: numpy::Element>(
    py: Python<'py>,
    v: Vec<T>,
    rows: usize,
    cols: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let a = Array2::from_shape_vec((rows, cols), v)
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py).into_any())
}

/// `k` as a count >= 1.
pub fn positive(arg: &str, k: i64) -> PyResult<usize> {
    if k < 1 {
        return Err(value_error(arg, format!("must be >= 1, got {k}")));
    }
    Ok(k as usize)
}
