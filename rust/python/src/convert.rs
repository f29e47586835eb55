//! Argument conversion: numpy arrays and CSR-like objects in, numpy arrays and CSR out.
//!
//! Dense ids accept any integer dtype (and Python sequences of ints); dense values accept
//! float32 and float64. Sparse inputs are `scipy.sparse` matrices/arrays (converted to CSR when
//! they are another format), any object with `indptr, indices, data, shape`, or a tuple
//! `(indptr, indices, data, shape)`; their data may be any real or boolean dtype. Every error
//! starts with the argument's name.
//!
//! Nothing is copied where a read-only view serves: an array that already has the kernel's
//! dtype and is contiguous is read in place ([`Values`]), including a CSR matrix's int32 indices
//! and float32 data ([`CsrArg`]); other dtypes are converted once. Views are only read, and only
//! while the call lasts (a `HybridModel`, which outlives it,
//! keeps copies).

use std::ops::Deref;

use feedrank_core::sparse::{check_parts, Csr, CsrRef};
use feedrank_core::weighting;
use ndarray::Array2;
use numpy::{
    Element, IntoPyArray, PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::error::{type_error, value_error, IntoPyResult};

/// A numeric array argument: the caller's memory when its dtype and layout fit, else a
/// converted copy. Reads as a row-major slice.
pub enum Values<'py, T: Element> {
    Vector(PyReadonlyArray1<'py, T>),
    Matrix(PyReadonlyArray2<'py, T>),
    Owned(Vec<T>),
}

impl<T: Element> Deref for Values<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            // contiguity (C order for a matrix) was checked when the view was taken
            Values::Vector(a) => a.as_slice().expect("a contiguous view"),
            Values::Matrix(a) => a.as_slice().expect("a C-contiguous view"),
            Values::Owned(v) => v,
        }
    }
}

impl<'py, T: Element + Copy> Values<'py, T> {
    /// A view of a 1-D array of dtype `T`, or a copy when it is not contiguous.
    fn vector(arr: &Bound<'py, PyAny>) -> PyResult<Self> {
        let a = arr.extract::<PyReadonlyArray1<'py, T>>()?;
        Ok(if a.is_contiguous() {
            Values::Vector(a)
        } else {
            Values::Owned(a.as_array().to_vec())
        })
    }

    /// A view of a 2-D array of dtype `T`, or a row-major copy when it is not C-contiguous.
    fn matrix(arr: &Bound<'py, PyAny>) -> PyResult<Self> {
        let a = arr.extract::<PyReadonlyArray2<'py, T>>()?;
        Ok(if a.is_c_contiguous() {
            Values::Matrix(a)
        } else {
            Values::Owned(a.as_array().iter().copied().collect())
        })
    }

    pub fn into_vec(self) -> Vec<T> {
        match self {
            Values::Owned(v) => v,
            view => view.to_vec(),
        }
    }
}

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

/// A view of `arr` (of dtype `T`, `ndim` 1 or 2), or a copy where the layout does not allow one.
fn take<'py, T: Element + Copy>(arr: &Bound<'py, PyAny>, ndim: usize) -> PyResult<Values<'py, T>> {
    if ndim == 1 {
        Values::vector(arr)
    } else {
        Values::matrix(arr)
    }
}

/// An integer array (`ndim` 1 or 2) as `i64`: int64 is viewed, other integer dtypes converted
/// (uint64 only below 2**63).
fn ints<'py>(
    arg: &str,
    arr: &Bound<'py, PyAny>,
    kind: char,
    size: usize,
    ndim: usize,
) -> PyResult<Values<'py, i64>> {
    match (kind, size) {
        ('i', 8) => take(arr, ndim),
        ('u', 8) if arr.call_method0("max")?.extract::<u64>()? > i64::MAX as u64 => {
            Err(value_error(arg, "values must be < 2**63"))
        }
        ('i', _) | ('u', _) => take(&arr.call_method1("astype", ("int64",))?, ndim),
        _ => Err(type_error(
            arg,
            format!("expected an integer array, got dtype {}", dtype_str(arr)),
        )),
    }
}

