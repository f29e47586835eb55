//! POST /api/track and POST /api/track/batch: interaction events, stored durably and
//! idempotently (per user and `eventId`) before the answer is sent.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::{AuthUser, BodyBytes};
use crate::redis_store::Mirrored;
use crate::state::AppState;

/// Largest `metadata` object, in bytes of compact JSON.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Most events in one batch.
pub const MAX_BATCH: usize = 100;
/// Longest `eventId`.
pub const MAX_EVENT_ID: usize = 128;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/track", post(track))
        .route("/api/track/batch", post(track_batch))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InteractionType {
    View,
    Click,
    Like,
    Share,
    Hide,
}

impl InteractionType {
    pub fn as_str(&self) -> &'static str {
        match self {
            InteractionType::View => "view",
            InteractionType::Click => "click",
            InteractionType::Like => "like",
            InteractionType::Share => "share",
            InteractionType::Hide => "hide",
        }
    }

    fn parse(s: &str) -> Option<InteractionType> {
        use InteractionType::*;
        [View, Click, Like, Share, Hide]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// One interaction event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackRequest {
    pub post_id: Uuid,
    pub interaction_type: InteractionType,
    /// A JSON object of at most 4 KiB (e.g. `{"duration": 5000, "scrollDepth": 0.8}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// A client-chosen id (1..=128 characters); a retry with the same id stores nothing new and
    /// answers with the original `interactionId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackResponse {
    pub success: bool,
    pub interaction_id: Uuid,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrackBatchRequest {
    /// 1..=100 events.
    pub events: Vec<TrackRequest>,
}

/// The outcome of one event of a batch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackBatchResult {
    /// Position of the event in the request.
    pub index: usize,
    /// The status a single POST /api/track would have answered: 201, 400 or 404.
    pub status: u16,
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interaction_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrackBatchResponse {
    /// Events stored (or already stored under the same `eventId`).
    pub accepted: usize,
    pub results: Vec<TrackBatchResult>,
}

/// Validates one event, naming the field at fault. `at` prefixes field names in a batch.
fn parse_event(v: &Value, at: &str) -> ApiResult<TrackRequest> {
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::bad(at_or(at, "body"), "must be a JSON object"))?;
    let f = |name: &str| format!("{at}{name}");
    let post_id = match obj.get("postId") {
        None | Some(Value::Null) => return Err(ApiError::bad(f("postId"), "is required")),
        Some(Value::String(s)) => Uuid::parse_str(s)
            .map_err(|_| ApiError::bad(f("postId"), format!("must be a UUID, got {s:?}")))?,
        Some(_) => return Err(ApiError::bad(f("postId"), "must be a UUID string")),
    };
    let interaction_type = match obj.get("interactionType") {
        None | Some(Value::Null) => return Err(ApiError::bad(f("interactionType"), "is required")),
        Some(Value::String(s)) => InteractionType::parse(s).ok_or_else(|| {
            ApiError::bad(
                f("interactionType"),
                format!("must be one of view, click, like, share, hide; got {s:?}"),
            )
        })?,
        Some(_) => return Err(ApiError::bad(f("interactionType"), "must be a string")),
    };
    let metadata = match obj.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => {
            let size = serde_json::to_vec(m).map(|b| b.len()).unwrap_or(usize::MAX);
            if size > MAX_METADATA_BYTES {
                return Err(ApiError::bad(
                    f("metadata"),
                    format!("must be at most {MAX_METADATA_BYTES} bytes of JSON, got {size}"),
                ));
            }
            // PostgreSQL's jsonb cannot hold U+0000 (it would fail the insert with a 500).
            if m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)) {
                return Err(ApiError::bad(
                    f("metadata"),
                    "must not contain the character U+0000",
                ));
            }
            Some(m.clone())
        }
        Some(_) => return Err(ApiError::bad(f("metadata"), "must be a JSON object")),
    };
    let event_id = match obj.get("eventId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.contains('\0') => {
            // PostgreSQL's text cannot hold U+0000 (it would fail the insert with a 500).
            return Err(ApiError::bad(
                f("eventId"),
                "must not contain the character U+0000",
            ));
        }
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= MAX_EVENT_ID => {
            Some(s.clone())
        }
        Some(Value::String(_)) => {
            return Err(ApiError::bad(
                f("eventId"),
                format!("must be 1..={MAX_EVENT_ID} characters"),
            ))
        }
        Some(_) => return Err(ApiError::bad(f("eventId"), "must be a string")),
    };
    Ok(TrackRequest {
        post_id,
        interaction_type,
        metadata,
        event_id,
    })
}

/// Whether a JSON value holds U+0000 in any string or key.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn at_or(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_string()
    } else {
        at.trim_end_matches('.').to_string()
    }
}

fn parse_json(bytes: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad("body", format!("not valid JSON: {e}")))
}

