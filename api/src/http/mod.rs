//! The HTTP layer: one router per resource, merged here with the shared state and the middleware
//! (request timeout, metrics, logs). The extractors every handler uses are in `extract`.

pub mod demo;
pub mod explain;
pub mod extract;
pub mod feeds;
pub mod ops;
pub mod track;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

/// The whole application: every route, with the state and the middleware.
pub fn router(state: AppState) -> Router {
    let body_limit = state.cfg.body_limit;
    Router::new()
        .merge(feeds::router())
        .merge(explain::router())
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
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", |m| m.as_str());
    let response = match tokio::time::timeout(state.cfg.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout.into_response(),
    };
    let status = response.status();
    let elapsed = started.elapsed();
    state
        .metrics
        .observe(method.as_str(), route, status.as_u16(), elapsed);
    if status.is_server_error() {
        tracing::warn!(%method, route, status = status.as_u16(), ms = elapsed.as_millis() as u64, "request failed");
    } else {
        tracing::debug!(%method, route, status = status.as_u16(), us = elapsed.as_micros() as u64, "request");
    }
    response
}
