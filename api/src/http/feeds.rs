//! GET /api/feeds: the user's feed page.

use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, AuthenticatedErrors, ErrorBody};
use crate::experiments::{Assignment, PageChange};
use crate::feed::{FeedRequest, MAX_SEED};
use crate::http::extract::AuthUser;
use crate::response::FeedResponse;
use crate::served_log::ServedPage;
use crate::state::AppState;

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/feeds", get(get_feed))
}

/// Query parameters of GET /api/feeds. Out-of-range or malformed values are a 400 naming the
/// parameter; they are never clamped. Unknown parameters are ignored.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedParams {
    /// Posts per page, 1..=100 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// Posts to skip, 0..=FEED_MAX_OFFSET (default 0; FEED_MAX_OFFSET defaults to 10000).
    #[param(value_type = Option<u32>, minimum = 0)]
    pub offset: Option<String>,
    /// `true` reads the recommendations from the database instead of the cache (and refreshes
    /// the cache). Default false.
    #[param(value_type = Option<bool>)]
    pub refresh: Option<String>,
    /// Seed of the random fallback, 0..=2^53-1 (default: a hash of the user and the UTC day).
    #[param(value_type = Option<u64>, minimum = 0, maximum = 9007199254740991_u64)]
    pub seed: Option<String>,
    /// `fallback` answers with the random fallback even when recommendations exist (for
    /// comparison); `auto` (default) follows the usual order of sources.
    #[param(value_type = Option<String>)]
    pub source: Option<String>,
}

fn parse_int(field: &'static str, s: &str, min: u64, max: u64) -> ApiResult<u64> {
    let v: u64 = s.trim().parse().map_err(|_| {
        ApiError::bad(
            field,
            format!("must be an integer in {min}..={max}, got {s:?}"),
        )
    })?;
    if v < min || v > max {
        return Err(ApiError::bad(
            field,
            format!("must be in {min}..={max}, got {v}"),
        ));
    }
    Ok(v)
}

impl FeedParams {
    pub fn parse(raw: Option<&str>) -> ApiResult<FeedParams> {
        // Parsed as pairs first, so that a repeated parameter is reported by name.
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|e| ApiError::bad("query", format!("malformed query string: {e}")))?;
        let mut p = FeedParams::default();
        for (k, v) in pairs {
            let slot = match k.as_str() {
                "limit" => &mut p.limit,
                "offset" => &mut p.offset,
                "refresh" => &mut p.refresh,
                "seed" => &mut p.seed,
                "source" => &mut p.source,
                _ => continue,
            };
            if slot.is_some() {
                return Err(ApiError::bad(k, "given more than once"));
            }
            *slot = Some(v);
        }
        Ok(p)
    }

    pub fn validate(&self, max_offset: u32) -> ApiResult<FeedRequest> {
        let limit = match &self.limit {
            None => DEFAULT_LIMIT,
            Some(s) => parse_int("limit", s, 1, MAX_LIMIT as u64)? as usize,
        };
        let offset = match &self.offset {
            None => 0,
            Some(s) => parse_int("offset", s, 0, max_offset as u64)? as usize,
        };
        let refresh = match self.refresh.as_deref() {
            None => false,
            Some("true") | Some("1") => true,
            Some("false") | Some("0") => false,
            Some(other) => {
                return Err(ApiError::bad(
                    "refresh",
                    format!("must be true or false, got {other:?}"),
                ))
            }
        };
        let seed = match &self.seed {
            None => None,
            Some(s) => Some(parse_int("seed", s, 0, MAX_SEED)?),
        };
        let fallback_only = match self.source.as_deref() {
            None | Some("auto") => false,
            Some("fallback") => true,
            Some(other) => {
                return Err(ApiError::bad(
                    "source",
                    format!("must be auto or fallback, got {other:?}"),
                ))
            }
        };
        Ok(FeedRequest {
            limit,
            offset,
            refresh,
            seed,
            fallback_only,
            blend: None,
            arms: Vec::new(),
            config_arm: None,
        })
    }
}

/// `req` for a user with this assignment: the applied arm's change, the arms to label.
pub fn with_assignment(mut req: FeedRequest, assignment: &Assignment) -> FeedRequest {
    match assignment.change {
        Some(PageChange::RandomFeed) => req.fallback_only = true,
        Some(PageChange::Blend(shares)) => req.blend = Some(shares),
        None => {}
    }
    req.arms = assignment.arms.clone();
    req.config_arm = assignment.config_arm.clone();
    req
}

/// The authenticated user's feed: recommended posts (from the Redis cache or the database) with
/// their score and reason, or a seeded random order of recent posts when there are none.
#[utoipa::path(
    get,
    path = "/api/feeds",
    tag = "feed",
    params(FeedParams),
    security(("bearer" = []), ("nextauth_session" = [])),
    responses(
        (status = 200, description = "A feed page", body = FeedResponse),
        (status = 400, description = "A query parameter is malformed or out of range", body = ErrorBody),
        AuthenticatedErrors,
    )
)]
pub async fn get_feed(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let req = FeedParams::parse(raw.as_deref())?.validate(state.cfg.max_offset)?;
    let assignment = state.experiments.assignment(&state.pg, user).await;
    let req = with_assignment(req, &assignment);
    let request_id = Uuid::new_v4();
    // The body is assembled from pre-serialized posts (see feed::CachedPost); its shape is
    // FeedResponse, which the tests check by deserializing every answer into it.
    let page = state
        .feeds
        .build(&state.stores(), user, &req, request_id)
        .await?;
    // Queued, never waited for (served_log.rs).
    state.served_log.record(ServedPage {
        request_id,
        user,
        first_position: req.offset,
        posts: page.served,
        run_id: page.run_id,
        model_id: page.model_id,
        arms: assignment.labels(),
        served_at: Utc::now(),
    });
    Ok(([(header::CONTENT_TYPE, "application/json")], page.body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(raw: &str) -> String {
        match FeedParams::parse(Some(raw)).and_then(|p| p.validate(10_000)) {
            Err(ApiError::BadRequest { field, .. }) => field,
            other => panic!("{raw}: expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(field("limit=0"), "limit");
        assert_eq!(field("limit=101"), "limit");
        assert_eq!(field("limit=ten"), "limit");
        assert_eq!(field("offset=-1"), "offset");
        assert_eq!(field("offset=10001"), "offset");
        assert_eq!(field("refresh=maybe"), "refresh");
        assert_eq!(field("seed=9007199254740992"), "seed");
        assert_eq!(field("limit=5&limit=6"), "limit");
        assert_eq!(field("source=magic"), "source");
    }

    #[test]
    fn defaults_and_valid_values() {
        let r = FeedParams::parse(None).unwrap().validate(10_000).unwrap();
        assert_eq!((r.limit, r.offset, r.refresh, r.seed), (50, 0, false, None));
        let r = FeedParams::parse(Some("limit=100&offset=10000&refresh=true&seed=7&_=1"))
            .unwrap()
            .validate(10_000)
            .unwrap();
        assert_eq!(
            (r.limit, r.offset, r.refresh, r.seed),
            (100, 10_000, true, Some(7))
        );
    }
}
