//! GET /api/feeds/explain: for operators, one user's candidates per source with their scores
//! and components. Closed unless `FEEDRANK_ADMIN_TOKEN` is set (404), and then only with that
//! token in `X-Admin-Token` (401 otherwise); never with a user's token.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::IntoParams;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::feeds::MAX_LIMIT;
use crate::state::AppState;

pub const ADMIN_HEADER: &str = "x-admin-token";
const PATH: &str = "/api/feeds/explain";

pub fn router() -> Router<AppState> {
    Router::new().route(PATH, get(explain))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct ExplainParams {
    /// The user whose feed is explained.
    #[param(value_type = String, format = Uuid)]
    pub user_id: Option<String>,
}

/// Equal tokens, compared through their digests (no early exit on the first differing byte).
fn same_token(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Each source's candidates for one user (scores, reasons, components), what was skipped, and
/// the blend's first 100 posts. Operators only.
#[utoipa::path(
    get,
    path = "/api/feeds/explain",
    tag = "operations",
    params(ExplainParams, ("X-Admin-Token" = Option<String>, Header, description = "FEEDRANK_ADMIN_TOKEN (answered 401 when missing or wrong, 404 when the route is closed)")),
    responses(
        (status = 200, description = "The user's candidates per source", body = Object),
        (status = 400, description = "userId is missing or not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "FEEDRANK_ADMIN_TOKEN is not set: the route is closed", body = ErrorBody),
    )
)]
pub async fn explain(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<ExplainParams>,
) -> ApiResult<Json<serde_json::Value>> {
    let Some(expected) = state.cfg.admin_token.as_deref() else {
        return Err(ApiError::NotFound {
            what: "route",
            id: PATH.to_string(),
        });
    };
    let given = headers
        .get(ADMIN_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !same_token(given, expected) {
        return Err(ApiError::Unauthorized(format!(
            "the {ADMIN_HEADER} header does not hold the operators' token"
        )));
    }
    let user = params
        .user_id
        .as_deref()
        .ok_or_else(|| ApiError::bad("userId", "required"))
        .and_then(|u| {
            Uuid::parse_str(u).map_err(|_| ApiError::bad("userId", format!("not a UUID: {u:?}")))
        })?;
    let body = state
        .feeds
        .explain(&state.stores(), user, MAX_LIMIT)
        .await?;
    Ok(Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(same_token("s3cret", "s3cret"));
        assert!(!same_token("s3cre", "s3cret"));
        assert!(!same_token("", "s3cret"));
    }
}
