//! POST /api/track and POST /api/track/batch: interaction events, stored durably and
//! idempotently (per user and `eventId`) before the answer is sent.
//!
//! The body is parsed by serde into the same structs that describe it in the OpenAPI document;
//! a 400 names the field at fault by its path in the body (`postId`, `events[3].eventId`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use feedrank_core::config::InteractionType;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use serde_path_to_error::Segment;
use utoipa::openapi::schema::{Schema, SchemaType, Type};
use utoipa::openapi::{ObjectBuilder, RefOr};
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

use crate::db;
use crate::error::{ApiError, ApiResult, AuthenticatedErrors, ErrorBody};
use crate::http::extract::{AuthUser, BodyBytes};
use crate::redis_store::Mirrored;
use crate::state::AppState;
use crate::trending;

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

/// One interaction event.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackRequest {
    pub post_id: Uuid,
    #[schema(value_type = InteractionTypeSchema)]
    pub interaction_type: InteractionType,
    /// A JSON object of at most 4 KiB (e.g. `{"duration": 5000, "scrollDepth": 0.8}`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Metadata>,
    /// A client-chosen id (1..=128 characters); a retry with the same id stores nothing new and
    /// answers with the original `interactionId`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub event_id: Option<EventId>,
    /// The `metadata.requestId` of the feed response the post was shown in: attributes the
    /// event to that page. Stored as given (the served log may lag behind or have dropped it).
    #[serde(default)]
    pub request_id: Option<Uuid>,
    /// The post's position in that feed, 0-based across pages (the page's offset plus its index
    /// in the page).
    #[serde(default)]
    #[schema(value_type = Option<u32>, minimum = 0, maximum = 2147483647)]
    pub position: Option<Position>,
}

/// The OpenAPI schema of the core's [`InteractionType`] (named `InteractionType`): a string
/// enum of `InteractionType::ALL`.
pub struct InteractionTypeSchema;

impl PartialSchema for InteractionTypeSchema {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .enum_values(Some(InteractionType::ALL.map(InteractionType::as_str)))
            .into()
    }
}

impl ToSchema for InteractionTypeSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "InteractionType".into()
    }
}

/// An event's `metadata`: a JSON object of at most [`MAX_METADATA_BYTES`] of compact JSON.
#[derive(Debug, Clone)]
pub struct Metadata(Map<String, Value>);

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Value::Object(m) = Value::deserialize(d)? else {
            return Err(D::Error::custom("must be a JSON object"));
        };
        let size = serde_json::to_vec(&m)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        if size > MAX_METADATA_BYTES {
            return Err(D::Error::custom(format!(
                "must be at most {MAX_METADATA_BYTES} bytes of JSON, got {size}"
            )));
        }
        // PostgreSQL's jsonb cannot hold U+0000 (it would fail the insert with a 500).
        if m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)) {
            return Err(D::Error::custom("must not contain the character U+0000"));
        }
        Ok(Metadata(m))
    }
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

/// An event's `eventId`: 1..=[`MAX_EVENT_ID`] characters.
#[derive(Debug, Clone)]
pub struct EventId(String);

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // PostgreSQL's text cannot hold U+0000 (it would fail the insert with a 500).
        if s.contains('\0') {
            return Err(D::Error::custom("must not contain the character U+0000"));
        }
        if s.is_empty() || s.chars().count() > MAX_EVENT_ID {
            return Err(D::Error::custom(format!(
                "must be 1..={MAX_EVENT_ID} characters"
            )));
        }
        Ok(EventId(s))
    }
}

/// An event's `position`: an integer in 0..=2^31-1 (PostgreSQL's `integer`).
#[derive(Debug, Clone, Copy)]
pub struct Position(i32);

impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Read wider than the column, so that -1 is told it is negative, not of a wrong type.
        let v = i64::deserialize(d)?;
        i32::try_from(v)
            .ok()
            .filter(|p| *p >= 0)
            .map(Position)
            .ok_or_else(|| {
                D::Error::custom(format!("must be an integer in 0..={}, got {v}", i32::MAX))
            })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackResponse {
    pub success: bool,
    pub interaction_id: Uuid,
}