/// A float64 array (`ndim` 1 or 2) converted to row-major `f32` in one pass, straight into
/// memory the kernel may keep.
fn f64_to_f32<'py>(arr: &Bound<'py, PyAny>, ndim: usize) -> PyResult<Values<'py, f32>> {
    let v: Vec<f32> = if ndim == 1 {
        let a = arr.extract::<PyReadonlyArray1<f64>>()?;
        a.as_array().iter().map(|&x| x as f32).collect()
    } else {
        let a = arr.extract::<PyReadonlyArray2<f64>>()?;
        a.as_array().iter().map(|&x| x as f32).collect()
    };
    Ok(Values::Owned(v))
}

/// A float array of `ndim` dimensions as `f32`, checked finite, with its shape: float32 is
/// viewed, float64 converted.
fn floats<'py>(
    arg: &str,
    obj: &Bound<'py, PyAny>,
    ndim: usize,
) -> PyResult<(Values<'py, f32>, Vec<usize>)> {
    let (arr, kind, size) = as_ndarray(arg, obj)?;
    check_ndim(arg, &arr, ndim)?;
    let shape: Vec<usize> = arr.getattr("shape")?.extract()?;
    let v: Values<f32> = match (kind, size) {
        ('f', 4) => take(&arr, ndim)?,
        ('f', 8) => f64_to_f32(&arr, ndim)?,
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
    Ok((v, shape))
}

/// A 1-D integer array as `i64`.
pub fn ids_1d<'py>(arg: &str, obj: &Bound<'py, PyAny>) -> PyResult<Values<'py, i64>> {
    let (arr, kind, size) = as_ndarray(arg, obj)?;
    check_ndim(arg, &arr, 1)?;
    ints(arg, &arr, kind, size, 1)
}

/// A 2-D integer array as row-major `i64` plus its shape.
pub fn ids_2d<'py>(
    arg: &str,
    obj: &Bound<'py, PyAny>,
) -> PyResult<(Values<'py, i64>, usize, usize)> {
    let (arr, kind, size) = as_ndarray(arg, obj)?;
    check_ndim(arg, &arr, 2)?;
    let (rows, cols) = arr.getattr("shape")?.extract()?;
    Ok((ints(arg, &arr, kind, size, 2)?, rows, cols))
}

/// 1-D ids that must all lie in `0..n`, as `usize` (converted in the pass that checks them).
pub fn index_1d(arg: &str, obj: &Bound<'_, PyAny>, n: usize) -> PyResult<Vec<usize>> {
    let ids = ids_1d(arg, obj)?;
    if let Some(&bad) = ids.iter().find(|&&x| x < 0 || x as u64 >= n as u64) {
        return Err(value_error(arg, format!("index {bad} out of range 0..{n}")));
    }
    Ok(ids.iter().map(|&x| x as usize).collect())
}

/// A 1-D float array (float32 or float64) as `f32`, checked finite.
pub fn floats_1d<'py>(arg: &str, obj: &Bound<'py, PyAny>) -> PyResult<Values<'py, f32>> {
    Ok(floats(arg, obj, 1)?.0)
}

/// A 2-D float array (float32 or float64) as row-major `f32` plus its shape, checked finite.
pub fn floats_2d<'py>(
    arg: &str,
    obj: &Bound<'py, PyAny>,
) -> PyResult<(Values<'py, f32>, usize, usize)> {
    let (v, shape) = floats(arg, obj, 2)?;
    Ok((v, shape[0], shape[1]))
}

/// Keys that order interactions (times, raw ids): integers as `i64`, floats as `f64`, each
/// viewed when it has that dtype.
pub enum OrderKeys<'py> {
    Ints(Values<'py, i64>),
    Floats(Values<'py, f64>),
}

impl OrderKeys<'_> {
    /// The core's view of the keys.
    pub fn view(&self) -> weighting::OrderKeys<'_> {
        match self {
            OrderKeys::Ints(v) => weighting::OrderKeys::Ints(v),
            OrderKeys::Floats(v) => weighting::OrderKeys::Floats(v),
        }
    }
}

