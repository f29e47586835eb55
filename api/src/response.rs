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
    /// Why the post was recommended: the strongest component of its score, one of
    /// `similar_users`, `similar_content`, `fresh`, `popular` (recommended posts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FeedMetadata {
    /// Posts available to page through from this source (after the serve-time filters).
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    /// `cache`, `db` or `fallback`.
    pub source: String,
    /// The random fallback's seed; pass it back as `seed` to get the next page of the same order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeedResponse {
    pub posts: Vec<FeedPost>,
    pub metadata: FeedMetadata,
}
