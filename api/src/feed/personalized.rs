//! The `personalized` source: the pipeline's list for the user, from the first place of
//! [`PERSONALIZED`] that has it (the Redis entry, else the database's current recommendations,
//! written back to Redis).

use std::future::Future;
use std::hash::Hasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use feedrank_core::cache::{CachedFeed, CachedProfile, CachedRecommendation};
use feedrank_core::config::{Reason, ScoringConfig, Source};
use uuid::Uuid;

use super::{CachedPost, Candidate, Exclusions, Feeds, SourceInput};
use crate::db;
use crate::error::ApiResult;
use crate::memo::{IdHasher, IdMap};
use crate::redis_store::Mirrored;

/// The user's personalized list, as one of [`PERSONALIZED`] answers it.
pub struct Personalized {
    /// Where it came from (`metadata.source`, and the metrics label): `cache` or `db`.
    pub origin: &'static str,
    /// Its posts with their authors and bodies.
    pub list: Arc<HydratedList>,
    /// Posts to leave out (hidden, or seen after the list was built).
    pub excluded: Exclusions,
    /// When the list was built (ms).
    pub built_ms: i64,
    /// The recommendation run the list is from (the served log records it).
    pub run_id: Option<i64>,
    /// The run's serving model, and the user's profile in it.
    pub model_id: Option<i64>,
    pub profile: Option<Arc<CachedProfile>>,
}

pub(super) type LookupFuture<'a> =
    Pin<Box<dyn Future<Output = ApiResult<Option<Personalized>>> + Send + 'a>>;

/// A place the personalized list is looked for: its name (`metadata.source`, metrics) and the
/// function that reads it, or `None` when it has nothing for this request.
pub struct Lookup {
    pub name: &'static str,
    find: for<'a> fn(&'a SourceInput<'a>, &'static str) -> LookupFuture<'a>,
}

/// Where the personalized list is looked for, in this order.
pub const PERSONALIZED: [Lookup; 2] = [
    Lookup {
        name: "cache",
        find: |input, name| Box::pin(from_cache(input, name)),
    },
    Lookup {
        name: "db",
        find: |input, name| Box::pin(from_database(input, name)),
    },
];

/// The values of `metadata.source` (and of the `source` label of the feed page counter).
pub const PAGE_ORIGINS: [&str; 3] = ["cache", "db", "fallback"];

/// One recommended post of an entry, decoded.
#[derive(Debug, Clone, Copy)]
pub struct Recommended {
    pub post: Uuid,
    pub score: f32,
    pub reason: Reason,
    pub components: [f32; 4],
}

/// A decoded recommendations entry, remembered with a digest of its bytes: the same bytes read
/// again from Redis are not decoded again (decoding is most of the cached path's CPU).
pub struct DecodedFeed {
    digest: (u64, usize),
    pub run_id: i64,
    pub generated_at: i64,
    pub model_id: Option<i64>,
    pub profile: Option<Arc<CachedProfile>>,
    pub items: Vec<Recommended>,
}

/// A personalized list's posts as candidates (deleted posts left out), with the bodies that gave
/// their authors. Memoized per user with the entry it was made from (`Feeds::hydrated`): a page
/// does not look up the list's 200 posts again while the entry and those posts are unchanged.
pub struct HydratedList {
    /// The digest of the entry it was made from (`None`: from the database, not memoized).
    digest: Option<(u64, usize)>,
    /// The post change count (`Feeds::post_changes`) its bodies are known good at.
    changes_at: AtomicU64,
    pub items: Vec<Candidate>,
    /// Bodies loaded already (the page builder loads the page's other posts).
    pub bodies: IdMap<Uuid, Arc<CachedPost>>,
}

impl HydratedList {
    /// Whether none of its posts changed since it was made (brought forward when so).
    fn still_good(&self, feeds: &Feeds) -> bool {
        // (a post left out as deleted cannot come back: only its body's posts matter)
        feeds
            .post_changes
            .still_unchanged(&self.changes_at, |id| self.bodies.contains_key(id))
    }
}

/// A fast digest (8 bytes a step) with the length: the entry is written by the pipeline, not
/// by clients, so a non-cryptographic hash is enough to recognize the same bytes again.
pub(super) fn digest(raw: &[u8]) -> (u64, usize) {
    let mut h = IdHasher::default();
    h.write(raw);
    (h.finish(), raw.len())
}

