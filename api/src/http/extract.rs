//! The extractors every handler uses: the authenticated user and the size-limited body, both
//! refusing in the API's JSON error shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use uuid::Uuid;

use crate::db;
use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated user, known to exist in `users`.
pub struct AuthUser(pub Uuid);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let subject = state.auth.authenticate(&parts.headers)?;
        // users.id is a UUID: any other subject cannot be a user of this app.
        let id = Uuid::parse_str(&subject).map_err(|_| ApiError::UnknownUser(subject.clone()))?;
        if state.users.get(&id).is_some() {
            return Ok(AuthUser(id));
        }
        if db::user_exists(&state.pg, id).await? {
            state.users.insert(id, ());
            Ok(AuthUser(id))
        } else {
            Err(ApiError::UnknownUser(subject))
        }
    }
}

/// The request body, limited to `BODY_LIMIT_BYTES`; a larger or unreadable body is a 400 that
/// says so, in the API's JSON error shape. No content type is required (`navigator.sendBeacon`
/// sends text/plain).
pub struct BodyBytes(pub Bytes);

impl FromRequest<AppState> for BodyBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(BodyBytes(b)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::bad(
                    "body",
                    format!("larger than the limit of {} bytes", state.cfg.body_limit),
                ))
            }
            Err(rejection) => Err(ApiError::bad("body", rejection.body_text())),
        }
    }
}
