//! The core's one error type. The binding maps each variant to a Python exception in one place.

/// Errors raised by the kernels and the contracts.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    /// An argument is out of its domain. `arg` names the argument as the caller spelled it.
    #[error("{arg}: {message}")]
    InvalidArgument { arg: &'static str, message: String },
    /// Bytes that do not decode as the expected format (e.g. a cache entry).
    #[error("cannot decode {what}: {message}")]
    Decode { what: &'static str, message: String },
}

impl Error {
    pub fn invalid(arg: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            arg,
            message: message.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