pub(super) fn decoded_items(items: &[CachedRecommendation]) -> Vec<Recommended> {
    items
        .iter()
        .filter_map(|i| {
            Some(Recommended {
                post: Uuid::parse_str(&i.post_id).ok()?,
                score: i.score,
                reason: i.reason,
                components: i.components,
            })
        })
        .collect()
}

/// The personalized list without its excluded posts.
pub(super) fn personal_list(personalized: Option<&Personalized>) -> Vec<&Candidate> {
    personalized
        .map(|p| {
            p.list
                .items
                .iter()
                .filter(|c| !p.excluded.contains(&c.post))
                .collect()
        })
        .unwrap_or_default()
}

/// The TTL of an entry written back from the database: the run's `cache_ttl_seconds` (the
/// pipeline's setting, stored with the run; the default configuration's when the run has none),
/// never past the rows' expiry (at least a second).
pub fn write_back_ttl(run_ttl_seconds: Option<u64>, expires_at_ms: i64, now_ms: i64) -> Duration {
    let configured = run_ttl_seconds.unwrap_or_else(|| ScoringConfig::default().cache_ttl_seconds);
    let until_expiry = Duration::from_millis((expires_at_ms - now_ms).max(1000) as u64);
    Duration::from_secs(configured).min(until_expiry)
}

