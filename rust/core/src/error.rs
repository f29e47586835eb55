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

/// `n` counts something that must exist at least once (`k`, `neighbors`, `top_k`, ...). `arg`
/// names it as the caller spells it (`top_k`, `sources.fresh.pool_size`).
pub fn check_count(arg: impl Into<Cow<'static, str>>, n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid(arg, format!("must be >= 1, got {n}")));
    }
    Ok(())
}

/// `v` is a finite number > 0 (a penalty, a time constant).
pub fn check_positive<V: Into<f64> + Display + Copy>(
    arg: impl Into<Cow<'static, str>>,
    v: V,
) -> Result<()> {
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
pub fn check_non_negative<V: Into<f64> + Display + Copy>(
    arg: impl Into<Cow<'static, str>>,
    v: V,
) -> Result<()> {
    let x: f64 = v.into();
    if !(x.is_finite() && x >= 0.0) {
        return Err(Error::invalid(
            arg,
            format!("must be finite and >= 0, got {v}"),
        ));
    }
    Ok(())
}

/// `len` values, one per `what` (`n` of them): `post_author: has length 3, expected one value
/// per post (4)`.
pub fn check_len(arg: &'static str, len: usize, n: usize, what: &str) -> Result<()> {
    if len != n {
        return Err(Error::invalid(
            arg,
            format!("has length {len}, expected one value per {what} ({n})"),
        ));
    }
    Ok(())
}

/// Every value finite and >= 0 (ages, engagement counts).
pub fn check_all_non_negative(arg: &'static str, values: &[f32]) -> Result<()> {
    if let Some(v) = values.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
        return Err(Error::invalid(
            arg,
            format!("must be finite and >= 0, found {v}"),
        ));
    }
    Ok(())
}

/// Every value is -1 (none) or an index in `0..n` of `what`: `post_author: must be -1 or a user
/// index in 0..5, found 7`.
pub fn check_index_or_none(arg: &'static str, values: &[i64], n: usize, what: &str) -> Result<()> {
    if let Some(v) = values.iter().find(|&&v| v < -1 || v >= n as i64) {
        return Err(Error::invalid(
            arg,
            format!("must be -1 or {what} in 0..{n}, found {v}"),
        ));
    }
    Ok(())
}