/// A 1-D array of integers or floats, for ordering only.
pub fn order_keys_1d<'py>(arg: &str, obj: &Bound<'py, PyAny>) -> PyResult<OrderKeys<'py>> {
    let (arr, kind, size) = as_ndarray(arg, obj)?;
    check_ndim(arg, &arr, 1)?;
    match (kind, size) {
        ('f', 8) => Ok(OrderKeys::Floats(Values::vector(&arr)?)),
        ('f', _) => Ok(OrderKeys::Floats(take(
            &arr.call_method1("astype", ("float64",))?,
            1,
        )?)),
        ('i', _) | ('u', _) => Ok(OrderKeys::Ints(ints(arg, &arr, kind, size, 1)?)),
        _ => Err(type_error(
            arg,
            format!(
                "expected an integer or float array, got dtype {}",
                dtype_str(&arr)
            ),
        )),
    }
}

/// A CSR matrix's index array (`indptr` or `indices`), checked to be 1-D integers.
fn index_array<'py>(
    arg: &str,
    what: &str,
    obj: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, char, usize)> {
    let (arr, kind, size) = as_ndarray(arg, obj)?;
    check_ndim(arg, &arr, 1)?;
    if kind != 'i' && kind != 'u' {
        return Err(type_error(
            arg,
            format!(
                "{what} must be an integer array, got dtype {}",
                dtype_str(&arr)
            ),
        ));
    }
    Ok((arr, kind, size))
}

/// A CSR matrix's column indices: scipy's int32 viewed as the core's u32, others converted.
pub enum Indices<'py> {
    Int32(PyReadonlyArray1<'py, i32>),
    Owned(Vec<u32>),
}

impl Deref for Indices<'_> {
    type Target = [u32];

    fn deref(&self) -> &[u32] {
        match self {
            // non-negative (checked), so the same bits read as u32 are the same numbers
            Indices::Int32(a) => bytemuck::cast_slice(a.as_slice().expect("a contiguous view")),
            Indices::Owned(v) => v,
        }
    }
}

/// A CSR matrix in the caller's arrays, in the kernel's layout (sorted rows), f32 values.
pub struct CsrParts<'py> {
    nrows: usize,
    ncols: usize,
    /// converted to `usize` (`nrows + 1` entries, small beside the entries)
    indptr: Vec<usize>,
    indices: Indices<'py>,
    data: Values<'py, f32>,
}

/// A CSR-like argument with f32 values: read in place from the caller's arrays where they have
/// the kernel's layout (sorted rows, int32 indices, float32 data), else an owned [`Csr`].
pub enum CsrArg<'py> {
    Borrowed(CsrParts<'py>),
    Owned(Csr<f32>),
}

impl CsrArg<'_> {
    pub fn view(&self) -> CsrRef<'_, f32> {
        match self {
            CsrArg::Borrowed(p) => CsrRef {
                nrows: p.nrows,
                ncols: p.ncols,
                indptr: &p.indptr,
                indices: &p.indices,
                data: &p.data,
            },
            CsrArg::Owned(m) => m.view(),
        }
    }

    pub fn nrows(&self) -> usize {
        self.view().nrows
    }

    pub fn ncols(&self) -> usize {
        self.view().ncols
    }

    /// The matrix as the core's owned type, for what outlives the call: the parts still
    /// borrowed from the caller are copied, the converted ones moved.
    pub fn into_owned(self) -> Csr<f32> {
        let parts = match self {
            CsrArg::Owned(m) => return m,
            CsrArg::Borrowed(parts) => parts,
        };
        let indices = match parts.indices {
            Indices::Owned(v) => v,
            view => view.to_vec(),
        };
        Csr {
            nrows: parts.nrows,
            ncols: parts.ncols,
            indptr: parts.indptr,
            indices,
            data: parts.data.into_vec(),
        }
    }
}