async fn store(
    state: &AppState,
    client: &deadpool_postgres::Client,
    user: Uuid,
    ev: &TrackRequest,
) -> ApiResult<db::Stored> {
    let metadata = ev.metadata.clone().map(Value::Object);
    let stored = db::insert_interaction(
        client,
        user,
        ev.post_id,
        ev.interaction_type.as_str(),
        metadata.as_ref(),
        ev.event_id.as_deref(),
    )
    .await?;
    state.metrics.event(stored.created);
    Ok(stored)
}

/// Records one interaction of the authenticated user with a post.
#[utoipa::path(
    post,
    path = "/api/track",
    tag = "tracking",
    request_body = TrackRequest,
    security(("bearer" = []), ("nextauth_session" = [])),
    responses(
        (status = 201, description = "Stored (or already stored under this eventId)", body = TrackResponse),
        (status = 400, description = "Invalid body: the message names the field", body = ErrorBody),
        (status = 401, description = "Missing, expired, forged or malformed credentials", body = ErrorBody),
        (status = 403, description = "The token's subject is not a user of this app", body = ErrorBody),
        (status = 404, description = "Unknown post", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn track(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    BodyBytes(body): BodyBytes,
) -> ApiResult<(StatusCode, Json<TrackResponse>)> {
    let ev = parse_event(&parse_json(&body)?, "")?;
    // Stored in a task of its own: if the client goes away mid-request, the insert and its
    // bookkeeping still finish (the client's retry with the same eventId then finds the row).
    let stored = tokio::spawn(async move {
        let client = state.pg.get().await?;
        let stored = store(&state, &client, user, &ev).await?;
        drop(client);
        let mirror = [Mirrored {
            post_id: stored.post_id.to_string(),
            at_ms: stored.at_ms,
            hide: ev.interaction_type == InteractionType::Hide,
        }];
        state
            .redis
            .record_interactions(&user.to_string(), &mirror, &state.metrics)
            .await;
        Ok::<_, ApiError>(stored)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("tracking task failed: {e}")))??;
    Ok((
        StatusCode::CREATED,
        Json(TrackResponse {
            success: true,
            interaction_id: stored.id,
        }),
    ))
}

/// Records up to 100 interactions in one request, each with its own result (the frontend
/// batches view events). Events are stored one by one: an invalid or unknown-post event does not
/// stop the others.
#[utoipa::path(
    post,
    path = "/api/track/batch",
    tag = "tracking",
    request_body = TrackBatchRequest,
    security(("bearer" = []), ("nextauth_session" = [])),
    responses(
        (status = 200, description = "Per-event results", body = TrackBatchResponse),
        (status = 400, description = "The body is not a batch of 1..=100 events", body = ErrorBody),
        (status = 401, description = "Missing, expired, forged or malformed credentials", body = ErrorBody),
        (status = 403, description = "The token's subject is not a user of this app", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn track_batch(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    BodyBytes(body): BodyBytes,
) -> ApiResult<Json<TrackBatchResponse>> {
    let v = parse_json(&body)?;
    let events = v
        .as_object()
        .and_then(|o| o.get("events"))
        .and_then(|e| e.as_array())
        .ok_or_else(|| ApiError::bad("events", "the body must be {\"events\": [...]}"))?;
    if events.is_empty() || events.len() > MAX_BATCH {
        return Err(ApiError::bad(
            "events",
            format!("must hold 1..={MAX_BATCH} events, got {}", events.len()),
        ));
    }
    let client = state.pg.get().await?;
    let mut results = Vec::with_capacity(events.len());
    let mut mirror = Vec::new();
    for (index, raw) in events.iter().enumerate() {
        let outcome = match parse_event(raw, &format!("events[{index}].")) {
            Ok(ev) => store(&state, &client, user, &ev).await.map(|s| (ev, s)),
            Err(e) => Err(e),
        };
        match outcome {
            Ok((ev, stored)) => {
                mirror.push(Mirrored {
                    post_id: stored.post_id.to_string(),
                    at_ms: stored.at_ms,
                    hide: ev.interaction_type == InteractionType::Hide,
                });
                results.push(TrackBatchResult {
                    index,
                    status: 201,
                    success: true,
                    interaction_id: Some(stored.id),
                    error: None,
                });
            }
            // The database went away: the events before this one are stored; the client retries
            // the batch (with event ids, nothing is stored twice).
            Err(e @ (ApiError::Unavailable(_) | ApiError::Internal(_) | ApiError::Timeout)) => {
                return Err(e)
            }
            Err(e) => results.push(TrackBatchResult {
                index,
                status: e.status().as_u16(),
                success: false,
                interaction_id: None,
                error: Some(e.body()),
            }),
        }
    }
    drop(client);
    state
        .redis
        .record_interactions(&user.to_string(), &mirror, &state.metrics)
        .await;
    Ok(Json(TrackBatchResponse {
        accepted: mirror.len(),
        results,
    }))
}