impl Feeds {
    /// The user's personalized list from the first place that has it.
    pub(super) async fn personalized(
        &self,
        input: &SourceInput<'_>,
    ) -> ApiResult<Option<Personalized>> {
        if input.req.fallback_only {
            return Ok(None);
        }
        for lookup in &PERSONALIZED {
            if let Some(p) = (lookup.find)(input, lookup.name).await? {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }

    /// The user's Redis entry decoded (memoized); `None` for an entry this build cannot read,
    /// which is then a cache miss.
    pub(super) fn decode_entry(&self, user: Uuid, raw: &[u8]) -> Option<Arc<DecodedFeed>> {
        let d = digest(raw);
        if let Some(hit) = self.decoded.get(&user) {
            if hit.digest == d {
                return Some(hit);
            }
        }
        match feedrank_core::cache::decode(raw) {
            Ok(feed) => {
                let decoded = Arc::new(DecodedFeed {
                    digest: d,
                    run_id: feed.run_id,
                    generated_at: feed.generated_at,
                    model_id: feed.model_id,
                    profile: feed.profile.map(Arc::new),
                    items: decoded_items(&feed.items),
                });
                self.decoded.insert(user, decoded.clone());
                Some(decoded)
            }
            Err(e) => {
                tracing::warn!(%user, error = %e, "unreadable recommendations entry, treated as a miss");
                None
            }
        }
    }

    /// Recommended posts as candidates, with their bodies (which give their authors); deleted
    /// posts are left out. `digest`: the entry's, to memoize the list for the user.
    pub(super) async fn recommended(
        &self,
        pg: &Pool,
        items: &[Recommended],
        digest: Option<(u64, usize)>,
    ) -> ApiResult<Arc<HydratedList>> {
        // read before the bodies: a change during the look-up voids the list
        let changes_at = self.post_changes.count();
        let ids: Vec<Uuid> = items.iter().map(|i| i.post).collect();
        let bodies = self.hydrate(pg, &ids).await?;
        let items = items
            .iter()
            .filter_map(|i| {
                Some(Candidate {
                    post: i.post,
                    author: bodies.get(&i.post)?.author,
                    source: Source::Personalized,
                    score: Some(i.score),
                    reason: Some(i.reason),
                    because_of: None,
                    components: Some(i.components),
                })
            })
            .collect();
        Ok(Arc::new(HydratedList {
            digest,
            changes_at: AtomicU64::new(changes_at),
            items,
            bodies,
        }))
    }

    /// [`Feeds::recommended`] for a decoded Redis entry, memoized per user.
    async fn recommended_entry(
        &self,
        pg: &Pool,
        user: Uuid,
        entry: &DecodedFeed,
    ) -> ApiResult<Arc<HydratedList>> {
        if let Some(hit) = self.hydrated.get(&user) {
            if hit.digest == Some(entry.digest) && hit.still_good(self) {
                return Ok(hit);
            }
        }
        let list = self
            .recommended(pg, &entry.items, Some(entry.digest))
            .await?;
        self.hydrated.insert(user, list.clone());
        Ok(list)
    }
}

/// The pipeline's Redis entry for the user.
pub(super) async fn from_cache(
    input: &SourceInput<'_>,
    name: &'static str,
) -> ApiResult<Option<Personalized>> {
    let (feeds, stores) = (input.feeds, input.stores);
    if input.req.refresh {
        return Ok(None);
    }
    let Some(read) = &input.read else {
        return Ok(None);
    };
    let entry = read
        .recommendations
        .as_deref()
        .and_then(|raw| feeds.decode_entry(input.user, raw));
    stores.metrics.cache_lookup(entry.is_some());
    let Some(entry) = entry else {
        return Ok(None);
    };
    let built_ms = entry.generated_at * 1000;
    let reread;
    let seen = match input.seen_since {
        // An entry older than the one remembered: its seen entries are read again.
        Some(read_from) if built_ms < read_from => {
            match stores
                .redis
                .read_seen(&input.user_key, built_ms, stores.metrics)
                .await
            {
                Some(seen) => {
                    reread = seen;
                    &reread
                }
                None => return Ok(None),
            }
        }
        _ => &read.seen,
    };
    let excluded = Exclusions::from_redis(&read.hidden, seen, built_ms, input.as_of);
    let list = feeds
        .recommended_entry(stores.pg, input.user, &entry)
        .await?;
    Ok(Some(Personalized {
        origin: name,
        list,
        excluded,
        built_ms,
        run_id: Some(entry.run_id),
        model_id: entry.model_id,
        profile: entry.profile.clone(),
    }))
}

/// The user's current recommendations in PostgreSQL (with the run's model and the user's
/// profile in it), written back to Redis (not asked again for a user it had none for, until
/// recommendations change).
pub(super) async fn from_database(
    input: &SourceInput<'_>,
    name: &'static str,
) -> ApiResult<Option<Personalized>> {
    let (feeds, stores, user) = (input.feeds, input.stores, input.user);
    let generation = feeds.recommendations_generation.load(Ordering::SeqCst);
    if !input.req.refresh && feeds.known_without_recommendations(user) {
        return Ok(None);
    }
    let Some(current) = db::current_recommendations(stores.pg, user).await? else {
        if feeds.is_listening() {
            // Remembered with the generation read before the query: a change that arrived
            // during it voids this answer.
            feeds.without_recommendations.insert(user, generation);
        }
        return Ok(None);
    };
    let built_ms = current.generated_at * 1000;
    let marks = db::interaction_marks(stores.pg, user, built_ms).await?;
    let profile = match current.model_id {
        Some(m) => db::user_profile(stores.pg, m, user).await?,
        None => None,
    };
    let ttl = write_back_ttl(
        current.cache_ttl_seconds,
        current.expires_at.timestamp_millis(),
        input.now,
    );
    let mirrored: Vec<Mirrored> = marks
        .iter()
        .map(|m| Mirrored {
            post_id: m.post_id.to_string(),
            at_ms: m.at_ms,
            hide: m.hide,
            like: m.like,
        })
        .collect();
    let entry = CachedFeed::new(current.run_id, current.generated_at, current.items)
        .with_model(current.model_id, profile);
    stores
        .redis
        .write_feed(&input.user_key, &entry, ttl, &mirrored, stores.metrics)
        .await;
    let excluded = Exclusions::from_marks(&marks, built_ms, input.as_of);
    let items = decoded_items(&entry.items);
    let list = feeds.recommended(stores.pg, &items, None).await?;
    Ok(Some(Personalized {
        origin: name,
        list,
        excluded,
        built_ms,
        run_id: Some(entry.run_id),
        model_id: entry.model_id,
        profile: entry.profile.map(Arc::new),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_back_ttl_is_the_runs_setting_capped_by_the_rows_expiry() {
        let now = 1_764_201_600_000;
        let day = 86_400_000;
        let default = ScoringConfig::default().cache_ttl_seconds;
        assert_eq!(
            write_back_ttl(Some(120), now + day, now),
            Duration::from_secs(120)
        );
        assert_eq!(
            write_back_ttl(None, now + day, now),
            Duration::from_secs(default)
        );
        assert_eq!(
            write_back_ttl(Some(7200), now + 90_000, now),
            Duration::from_secs(90)
        );
        assert_eq!(
            write_back_ttl(Some(7200), now - 5_000, now),
            Duration::from_secs(1),
            "rows about to expire: one second"
        );
    }

    #[test]
    fn the_personalized_list_is_looked_for_in_the_documented_order() {
        let names: Vec<&str> = PERSONALIZED.iter().map(|s| s.name).collect();
        assert_eq!(names, ["cache", "db"]);
        assert_eq!(PAGE_ORIGINS, ["cache", "db", "fallback"]);
    }
}
