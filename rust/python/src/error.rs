//! The one place where core errors become Python exceptions.
//!
//! Every core error already starts with the argument or field it is about ("k: must be >= 1"),
//! so the message passes through unchanged. Bad values are `ValueError`; a cancelled kernel
//! (Ctrl-C, see `run.rs`) is `KeyboardInterrupt`; wrong types and dtypes are raised as
//! `TypeError` directly by the argument converters in `convert.rs`.

use feedrank_core::Error;
use pyo3::exceptions::{PyKeyboardInterrupt, PyTypeError, PyValueError};
use pyo3::PyErr;

pub fn to_py(e: Error) -> PyErr {
    match e {
        Error::InvalidArgument { .. } | Error::Decode { .. } => {
            PyValueError::new_err(e.to_string())
        }
        Error::Cancelled => PyKeyboardInterrupt::new_err(()),
    }
}

/// A `ValueError` whose message starts with the argument name.
pub fn value_error(arg: &str, message: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("{arg}: {message}"))
}

/// A `TypeError` whose message starts with the argument name.
pub fn type_error(arg: &str, message: impl std::fmt::Display) -> PyErr {
    PyTypeError::new_err(format!("{arg}: {message}"))
}

pub trait IntoPyResult<T> {
    fn py(self) -> pyo3::PyResult<T>;
}

impl<T> IntoPyResult<T> for feedrank_core::Result<T> {
    fn py(self) -> pyo3::PyResult<T> {
        self.map_err(to_py)
    }
}
