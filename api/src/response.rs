//! The feed's response shape (GET /api/feeds), as the design's API specification gives it. A leaf
//! module: the database layer fills [`FeedPost`], the feed assembles pages of them, the HTTP layer
//! documents them, and none of those is needed to read it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A post's author, as the feed shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FeedUser {
    pub id: Uuid,
    pub username: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

/// One post of a feed page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FeedPost {
    pub id: Uuid,
    pub user_id: Uuid,
    pub content: String,
    pub media_urls: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub user: FeedUser,
    /// The recommendation score (recommended posts only; absent in the random fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    /// Why the post was recommended: the strongest component of its score (`similar_users`,
    /// `similar_content`, `fresh`, `popular`, `liked_author`) or its source's own reason
    /// (`because_you_liked`, `trending`); absent for the random fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The candidate source the post came from: `personalized`, `fresh`, `because_you_liked`,
    /// `trending` or `fallback` (always present in feed pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// For `because_you_liked`: the post the user liked or shared that this one neighbours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub because_of: Option<Uuid>,
}

/// A candidate source left out of a page, and why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SkippedSource {
    /// `fresh`, `because_you_liked` or `trending`.
    pub source: String,
    /// e.g. `no model for the user's run`, `profile from an older model`, `redis unavailable`.
    pub reason: String,
}

/// A running experiment the user is in, and their arm (assigned by a stable hash of the
/// experiment's salt and the user id: the same on every request).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExperimentArm {
    pub experiment: String,
    pub arm: String,
    /// Whether this arm shaped the page. One arm at most does: that of the earliest-started
    /// experiment whose arm changes the feed (docs/api.md). A `random` or `sources` arm is applied
    /// per request; a `config` arm when the run the page is served from computed the user's list
    /// with it (the next pipeline run or refresh after the experiment started).
    pub applied: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FeedMetadata {
    /// This response's id (a UUID): the served log records the page under it; tracked events
    /// name it (`requestId`) to be attributed to the page.
    pub request_id: Uuid,
    /// Posts available to page through: the blend of the sources after the serve-time filters,
    /// then the fallback's posts not already in it (whose seen filter is applied when paging
    /// reaches them, so this can overstate by those).
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    /// Where the user's personalized list came from: `cache` (Redis) or `db`; `fallback` when
    /// the user has none (kept from before the sources were blended).
    pub source: String,
    /// The candidate sources of this page's posts, in order of first appearance.
    #[serde(default)]
    pub sources: Vec<String>,
    /// The request-time sources skipped for this user, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedSource>,
    /// The random fallback's seed; pass it back as `seed` to get the next page of the same order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The user's arm in every running experiment, earliest started first (empty when none
    /// runs).
    #[serde(default)]
    pub arms: Vec<ExperimentArm>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeedResponse {
    pub posts: Vec<FeedPost>,
    pub metadata: FeedMetadata,
}
