//! The page as JSON: post bodies serialized once ([`CachedPost`]) and concatenated with each
//! post's score, reason and source.

use std::sync::Arc;

use deadpool_postgres::Pool;
use feedrank_core::config::Source;
use uuid::Uuid;

use super::{Candidate, Feeds, Stores};
use crate::clock::now_ms;
use crate::db;
use crate::error::ApiResult;
use crate::memo::IdMap;
use crate::response::{FeedMetadata, FeedPost};
use crate::served_log::ServedPost;

/// A post as the feed shows it, serialized once: the JSON object without its closing brace, so
/// that a page is assembled by concatenation (with `score`, `reason` and `source` appended)
/// instead of serializing every post of every page again.
pub struct CachedPost {
    pub author: Uuid,
    pub created_ms: i64,
    json_open: Box<str>,
}

impl CachedPost {
    pub fn new(p: &FeedPost) -> CachedPost {
        debug_assert!(p.score.is_none() && p.reason.is_none() && p.source.is_none());
        let mut json = serde_json::to_string(p).expect("a post always serializes");
        let closing = json.pop();
        debug_assert_eq!(closing, Some('}'));
        CachedPost {
            author: p.user_id,
            created_ms: p.created_at.timestamp_millis(),
            json_open: json.into_boxed_str(),
        }
    }
}

impl Feeds {
    /// The page of `items`, as JSON (`metadata.sources` is filled here); the posts it holds are
    /// appended to `served`, in order.
    pub(super) async fn page<'c>(
        &self,
        stores: &Stores<'_>,
        items: impl Iterator<Item = &'c Candidate> + Clone,
        bodies: &IdMap<Uuid, Arc<CachedPost>>,
        mut metadata: FeedMetadata,
        served: &mut Vec<ServedPost>,
    ) -> ApiResult<Vec<u8>> {
        let mut missing = Vec::with_capacity(metadata.limit);
        for c in items.clone() {
            // (a look-up hashes the id even in an empty map)
            if bodies.is_empty() || !bodies.contains_key(&c.post) {
                missing.push(c.post);
            }
        }
        let loaded = self.hydrate(stores.pg, &missing).await?;
        let mut out = Vec::with_capacity(512 + metadata.limit * 600);
        out.extend_from_slice(b"{\"posts\":[");
        let mut first = true;
        let mut counts = [0u64; Source::ALL.len()];
        let now = now_ms();
        for item in items {
            // A post deleted since the list was made has no body: left out.
            let Some(body) = bodies.get(&item.post).or_else(|| loaded.get(&item.post)) else {
                continue;
            };
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(body.json_open.as_bytes());
            if let Some(score) = item.score {
                out.extend_from_slice(b",\"score\":");
                serde_json::to_writer(&mut out, &score).expect("writing to a Vec");
            }
            if let Some(reason) = item.reason {
                out.extend_from_slice(b",\"reason\":\"");
                out.extend_from_slice(reason.as_str().as_bytes());
                out.push(b'"');
            }
            out.extend_from_slice(b",\"source\":\"");
            out.extend_from_slice(item.source.as_str().as_bytes());
            out.push(b'"');
            if let Some(liked) = item.because_of {
                out.extend_from_slice(b",\"becauseOf\":\"");
                out.extend_from_slice(
                    liked
                        .hyphenated()
                        .encode_lower(&mut Uuid::encode_buffer())
                        .as_bytes(),
                );
                out.push(b'"');
            }
            out.push(b'}');
            served.push(ServedPost {
                post: item.post,
                source: item.source,
                reason: item.reason,
            });
            let s = Source::ALL
                .iter()
                .position(|&s| s == item.source)
                .expect("a source of ALL");
            if counts[s] == 0 {
                metadata.sources.push(item.source.as_str().to_string());
            }
            counts[s] += 1;
            if self.served.get(&item.post).is_none() {
                self.served.insert(item.post, ());
                stores
                    .metrics
                    .first_served(item.source.as_str(), now - body.created_ms);
            }
        }
        for (s, n) in Source::ALL.iter().zip(counts) {
            if n > 0 {
                stores.metrics.posts_served(s.as_str(), n);
            }
        }
        out.extend_from_slice(b"],\"metadata\":");
        serde_json::to_writer(&mut out, &metadata).expect("writing to a Vec");
        out.push(b'}');
        Ok(out)
    }

    /// Post bodies for `ids`, from the in-process cache, the misses from PostgreSQL in one query.
    /// Deleted posts are absent from the result.
    pub(super) async fn hydrate(
        &self,
        pg: &Pool,
        ids: &[Uuid],
    ) -> ApiResult<IdMap<Uuid, Arc<CachedPost>>> {
        let mut found = IdMap::with_capacity_and_hasher(ids.len(), Default::default());
        let mut missing = Vec::new();
        for id in ids {
            match self.posts.get(id) {
                Some(p) => {
                    found.insert(*id, p);
                }
                None => missing.push(*id),
            }
        }
        if !missing.is_empty() {
            for p in db::posts_by_ids(pg, &missing).await? {
                let cached = Arc::new(CachedPost::new(&p));
                self.posts.insert(p.id, cached.clone());
                found.insert(p.id, cached);
            }
        }
        Ok(found)
    }
}