/// A batch of events, each validated and stored on its own: an invalid event is a 400 in its
/// result, not the batch's.
// The events are kept as raw JSON here and parsed one by one into `TrackRequest`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TrackBatchRequest {
    /// 1..=100 events.
    #[schema(value_type = Vec<TrackRequest>)]
    pub events: Vec<Box<RawValue>>,
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

/// Parses `json` into `T`; a failure is a 400 naming the field by its path, below `at` (the
/// event's place in a batch; empty for a single event: then the whole body is `body`).
fn parse<T: DeserializeOwned>(json: &[u8], at: &str) -> ApiResult<T> {
    let whole = if at.is_empty() { "body" } else { at };
    let mut de = serde_json::Deserializer::from_slice(json);
    let e = match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => {
            return match de.end() {
                Ok(()) => Ok(v),
                Err(e) => Err(ApiError::bad(whole, format!("not valid JSON: {e}"))),
            }
        }
        Err(e) => e,
    };
    if e.inner().is_syntax() || e.inner().is_eof() {
        return Err(ApiError::bad(
            whole,
            format!("not valid JSON: {}", e.inner()),
        ));
    }
    // serde reads a struct from an array too (by position): an event is an object, never that.
    if let Some(Segment::Seq { .. }) = e.path().iter().next() {
        return Err(ApiError::bad(whole, "must be a JSON object"));
    }
    // serde_json appends where in the text it went wrong; the field name says it better.
    let text = e.inner().to_string();
    let message = text.split(" at line ").next().unwrap_or(&text);
    let path = e.path().to_string();
    let mut field = match path.as_str() {
        "." => String::new(),
        p => p.to_string(),
    };
    // A missing or repeated field is reported by its object: name the field itself.
    let named = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|m| m.strip_suffix('`'))
            .map(str::to_string)
    };
    let message = match (named("missing field `"), named("duplicate field `")) {
        (Some(name), _) => {
            field = join(&field, &name);
            "is required"
        }
        (None, Some(name)) => {
            field = join(&field, &name);
            "given more than once"
        }
        (None, None) => message,
    };
    let field = match (at.is_empty(), field.is_empty()) {
        (_, true) => whole.to_string(),
        (true, false) => field,
        (false, false) => join(at, &field),
    };
    Err(ApiError::bad(field, message))
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

async fn store(
    state: &AppState,
    client: &deadpool_postgres::Client,
    user: Uuid,
    ev: &TrackRequest,
) -> ApiResult<db::Stored> {
    let metadata = ev.metadata.clone().map(|m| Value::Object(m.0));
    let stored = db::insert_interaction(
        client,
        &db::NewInteraction {
            user,
            post: ev.post_id,
            kind: ev.interaction_type,
            metadata: metadata.as_ref(),
            event_id: ev.event_id.as_ref().map(|e| e.0.as_str()),
            request_id: ev.request_id,
            position: ev.position.map(|p| p.0),
        },
    )
    .await?;
    state.metrics.event(stored.created);
    Ok(stored)
}

