//! The API's one error type. Client errors say what is wrong (and which field); internal errors
//! are logged in full and answered with a generic message. Every error is JSON:
//! `{"error": "<code>", "message": "<text>", "field": "<name>"?}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoResponses, ToSchema};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a query parameter, body field or the body itself is wrong; `field` names it.
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    /// 401: missing, expired, forged or malformed credentials.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// 403: a valid token whose subject is not a user of this app.
    #[error("unknown user {0}")]
    UnknownUser(String),
    /// 404: something named in the request does not exist.
    #[error("{what} not found: {id}")]
    NotFound { what: &'static str, id: String },
    /// 503: PostgreSQL is unreachable, the pool is exhausted, or a statement was ended by a
    /// deadlock, a serialization failure or a lock timeout; the client may retry.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// 503: the request ran longer than the configured request timeout.
    #[error("request timed out")]
    Timeout,
    /// 500: a bug or an unexpected database answer; logged, never shown.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ErrorBody {
    /// A stable code: bad_request, unauthorized, unknown_user, not_found, unavailable, internal.
    pub error: String,
    /// What went wrong, for a person.
    pub message: String,
    /// The query parameter or body field at fault (400 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The error answers every authenticated route that reads the database can give, as the OpenAPI
/// document lists them (each route adds its own 400 and 404).
#[derive(IntoResponses)]
pub enum AuthenticatedErrors {
    #[response(
        status = 401,
        description = "Missing, expired, forged or malformed credentials"
    )]
    Unauthorized(ErrorBody),
    #[response(
        status = 403,
        description = "The token's subject is not a user of this app"
    )]
    UnknownUser(ErrorBody),
    #[response(status = 503, description = "The database is unavailable")]
    Unavailable(ErrorBody),
}

impl ApiError {
    pub fn bad(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::UnknownUser(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Unavailable(_) | ApiError::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn body(&self) -> ErrorBody {
        let (error, message, field) = match self {
            ApiError::BadRequest { field, message } => (
                "bad_request",
                format!("{field}: {message}"),
                Some(field.clone()),
            ),
            ApiError::Unauthorized(m) => ("unauthorized", m.clone(), None),
            ApiError::UnknownUser(id) => (
                "unknown_user",
                format!("the authenticated subject {id:?} is not a user of this app"),
                None,
            ),
            ApiError::NotFound { what, id } => {
                ("not_found", format!("{what} {id} not found"), None)
            }
            ApiError::Unavailable(_) => (
                "unavailable",
                "the database is unavailable, retry shortly".to_string(),
                None,
            ),
            ApiError::Timeout => ("unavailable", "the request timed out".to_string(), None),
            ApiError::Internal(_) => ("internal", "internal server error".to_string(), None),
        };
        ErrorBody {
            error: error.to_string(),
            message,
            field,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(m) => tracing::error!(error = %m, "internal error"),
            ApiError::Unavailable(m) => tracing::warn!(error = %m, "database unavailable"),
            _ => {}
        }
        (self.status(), axum::Json(self.body())).into_response()
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        // A closed connection or a failed connect means the database went away, and a deadlock,
        // a serialization failure or a lock timeout ended this one statement (a pipeline run's
        // ATTACH can deadlock with a reader: dagster_pipeline/swap.py): 503, retryable. Anything
        // else the database answered is unexpected here (500).
        if e.is_closed() || e.as_db_error().is_none() || e.code().is_some_and(is_transient) {
            ApiError::Unavailable(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

/// Errors that end one statement, not the database: the same request can succeed again.
fn is_transient(code: &tokio_postgres::error::SqlState) -> bool {
    use tokio_postgres::error::SqlState;
    [
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::LOCK_NOT_AVAILABLE,
    ]
    .contains(code)
}

pub type ApiResult<T> = Result<T, ApiError>;
