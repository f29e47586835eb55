//! The random fallback after the blend: a seeded shuffle of the most recent posts, so that
//! scrolling ends only when the catalogue does.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use deadpool_postgres::Pool;
use feedrank_core::config::Source;
use uuid::Uuid;

use super::{Candidate, Exclusions, Feeds, SourceInput};
use crate::db;
use crate::error::ApiResult;
use crate::memo::{IdHasher, IdMap};
use crate::redis_store::SEEN_RETENTION_MS;
use feedrank_core::diversify::diversify;

/// Seeds are kept within JavaScript's safe integers, so a browser can pass one back unchanged.
pub const MAX_SEED: u64 = (1 << 53) - 1;

/// The default fallback seed: the user and the UTC day, so a user's random feed is stable for a
/// day and different from other users'. FNV-1a, written out so it never changes with a library.
pub fn default_seed(user: Uuid, unix_ms: i64) -> u64 {
    let day = unix_ms.div_euclid(86_400_000);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.as_bytes().iter().chain(day.to_le_bytes().iter()) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h & MAX_SEED
}

/// The most recent posts at one moment, newest first, as the fallback's candidates.
pub(super) struct PoolSnapshot {
    /// Distinguishes snapshots (the key of their memoized orders).
    pub(super) generation: u64,
    pub(super) candidates: Arc<[Candidate]>,
    /// Post -> position in `candidates`.
    pub(super) index: IdMap<Uuid, u32>,
}

impl Feeds {
    /// The merged list's order with the fallback after the blend: positions below
    /// `merged.len()` are the blend's, the others the pool's (offset by it). Memoized.
    pub(super) async fn with_fallback(
        &self,
        input: &SourceInput<'_>,
        merged: &[&Candidate],
        pool: &PoolSnapshot,
        personal_excluded: &Exclusions,
    ) -> ApiResult<(Arc<Vec<u32>>, u64)> {
        let seed = input
            .req
            .seed
            .unwrap_or_else(|| default_seed(input.user, input.now));
        let since = input.as_of - SEEN_RETENTION_MS;
        let marks = db::interaction_marks(input.stores.pg, input.user, since).await?;
        let excluded = Exclusions::from_marks(&marks, since, input.as_of);
        let (limit, cap) = (input.req.limit, self.author_diversity_cap);
        let key = {
            let mut h = std::hash::DefaultHasher::new();
            (pool.generation, seed, limit, cap).hash(&mut h);
            for c in merged {
                c.post.hash(&mut h);
            }
            excluded.digest(&mut h);
            personal_excluded.digest(&mut h);
            h.finish()
        };
        if let Some(hit) = self.orders.get(&key) {
            return Ok((hit, seed));
        }
        let in_blend: HashSet<Uuid, BuildHasherDefault<IdHasher>> =
            merged.iter().map(|c| c.post).collect();
        let mut tail: Vec<u32> = (0..pool.candidates.len() as u32).collect();
        feedrank_core::shuffle::shuffle(&mut tail, seed);
        tail.retain(|&i| {
            let p = &pool.candidates[i as usize].post;
            !excluded.contains(p) && !personal_excluded.contains(p) && !in_blend.contains(p)
        });
        let b = merged.len() as u32;
        let positions: Vec<u32> = (0..b).chain(tail.into_iter().map(|i| i + b)).collect();
        let author = |&i: &u32| {
            if i < b {
                merged[i as usize].author
            } else {
                pool.candidates[(i - b) as usize].author
            }
        };
        let order = Arc::new(diversify(positions, author, limit, cap));
        self.orders.insert(key, order.clone());
        Ok((order, seed))
    }

    /// The current snapshot of the recent-posts pool, reloaded when older than the refresh
    /// interval.
    pub(super) async fn fallback_pool(&self, pg: &Pool) -> ApiResult<Arc<PoolSnapshot>> {
        self.pool
            .get(|_| async move {
                let posts = db::recent_posts(pg, self.fallback_pool_size).await?;
                let candidates: Arc<[Candidate]> = posts
                    .into_iter()
                    .map(|(post, author)| Candidate {
                        post,
                        author,
                        source: Source::Fallback,
                        score: None,
                        reason: None,
                        because_of: None,
                        components: None,
                    })
                    .collect();
                let index = candidates
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.post, i as u32))
                    .collect();
                Ok(PoolSnapshot {
                    generation: self.pool_generation.fetch_add(1, Ordering::Relaxed),
                    candidates,
                    index,
                })
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_seed_is_stable_per_user_and_day() {
        let u = Uuid::from_u128(42);
        let day = 1_764_201_600_000;
        assert_eq!(default_seed(u, day), default_seed(u, day + 3_600_000));
        assert_ne!(default_seed(u, day), default_seed(u, day + 86_400_000));
        assert_ne!(default_seed(u, day), default_seed(Uuid::from_u128(43), day));
        assert!(default_seed(u, day) <= MAX_SEED);
    }
}
