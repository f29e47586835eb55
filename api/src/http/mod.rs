//! The HTTP layer: one router per resource, merged here with the shared state, the extractors
//! every handler uses (the authenticated user, the size-limited body) and the middleware
//! (request timeout, metrics, logs).

pub mod demo;
pub mod feeds;
pub mod ops;
pub mod track;

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use uuid::Uuid;

use crate::db;
use crate::error::ApiError;
use crate::state::AppState;

/// The whole application: every route, with the state and the middleware.
pub fn router(state: AppState) -> Router {
    let body_limit = state.cfg.body_limit;
    Router::new()
        .merge(feeds::router())
        .merge(track::router())
        .merge(ops::router())
        .merge(demo::router())
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound {
        what: "route",
        id: req.uri().path().to_string(),
    }
}

/// Times out slow requests (503 JSON), counts every request per route and status, logs errors.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = match tokio::time::timeout(state.cfg.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout.into_response(),
    };
    let status = response.status();
    let elapsed = started.elapsed();
    state
        .metrics
        .observe(method.as_str(), &route, status.as_u16(), elapsed);
    if status.is_server_error() {
        tracing::warn!(%method, route, status = status.as_u16(), ms = elapsed.as_millis() as u64, "request failed");
    } else {
        tracing::debug!(%method, route, status = status.as_u16(), us = elapsed.as_micros() as u64, "request");
    }
    response
}

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