/// A CSR-like argument (see the module docs), values as f32 checked finite, rows sorted.
pub fn csr_arg<'py>(arg: &'static str, obj: &Bound<'py, PyAny>) -> PyResult<CsrArg<'py>> {
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

    let (indptr, kind, size) = index_array(arg, "indptr", &indptr)?;
    let indptr = ints(arg, &indptr, kind, size, 1)?;
    if indptr.iter().any(|&x| x < 0) {
        return Err(value_error(arg, "indptr has negative entries"));
    }
    let indptr: Vec<usize> = indptr.iter().map(|&x| x as usize).collect();

    let (indices, kind, size) = index_array(arg, "indices", &indices)?;
    let in_range = |x: i64| x >= 0 && x < ncols as i64;
    let indices = if (kind, size) == ('i', 4) {
        let a = take::<i32>(&indices, 1)?;
        if let Some(&bad) = a.iter().find(|&&x| !in_range(x as i64)) {
            return Err(out_of_range(arg, bad as i64, ncols));
        }
        match a {
            Values::Vector(view) => Indices::Int32(view),
            other => Indices::Owned(other.iter().map(|&x| x as u32).collect()),
        }
    } else {
        let a = ints(arg, &indices, kind, size, 1)?;
        if let Some(&bad) = a.iter().find(|&&x| !in_range(x)) {
            return Err(out_of_range(arg, bad, ncols));
        }
        Indices::Owned(a.iter().map(|&x| x as u32).collect())
    };

    let (darr, kind, size) = as_ndarray(arg, &data)?;
    check_ndim(arg, &darr, 1)?;
    let data: Values<f32> = match (kind, size) {
        ('f', 4) => Values::vector(&darr)?,
        ('f', 8) => f64_to_f32(&darr, 1)?,
        ('f', _) | ('i', _) | ('u', _) | ('b', _) => {
            take(&darr.call_method1("astype", ("float32",))?, 1)?
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
    if check_parts(arg, nrows, ncols, &indptr, &indices, data.len()).py()? {
        return Ok(CsrArg::Borrowed(CsrParts {
            nrows,
            ncols,
            indptr,
            indices,
            data,
        }));
    }
    // unsorted rows or duplicates: the core sorts and sums them in its own copy
    let owned =
        Csr::from_parts(arg, nrows, ncols, indptr, indices.to_vec(), data.into_vec()).py()?;
    Ok(CsrArg::Owned(owned))
}

fn out_of_range(arg: &str, bad: i64, ncols: usize) -> PyErr {
    value_error(
        arg,
        format!("column index {bad} out of range for {ncols} columns"),
    )
}

/// A CSR result: `scipy.sparse.csr_matrix` when scipy is installed, else the tuple
/// `(indptr, indices, data, shape)`. Indices are int32 unless they do not fit.
pub fn csr_out<'py, T: numpy::Element + Copy + Default + Send + Sync>(
    py: Python<'py>,
    m: Csr<T>,
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

/// A top-k answer of `m` rows as a dict: indices int64 [m, k], scores float32 [m, k] and
/// components float32 [m, k, 4].
pub fn topk_dict<'py>(
    py: Python<'py>,
    (m, k): (usize, usize),
    indices: Vec<i64>,
    scores: Vec<f32>,
    components: Vec<f32>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("indices", array2(py, indices, m, k)?)?;
    d.set_item("scores", array2(py, scores, m, k)?)?;
    let comps = array2(py, components, m * k, 4)?.call_method1("reshape", ((m, k, 4),))?;
    d.set_item("components", comps)?;
    Ok(d)
}

/// `k` as a count >= 1.
pub fn positive(arg: &str, k: i64) -> PyResult<usize> {
    if k < 1 {
        return Err(value_error(arg, format!("must be >= 1, got {k}")));
    }
    Ok(k as usize)
}
