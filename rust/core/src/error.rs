//! The core's one error type. The binding maps each variant to a Python exception in one place.

use std::borrow::Cow;
use std::fmt::Display;

/// Errors raised by the kernels and the contracts.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    /// An argument or a configuration field is out of its domain. `arg` names it as the caller
    /// spelled it (`k`, `post_tfidf`, `weights.content`).
    #[error("{arg}: {message}")]
    InvalidArgument {
        arg: Cow<'static, str>,
        message: String,
    },
    /// Bytes that do not decode as the expected format (e.g. a cache entry).
    #[error("cannot decode {what}: {message}")]
    Decode { what: &'static str, message: String },
    /// The caller asked a long kernel to stop (a `cancel::Cancel` token), e.g. on Ctrl-C.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    pub fn invalid(arg: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            arg: arg.into(),
            message: message.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// `n` counts something that must exist at least once (`k`, `neighbors`, `top_k`, ...).
pub fn check_count(arg: &'static str, n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid(arg, "must be >= 1"));
    }
    Ok(())
}

/// `v` is a finite number > 0 (a penalty, a time constant).
pub fn check_positive<V: Into<f64> + Display + Copy>(arg: &'static str, v: V) -> Result<()> {
    let x: f64 = v.into();
    if !(x.is_finite() && x > 0.0) {
        return Err(Error::invalid(
            arg,
            format!("must be finite and > 0, got {v}"),
        ));
    }
    Ok(())
}

/// `v` is a finite number >= 0.
pub fn check_non_negative<V: Into<f64> + Display + Copy>(arg: &'static str, v: V) -> Result<()> {
    let x: f64 = v.into();
    if !(x.is_finite() && x >= 0.0) {
        return Err(Error::invalid(
            arg,
            format!("must be finite and >= 0, got {v}"),
        ));
    }
    Ok(())
}
