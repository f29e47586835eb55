//! GET /api/feeds/explain: for operators, one user's candidates per source with their scores
//! and components. Closed unless `FEEDRANK_ADMIN_TOKEN` is set (404), and then only with that
//! token in `X-Admin-Token` (401 otherwise); never with a user's token.

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::IntoParams;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::feed::FeedRequest;
use crate::http::feeds::{with_assignment, MAX_LIMIT};
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

impl ExplainParams {
    /// Parsed as pairs, as the feed's parameters are, so that a malformed or repeated parameter
    /// is a 400 in the API's JSON shape naming it (axum's `Query` answers in plain text).
    fn parse(raw: Option<&str>) -> ApiResult<ExplainParams> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|e| ApiError::bad("query", format!("malformed query string: {e}")))?;
        let mut user_id = None;
        for (k, v) in pairs {
            if k == "userId" {
                if user_id.is_some() {
                    return Err(ApiError::bad("userId", "given more than once"));
                }
                user_id = Some(v);
            }
        }
        Ok(ExplainParams { user_id })
    }
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
/// the blend's first 100 posts, as the user is served them: the shares the blend uses (an applied
/// `sources` arm's, else the run's), the user's experiment arms. Operators only.
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
    RawQuery(raw): RawQuery,
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
    let params = ExplainParams::parse(raw.as_deref())?;
    let user = params
        .user_id
        .as_deref()
        .ok_or_else(|| ApiError::bad("userId", "required"))
        .and_then(|u| {
            Uuid::parse_str(u).map_err(|_| ApiError::bad("userId", format!("not a UUID: {u:?}")))
        })?;
    // as the user is served: with their experiment arms
    let assignment = state.experiments.assignment(&state.pg, user).await;
    let req = FeedRequest {
        limit: MAX_LIMIT,
        offset: 0,
        refresh: false,
        seed: None,
        fallback_only: false,
        blend: None,
        arms: Vec::new(),
        config_arm: None,
    };
    let req = with_assignment(req, &assignment);
    let body = state.feeds.explain(&state.stores(), user, &req).await?;
    Ok(Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_or_malformed_user_id_is_a_400_naming_it() {
        let field = |raw: &str| match ExplainParams::parse(Some(raw)) {
            Err(ApiError::BadRequest { field, .. }) => field,
            other => panic!("{raw}: expected a 400, got {other:?}"),
        };
        assert_eq!(field("userId=a&userId=b"), "userId");
        assert_eq!(
            ExplainParams::parse(Some("userId=x&other=1"))
                .unwrap()
                .user_id
                .as_deref(),
            Some("x")
        );
    }

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(same_token("s3cret", "s3cret"));
        assert!(!same_token("s3cre", "s3cret"));
        assert!(!same_token("", "s3cret"));
    }
}
