//! The `because_you_liked` source: the stored neighbours of the posts the user liked or shared
//! since the list was built.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use deadpool_postgres::Pool;
use feedrank_core::config::{Reason, Source};
use uuid::Uuid;

use super::{Candidate, Feeds, Personalized, SourceInput, NEIGHBORS_TTL};
use crate::db;
use crate::error::ApiResult;
use crate::memo::{spread, IdMap};
use crate::metrics::Metrics;
use crate::models::ServingModel;

/// A post's stored neighbours, best first: `(post, similarity, author)`, the deleted ones left
/// out (their authors come from the bodies, looked up once when the list is loaded).
pub(super) struct Neighbors {
    list: Vec<(Uuid, f32, Uuid)>,
    /// Until when the list is good, and the post change count it is good at: it is loaded again
    /// when one of its posts changed, or when it expires (see `neighbors_of`; a lifetime drawn by
    /// `memo::spread`, so that lists loaded together are not all loaded again together).
    expires: Instant,
    changes_at: AtomicU64,
}

impl Neighbors {
    fn still_good(&self, feeds: &Feeds) -> bool {
        if Instant::now() >= self.expires {
            return false;
        }
        feeds
            .post_changes
            .still_unchanged(&self.changes_at, |id| self.list.iter().any(|n| n.0 == *id))
    }
}

impl Feeds {
    /// The because_you_liked source: the stored neighbours of the posts the user liked or
    /// shared since the list was built, most recent like first, `per_like` each.
    pub(super) async fn liked_candidates(
        &self,
        input: &SourceInput<'_>,
        personalized: Option<&Personalized>,
        user_model: Option<&ServingModel>,
        allowed: &(dyn Fn(&Candidate) -> bool + Sync),
    ) -> Result<Vec<Candidate>, String> {
        let Some(p) = personalized else {
            return Ok(Vec::new());
        };
        let Some(model) = user_model else {
            return Err("no model for the user's run".into());
        };
        let settings = model.config.sources.because_you_liked;
        let likes: Vec<Uuid> = match &input.read {
            Some(read) => {
                let mut l: Vec<(i64, Uuid)> = read
                    .liked
                    .iter()
                    .filter(|(_, at)| *at >= p.built_ms && *at <= input.as_of)
                    .filter_map(|(id, at)| Some((*at, Uuid::parse_str(id).ok()?)))
                    .collect();
                l.sort_unstable_by(|a, b| b.cmp(a));
                let mut seen = HashSet::new();
                l.into_iter()
                    .map(|(_, id)| id)
                    .filter(|id| seen.insert(*id))
                    .take(settings.likes)
                    .collect()
            }
            None => db::recent_likes(input.stores.pg, input.user, p.built_ms, settings.likes)
                .await
                .map_err(|e| format!("unavailable: {e}"))?,
        };
        if likes.is_empty() {
            return Ok(Vec::new());
        }
        let neighbors = self
            .neighbors_of(input.stores.pg, input.stores.metrics, model.id, &likes)
            .await
            .map_err(|e| format!("unavailable: {e}"))?;
        if neighbors.iter().all(|n| n.list.is_empty()) {
            return Err("no neighbours stored for the liked posts".into());
        }
        let mut out: Vec<Candidate> = Vec::new();
        let mut placed = HashSet::new();
        for (liked, list) in likes.iter().zip(&neighbors) {
            let mut taken = 0;
            for &(post, score, author) in list.list.iter() {
                if taken == settings.per_like {
                    break;
                }
                let c = Candidate {
                    post,
                    author,
                    source: Source::BecauseYouLiked,
                    score: Some(score),
                    reason: Some(Reason::BecauseYouLiked),
                    because_of: Some(*liked),
                    components: None,
                };
                if likes.contains(&post) || !allowed(&c) || !placed.insert(post) {
                    continue;
                }
                out.push(c);
                taken += 1;
            }
        }
        out.truncate(settings.candidates);
        Ok(out)
    }

    /// The stored neighbours of `posts` in `model` with their authors (memoized), in the order
    /// of `posts`. Lists another request is loading are waited for, not loaded again: the
    /// concurrent first pages of a cold start ask PostgreSQL for each list once.
    pub(super) async fn neighbors_of(
        &self,
        pg: &Pool,
        metrics: &Metrics,
        model: i64,
        posts: &[Uuid],
    ) -> ApiResult<Vec<Arc<Neighbors>>> {
        let cached = |p: &Uuid| {
            self.neighbors
                .get(&(model, *p))
                .filter(|n| n.still_good(self))
        };
        let mut got: IdMap<Uuid, Arc<Neighbors>> = IdMap::default();
        let mut missing = Vec::new();
        for p in posts {
            match cached(p) {
                Some(n) => {
                    got.insert(*p, n);
                }
                None => missing.push((model, *p)),
            }
        }
        if !missing.is_empty() {
            let (claim, waits) = self.neighbor_loads.claim(&missing);
            let mine: Vec<Uuid> = claim.keys.iter().map(|k| k.1).collect();
            if !mine.is_empty() {
                got.extend(self.load_neighbors(pg, metrics, model, &mine).await?);
            }
            drop(claim);
            for wait in waits {
                wait.await;
            }
            // what the others loaded; a list whose load failed (or that changed since) is
            // loaded here
            let mut again = Vec::new();
            for &(_, p) in missing.iter().filter(|(_, p)| !mine.contains(p)) {
                match cached(&p) {
                    Some(n) => {
                        got.insert(p, n);
                    }
                    None => again.push(p),
                }
            }
            if !again.is_empty() {
                got.extend(self.load_neighbors(pg, metrics, model, &again).await?);
            }
        }
        Ok(posts
            .iter()
            .map(|p| got.get(p).expect("every list found or loaded").clone())
            .collect())
    }

    /// Reads the neighbour lists of `posts` in `model` from PostgreSQL, with their authors, and
    /// memoizes them.
    async fn load_neighbors(
        &self,
        pg: &Pool,
        metrics: &Metrics,
        model: i64,
        posts: &[Uuid],
    ) -> ApiResult<IdMap<Uuid, Arc<Neighbors>>> {
        // read before the bodies: a change during the look-up voids the lists
        let changes_at = self.post_changes.count();
        // A neighbour list changes only with its posts (deleted, or an author changed), which
        // `post_changes` reports while the change listener is connected: then the list lives
        // NEIGHBORS_TTL. Otherwise a missed change is outlived like a post body's.
        let life = if self.is_listening() {
            NEIGHBORS_TTL
        } else {
            self.post_cache_ttl
        };
        let expires = Instant::now() + spread(life);
        let found = db::post_neighbors(pg, model, posts).await?;
        let ids: Vec<Uuid> = found.values().flatten().map(|n| n.0).collect();
        let bodies = self.hydrate(pg, &ids).await?;
        metrics.neighbor_lists_loaded(posts.len() as u64);
        Ok(posts
            .iter()
            .map(|p| {
                let list = found
                    .get(p)
                    .map(|l| {
                        l.iter()
                            .filter_map(|&(n, score)| Some((n, score, bodies.get(&n)?.author)))
                            .collect()
                    })
                    .unwrap_or_default();
                let n = Arc::new(Neighbors {
                    list,
                    expires,
                    changes_at: AtomicU64::new(changes_at),
                });
                self.neighbors.insert((model, *p), n.clone());
                (*p, n)
            })
            .collect())
    }
}