/// What Redis keeps of stored interactions: the user's seen/hidden/liked mirrors, and the
/// trending counters (new interactions only: a retried event is not counted twice).
async fn mirror(state: &AppState, user: Uuid, stored: &[(InteractionType, db::Stored)]) {
    let mirrored: Vec<Mirrored> = stored
        .iter()
        .map(|(kind, s)| Mirrored {
            post_id: s.post_id.to_string(),
            at_ms: s.at_ms,
            hide: *kind == InteractionType::Hide,
            like: matches!(kind, InteractionType::Like | InteractionType::Share),
        })
        .collect();
    state
        .redis
        .record_interactions(&user.to_string(), &mirrored, &state.metrics)
        .await;
    let counted: Vec<(Uuid, InteractionType, i64)> = stored
        .iter()
        .filter(|(_, s)| s.created)
        .map(|(kind, s)| (s.post_id, *kind, s.at_ms))
        .collect();
    if !counted.is_empty() {
        let config = state.feeds.models.serving_config(&state.pg).await;
        trending::record(&state.redis, &state.metrics, &config, &counted).await;
    }
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
        (status = 404, description = "Unknown post", body = ErrorBody),
        AuthenticatedErrors,
    )
)]
pub async fn track(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    BodyBytes(body): BodyBytes,
) -> ApiResult<(StatusCode, Json<TrackResponse>)> {
    let ev: TrackRequest = parse(&body, "")?;
    // Stored in a task of its own: if the client goes away mid-request, the insert and its
    // bookkeeping still finish (the client's retry with the same eventId then finds the row).
    let stored = tokio::spawn(async move {
        let client = state.pg.get().await?;
        let stored = store(&state, &client, user, &ev).await?;
        drop(client);
        let stored = [(ev.interaction_type, stored)];
        mirror(&state, user, &stored).await;
        let [(_, stored)] = stored;
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
        AuthenticatedErrors,
    )
)]
pub async fn track_batch(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    BodyBytes(body): BodyBytes,
) -> ApiResult<Json<TrackBatchResponse>> {
    let events = match serde_json::from_slice::<TrackBatchRequest>(&body) {
        Ok(batch) => batch.events,
        Err(e) if e.is_syntax() || e.is_eof() => {
            return Err(ApiError::bad("body", format!("not valid JSON: {e}")))
        }
        Err(_) => {
            return Err(ApiError::bad(
                "events",
                "the body must be {\"events\": [...]}",
            ))
        }
    };
    if events.is_empty() || events.len() > MAX_BATCH {
        return Err(ApiError::bad(
            "events",
            format!("must hold 1..={MAX_BATCH} events, got {}", events.len()),
        ));
    }
    let client = state.pg.get().await?;
    let mut results = Vec::with_capacity(events.len());
    let mut stored_events = Vec::new();
    for (index, raw) in events.iter().enumerate() {
        let outcome = match parse::<TrackRequest>(raw.get().as_bytes(), &format!("events[{index}]"))
        {
            Ok(ev) => store(&state, &client, user, &ev).await.map(|s| (ev, s)),
            Err(e) => Err(e),
        };
        match outcome {
            Ok((ev, stored)) => {
                results.push(TrackBatchResult {
                    index,
                    status: 201,
                    success: true,
                    interaction_id: Some(stored.id),
                    error: None,
                });
                stored_events.push((ev.interaction_type, stored));
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
    mirror(&state, user, &stored_events).await;
    Ok(Json(TrackBatchResponse {
        accepted: stored_events.len(),
        results,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str, at: &str) -> (String, String) {
        match parse::<TrackRequest>(body.as_bytes(), at) {
            Err(ApiError::BadRequest { field, message }) => (field, message),
            other => panic!("{body}: expected a 400, got {other:?}"),
        }
    }

    const POST: &str = "7b0c2c54-7b5c-4d43-9d6a-2c1b7b1f9e11";

    #[test]
    fn the_400_names_the_field_by_its_path() {
        let missing = refused(r#"{"interactionType": "like"}"#, "");
        assert_eq!(missing, ("postId".into(), "is required".into()));
        let (field, message) = refused(
            &format!(r#"{{"postId": "{POST}", "interactionType": "love"}}"#),
            "events[3]",
        );
        assert_eq!(field, "events[3].interactionType");
        for t in InteractionType::ALL {
            assert!(message.contains(t.as_str()), "{message} lists {t:?}");
        }
        assert!(!message.contains(" at line "), "{message}");
        assert_eq!(
            refused(
                &format!(r#"{{"postId": "{POST}", "interactionType": "view", "eventId": ""}}"#),
                "events[0]",
            )
            .0,
            "events[0].eventId"
        );
        let twice =
            format!(r#"{{"postId": "{POST}", "postId": "{POST}", "interactionType": "view"}}"#);
        assert_eq!(refused(&twice, "").0, "postId");
        assert_eq!(refused("[1, 2]", "").0, "body");
        assert_eq!(refused("[1, 2]", "events[1]").0, "events[1]");
        assert_eq!(refused("{not json", "").0, "body");
        assert_eq!(
            refused(
                &format!(r#"{{"postId": "{POST}", "interactionType": "view"}} x"#),
                ""
            )
            .0,
            "body",
            "trailing characters"
        );
    }

    #[test]
    fn metadata_and_event_ids_keep_their_limits() {
        let event =
            |extra: &str| format!(r#"{{"postId": "{POST}", "interactionType": "view"{extra}}}"#);
        let at_limit = format!(
            r#", "metadata": {{"k": "{}"}}"#,
            "x".repeat(MAX_METADATA_BYTES - 8)
        );
        assert!(parse::<TrackRequest>(event(&at_limit).as_bytes(), "").is_ok());
        let over = format!(
            r#", "metadata": {{"k": "{}"}}"#,
            "x".repeat(MAX_METADATA_BYTES - 7)
        );
        assert_eq!(refused(&event(&over), "").0, "metadata");
        assert_eq!(
            refused(&event(r#", "metadata": {"a": ["\u0000"]}"#), "").0,
            "metadata"
        );
        let id = format!(r#", "eventId": "{}""#, "é".repeat(MAX_EVENT_ID));
        assert!(parse::<TrackRequest>(event(&id).as_bytes(), "").is_ok());
        let long = format!(r#", "eventId": "{}""#, "é".repeat(MAX_EVENT_ID + 1));
        assert_eq!(refused(&event(&long), "").0, "eventId");
        assert_eq!(
            refused(&event(r#", "eventId": "a\u0000""#), "").0,
            "eventId"
        );
        let ok = parse::<TrackRequest>(
            event(r#", "metadata": null, "eventId": null"#).as_bytes(),
            "",
        )
        .unwrap();
        assert!(ok.metadata.is_none() && ok.event_id.is_none());
    }

    #[test]
    fn request_ids_and_positions_are_checked_by_name() {
        let event =
            |extra: &str| format!(r#"{{"postId": "{POST}", "interactionType": "click"{extra}}}"#);
        let ok = parse::<TrackRequest>(
            event(&format!(r#", "requestId": "{POST}", "position": 0"#)).as_bytes(),
            "",
        )
        .unwrap();
        assert_eq!(ok.request_id, Some(Uuid::parse_str(POST).unwrap()));
        assert_eq!(ok.position.map(|p| p.0), Some(0));
        let max = format!(r#", "position": {}"#, i32::MAX);
        assert!(parse::<TrackRequest>(event(&max).as_bytes(), "").is_ok());
        let none = parse::<TrackRequest>(
            event(r#", "requestId": null, "position": null"#).as_bytes(),
            "",
        )
        .unwrap();
        assert!(none.request_id.is_none() && none.position.is_none());
        assert_eq!(
            refused(&event(r#", "requestId": "not-a-uuid""#), "").0,
            "requestId"
        );
        assert_eq!(
            refused(&event(r#", "requestId": 7"#), "events[2]").0,
            "events[2].requestId"
        );
        let (field, message) = refused(&event(r#", "position": -1"#), "");
        assert_eq!(field, "position");
        assert!(message.contains("0..=2147483647, got -1"), "{message}");
        let over = format!(r#", "position": {}"#, i32::MAX as i64 + 1);
        assert_eq!(refused(&event(&over), "").0, "position");
        assert_eq!(refused(&event(r#", "position": 1.5"#), "").0, "position");
        assert_eq!(refused(&event(r#", "position": "3""#), "").0, "position");
    }

    #[test]
    fn the_documented_interaction_types_are_the_cores() {
        let schema = serde_json::to_value(InteractionTypeSchema::schema()).unwrap();
        let names: Vec<&str> = InteractionType::ALL.map(InteractionType::as_str).to_vec();
        assert_eq!(schema["enum"], serde_json::json!(names));
    }
}
